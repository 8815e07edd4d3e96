"""The JSON envelope producers write: ``{"task": NAME, "payload": ...}``."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BadEnvelope", "MissingTask", "decode_envelope", "encode_envelope"]


class BadEnvelope(ValueError):
    """The body cannot be dispatched; the job is buried with this reason, never retried."""


class MissingTask(BadEnvelope):
    """A JSON object without a ``task``: most likely a raw body sent to an envelope pool."""


def decode_envelope(body: bytes) -> tuple[str, Any]:
    """(task, payload) from a body, or BadEnvelope saying exactly what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEnvelope(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadEnvelope(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadEnvelope("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise BadEnvelope(f"body cannot be decoded as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadEnvelope(f"envelope must be a JSON object, got {type(data).__name__}")
    task = data.get("task")
    if not isinstance(task, str) or not task:
        raise MissingTask('envelope has no "task" string')
    return task, data.get("payload")


def encode_envelope(task: str, payload: Any = None) -> bytes:
    return json.dumps({"task": task, "payload": payload}, separators=(",", ":")).encode()
