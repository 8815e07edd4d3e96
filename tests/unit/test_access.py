"""The control plane's roles and the redaction of payload fields (pure parts)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tubeworker.admin_ops import MASK, redacted
from tubeworker.control.access import MAX_FAILURES, Access


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


@given(st.text(max_size=8), st.integers())
def test_given_a_payload_then_redaction_masks_the_path_in_dicts_and_lists(
    name: str, n: int
) -> None:
    payload = {"card": {"number": str(n)}, "items": [{"sku": 1, "secret": name}], "name": name}
    assert redacted(payload, ("card", "number"))
    assert redacted(payload, ("items", "secret"))
    assert not redacted(payload, ("missing",))
    assert payload["card"] == {"number": MASK}
    assert payload["items"] == [{"sku": 1, "secret": MASK}]
    assert payload["name"] == name
    assert str(n) not in json.dumps(payload["card"])
