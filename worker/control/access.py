"""Who may read and act on the control plane: roles by token.

- **operator**: ``[control] token_file``'s token: reads and actions.
- **viewer**: ``[control] read_token_file``'s token: reads only (an action answers 403).
  Without a viewer token configured, reads are open as before; with one, every read but
  ``/healthz`` and ``/readyz`` (for probes) needs a token, and ``/metrics`` needs
  ``metrics_token_file``'s when that is set (else it stays open for Prometheus).
- Job bodies go to operators only unless ``show_bodies_to = "viewer"``.

A token is sent as ``Authorization: Bearer TOKEN`` (or ``?token=`` on the ``/events``
WebSocket, which a browser cannot give headers). Tokens are compared in constant time. A
peer that fails ``MAX_FAILURES`` times within ``FAILURE_WINDOW`` seconds gets 429 without
a check until the window passes; a refused read is one log line with the peer's address
(a refused action is logged by the route that refused it: the dashboard's, the control
plane's), and a missing or wrong token on an action counts as a failure too.

A token is named in logs and on the audit trail by its id, never by itself: the first 8 hex
digits of its SHA-256 (``printf %s TOKEN | sha256sum | cut -c1-8``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Literal
from urllib.parse import parse_qs

import structlog

from tubeworker.control.asgi import Scope

__all__ = [
    "FAILURE_WINDOW",
    "MAX_FAILURES",
    "TOO_MANY",
    "VIEWER_CANNOT_ACT",
    "Access",
    "Role",
    "token_id",
]

Role = Literal["operator", "viewer"]
MAX_FAILURES: Final = 10
FAILURE_WINDOW: Final = 60.0
_MAX_PEERS: Final = 10_000
TOO_MANY: Final = "too many failed attempts from this address: try again later"
VIEWER_CANNOT_ACT: Final = "a viewer's token reads; actions need the operator's"
NEEDS_OPERATOR: Final = "this action needs the control token (Authorization: Bearer)"

log = structlog.get_logger("tubeworker")


class Access:
    def __init__(
        self,
        operator: str | None,
        viewer: str | None = None,
        metrics: str | None = None,
        *,
        bodies_to: Role = "operator",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.operator = operator
        self.viewer = viewer
        self.metrics = metrics
        self.bodies_to = bodies_to
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    @property
    def reads_open(self) -> bool:
        return self.viewer is None

    def role(self, scope: Scope) -> Role | None:
        """The role the request's token gives (None: no token, or no known one)."""
        given = _token_of(scope)
        if given is None:
            return None
        if self.operator is not None and _same(given, self.operator):
            return "operator"
        if self.viewer is not None and _same(given, self.viewer):
            return "viewer"
        return None

    def who(self, scope: Scope) -> str:
        """The request's token as the audit trail names it: role and id (``operator token
        1a2b3c4d``), or ``no token``."""
        role = self.role(scope)
        given = _token_of(scope)
        if role is None or given is None:
            return "no token"
        return f"{role} token {token_id(given)}"

    def check_action(self, scope: Scope) -> tuple[int, str, str] | None:
        """None when the request carries the operator's token; else (status, the reply's
        error, why for the log line). A missing or wrong token counts as a failed attempt
        (a viewer's, rightly sent, does not)."""
        if self.blocked(scope):
            return 429, TOO_MANY, "too many failed attempts"
        role = self.role(scope)
        if role == "operator":
            return None
        if role == "viewer":
            return 403, VIEWER_CANNOT_ACT, "viewer"
        self._count_failure(scope)
        return 401, NEEDS_OPERATOR, "no or wrong token"

    def sees_bodies(self, role: Role | None) -> bool:
        """Whether job bodies go to this reader (all readers while reads are open)."""
        if self.reads_open or role == "operator":
            return True
        return role == "viewer" and self.bodies_to == "viewer"

    def check_read(self, scope: Scope, path: str) -> tuple[int, str] | None:
        """None when the read may go on; else (status, why)."""
        if path in ("/healthz", "/readyz"):
            return None
        if self.blocked(scope):  # no token is even looked at until the window passes
            return 429, TOO_MANY
        if path == "/metrics" and self.metrics is not None:
            given = _token_of(scope)
            if given is not None and _same(given, self.metrics):
                return None
            return self._failed(scope, path, "/metrics needs the metrics token")
        if path == "/metrics" or self.reads_open:
            return None
        if self.role(scope) is not None:
            return None
        return self._failed(scope, path, "reads need a token ([control] read_token_file)")

    def blocked(self, scope: Scope) -> bool:
        peer = _peer(scope)
        failures = self._failures.get(peer)
        if not failures:
            return False
        cutoff = self._clock() - FAILURE_WINDOW
        while failures and failures[0] < cutoff:
            failures.popleft()
        return len(failures) >= MAX_FAILURES

    def _failed(self, scope: Scope, path: str, why: str) -> tuple[int, str]:
        if self.blocked(scope):
            return 429, TOO_MANY
        self._count_failure(scope)
        presented = _token_of(scope) is not None
        log.warning(
            "control plane read refused",
            peer=_peer(scope),
            path=path,
            token_given=presented,
            why=why,
        )
        return 401, why

    def _count_failure(self, scope: Scope) -> None:
        peer = _peer(scope)
        if len(self._failures) >= _MAX_PEERS and peer not in self._failures:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(peer, deque(maxlen=MAX_FAILURES)).append(self._clock())


def token_id(token: str) -> str:
    """How logs and the audit trail name a token: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _peer(scope: Scope) -> str:
    client = scope.get("client") or ("?",)
    return str(client[0])


def _token_of(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            text = value.decode("latin-1")
            if text.startswith("Bearer "):
                return text.removeprefix("Bearer ").strip() or None
    if scope.get("type") == "websocket":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        tokens = query.get("token")
        if tokens:
            return str(tokens[0])
    return None
