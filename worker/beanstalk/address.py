"""Where a beanstalkd listens, and how its address is written: ``host``, ``host:port``,
``[v6]:port``, each maybe ``tls://`` first, or ``unix:/path`` (the client re-exports these).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_PORT", "Address", "parse_address"]

DEFAULT_PORT: Final = 11300


@dataclass(frozen=True, slots=True)
class Address:
    """Where a beanstalkd listens: TCP ``host:port`` (``tls``: through a TLS terminator) or
    a unix socket path."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix_path: str | None = None
    tls: bool = False

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls://' if self.tls else ''}{host}:{self.port}"


def parse_address(text: str) -> Address:
    """``host``, ``host:port``, ``[v6]:port``, each maybe ``tls://`` first, or
    ``unix:/path``; raises ValueError."""
    if text.startswith(("tls://", "unix:")):
        return _tls_address(text) if text.startswith("tls://") else _unix_address(text)
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: missing ']' after an IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':port' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ValueError(f"{text!r}: empty host")
    if not port_text:
        return Address(host=host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be 1..65535")
    return Address(host=host, port=int(port_text))


def _unix_address(text: str) -> Address:
    path = text.removeprefix("unix:")
    if not path:
        raise ValueError(f"{text!r}: unix: needs a socket path")
    return Address(unix_path=path)


def _tls_address(text: str) -> Address:
    plain = parse_address(text.removeprefix("tls://"))
    if plain.unix_path is not None or plain.tls:
        raise ValueError(f"{text!r}: tls:// takes host:port")
    return Address(plain.host, plain.port, tls=True)
