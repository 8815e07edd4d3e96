"""Named keys from a file: one ``ID: SECRET`` a line (the secret in base64), ``#`` comments
and blank lines ignored. The first key is the current one (producers sign with it); every
key in the file is accepted (daemons verify with any of them), so keys rotate with no job
refused: add the new key everywhere, move it first on the producers, retire the old one.

    # /etc/tubeworker/signing-keys  (mode 600)
    k2026-12: 3q2+7wS1bRq0m9mJb0c1Yx3kT6l2g1yJ4oE8p0XrZ5c=
    k2026-06: Vd0Kp5gq7x2mC8s1Lr4eT9bY3nH6jW0fQ2uA5zX8cE1=
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KeyRing", "KeysError", "load_keys", "parse_keys"]

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_SECRET_BYTES = 32


class KeysError(ValueError):
    """A keys file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class KeyRing:
    """Key id → secret; ``current``: the id new signatures use (the file's first)."""

    keys: dict[str, bytes]
    current: str
    source: str = ""
    # Key id → an HMAC-SHA256 keyed with it, copied for each message (keying it is the
    # larger part of a short message's cost).
    macs: dict[str, hmac.HMAC] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise KeysError(f"{self.source}: no key {self.current!r}")
        for key_id, secret in self.keys.items():
            self.macs[key_id] = hmac.new(secret, digestmod=hashlib.sha256)

    def __repr__(self) -> str:  # never the secrets
        return f"KeyRing({sorted(self.keys)}, current={self.current!r})"

    @property
    def secret(self) -> bytes:
        return self.keys[self.current]


def parse_keys(text: str, *, source: str = "keys", exact_bytes: int | None = None) -> KeyRing:
    """The keys in ``text`` (see the module docstring). ``exact_bytes``: every secret must
    be this long (AES-256: 32); else at least 32 bytes."""
    keys: dict[str, bytes] = {}
    first: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key_id, colon, encoded = line.partition(":")
        key_id, encoded = key_id.strip(), encoded.strip()
        where = f"{source} line {number}"
        if not colon or not _ID.match(key_id):
            raise KeysError(
                f"{where}: expected 'ID: BASE64 SECRET' (an id of letters, digits, ._-)"
            )
        try:
            secret = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise KeysError(f"{where}: the secret of {key_id!r} is not base64") from None
        if exact_bytes is not None and len(secret) != exact_bytes:
            raise KeysError(f"{where}: {key_id!r} must be {exact_bytes} bytes, got {len(secret)}")
        if len(secret) < MIN_SECRET_BYTES:
            raise KeysError(
                f"{where}: {key_id!r} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
                "(head -c 32 /dev/urandom | base64)"
            )
        if key_id in keys:
            raise KeysError(f"{where}: key {key_id!r} is there twice")
        keys[key_id] = secret
        first = first or key_id
    if first is None:
        raise KeysError(f"{source}: no key in it")
    return KeyRing(keys, first, source)


def load_keys(path: str | os.PathLike[str], *, exact_bytes: int | None = None) -> KeyRing:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysError(f"cannot read keys file {path}: {exc}") from None
    return parse_keys(text, source=str(path), exact_bytes=exact_bytes)
