"""A fault-injecting TCP proxy for loopback, for the reliability scenarios.

It listens on ``127.0.0.1`` (port 0: a free port) and forwards every accepted connection
(a *link*) to one upstream address, a beanstalkd. It runs its own ``trio.run`` in a
background thread, so sync tests (and the daemon under test, a subprocess) use it as an
ordinary address; every control below is a plain blocking method, safe to call from any
thread, and takes effect at once, also in the middle of a chunk.

Faults, per link or for all of them, switchable at runtime:

- ``blackhole()``: stop forwarding without closing anything. By default the bytes are read
  and dropped (``mode="drop"``: the sender's writes keep succeeding, as when a NAT entry was
  dropped); ``mode="stall"`` stops reading instead, so kernel buffers fill. Only the links
  open now are affected unless ``new_connections=True``: the real-world case is a dropped
  NAT entry, where existing flows are dead and new ones work. A *close* still passes
  through a blackhole in drop mode (``pass_close=True``, the default): when the daemon
  gives a dead connection up and closes it, beanstalkd learns it, as it eventually would
  from TCP keepalive, and returns the jobs reserved on it. Without that, a job handed to a
  blocked ``reserve`` on a dead link would wait for keepalive (2 h) or a TTR expiry that
  beanstalkd 1.12 does not reliably fire (B1, docs/beanstalkd.md#ttr-expiry-can-be-lost) —
  nothing a worker can fix.
- ``throttle(bytes_per_second, direction)``: pace the bytes (token bucket, 10 ms slices).
- ``fragment(per_byte_delay)``: deliver one byte per ``send`` (TCP_NODELAY is on), with an
  optional delay after each byte.
- ``delay(seconds)``: one-way latency per chunk (a pipeline: chunks are not serialised).
- ``cut(how)``: close links now, with RST (``"rst"``) or FIN (``"fin"``), both sides.
- ``cut_after(pattern)``: close a link right after forwarding the client's bytes that
  contain ``pattern`` (e.g. ``b"delete "``); by default the client side gets an RST and the
  server side a FIN after the bytes, so beanstalkd executes the command and its reply is
  lost: the "lost delete reply" of the Jepsen queue checkers.
- ``inject(link, command, reply)``: send a command upstream on a link and swallow its
  reply before the client sees it (the client must have no reply owed at that moment).
- ``heal()``: everything back to normal, for current and future links.

Counters: ``opened`` (links accepted so far), ``current`` (open now), ``cuts`` (when and
which link each cut hit) and ``links()`` (per-link bytes forwarded and dropped).

``python -m tests.reliability.proxy HOST:PORT`` runs one by hand and prints its address.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Final, Literal, TypeVar

import trio

__all__ = ["Cut", "Direction", "LinkInfo", "Proxy"]

Direction = Literal["client_to_server", "server_to_client", "both"]
CloseHow = Literal["rst", "fin"]
C2S: Final = "client_to_server"
S2C: Final = "server_to_client"
_CHUNK: Final = 65536
_QUEUE: Final = 8  # chunks buffered per direction: bounded, so TCP backpressure still works
_SLICE: Final = 0.01  # a throttled direction sends 10 ms worth of bytes at a time
_CONTROL_DEADLINE: Final = 10.0

T = TypeVar("T")


def _directions(direction: Direction) -> tuple[str, ...]:
    if direction == "both":
        return (C2S, S2C)
    if direction not in (C2S, S2C):
        raise ValueError(f"direction must be {C2S!r}, {S2C!r} or 'both', got {direction!r}")
    return (direction,)


@dataclass
class _Shape:
    """What one direction of one link does to its bytes."""

    blackhole: bool = False
    stall: bool = False  # blackhole by not reading (else: read and drop)
    pass_close: bool = True  # an EOF read during a (drop) blackhole still closes the link
    bytes_per_second: float | None = None
    fragment: bool = False
    per_byte_delay: float = 0.0
    latency: float = 0.0


@dataclass(frozen=True)
class LinkInfo:
    """A snapshot of one open link."""

    id: int
    opened_at: float  # time.time()
    forwarded: dict[str, int]
    dropped: dict[str, int]


@dataclass(frozen=True)
class Cut:
    """One link closed by ``cut()`` or ``cut_after()``."""

    at: float  # time.time(), right after the last forwarded byte
    link: int
    reason: str


@dataclass
class _CutRule:
    pattern: bytes
    times: int | None  # None: every match
    client: CloseHow
    server: CloseHow


@dataclass
class _Chunk:
    arrived: float  # trio.current_time()
    data: bytes
    cut: _CutRule | None = None


@dataclass
class _Link:
    id: int
    client: trio.SocketStream
    shape: dict[str, _Shape]
    opened_at: float = field(default_factory=time.time)
    server: trio.SocketStream | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    nursery: trio.Nursery | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    forwarded: dict[str, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    dropped: dict[str, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    tail: bytes = b""  # the client's last bytes, for patterns split over two chunks
    swallow: list[bytes] = field(default_factory=list)  # replies to injected commands
    close_how: tuple[CloseHow, CloseHow] = ("fin", "fin")  # client side, server side
    write_locks: dict[str, trio.Lock] = field(
        default_factory=lambda: {C2S: trio.Lock(), S2C: trio.Lock()}
    )
    next_send: dict[str, float] = field(default_factory=lambda: {C2S: 0.0, S2C: 0.0})

    def notify(self) -> None:
        """Wake tasks waiting for a shape change (stalled readers, latency sleeps)."""
        self.changed.set()
        self.changed = trio.Event()


class Proxy:
    """A loopback TCP proxy to ``upstream`` ("host:port" or a (host, port) pair).

    Use as a context manager, or ``start()``/``stop()``. ``address`` is what the client
    (the daemon) connects to.
    """

    def __init__(self, upstream: str | tuple[str, int]) -> None:
        if isinstance(upstream, str):
            host, _, port = upstream.rpartition(":")
            upstream = (host, int(port))
        self.upstream: tuple[str, int] = upstream
        self.host = "127.0.0.1"
        self.port = 0
        self.opened = 0
        self.cuts: list[Cut] = []
        self.errors: list[str] = []  # unexpected errors inside the proxy thread
        self._links: dict[int, _Link] = {}
        self._template: dict[str, _Shape] = {C2S: _Shape(), S2C: _Shape()}
        self._cut_rule: _CutRule | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.CancelScope | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- life

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def current(self) -> int:
        return len(self._links)

    def start(self) -> Proxy:
        self._thread = threading.Thread(target=self._thread_main, name="proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(_CONTROL_DEADLINE) or self._token is None:
            raise RuntimeError(f"the proxy did not start: {self.errors}")
        return self

    def stop(self) -> None:
        """Close every link and the listener; wait for the thread."""
        if self._thread is None:
            return
        if self._token is not None and self._stop is not None:
            stop = self._stop
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(stop.cancel)
        self._thread.join(_CONTROL_DEADLINE)
        if self._thread.is_alive():
            raise RuntimeError("the proxy thread did not stop")
        self._thread = None

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- controls (any thread)

    def links(self) -> list[LinkInfo]:
        return self._call(
            lambda: [
                LinkInfo(link.id, link.opened_at, dict(link.forwarded), dict(link.dropped))
                for link in self._links.values()
            ]
        )

    def blackhole(
        self,
        direction: Direction = "both",
        *,
        links: Iterable[int] | None = None,
        new_connections: bool = False,
        mode: Literal["drop", "stall"] = "drop",
        pass_close: bool = True,
    ) -> list[int]:
        """Stop forwarding on the links open now (or ``links``); returns their ids."""
        return self._shape(
            direction,
            links,
            new_connections,
            blackhole=True,
            stall=mode == "stall",
            pass_close=pass_close,
        )

    def throttle(
        self,
        bytes_per_second: float,
        direction: Direction = "server_to_client",
        *,
        links: Iterable[int] | None = None,
        new_connections: bool = True,
    ) -> list[int]:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        return self._shape(direction, links, new_connections, bytes_per_second=bytes_per_second)

    def fragment(
        self,
        per_byte_delay: float = 0.0,
        direction: Direction = "server_to_client",
        *,
        links: Iterable[int] | None = None,
        new_connections: bool = True,
    ) -> list[int]:
        return self._shape(
            direction, links, new_connections, fragment=True, per_byte_delay=per_byte_delay
        )

    def delay(
        self,
        seconds: float,
        direction: Direction = "server_to_client",
        *,
        links: Iterable[int] | None = None,
        new_connections: bool = True,
    ) -> list[int]:
        return self._shape(direction, links, new_connections, latency=seconds)

    def cut(self, how: CloseHow = "rst", *, links: Iterable[int] | None = None) -> int:
        """Close links now (both sides, with ``how``); returns how many were cut."""

        def run() -> int:
            chosen = self._chosen(links)
            for link in chosen:
                self._cut(link, how, how, "cut()")
            return len(chosen)

        return self._call(run)

    def cut_after(
        self,
        pattern: bytes,
        *,
        times: int | None = 1,
        client: CloseHow = "rst",
        server: CloseHow = "fin",
    ) -> None:
        """Arm: the next ``times`` links (current or new) whose client sends ``pattern`` are
        closed right after those bytes were forwarded (None: every time)."""
        if not pattern:
            raise ValueError("empty pattern")
        rule = _CutRule(pattern, times, client, server)

        def run() -> None:
            self._cut_rule = rule

        self._call(run)

    def inject(self, link_id: int, command: bytes, reply: bytes) -> None:
        """Send ``command`` upstream on a link and drop ``reply`` from what comes back.

        The reply is matched as exact bytes within one chunk of the server's output, so the
        client must have no reply owed that could interleave with it.
        """

        def run() -> None:
            link = self._links.get(link_id)
            if link is None or link.nursery is None:
                raise LookupError(f"no open link {link_id}")
            link.swallow.append(reply)
            link.nursery.start_soon(self._inject, link, command)

        self._call(run)

    def heal(self) -> None:
        """Undo every shape, on current and future links, and disarm ``cut_after``."""

        def run() -> None:
            self._template = {C2S: _Shape(), S2C: _Shape()}
            self._cut_rule = None
            for link in self._links.values():
                link.shape = {C2S: _Shape(), S2C: _Shape()}
                link.notify()

        self._call(run)

    # ---- internals: controls

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the proxy's thread and return its result (blocks the caller)."""
        if self._token is None:
            raise RuntimeError("the proxy is not running")
        done = threading.Event()
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        self._token.run_sync_soon(run)
        if not done.wait(_CONTROL_DEADLINE):
            raise RuntimeError("the proxy thread did not answer")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def _chosen(self, ids: Iterable[int] | None) -> list[_Link]:
        if ids is None:
            return list(self._links.values())
        wanted = set(ids)
        return [link for link in self._links.values() if link.id in wanted]

    def _shape(
        self,
        direction: Direction,
        ids: Iterable[int] | None,
        new_connections: bool,
        **changes: object,
    ) -> list[int]:
        directions = _directions(direction)
        ids = None if ids is None else list(ids)

        def run() -> list[int]:
            chosen = self._chosen(ids)
            for link in chosen:
                for d in directions:
                    link.shape[d] = replace(link.shape[d], **changes)  # type: ignore[arg-type]
                link.notify()
            if new_connections:
                for d in directions:
                    self._template[d] = replace(self._template[d], **changes)  # type: ignore[arg-type]
            return [link.id for link in chosen]

        return self._call(run)

    def _cut(self, link: _Link, client: CloseHow, server: CloseHow, reason: str) -> None:
        link.close_how = (client, server)
        self.cuts.append(Cut(time.time(), link.id, reason))
        link.scope.cancel()

    # ---- internals: the proxy's own thread

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # never let the thread die with an exception
            self.errors.append(f"proxy thread: {exc!r}")
        finally:
            self._started.set()

    async def _main(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._stop:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                self._started.set()
        for listener in listeners:
            await trio.aclose_forcefully(listener)

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: keep accepting
                self.errors.append(f"accept: {exc!r}")
                await trio.sleep(0.01)
                continue
            nursery.start_soon(self._serve, stream)

    async def _serve(self, client: trio.SocketStream) -> None:
        self.opened += 1
        link = _Link(
            self.opened, client, {d: replace(shape) for d, shape in self._template.items()}
        )
        self._links[link.id] = link
        try:
            with link.scope:
                try:
                    with trio.fail_after(5):
                        link.server = await trio.open_tcp_stream(*self.upstream)
                except (OSError, trio.TooSlowError):
                    link.close_how = ("rst", "rst")  # the upstream is down: refuse the client
                    return
                async with trio.open_nursery() as nursery:
                    link.nursery = nursery
                    for d, src, dst in ((C2S, client, link.server), (S2C, link.server, client)):
                        send, receive = trio.open_memory_channel[_Chunk](_QUEUE)
                        nursery.start_soon(self._read, link, d, src, send)
                        nursery.start_soon(self._write, link, d, dst, receive)
        except Exception as exc:
            self.errors.append(f"link {link.id}: {exc!r}")
        finally:
            del self._links[link.id]
            _close(client, link.close_how[0])  # sync: runs even while cancelled
            if link.server is not None:
                _close(link.server, link.close_how[1])

    async def _read(
        self,
        link: _Link,
        d: str,
        src: trio.SocketStream,
        send: trio.MemorySendChannel[_Chunk],
    ) -> None:
        """Read one direction until EOF or an error; EOF (and errors) close the link once
        the writer has delivered what was queued."""
        async with send:
            while True:
                while link.shape[d].blackhole and link.shape[d].stall:
                    await link.changed.wait()
                try:
                    data = await src.receive_some(_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
                if not data:
                    if link.shape[d].blackhole and not link.shape[d].pass_close:
                        await trio.sleep_forever()  # the close is hidden too
                    return
                while link.shape[d].blackhole and link.shape[d].stall:
                    await link.changed.wait()  # mode changed while we were reading
                if link.shape[d].blackhole:
                    link.dropped[d] += len(data)
                    continue
                rule = None
                if d == C2S:
                    rule = self._match_cut(link, data)
                elif link.swallow:
                    data = _swallow(link, data)
                    if not data:
                        continue
                await send.send(_Chunk(trio.current_time(), data, rule))
                if rule is not None:
                    return  # the writer cuts the link after these bytes

    def _match_cut(self, link: _Link, data: bytes) -> _CutRule | None:
        rule = self._cut_rule
        if rule is None:
            link.tail = b""
            return None
        seen = link.tail + data
        link.tail = seen[-(len(rule.pattern) - 1) :] if len(rule.pattern) > 1 else b""
        if rule.pattern not in seen:
            return None
        if rule.times is not None:
            rule.times -= 1
            if rule.times <= 0:
                self._cut_rule = None
        return rule

    async def _write(
        self,
        link: _Link,
        d: str,
        dst: trio.SocketStream,
        receive: trio.MemoryReceiveChannel[_Chunk],
    ) -> None:
        try:
            async with receive:
                async for chunk in receive:
                    await self._wait_latency(link, d, chunk.arrived)
                    await self._deliver(link, d, dst, chunk.data)
                    if chunk.cut is not None:
                        rule = chunk.cut
                        self._cut(link, rule.client, rule.server, f"cut_after({rule.pattern!r})")
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        link.scope.cancel()  # EOF or an error on either side: the link is over

    async def _wait_latency(self, link: _Link, d: str, arrived: float) -> None:
        while True:
            due = arrived + link.shape[d].latency
            if trio.current_time() >= due:
                return
            with trio.move_on_at(due):
                await link.changed.wait()  # a new shape may shorten (or lengthen) the wait

    async def _deliver(self, link: _Link, d: str, dst: trio.SocketStream, data: bytes) -> None:
        sent = 0
        while sent < len(data):
            shape = link.shape[d]
            if shape.blackhole:
                if shape.stall:
                    await link.changed.wait()
                    continue
                link.dropped[d] += len(data) - sent
                return
            if shape.fragment:
                size = 1
            elif shape.bytes_per_second:
                size = max(1, int(shape.bytes_per_second * _SLICE))
            else:
                size = len(data) - sent
            piece = data[sent : sent + size]
            async with link.write_locks[d]:
                await dst.send_all(piece)
            sent += len(piece)
            link.forwarded[d] += len(piece)
            if shape.fragment:
                await trio.sleep(shape.per_byte_delay)
            elif shape.bytes_per_second:
                now = trio.current_time()
                link.next_send[d] = max(link.next_send[d], now) + len(piece) / (
                    shape.bytes_per_second
                )
                await trio.sleep_until(link.next_send[d])

    async def _inject(self, link: _Link, command: bytes) -> None:
        assert link.server is not None
        try:
            async with link.write_locks[C2S]:
                await link.server.send_all(command)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.errors.append(f"inject on link {link.id}: {exc!r}")


def _swallow(link: _Link, data: bytes) -> bytes:
    reply = link.swallow[0]
    at = data.find(reply)
    if at < 0:
        return data
    link.swallow.pop(0)
    return data[:at] + data[at + len(reply) :]


def _close(stream: trio.SocketStream, how: CloseHow) -> None:
    """Close at once: RST (SO_LINGER 0) or FIN (a shutdown first, so unread data cannot
    turn the close into an RST before the peer has read what we sent)."""
    sock = stream.socket
    try:
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.reliability.proxy UPSTREAM_HOST:PORT", file=sys.stderr)
        return 2
    with Proxy(argv[0]) as proxy:
        print(f"proxy listening on {proxy.address}, forwarding to {argv[0]}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
