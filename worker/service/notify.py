"""systemd's sd_notify protocol: one datagram per state change to $NOTIFY_SOCKET.

Written by hand rather than adding a dependency: it is one sendto() (sd_notify(3)).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "encode"]


def encode(fields: Mapping[str, str]) -> bytes:
    """``KEY=value`` lines, keys upper-cased. A newline inside a value would start a new
    assignment (a STATUS= line could forge READY=1), so it becomes a space."""
    return "\n".join(
        f"{key.upper()}={' '.join(value.splitlines())}" for key, value in fields.items()
    ).encode()


def _usec(seconds: float) -> str:
    return str(max(0, round(seconds * 1_000_000)))


class Notifier:
    """READY / STOPPING / STATUS / WATCHDOG / EXTEND_TIMEOUT_USEC to systemd; does nothing
    outside systemd. Never blocks and never raises: a lost notification is only a lost
    notification."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        #: seconds between WATCHDOG=1 pings (half of WatchdogSec), or None.
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str) -> None:
        if self._address is None:
            return
        address = self._address
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(encode(fields), address)
        except OSError:
            pass  # systemd gone or socket full: never let notification break the worker

    def ready(self, status: str) -> None:
        self.send(ready="1", status=status)

    def stopping(self, status: str, *, extend: float | None = None) -> None:
        """STOPPING=1; ``extend``: seconds from now within which the next message comes
        (EXTEND_TIMEOUT_USEC=, which stretches TimeoutStopSec= while it is renewed)."""
        if extend is None:
            self.send(stopping="1", status=status)
        else:
            self.send(stopping="1", status=status, extend_timeout_usec=_usec(extend))

    def status(self, status: str, *, extend: float | None = None) -> None:
        if extend is None:
            self.send(status=status)
        else:
            self.send(status=status, extend_timeout_usec=_usec(extend))

    def watchdog(self) -> None:
        self.send(watchdog="1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
