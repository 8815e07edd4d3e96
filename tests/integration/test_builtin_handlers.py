"""The built-in handlers against real local servers, run with the test kit: http.request
against a real HTTP/1.1 server (tests/support/httpserver.py) for each class of answer, a
refused connection and a slow server; websocket.send against a real trio-websocket server.

The kit gives ``job.http`` a real transport here (``httpx.AsyncHTTPTransport()``), so the
requests cross the loopback; the outcome is still the daemon's own decision.
"""

from __future__ import annotations

import gc
import random
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
import wsproto
import wsproto.events

from tests.support.httpserver import Reply, open_http_api, refused_port
from tubeworker.handlers.http import request
from tubeworker.handlers.websocket import send
from tubeworker.testing import ApiCall, Outcome, run_async

BOUND = 10.0  # every test's I/O ends well within this


class CeilingRng(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


async def deliver(payload: dict[str, Any], **options: Any) -> Outcome:
    with trio.fail_after(BOUND):
        return await run_async(
            request, payload=payload, http=httpx.AsyncHTTPTransport(), rng=CeilingRng(), **options
        )


# --------------------------------------------------------------------------- http.request


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_given_a_2xx_then_done(status: int) -> None:
    async with open_http_api() as api:
        api.reply = Reply(status, body=b"" if status == 204 else b"thanks")
        outcome = await deliver({"url": f"{api.url}/hooks/1", "json": {"order": 1}})
    assert outcome.done, outcome.reason
    assert api.requests == ["/hooks/1"]
    assert outcome.api_calls == (ApiCall("127.0.0.1", "success"),)


async def test_given_a_4xx_then_buried_with_the_status_and_the_answer() -> None:
    async with open_http_api() as api:
        api.reply = Reply(422, body=b'{"error": "order 1 is closed"}')
        outcome = await deliver({"url": f"{api.url}/hooks/1?sig=x", "json": {}})
    assert (outcome.verdict, outcome.cause) == ("bury", "handler_bury")
    assert outcome.reason == (
        f'HTTP 422 from POST {api.url}/hooks/1: {{"error": "order 1 is closed"}}'
    )
    assert outcome.api_calls == (ApiCall("127.0.0.1", "caller_fault"),)


@pytest.mark.parametrize("status", [408, 500, 503])
async def test_given_408_or_5xx_then_retried_with_backoff(status: int) -> None:
    async with open_http_api() as api:
        api.reply = Reply(status, body=b"busy")
        outcome = await deliver({"url": f"{api.url}/hooks/1"}, attempt=2)
    assert (outcome.verdict, outcome.cause, outcome.delay) == ("retry", "handler_retry", 4)
    assert outcome.reason == f"HTTP {status} from GET {api.url}/hooks/1"
    assert outcome.api_calls == (ApiCall("127.0.0.1", "failure"),)


async def test_given_429_with_retry_after_then_released_for_that_long() -> None:
    async with open_http_api() as api:
        api.reply = Reply(429, headers=(("Retry-After", "7"),))
        outcome = await deliver({"url": f"{api.url}/hooks/1"})
    assert (outcome.verdict, outcome.delay) == ("retry", 7)
    assert outcome.reason == f"HTTP 429 from GET {api.url}/hooks/1 (Retry-After: 7 s)"
    # Flow control heard the same Retry-After from the tracking transport.
    assert outcome.api_calls == (ApiCall("127.0.0.1", "failure", 7.0),)


async def test_given_a_refused_connection_then_retried_as_a_failure_of_the_api() -> None:
    url = f"http://127.0.0.1:{refused_port()}/hooks/1"
    outcome = await deliver({"url": url})
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_retry")
    assert outcome.reason.startswith(f"GET {url}: ConnectError")
    assert outcome.api_calls == (ApiCall("127.0.0.1", "failure"),)


@pytest.mark.parametrize("reply", [Reply(200, hang=True), Reply(200, body=b"ok", stall_body=True)])
async def test_given_a_slow_server_then_the_payloads_timeout_retries_it(reply: Reply) -> None:
    async with open_http_api() as api:
        api.reply = reply
        outcome = await deliver({"url": f"{api.url}/slow", "timeout": 0.2})
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_retry")
    assert outcome.reason == f"GET {api.url}/slow: ReadTimeout"
    assert outcome.api_calls == (ApiCall("127.0.0.1", "failure"),)


async def test_given_a_server_slower_than_the_jobs_ttr_then_the_handler_times_out() -> None:
    async with open_http_api() as api:
        api.reply = Reply(200, hang=True)
        outcome = await deliver({"url": f"{api.url}/slow"}, ttr=1)  # deadline: half of it
    assert (outcome.verdict, outcome.cause, outcome.reason) == (
        "retry",
        "timeout",
        "timed out after 0.5 s",
    )
    assert outcome.api_calls == ()  # a cancelled call tells nothing about the API


# --------------------------------------------------------------------------- websocket.send


@dataclass
class WsEndpoint:
    """What a local WebSocket server saw: messages and the subprotocols proposed."""

    url: str = ""
    messages: list[str | bytes] = field(default_factory=list)
    proposed: list[tuple[str, ...]] = field(default_factory=list)


Behaviour = Callable[[trio_websocket.WebSocketRequest, WsEndpoint], Awaitable[None]]


async def accept_and_read(request: trio_websocket.WebSocketRequest, seen: WsEndpoint) -> None:
    """Accept (with the first proposed subprotocol), keep every message until closed."""
    seen.proposed.append(tuple(request.proposed_subprotocols))
    subprotocol = request.proposed_subprotocols[0] if request.proposed_subprotocols else None
    ws = await request.accept(subprotocol=subprotocol)
    try:
        while True:
            seen.messages.append(await ws.get_message())
    except trio_websocket.ConnectionClosed:
        pass


@asynccontextmanager
async def open_ws_endpoint(behaviour: Behaviour = accept_and_read) -> AsyncIterator[WsEndpoint]:
    seen = WsEndpoint()

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        await behaviour(request, seen)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(trio_websocket.serve_websocket, serve, "127.0.0.1", 0, None)
        )
        seen.url = f"ws://127.0.0.1:{server.port}"
        try:
            yield seen
        finally:
            nursery.cancel_scope.cancel()


