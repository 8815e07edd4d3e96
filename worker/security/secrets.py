"""Encrypted secrets: the part of a job that must not sit in the queue in clear.

``enqueue(..., secret={"card": ...})`` puts the envelope member ``"secret"``::

    {"kid": KEY_ID, "nonce": BASE64 (12 bytes), "ct": BASE64 (ciphertext and 16-byte tag)}

AES-256-GCM (the ``cryptography`` package) of the secret's JSON (UTF-8), under the key
KEY_ID of the encryption keys file (32-byte keys), a random nonce per job, and the task
name as associated data: a sealed secret moved into another task's envelope does not open.
Only the worker opens it, for the handler (``job.secret``); everything that shows a body
(peek, buried, the dashboard) shows ``encrypted, N bytes, key K`` instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from tubeworker.security.keys import KeyRing

__all__ = ["SecretError", "describe_secret", "install_sealer", "open_secret", "seal", "sealer"]

_installed: KeyRing | None = None


class SecretError(ValueError):
    """A secret that cannot be opened; the message says why (never its content)."""


def install_sealer(keys: KeyRing | None) -> None:
    """The keys this process seals the secrets it puts with (the daemon's job.put)."""
    global _installed
    _installed = keys


def sealer() -> KeyRing | None:
    return _installed


def seal(value: Any, task: str, keys: KeyRing) -> dict[str, str]:
    """The envelope's ``"secret"`` member for ``value`` (any JSON) of ``task``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    plain = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    nonce = os.urandom(12)
    sealed = AESGCM(keys.secret).encrypt(nonce, plain, task.encode())
    return {
        "kid": keys.current,
        "nonce": base64.b64encode(nonce).decode(),
        "ct": base64.b64encode(sealed).decode(),
    }


def open_secret(member: Any, task: str, keys: KeyRing | None) -> Any:
    """The secret a handler gets, or SecretError saying why it cannot be opened."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if keys is None:
        raise SecretError("it carries a secret, but this worker has no encryption keys")
    if not isinstance(member, dict):
        raise SecretError('"secret" must be an object {"kid", "nonce", "ct"}')
    key_id = member.get("kid")
    if not isinstance(key_id, str):
        raise SecretError('"secret" has no key id ("kid")')
    secret_key = keys.keys.get(key_id)
    if secret_key is None:
        raise SecretError(f"unknown encryption key {key_id!r}")
    try:
        nonce = base64.b64decode(str(member.get("nonce")), validate=True)
        sealed = base64.b64decode(str(member.get("ct")), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError('"secret" has a nonce or ciphertext that is not base64') from None
    if len(nonce) != 12:
        raise SecretError(f'"secret" nonce must be 12 bytes, got {len(nonce)}')
    try:
        plain = AESGCM(secret_key).decrypt(nonce, sealed, task.encode())
    except InvalidTag:
        raise SecretError(
            f"secret does not open with key {key_id!r}: changed, or sealed for another task"
        ) from None
    try:
        return json.loads(plain)
    except ValueError:
        raise SecretError("secret opened, but is not JSON") from None


def describe_secret(member: Any) -> str:
    """What shows instead of a secret: its size and key, never its content."""
    if isinstance(member, dict) and isinstance(member.get("ct"), str):
        size = max(0, len(member["ct"]) * 3 // 4 - 16)  # the tag is not the secret
        return f"encrypted, {size} bytes, key {member.get('kid')}"
    return "encrypted"
