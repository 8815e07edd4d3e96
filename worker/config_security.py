"""The ``[security]`` section (read by :func:`~tubeworker.config_sections.build`): the
signing keys file and whether jobs must be signed (docs/security.md). A keys file is read
and checked here, so ``tubeworker check`` reports a bad one; the daemon loads it again
when it starts (the secrets are never kept in the config)."""

from __future__ import annotations

from pathlib import Path

from tubeworker.config_model import SecurityConfig, TlsConfig
from tubeworker.config_reader import Reader
from tubeworker.security.keys import KeysError, load_keys

__all__ = ["security", "tls"]


def security(reader: Reader) -> SecurityConfig:
    reader.check_unknown(("signing_keys_file", "require_signature", "encryption_keys_file"))
    keys_file = _keys_file(reader, "signing_keys_file")
    require = reader.boolean("require_signature", False)
    if require and keys_file is None:
        require = reader.bad(
            "require_signature", "needs signing_keys_file (the keys jobs are checked with)", False
        )
    return SecurityConfig(
        signing_keys_file=keys_file,
        require_signature=require,
        encryption_keys_file=_keys_file(reader, "encryption_keys_file", exact_bytes=32),
    )


def _keys_file(reader: Reader, name: str, *, exact_bytes: int | None = None) -> Path | None:
    value = reader.text(name)
    if not value:
        return None
    try:
        load_keys(value, exact_bytes=exact_bytes)
    except KeysError as exc:
        return reader.bad(name, str(exc), None)
    return Path(value)


def tls(reader: Reader) -> TlsConfig | None:
    """``[tls]``: files that must be readable, and verify on unless said otherwise."""
    if not reader.table:
        return None
    reader.check_unknown(("ca_file", "cert_file", "key_file", "server_name", "verify"))
    files = {name: _readable(reader, name) for name in ("ca_file", "cert_file", "key_file")}
    if (files["cert_file"] is None) != (files["key_file"] is None):
        reader.report("cert_file", "cert_file and key_file go together (mutual TLS)")
    return TlsConfig(
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        server_name=reader.text("server_name"),
        verify=reader.boolean("verify", True),
    )


def _readable(reader: Reader, name: str) -> Path | None:
    value = reader.text(name)
    if not value:
        return None
    try:
        Path(value).read_bytes()
    except OSError as exc:
        return reader.bad(name, f"cannot read {value}: {exc.strerror}", None)
    return Path(value)
