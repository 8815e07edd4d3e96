"""Redaction: payload fields masked in every job body shown to a person (the control plane,
the dashboard, the admin commands), from ``[control] redact`` or ``TUBEWORKER_REDACT``.

A path names a field of an envelope's payload, ``payload.customer.email``; a list on the way
is walked element by element (``payload.items.sku`` masks every item's ``sku``). Only
envelopes are touched: a body that is not JSON, not a JSON object, has no ``payload``, or
holds none of the paths is returned exactly as it came (the same text, the same bytes).
Pure functions, standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "ENV",
    "MASK",
    "FieldPath",
    "is_path",
    "mask_path",
    "parse_paths",
    "paths_from_env",
    "redact_body",
    "redact_text",
]

MASK: Final = "***"
ENV: Final = "TUBEWORKER_REDACT"
FieldPath = tuple[str, ...]
_PATH: Final = re.compile(r"payload(\.[^.\s]+)+")


def is_path(name: str) -> bool:
    """Whether ``name`` is a redact path (``payload.`` then one or more field names)."""
    return _PATH.fullmatch(name) is not None


def parse_paths(names: Iterable[str]) -> tuple[FieldPath, ...]:
    """``payload.a.b`` → ``("a", "b")`` (the fields under the payload); others dropped."""
    return tuple(tuple(name.split(".")[1:]) for name in (n.strip() for n in names) if is_path(name))


def paths_from_env(env: Mapping[str, str]) -> tuple[FieldPath, ...]:
    """The paths of ``TUBEWORKER_REDACT`` (comma-separated), for the admin commands."""
    return parse_paths(env.get(ENV, "").split(","))


def mask_path(data: Any, path: FieldPath) -> bool:
    """Mask ``path`` in ``data`` in place (each list element on the way too); whether it
    masked anything."""
    if not path:
        return False
    head, rest = path[0], path[1:]
    if isinstance(data, list):
        return any([mask_path(item, path) for item in data])  # every element, no short cut
    if not isinstance(data, dict) or head not in data:
        return False
    if not rest:
        data[head] = MASK
        return True
    return mask_path(data[head], rest)


def redact_text(text: str, paths: tuple[FieldPath, ...]) -> str:
    """The envelope's text with the paths masked (re-serialized); anything else, or an
    envelope holding none of them, exactly as given."""
    if not paths:
        return text
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if not isinstance(data, dict) or "payload" not in data:
        return text
    masked = [mask_path(data["payload"], path) for path in paths]
    return json.dumps(data, ensure_ascii=False) if any(masked) else text


def redact_body(body: bytes, paths: tuple[FieldPath, ...]) -> bytes:
    """:func:`redact_text` for raw bytes (a download): bytes that are not UTF-8 as given."""
    if not paths:
        return body
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body
    shown = redact_text(text, paths)
    return body if shown is text else shown.encode()
