"""Signed envelopes: who may put work.

The exact bytes (docs/security.md says the same for producers in other languages):

1. Build the envelope as a JSON object ``U`` that includes ``"kid": KEY_ID`` (any key
   order, any spacing, UTF-8), ending with ``}``.
2. ``H`` = HMAC-SHA256(secret of KEY_ID, the bytes of ``U``), as 64 lowercase hex digits.
3. The body is ``U`` without its last ``}``, then ``,"sig":"H"}``.

So the signature covers every byte of the body except its own member at the end, and the
verifier needs no canonical JSON: it cuts the last 74 bytes (``,"sig":"`` + 64 + ``"}``),
puts ``}`` back, and computes the same HMAC. It compares in constant time.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from tubeworker.security.keys import KeyRing

__all__ = ["SIG_SUFFIX_BYTES", "current_signer", "install_signer", "sign", "verify"]

SIG_SUFFIX_BYTES = 74  # ,"sig":"<64 hex>"}
_SUFFIX = re.compile(rb',"sig":"([0-9a-f]{64})"\}')  # matched at len - 74 only
_KID_AT_END = re.compile(rb',"kid":"([A-Za-z0-9._-]{1,64})"\}\Z')

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
    mac = keys.macs[keys.current].copy()
    mac.update(text)
    digest = mac.hexdigest()
    return text[:-1] + b',"sig":"' + digest.encode() + b'"}'


def verify(body: bytes, keys: KeyRing | None, *, required: bool) -> str | None:
    """Why ``body`` fails its signature check, or None when it passes (or, not
    ``required``, carries none). A body with a signature is always checked."""
    end = len(body.rstrip())
    match = _SUFFIX.match(body, end - SIG_SUFFIX_BYTES) if end >= SIG_SUFFIX_BYTES else None
    if match is None:
        return 'it is not signed (no "sig" of 64 hex digits at its end)' if required else None
    if keys is None:
        return "it is signed, but this worker has no signing keys"
    unsigned = body[: end - SIG_SUFFIX_BYTES] + b"}"
    given = match.group(1)
    # Our signers write "kid" last: read it from the end, without parsing the JSON.
    fast = _KID_AT_END.search(unsigned, max(0, len(unsigned) - 80))
    if fast is not None and _matches(keys, fast.group(1).decode(), unsigned, given):
        return None
    try:
        data = json.loads(unsigned)
    except ValueError:
        return "its signed part is not a JSON object"
    key_id = data.get("kid") if isinstance(data, dict) else None
    if not isinstance(key_id, str):
        return 'it has no key id ("kid")'
    if key_id not in keys.keys:
        return f"unknown key {key_id!r}"
    if not _matches(keys, key_id, unsigned, given):
        return (
            f"signature mismatch (key {key_id!r}): the body was changed, or signed with "
            "another secret"
        )
    return None


def _matches(keys: KeyRing, key_id: str, unsigned: bytes, given: bytes) -> bool:
    keyed = keys.macs.get(key_id)
    if keyed is None:
        return False
    mac = keyed.copy()
    mac.update(unsigned)
    return hmac.compare_digest(mac.hexdigest().encode(), given)
