"""What the control plane trusts a browser with: Host names and WebSocket origins."""

from __future__ import annotations

import pytest

from tubeworker.control.asgi import same_origin, trusted_host


def scope(**headers: str) -> dict[str, object]:
    return {"headers": [(k.encode(), v.encode()) for k, v in headers.items()]}


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("127.0.0.1:9090", True),
        ("[::1]:9090", True),
        ("10.1.2.3", True),
        ("localhost:9090", True),
        ("LOCALHOST", True),
        ("evil.example:9090", False),
        ("127.0.0.1.evil.example", False),
        ("worker.internal:9090", True),  # named in allowed_hosts
    ],
)
def test_which_host_names_a_browser_may_use(host: str, trusted: bool) -> None:
    assert trusted_host(scope(host=host), ["worker.internal"]) is trusted


def test_a_request_without_a_host_is_not_a_rebinding_page() -> None:
    assert trusted_host(scope())


@pytest.mark.parametrize(
    ("origin", "same"),
    [
        (None, True),  # not a browser
        ("http://127.0.0.1:9090", True),
        ("http://127.0.0.1:9091", False),
        ("https://evil.example", False),
    ],
)
def test_which_websocket_origins_are_accepted(origin: str | None, same: bool) -> None:
    headers = {"host": "127.0.0.1:9090"} | ({"origin": origin} if origin else {})
    assert same_origin(scope(**headers)) is same
