"""A tiny switchable HTTP/1.1 API on 127.0.0.1 (Trio + h11), standing in for an external API.

Every request gets ``api.reply`` (set it between requests to switch the API between up,
down, limited and slow), and its target is appended to ``api.requests`` so a test can count
what reached the server. A reply with ``hang=True`` sends nothing until the server closes:
the client's read timeout fires first; ``stall_body=True`` sends the status line and headers
and then stalls the body the same way; ``delay`` answers late (``in_flight`` counts the
requests waiting for their answer). ``arrivals`` has each request's ``time.monotonic()``.

    async with open_http_api() as api:
        api.reply = Reply(503)
        ...  # requests to f"{api.url}/anything"
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import trio

__all__ = ["HttpApi", "Reply", "open_http_api", "refused_port"]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    hang: bool = False  # send nothing at all
    stall_body: bool = False  # send the status and headers, then nothing
    delay: float = 0.0  # seconds before answering (a slow API)


@dataclass
class HttpApi:
    port: int = 0
    reply: Reply = field(default_factory=lambda: Reply(200, body=b"ok"))
    requests: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each request
    in_flight: int = 0  # requests being answered now
    max_in_flight: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while await self._serve_one(connection, stream):
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client went away or hung up mid-request: nothing to answer

    async def _serve_one(self, connection: h11.Connection, stream: trio.SocketStream) -> bool:
        """Answer one request; False when the connection is done."""
        event = await _next_event(connection, stream)
        if not isinstance(event, h11.Request):
            return False
        while not isinstance(await _next_event(connection, stream), h11.EndOfMessage):
            pass  # a request body: read and dropped
        self.requests.append(event.target.decode())
        self.arrivals.append(time.monotonic())
        reply = self.reply
        if reply.hang:
            await trio.sleep_forever()
        if reply.delay:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await trio.sleep(reply.delay)
            finally:
                self.in_flight -= 1
        headers = [("content-length", str(len(reply.body))), *reply.headers]
        head = h11.Response(status_code=reply.status, headers=headers)
        await stream.send_all(connection.send(head))
        if reply.stall_body:
            await trio.sleep_forever()
        await stream.send_all(connection.send(h11.Data(data=reply.body)))
        await stream.send_all(connection.send(h11.EndOfMessage()))
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE


async def _next_event(connection: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(await stream.receive_some(65536))


@asynccontextmanager
async def open_http_api() -> AsyncIterator[HttpApi]:
    """Serve an :class:`HttpApi` on a free loopback port until the block ends."""
    api = HttpApi()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, api.serve_connection, 0, host="127.0.0.1")
        )
        api.port = listeners[0].socket.getsockname()[1]
        try:
            yield api
        finally:
            nursery.cancel_scope.cancel()


def refused_port() -> int:
    """A loopback port with nothing listening: bound for a moment, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
