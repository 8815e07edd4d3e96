"""The built-in handlers http.request and websocket.send, run with the test kit
(tubeworker.testing): HTTP answered by httpx.MockTransport, no sockets."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio_websocket

from tubeworker.handlers import http as http_handler
from tubeworker.handlers import websocket as websocket_handler
from tubeworker.handlers.http import request
from tubeworker.handlers.websocket import send
from tubeworker.registry import discover
from tubeworker.testing import ApiCall, Outcome, run

URL = "https://hooks.example/orders"


class CeilingRng(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def answering(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> httpx.MockTransport:
    return httpx.MockTransport(
        lambda request: httpx.Response(status, content=body, headers=headers or {})
    )


def deliver(payload: Any, http: httpx.AsyncBaseTransport | None = None, **options: Any) -> Outcome:
    return run(request, payload=payload, http=http or answering(200), **options)


# --------------------------------------------------------------------------- registration


def test_given_the_distribution_then_both_handlers_are_registered_by_entry_points() -> None:
    registry = discover()
    assert registry.get("http.request") is not None
    assert registry.handlers["http.request"].spec.func is request
    assert registry.handlers["websocket.send"].spec.func is send
    assert registry.handlers["http.request"].target == "tubeworker.handlers.http:request"


# --------------------------------------------------------------------------- http.request: 2xx


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_given_a_2xx_then_done(status: int) -> None:
    outcome = deliver({"url": URL, "json": {"order": 42}}, answering(status, b"thanks"))
    assert outcome.done, outcome.reason
    assert outcome.api_calls == (ApiCall("hooks.example", "success"),)


def test_given_json_then_posted_as_compact_json_with_its_content_type() -> None:
    outcome = deliver({"url": URL, "json": {"order": 42, "items": [1, 2]}})
    (sent,) = outcome.requests
    assert (sent.method, str(sent.url)) == ("POST", URL)
    assert sent.content == b'{"order":42,"items":[1,2]}'
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["user-agent"].startswith("tubeworker/")


def test_given_no_body_then_get_by_default() -> None:
    (sent,) = deliver({"url": URL}).requests
    assert (sent.method, sent.content) == ("GET", b"")


def test_given_method_headers_body_and_timeout_then_sent_as_given() -> None:
    outcome = deliver(
        {
            "method": "put",
            "url": URL + "?token=s3cret",
            "headers": {"X-Event": "order.paid", "Content-Type": "text/plain", "User-Agent": "me"},
            "body": "héllo",
            "timeout": 2.5,
        }
    )
    (sent,) = outcome.requests
    assert (sent.method, sent.url.params["token"]) == ("PUT", "s3cret")
    assert sent.content == "héllo".encode()
    assert sent.headers["x-event"] == "order.paid"
    assert sent.headers.get_list("content-type") == ["text/plain"]
    assert sent.headers["user-agent"] == "me"
    assert sent.extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}


def test_given_a_json_content_type_of_the_payload_then_it_replaces_the_implied_one() -> None:
    outcome = deliver(
        {"url": URL, "json": [1], "headers": {"content-type": "application/vnd.api+json"}}
    )
    (sent,) = outcome.requests
    assert sent.headers.get_list("content-type") == ["application/vnd.api+json"]


def test_given_a_pool_bound_to_the_handler_then_the_body_is_the_payload() -> None:
    outcome = run(request, body=json.dumps({"url": URL}).encode(), http=answering(204))
    assert outcome.done
    assert outcome.buried is False


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_given_a_retryable_status_then_retried_with_backoff(status: int) -> None:
    outcome = deliver({"url": URL}, answering(status), attempt=3, rng=CeilingRng())
    assert (outcome.verdict, outcome.cause, outcome.delay) == ("retry", "handler_retry", 8)
    assert outcome.reason == f"HTTP {status} from GET {URL}"
    assert outcome.api_calls == (ApiCall("hooks.example", "failure"),)


@pytest.mark.parametrize(("header", "delay"), [("30", 30), ("0", 1), ("2.5", 3), ("99999", 3600)])
def test_given_retry_after_seconds_then_released_for_that_long(header: str, delay: int) -> None:
    outcome = deliver({"url": URL}, answering(429, headers={"Retry-After": header}))
    assert (outcome.verdict, outcome.delay) == ("retry", delay)
    assert "(Retry-After: " in outcome.reason


def test_given_retry_after_as_an_http_date_then_measured_against_the_wall_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = 1_700_000_000.0
    monkeypatch.setattr(http_handler, "_wall_clock", lambda: now)
    date = email.utils.formatdate(now + 120, usegmt=True)
    outcome = deliver({"url": URL}, answering(503, headers={"Retry-After": date}))
    assert (outcome.verdict, outcome.delay) == ("retry", 120)


def test_given_garbage_retry_after_then_ignored_for_the_backoff() -> None:
    outcome = deliver(
        {"url": URL}, answering(503, headers={"Retry-After": "soon"}), rng=CeilingRng()
    )
    assert (outcome.verdict, outcome.delay, outcome.reason) == (
        "retry",
        2,
        f"HTTP 503 from GET {URL}",
    )


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout(""),
        httpx.RemoteProtocolError("not HTTP"),
    ],
)
def test_given_no_answer_then_retried_and_counted_as_a_failure_of_the_api(
    error: Exception,
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    outcome = deliver({"url": URL}, httpx.MockTransport(fail))
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_retry")
    assert outcome.reason.startswith(f"GET {URL}: {type(error).__name__}")
    assert outcome.api_calls == (ApiCall("hooks.example", "failure"),)


def test_given_the_last_attempt_fails_then_buried_giving_up() -> None:
    outcome = deliver({"url": URL}, answering(503), attempt=10)
    assert outcome.buried
    assert outcome.reason == f"HTTP 503 from GET {URL} (attempt 10 of 10: giving up)"


# --------------------------------------------------------------------------- burials


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_given_another_4xx_then_buried_with_the_status_and_the_answer(status: int) -> None:
    outcome = deliver({"url": URL, "json": {}}, answering(status, b'{"error":\n  "no such order"}'))
    assert (outcome.verdict, outcome.cause) == ("bury", "handler_bury")
    assert outcome.reason == f'HTTP {status} from POST {URL}: {{"error": "no such order"}}'
    assert outcome.api_calls == (ApiCall("hooks.example", "caller_fault"),)


def test_given_a_long_answer_then_the_reason_quotes_a_bounded_snippet() -> None:
    outcome = deliver({"url": URL}, answering(400, b"x" * 60_000))
    snippet = outcome.reason.split(": ", 1)[1]
    assert len(snippet) == 200
    assert snippet.endswith("…")


def test_given_an_answer_too_large_or_of_unknown_size_then_it_is_not_read() -> None:
    large = deliver({"url": URL}, answering(400, b"x" * 70_000))
    assert large.reason == f"HTTP 400 from GET {URL}: (a body of 70000 bytes, not read)"

    async def chunks() -> AsyncIterator[bytes]:
        yield b"chunked"

    def streamed(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=chunks())  # no Content-Length

    unknown = deliver({"url": URL}, httpx.MockTransport(streamed))
    assert unknown.reason.endswith(": (a body of unknown length, not read)")
    big_success = deliver({"url": URL}, answering(200, b"x" * 70_000))
    assert big_success.done


def test_given_an_empty_or_binary_answer_then_the_reason_says_so_readably() -> None:
    empty = answering(404, headers={"Content-Length": "0"})
    assert deliver({"url": URL}, empty).reason.endswith(": (empty body)")
    assert "\ufffd" in deliver({"url": URL}, answering(404, b"\xff\xfe")).reason


def test_given_a_url_with_secrets_then_reasons_leave_them_out() -> None:
    outcome = deliver({"url": "https://user:pw@hooks.example/o?token=s3cret#x"}, answering(404))
    assert outcome.reason.startswith("HTTP 404 from GET https://hooks.example/o: ")
    assert "s3cret" not in outcome.reason
    assert "pw" not in outcome.reason


def test_given_a_redirect_then_buried_naming_where_unless_followed() -> None:
    def moved(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(301, headers={"Location": "https://hooks.example/new"})
        return httpx.Response(200)

    outcome = deliver({"url": "https://hooks.example/old"}, httpx.MockTransport(moved))
    assert outcome.buried
    assert "HTTP 301 from GET https://hooks.example/old: redirected to " in outcome.reason
    assert "https://hooks.example/new" in outcome.reason
    assert "follow_redirects" in outcome.reason
    followed = deliver(
        {"url": "https://hooks.example/old", "follow_redirects": True},
        httpx.MockTransport(moved),
    )
    assert followed.done
    assert [r.url.path for r in followed.requests] == ["/old", "/new"]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({}, 'payload has no "url"'),
        ({"url": 3}, '"url" must be a string'),
        ({"url": "ftp://hooks.example/x"}, "url must be http:// or https:// with a host"),
        ({"url": "https:///nohost"}, "url must be http:// or https:// with a host"),
        ({"url": "http://[::1"}, "invalid url"),
        ({"url": URL, "method": "FETCH"}, "method must be one of DELETE, GET, HEAD"),
        ({"url": URL, "method": 1}, "method must be one of"),
        ({"url": URL, "json": {}, "body": ""}, 'give "json" or "body", not both'),
        ({"url": URL, "body": {"a": 1}}, '"body" must be a string'),
        ({"url": URL, "json": float("nan")}, '"json" cannot be sent as JSON'),
        ({"url": URL, "headers": ["a"]}, '"headers" must be an object'),
        ({"url": URL, "headers": {"X-A": 1}}, "header 'X-A' must be a string on one line"),
        ({"url": URL, "headers": {"X-A": "a\r\nB: c"}}, "must be a string on one line"),
        ({"url": URL, "headers": {"X A": "b"}}, "'X A' is not a valid header name"),
        ({"url": URL, "timeout": 0}, '"timeout" must be > 0 seconds'),
        ({"url": URL, "timeout": "5"}, '"timeout" must be a number of seconds'),
        ({"url": URL, "timeout": True}, '"timeout" must be a number of seconds'),
        ({"url": URL, "follow_redirects": "yes"}, '"follow_redirects" must be true or false'),
        ({"url": URL, "header": {}}, "unknown key 'header' (known: method, url, headers"),
        ([URL], "payload must be a JSON object, got list"),
        (None, "payload must be a JSON object, got NoneType"),
    ],
)
def test_given_a_bad_payload_then_buried_at_once_saying_what_is_wrong(
    payload: Any, words: str
) -> None:
    outcome = deliver(payload)
    assert (outcome.verdict, outcome.cause) == ("bury", "handler_bury")
    assert outcome.reason.startswith("http.request: ")
    assert words in outcome.reason
    assert "Traceback" not in outcome.reason
    assert outcome.requests == ()


def test_given_a_bound_pool_with_a_body_that_is_not_json_then_buried() -> None:
    outcome = run(request, body=b"not json", http=answering(200))
    assert outcome.buried
    assert outcome.reason.startswith("http.request: the body is not JSON")


# --------------------------------------------------------------------------- signing


@pytest.fixture
def secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_bytes(b"it's a secret\n")
    monkeypatch.setenv(http_handler.SIGNING_SECRET_FILE_ENV, str(path))
    monkeypatch.delenv(http_handler.SIGNATURE_HEADER_ENV, raising=False)
    return path


def expected(body: bytes, secret: bytes = b"it's a secret") -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_given_no_secret_configured_then_requests_are_not_signed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(http_handler.SIGNING_SECRET_FILE_ENV, raising=False)
    (sent,) = deliver({"url": URL, "json": {"a": 1}}).requests
    assert "x-tubeworker-signature" not in sent.headers


def test_given_a_secret_then_the_exact_body_is_signed(secret_file: Path) -> None:
    (sent,) = deliver({"url": URL, "json": {"order": 42}}).requests
    assert sent.headers["x-tubeworker-signature"] == expected(b'{"order":42}')
    assert sent.headers["x-tubeworker-signature"] == http_handler.sign(
        b"it's a secret", sent.content
    )


def test_given_a_secret_and_no_body_then_the_empty_body_is_signed(secret_file: Path) -> None:
    (sent,) = deliver({"url": URL}).requests
    assert sent.headers["x-tubeworker-signature"] == expected(b"")


def test_given_a_header_name_then_the_signature_goes_there_and_replaces_the_payloads(
    secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(http_handler.SIGNATURE_HEADER_ENV, "X-Hub-Signature-256")
    (sent,) = deliver(
        {"url": URL, "body": "x", "headers": {"x-hub-signature-256": "forged"}}
    ).requests
    assert sent.headers.get_list("x-hub-signature-256") == [expected(b"x")]


def test_given_settings_in_the_config_then_they_win_over_the_environment(
    secret_file: Path, tmp_path: Path
) -> None:
    configured = tmp_path / "configured.secret"
    configured.write_bytes(b"from the config")
    settings = {"signing_secret_file": str(configured), "signature_header": "X-Signature"}
    (sent,) = deliver({"url": URL, "body": "x"}, settings=settings).requests
    assert sent.headers["x-signature"] == expected(b"x", b"from the config")
    assert "x-tubeworker-signature" not in sent.headers


def test_given_a_bad_header_name_in_the_config_then_the_attempt_fails_saying_where(
    secret_file: Path,
) -> None:
    outcome = deliver({"url": URL}, settings={"signature_header": "no spaces allowed"})
    assert outcome.verdict == "retry"
    assert outcome.reason.startswith("signature_header='no spaces allowed'")


def test_given_a_rotated_secret_then_the_next_job_uses_it(secret_file: Path) -> None:
    (first,) = deliver({"url": URL, "body": "x"}).requests
    secret_file.write_bytes(b"new one")
    (second,) = deliver({"url": URL, "body": "x"}).requests
    assert first.headers["x-tubeworker-signature"] == expected(b"x")
    assert second.headers["x-tubeworker-signature"] == expected(b"x", b"new one")


@pytest.mark.parametrize(
    ("content", "header", "words"),
    [
        (None, None, "cannot read the signing secret"),
        (b"\n", None, "is empty"),
        (b"s", "Bad Header", "is not a valid header name"),
    ],
)
def test_given_a_signing_problem_then_retried_and_nothing_is_sent_unsigned(
    secret_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes | None,
    header: str | None,
    words: str,
) -> None:
    if content is None:
        secret_file.unlink()
    else:
        secret_file.write_bytes(content)
    if header is not None:
        monkeypatch.setenv(http_handler.SIGNATURE_HEADER_ENV, header)
    outcome = deliver({"url": URL, "body": "x"})
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_retry")
    assert words in outcome.reason
    assert outcome.requests == ()


# --------------------------------------------------------------------------- websocket.send


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"message": "hi"}, 'payload has no "url"'),
        ({"url": 1, "message": "hi"}, '"url" must be a string'),
        ({"url": "http://push.example/", "message": "hi"}, "url must be ws:// or wss://"),
        ({"url": "ws://", "message": "hi"}, "url must be ws:// or wss://"),
        ({"url": "ws://push.example:port/", "message": "hi"}, "invalid url"),
        ({"url": "ws://push.example/"}, 'payload has no "message"'),
        ({"url": "ws://push.example/", "message": float("inf")}, "cannot be sent as JSON"),
        ({"url": "ws://push.example/", "message": "m", "subprotocol": ""}, '"subprotocol" must'),
        ({"url": "ws://push.example/", "message": "m", "timeout": -1}, '"timeout" must'),
        ({"url": "ws://push.example/", "message": "m", "to": 1}, "unknown key 'to'"),
        ("ws://push.example/", "payload must be a JSON object, got str"),
    ],
)
def test_given_a_bad_websocket_payload_then_buried_at_once(payload: Any, words: str) -> None:
    outcome = run(send, payload=payload)
    assert (outcome.verdict, outcome.cause) == ("bury", "handler_bury")
    assert outcome.reason.startswith("websocket.send: ")
    assert words in outcome.reason
    assert outcome.api_calls == ()


def test_given_a_websocket_payload_then_parsed_with_json_for_non_strings() -> None:
    message = websocket_handler._parse(
        {"url": "wss://u:p@push.example:8443/s?k=v", "message": {"a": [1]}}
    )
    assert (message.host, message.text, message.subprotocol, message.timeout) == (
        "push.example",
        '{"a":[1]}',
        None,
        10.0,
    )
    assert message.where == "wss://push.example:8443/s"


@pytest.mark.parametrize(
    ("code", "sent", "verdict"),
    [
        (1000, True, "done"),
        (1005, True, "done"),
        (1000, False, "retry"),  # closed before the message went out
        (1001, True, "retry"),
        (1006, True, "retry"),
        (1011, True, "retry"),
        (1013, False, "retry"),
        (4000, True, "retry"),
        (1002, True, "bury"),
        (1003, False, "bury"),
        (1007, True, "bury"),
        (1008, True, "bury"),
        (1009, False, "bury"),
        (1010, True, "bury"),
    ],
)
def test_given_a_close_code_then_judged(code: int, sent: bool, verdict: str) -> None:
    judged, words = websocket_handler._judge_close(
        trio_websocket.CloseReason(code, "why"), sent=sent
    )
    assert judged == verdict
    assert words.startswith(f"closed with {code} (")
    assert ": why" in words