async def push(payload: dict[str, Any], **options: Any) -> Outcome:
    with trio.fail_after(BOUND):
        return await run_async(send, payload=payload, rng=CeilingRng(), **options)


# The tests that meet it ignore the unclosed socket's ResourceWarning (it may be collected
# at any point of the test), and collect it before they end.
LEAKS_SOCKETS = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")


def collect_leaked_sockets() -> None:
    """trio-websocket 0.12.2 does not close the TCP stream of a client whose handshake was
    rejected or never answered (handlers/websocket.py says so); it is garbage. Collect it
    in the test that made it, rather than let a later test meet its ResourceWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def test_given_a_websocket_server_then_the_message_is_delivered_and_the_job_done() -> None:
    async with open_ws_endpoint() as endpoint:
        outcome = await push(
            {"url": f"{endpoint.url}/push", "message": {"n": 1}, "subprotocol": "push.v1"}
        )
        text = await push({"url": f"{endpoint.url}/push", "message": "plain text"})
    assert outcome.done, outcome.reason
    assert text.done, text.reason
    assert endpoint.messages == ['{"n":1}', "plain text"]
    assert endpoint.proposed == [("push.v1",), ()]
    assert outcome.api_calls == (ApiCall("127.0.0.1", "success"),)


async def test_given_a_refused_websocket_connection_then_retried_as_a_failure_of_the_api() -> None:
    url = f"ws://127.0.0.1:{refused_port()}/push"
    outcome = await push({"url": url, "message": "m"})
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_retry")
    assert outcome.reason.startswith(f"{url}: cannot connect: ")
    assert "ConnectionRefusedError" in outcome.reason or "OSError" in outcome.reason
    assert outcome.api_calls == (ApiCall("127.0.0.1", "failure"),)


def reject_with(status: int) -> Behaviour:
    async def reject(request: trio_websocket.WebSocketRequest, seen: WsEndpoint) -> None:
        await request.reject(status, body=b"no")

    return reject


@LEAKS_SOCKETS
@pytest.mark.parametrize(("status", "verdict"), [(404, "bury"), (403, "bury"), (503, "retry")])
async def test_given_a_rejected_handshake_then_judged_by_its_status(
    status: int, verdict: str
) -> None:
    async with open_ws_endpoint(reject_with(status)) as endpoint:
        outcome = await push({"url": f"{endpoint.url}/push", "message": "m"})
    collect_leaked_sockets()
    assert outcome.verdict == verdict
    assert f"handshake answered HTTP {status}" in outcome.reason
    # A 4xx refusal is the caller's fault (it counts as an answer), a 5xx a failure.
    expected = "failure" if verdict == "retry" else "caller_fault"
    assert outcome.api_calls == (ApiCall("127.0.0.1", expected),)


@LEAKS_SOCKETS
async def test_given_an_http_server_that_is_no_websocket_endpoint_then_buried() -> None:
    async with open_http_api() as api:
        url = api.url.replace("http://", "ws://") + "/push"
        outcome = await push({"url": url, "message": "m"})
    collect_leaked_sockets()
    assert outcome.buried
    assert (
        outcome.reason
        == f"{url}: handshake answered HTTP 200 (not a WebSocket endpoint that takes it)"
    )


async def test_given_a_refused_subprotocol_then_buried_and_nothing_sent() -> None:
    async def no_subprotocol(request: trio_websocket.WebSocketRequest, seen: WsEndpoint) -> None:
        await accept_and_read(_without_subprotocols(request), seen)

    async with open_ws_endpoint(no_subprotocol) as endpoint:
        outcome = await push({"url": endpoint.url, "message": "m", "subprotocol": "push.v2"})
    assert outcome.buried
    assert outcome.reason.endswith("the server did not accept subprotocol 'push.v2'")
    assert endpoint.messages == []


def _without_subprotocols(request: trio_websocket.WebSocketRequest) -> Any:
    class Plain:
        proposed_subprotocols: tuple[str, ...] = ()

        async def accept(self, subprotocol: str | None = None) -> Any:
            return await request.accept()

    return Plain()


@asynccontextmanager
async def open_raw_endpoint(*, accept: bool) -> AsyncIterator[str]:
    """A server that says nothing (``accept=False``: not even the handshake's answer) or
    completes the handshake and then never reads again, so a close is never answered."""

    async def serve(stream: trio.SocketStream) -> None:
        if accept:
            server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
            while not any(isinstance(e, wsproto.events.Request) for e in server.events()):
                server.receive_data(await stream.receive_some(65536))
            await stream.send_all(server.send(wsproto.events.AcceptConnection()))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        try:
            yield f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/push"
        finally:
            nursery.cancel_scope.cancel()


@LEAKS_SOCKETS
@pytest.mark.parametrize(
    ("accept", "words"),
    [
        (False, "no answer within 0.6 s (waiting for the handshake)"),
        (True, "the server did not close within 0.2 s"),
    ],
)
async def test_given_a_silent_server_then_retried_after_the_timeout(
    accept: bool, words: str
) -> None:
    async with open_raw_endpoint(accept=accept) as url:
        outcome = await push({"url": url, "message": "m", "timeout": 0.2})
    collect_leaked_sockets()
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_retry")
    assert outcome.reason == f"{url}: {words}"
    assert outcome.api_calls == (ApiCall("127.0.0.1", "failure"),)
