"""The control plane's roles: tokens, reads, actions, the failure window (pure parts)."""

from __future__ import annotations

import hashlib
from typing import Any

from tubeworker.control.access import MAX_FAILURES, Access, token_id


def scope(token: str | None = None, *, peer: str = "10.0.0.1", ws: bool = False) -> dict[str, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token and not ws else []
    query = f"token={token}".encode() if token and ws else b""
    kind = "websocket" if ws else "http"
    return {"type": kind, "headers": headers, "client": (peer, 1), "query_string": query}


def test_given_no_viewer_token_then_reads_stay_open_and_bodies_shown() -> None:
    access = Access("op")
    assert access.reads_open
    assert access.check_read(scope(), "/status") is None
    assert access.sees_bodies(None)


def test_given_roles_then_each_token_gets_its_role() -> None:
    access = Access("op", "view", "prom")
    assert access.role(scope("op")) == "operator"
    assert access.role(scope("view")) == "viewer"
    assert access.role(scope("view", ws=True)) == "viewer"  # the WebSocket's ?token=
    assert access.role(scope("nope")) is None
    assert access.check_read(scope("view"), "/status") is None
    assert access.check_read(scope(), "/healthz") is None
    assert access.check_read(scope("prom"), "/metrics") is None
    assert access.check_read(scope("op"), "/metrics") == (401, "/metrics needs the metrics token")
    assert not access.sees_bodies("viewer")
    assert access.sees_bodies("operator")
    assert Access("op", "view", bodies_to="viewer").sees_bodies("viewer")


def test_given_repeated_failures_then_the_peer_waits_and_others_do_not() -> None:
    now = [0.0]
    access = Access("op", "view", clock=lambda: now[0])
    for _ in range(MAX_FAILURES):
        refused = access.check_read(scope("bad"), "/status")
        assert refused is not None
        assert refused[0] == 401
    assert access.check_read(scope("op"), "/status") is not None  # blocked, not checked
    assert access.check_read(scope("op", peer="10.0.0.2"), "/status") is None
    now[0] += 61
    assert access.check_read(scope("op"), "/status") is None


def test_given_an_action_then_only_the_operator_may_and_wrong_tokens_count() -> None:
    now = [0.0]
    access = Access("op", "view", clock=lambda: now[0])
    assert access.check_action(scope("op")) is None
    assert access.check_action(scope("view")) == (
        403,
        "a viewer's token reads; actions need the operator's",
        "viewer",
    )
    for _ in range(MAX_FAILURES):  # the viewer's refusals above counted nothing
        refused = access.check_action(scope("nope"))
        assert refused is not None
        assert refused[0] == 401
    blocked = access.check_action(scope("op"))
    assert blocked is not None
    assert blocked[0] == 429
    assert access.check_read(scope("view"), "/status") == (429, blocked[1])  # reads too
    assert access.check_read(scope(), "/healthz") is None  # probes never
    now[0] += 61
    assert access.check_action(scope("op")) is None


def test_given_a_token_then_it_is_named_by_its_id_never_by_itself() -> None:
    access = Access("op-secret", "view-secret")
    assert token_id("op-secret") == hashlib.sha256(b"op-secret").hexdigest()[:8]
    assert access.who(scope("op-secret")) == f"operator token {token_id('op-secret')}"
    assert access.who(scope("view-secret")) == f"viewer token {token_id('view-secret')}"
    assert access.who(scope("guess")) == "no token"
    assert "secret" not in access.who(scope("op-secret"))
