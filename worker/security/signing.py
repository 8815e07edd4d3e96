"""Signed envelopes: who may put work.

The exact bytes (docs/security.md says the same for producers in other languages):

1. Build the envelope as a JSON object ``U`` that includes ``"kid": KEY_ID`` (any key
   order, any spacing, UTF-8), ending with ``}``.
2. ``H`` = HMAC-SHA256(secret of KEY_ID, the bytes of ``U``), as 64 lowercase hex digits.
3. The body is ``U`` without its last ``}``, then ``,"sig":"H"}``.

So the signature covers every byte of the body except its own member at the end, and the
verifier needs no canonical JSON: it cuts the last 76 bytes (``,"sig":"`` + 64 + ``"}``),
puts ``}`` back, and computes the same HMAC. It compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from tubeworker.security.keys import KeyRing

__all__ = ["SIG_SUFFIX_BYTES", "current_signer", "install_signer", "sign", "verify"]

SIG_SUFFIX_BYTES = 76  # ,"sig":"<64 hex>"}
_SUFFIX = re.compile(rb',"sig":"([0-9a-f]{64})"\}\s*\Z')

# The keys this process signs the envelopes it writes with (the daemon's [security]
# signing_keys_file): job.put, chains, schedules, heartbeats. None: unsigned.
_installed: KeyRing | None = None


def install_signer(keys: KeyRing | None) -> None:
    global _installed
    _installed = keys


def current_signer() -> KeyRing | None:
    return _installed


def sign(data: dict[str, Any], keys: KeyRing) -> bytes:
    """The signed body of an envelope (``data`` without ``kid``/``sig``; strict JSON)."""
    unsigned = {key: value for key, value in data.items() if key not in ("kid", "sig")}
    unsigned["kid"] = keys.current
    text = json.dumps(unsigned, separators=(",", ":"), allow_nan=False).encode()
    digest = hmac.new(keys.secret, text, hashlib.sha256).hexdigest()
    return text[:-1] + b',"sig":"' + digest.encode() + b'"}'


def verify(body: bytes, keys: KeyRing | None, *, required: bool) -> str | None:
    """Why ``body`` fails its signature check, or None when it passes (or, not
    ``required``, carries none). A body with a signature is always checked."""
    match = _SUFFIX.search(body)
    if match is None:
        return 'it is not signed (no "sig" of 64 hex digits at its end)' if required else None
    if keys is None:
        return "it is signed, but this worker has no signing keys"
    unsigned = body[: match.start()] + b"}"
    try:
        data = json.loads(unsigned)
    except ValueError:
        return "its signed part is not a JSON object"
    key_id = data.get("kid") if isinstance(data, dict) else None
    if not isinstance(key_id, str):
        return 'it has no key id ("kid")'
    secret = keys.keys.get(key_id)
    if secret is None:
        return f"unknown key {key_id!r}"
    expected = hmac.new(secret, unsigned, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, match.group(1)):
        return (
            f"signature mismatch (key {key_id!r}): the body was changed, or signed with "
            "another secret"
        )
    return None
