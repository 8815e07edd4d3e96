"""TLS to beanstalkd (``tls://host:port``): beanstalkd speaks plain TCP, so a TLS
terminator (stunnel: deploy/tls/) sits in front of it; tubeworker is the TLS client.

The settings come from ``[tls]`` in the daemon's config, or for the commands and apps from
the environment (``TUBEWORKER_TLS_CA_FILE``, ``_CERT_FILE``, ``_KEY_FILE``,
``_SERVER_NAME``, ``_VERIFY``): the CA that signed the terminator's certificate (else the
system's), this client's certificate and key for mutual TLS, the name the certificate must
carry (else the server's host), and ``verify`` (on unless turned off, loudly). One
context per process, built on first use.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TlsSettings",
    "client_context",
    "install_tls",
    "server_name",
    "tls_context",
    "with_tls_hint",
]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    verify: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TlsSettings:
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = env.get(f"TUBEWORKER_TLS_{name}", "").strip()
            return Path(value) if value else None

        verify = env.get("TUBEWORKER_TLS_VERIFY", "true").strip().lower()
        return cls(
            ca_file=path("CA_FILE"),
            cert_file=path("CERT_FILE"),
            key_file=path("KEY_FILE"),
            server_name=env.get("TUBEWORKER_TLS_SERVER_NAME", "").strip() or None,
            verify=verify not in ("0", "false", "no", "off"),
        )


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """An SSL context for ``settings``; ssl.SSLError/OSError for unreadable files."""
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file is not None:
        context.load_cert_chain(
            str(settings.cert_file), str(settings.key_file) if settings.key_file else None
        )
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_settings: TlsSettings | None = None
_context: ssl.SSLContext | None = None


def install_tls(settings: TlsSettings | None) -> None:
    """This process's TLS settings (the daemon's [tls]); None: from the environment."""
    global _settings, _context
    _settings, _context = settings, None


def _current() -> TlsSettings:
    global _settings
    if _settings is None:
        _settings = TlsSettings.from_env()
    return _settings


def tls_context() -> ssl.SSLContext:
    """The process's context for tls:// servers (made on first use)."""
    global _context
    if _context is None:
        _context = client_context(_current())
    return _context


def server_name(host: str) -> str:
    """The name the terminator's certificate must carry."""
    return _current().server_name or host


def with_tls_hint(reason: str) -> str:
    """A tls:// connection that failed without a TLS error: with TLS 1.3 a server that
    refuses this client's certificate (or its lack of one) closes the connection only
    after the handshake, so say what most likely happened."""
    if "TLS" in reason or "SSL" in reason:
        return reason
    return (
        f"{reason} (TLS: the server closed the connection after the handshake: does it "
        "require a client certificate this client lacks? [tls] cert_file/key_file, or "
        "TUBEWORKER_TLS_CERT_FILE/_KEY_FILE)"
    )
