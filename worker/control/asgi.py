"""The few ASGI pieces the control plane and the dashboard share: responses, request bodies
and query strings, the bearer-token check, the lifespan protocol, and the ``/events``
WebSocket loop over an :class:`~tubeworker.observe.events.EventBus`.

No framework: the routes are a handful, and these helpers are all they need.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qsl

import structlog
import trio

from tubeworker.observe.events import EventBus

__all__ = [
    "BodyTooLarge",
    "Message",
    "Receive",
    "Response",
    "Scope",
    "Send",
    "authorized",
    "json_response",
    "query",
    "read_body",
    "respond",
    "run_lifespan",
    "serve_events",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: (status, content type, body, extra headers)
Response = tuple[int, str, bytes, tuple[tuple[bytes, bytes], ...]]

log = structlog.get_logger("tubeworker")

SEND_DEADLINE: Final = 10.0  # a WebSocket client that takes nothing for this long is dropped


class BodyTooLarge(Exception):
    """A request body over the route's limit."""


def json_response(status: int, body: object, *headers: tuple[bytes, bytes]) -> Response:
    """JSON with no NaN or Infinity (a browser's JSON.parse refuses them)."""
    return status, "application/json", json.dumps(body, allow_nan=False).encode(), headers


async def respond(send: Send, response: Response) -> None:
    status, content_type, body, extra = response
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; BodyTooLarge past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def query(scope: Scope) -> dict[str, str]:
    """The query string's parameters (the last of a repeated name wins)."""
    raw = scope.get("query_string", b"").decode("latin-1")
    return dict(parse_qsl(raw, keep_blank_values=True))


def authorized(scope: Scope, token: str | None) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time; never without a token."""
    if token is None:
        return False
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            given = value.decode("latin-1")
            return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _hostname(authority: str) -> str:
    """The host of ``host[:port]`` or ``[v6]:port``, lower-case."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def trusted_host(scope: Scope, allowed: Iterable[str] = ()) -> bool:
    """Whether a browser may be talking to us under this ``Host``: an IP address,
    ``localhost``, or a name in ``allowed``. A page of another site that re-points its own
    name at 127.0.0.1 (DNS rebinding) sends its own name, and is refused: the dashboard's
    reads (job bodies among them) need no token."""
    host = _header(scope, b"host")
    if host is None:
        return True  # HTTP/1.0 or a non-browser client: no name to be fooled by
    name = _hostname(host)
    return _is_ip(name) or name in ("localhost", *(a.lower() for a in allowed))


def same_origin(scope: Scope) -> bool:
    """A WebSocket from a page of another site is refused (browsers let any page open one
    to any address). Clients other than browsers send no ``Origin``."""
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    host = _header(scope, b"host") or ""
    return origin.split("://", 1)[-1].rstrip("/").lower() == host.lower()


async def run_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve_events(
    bus: EventBus,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    hello: Iterable[tuple[str, object]] = (),
    while_connected: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """The ``/events`` WebSocket: a ``hello``, then the bus's events as JSON text frames.

    A client that falls behind loses old events (it is told how many); one that takes no
    data for ``SEND_DEADLINE`` is disconnected. ``while_connected`` runs as long as the
    client is connected.
    """
    if scope["path"] != "/events" or not same_origin(scope):
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 4404 if same_origin(scope) else 4403})
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    with bus.subscribe() as subscription:
        async with trio.open_nursery() as nursery:

            async def until_disconnect() -> None:
                while (await receive())["type"] != "websocket.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_disconnect)
            if while_connected is not None:
                nursery.start_soon(while_connected)
            first = {
                "type": "hello",
                "pid": os.getpid(),
                "at": round(time.time(), 3),
                **dict(hello),
            }
            await send({"type": "websocket.send", "text": json.dumps(first)})
            while True:
                events = await subscription.next_batch()
                if not events:
                    break
                with trio.move_on_after(SEND_DEADLINE) as slow:
                    for event in events:
                        await send({"type": "websocket.send", "text": json.dumps(event)})
                if slow.cancelled_caught:
                    log.warning("events client too slow: disconnected")
                    break
            nursery.cancel_scope.cancel()
    with trio.move_on_after(1):
        await send({"type": "websocket.close", "code": 1000})
