"""A thin Trio client over the sans-I/O protocol, on any ``trio.abc.Stream``.

Rules it keeps (docs/beanstalkd.md#pipelining and #trio-cancellation; bug codes as there):

- One task at a time owns the request/response sequence; a second one gets
  ``trio.BusyResourceError``.
- If a write or a read is interrupted for any reason (cancellation included: ``send_all``
  may have sent part of a command, and a cancelled ``reserve`` still runs on the server),
  the connection is closed and every later call raises :class:`ConnectionLostError`. It is
  never reused with half a reply in flight. Jobs it had reserved go back to ready.
- Trio and OS errors become :class:`ConnectionLostError` here and nowhere else.
- Connecting has a deadline, and so does the first reply: a beanstalkd out of file
  descriptors completes the TCP handshake but never answers (B2).
- With ``reply_timeout`` set, no wait is unbounded: a reply that makes no progress (no
  byte at all) for that long, or a write that cannot finish in that long, gives the
  connection up. The deadline measures lack of progress, not the size of what is owed,
  so a slow link that still delivers is never mistaken for a dead one. A blocked
  ``reserve-with-timeout T`` is allowed T more seconds (``receive(patience=T)``).
  By default each wait gets its own cancel scope; a hot path runs :meth:`Client.run_watchdog` in
  a task beside it instead, which enforces the same bound without a scope per read
  (about 7 µs each in Trio).
- TCP keepalive (``keepalive`` seconds) is the second line against a peer that vanished
  without a FIN or RST.
"""

from __future__ import annotations

import math
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Final, TypeVar

import greenstalk
import trio

from tubeworker.backoff import full_jitter_delay
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.address import Address, parse_address
from tubeworker.beanstalk.tls import server_name, tls_context, with_tls_hint
from tubeworker.errors import (
    ConnectionLostError,
    LocalProtocolError,
    RemoteProtocolError,
    ServerUnresponsiveError,
)

__all__ = [
    "Address",
    "Client",
    "Transport",
    "connect",
    "connect_with_backoff",
    "open_client",
    "parse_address",
]

_RECEIVE_SIZE: Final = 256 * 1024  # large reads: the parser is cheap per call, not per byte

R = TypeVar("R", bound=p.Reply)

# Error replies and the greenstalk exceptions the convenience methods raise for them.
_ERROR_CLASSES: Final[dict[type[p.Reply], type[greenstalk.BeanstalkdError]]] = {
    p.NotFound: greenstalk.NotFoundError,
    p.TimedOut: greenstalk.TimedOutError,
    p.DeadlineSoon: greenstalk.DeadlineSoonError,
    p.NotIgnored: greenstalk.NotIgnoredError,
    p.OutOfMemory: greenstalk.OutOfMemoryError,
    p.InternalError: greenstalk.InternalError,
    p.BadFormat: greenstalk.BadFormatError,
    p.UnknownCommand: greenstalk.UnknownCommandError,
    p.ExpectedCrlf: greenstalk.ExpectedCrlfError,
    p.JobTooBig: greenstalk.JobTooBigError,
    p.Draining: greenstalk.DrainingError,
}


def raise_for_reply(reply: p.Reply) -> None:
    """Raise the greenstalk exception for an error-like reply (no-op for other replies)."""
    if isinstance(reply, p.Buried):
        raise greenstalk.BuriedError([str(reply.id).encode()] if reply.id is not None else None)
    error = _ERROR_CLASSES.get(type(reply))
    if error is not None:
        raise error()


class Transport:
    """One beanstalkd connection's exchange of commands and replies (see the module's
    rules); :class:`Client` adds a method per command."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_job_size: int | None = None,
        reply_timeout: float = math.inf,
    ) -> None:
        self._stream = stream
        #: Seconds a reply may make no progress (or a write take) before the connection
        #: is given up; inf: wait forever.
        self.reply_timeout = reply_timeout
        # For run_watchdog(): when the current wait for bytes (or for a write) began or last made
        # progress, None when nothing is awaited; and extra allowance for this wait.
        self._waiting_since: float | None = None
        self._patience = 0.0
        self._watched = False
        self._gave_up: str | None = None  # why run_watchdog() closed the connection
        self._proto = p.Connection(max_job_size=max_job_size)
        self._busy = False
        self._lost: str | None = None
        #: The server's ``stats`` taken when connecting (None when built on a bare stream).
        self.server: p.ServerStats | None = None

    # ---- state

    def learned(self, stats: p.ServerStats) -> None:
        """The server's ``stats`` (taken when connecting): its limits apply from now on."""
        self.server = stats
        self._proto.max_job_size = stats.max_job_size

    @property
    def is_usable(self) -> bool:
        return self._lost is None

    @property
    def pending(self) -> int:
        """Replies owed by the server for commands already sent."""
        return self._proto.pending

    async def aclose(self) -> None:
        """Close at once. Jobs reserved on this connection return to ready."""
        if self._lost is None:
            self._lost = "closed by us"
        await trio.aclose_forcefully(self._stream)

    async def _abandon(self, reason: str) -> None:
        # Shielded: this runs while a Cancelled propagates, and must still close the socket.
        if self._lost is None:
            self._lost = reason
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)

    def _enter(self) -> None:
        if self._busy:
            raise trio.BusyResourceError("another task is using this beanstalkd connection")
        if self._lost is not None:
            raise ConnectionLostError(f"connection is not usable: {self._lost}")

    # ---- raw exchange (pipelining)

    async def send(self, *commands: p.Command) -> None:
        """Write commands in one write; read their replies with :meth:`receive`."""
        self._enter()
        data = self._proto.send_many(commands)  # LocalProtocolError: nothing sent, still usable
        self._busy = True
        try:
            if self._watched:
                self._waiting_since = trio.current_time()
                await self._stream.send_all(data)
                self._waiting_since = None
            else:
                with trio.move_on_after(self.reply_timeout) as scope:
                    await self._stream.send_all(data)
                if scope.cancelled_caught:
                    raise ConnectionLostError(
                        f"beanstalkd took no data for {self.reply_timeout:g} s (write stalled)"
                    )
        except BaseException as exc:
            # Some, all or none of the bytes went out: the stream's position is unknown.
            await self._abandon(f"write interrupted by {type(exc).__name__}")
            _raise_lost(exc, self._gave_up)
            raise
        finally:
            self._busy = False

    async def receive(self, *, patience: float = 0.0) -> p.Reply:
        """The next reply, in the order commands were sent.

        ``patience``: seconds the server may legitimately stay silent before it starts
        answering (a blocked reserve's timeout), on top of ``reply_timeout``.
        """
        self._enter()
        if self._proto.pending == 0:
            raise LocalProtocolError("receive() with no command outstanding")
        self._busy = True
        try:
            return await self._receive_reply(patience)
        except BaseException as exc:
            await self._abandon(f"read interrupted by {type(exc).__name__}: {exc}")
            _raise_lost(exc, self._gave_up)
            raise
        finally:
            self._busy = False

    def buffered_reply(self) -> p.Reply | None:
        """The next reply if its bytes have arrived already (no I/O, no await), else None:
        then :meth:`receive` waits for it. Replies to a pipelined batch mostly arrive
        together, so a caller reading many asks here first and saves a coroutine per reply.
        Garbage is left for :meth:`receive` to raise (it closes the connection)."""
        if self._busy or self._lost is not None:
            return None
        try:
            event = self._proto.next_event()
        except RemoteProtocolError:
            return None  # the connection is poisoned: receive() says so
        return event if event is not p.NEED_DATA else None

    async def _receive_reply(self, patience: float) -> p.Reply:
        proto = self._proto
        allowance = self.reply_timeout + patience
        while True:
            event = proto.next_event()
            if event is not p.NEED_DATA:
                assert isinstance(event, p.Reply)
                return event
            data: bytes | bytearray = b""
            if self._watched:
                self._patience = allowance - self.reply_timeout
                self._waiting_since = trio.current_time()
                data = await self._stream.receive_some(_RECEIVE_SIZE)
                self._waiting_since = None
            else:
                with trio.move_on_after(allowance) as scope:
                    data = await self._stream.receive_some(_RECEIVE_SIZE)
                if scope.cancelled_caught:
                    raise ConnectionLostError(_no_reply(allowance, proto.pending))
            allowance = self.reply_timeout  # bytes came: the server is alive, keep reading
            if not data:
                raise ConnectionLostError(
                    f"server closed the connection with {proto.pending} replies owed"
                )
            proto.receive_data(data)

    async def run_watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Enforce ``reply_timeout`` from this task while others use the connection: when a
        wait for bytes (or a write) has made no progress for that long (plus the wait's
        patience), close the connection; the waiting task then raises
        :class:`ConnectionLostError` saying why. Runs until the connection is closed or the
        task is cancelled."""
        self._watched = True
        task_status.started()
        try:
            # Not waiting: look again after this long (precision does not depend on it:
            # once a wait is seen, the watcher sleeps until exactly its deadline).
            tick = min(1.0, self.reply_timeout / 4)
            while self._lost is None:
                since = self._waiting_since
                if since is None:
                    await trio.sleep(tick)
                    continue
                allowance = self.reply_timeout + self._patience
                if trio.current_time() < since + allowance:
                    await trio.sleep_until(since + allowance)
                    continue
                self._gave_up = _no_reply(allowance, self._proto.pending)
                await self._abandon(self._gave_up)
                return
        finally:
            self._watched = False

    async def wait_lost(self) -> str:
        """Return (with the reason) when this idle connection dies; the connection is then
        closed. Cancel-safe: cancelled, it leaves the connection as it was.

        beanstalkd never speaks unasked, so with no reply owed, any read result means the
        end: EOF (server gone), an error, or unsolicited bytes.
        """
        self._enter()
        if self._proto.pending:
            raise LocalProtocolError("wait_lost() with replies owed")
        self._busy = True
        try:
            data = await self._stream.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost: {exc!r}"
        else:
            reason = "server closed the connection" if not data else "unsolicited data"
        finally:
            self._busy = False
        await self._abandon(reason)
        return reason

    async def request(self, command: p.Command) -> p.Reply:
        """Send one command and return its reply (error replies are returned, not raised)."""
        await self.send(command)
        return await self.receive()

    async def pipeline(self, commands: Sequence[p.Command]) -> list[p.Reply]:
        """Send commands in one write and return all their replies, in order."""
        await self.send(*commands)
        return [await self.receive() for _ in commands]

    async def _call(self, command: p.Command, want: type[R]) -> R:
        reply = await self.request(command)
        if isinstance(reply, want):
            return reply
        raise_for_reply(reply)
        raise RemoteProtocolError(f"unexpected {reply!r} to {command!r}")  # pragma: no cover


class Client(Transport):
    """One beanstalkd connection. Create with :func:`open_client` or :func:`connect`.

    The protocol, one method per command; error replies raise greenstalk's errors.
    """

    async def put(
        self,
        body: bytes,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: int = 0,
        ttr: int = p.DEFAULT_TTR,
    ) -> int:
        """Put a job into the used tube and return its id."""
        return (await self._call(p.Put(body, priority, delay, ttr), p.Inserted)).id

    async def use(self, tube: str) -> str:
        return (await self._call(p.Use(tube), p.Using)).tube

    async def reserve(self, timeout: int | None = None) -> p.Reserved:
        """Reserve a job from the watched tubes. ``timeout`` in whole seconds, None: forever.

        Raises TimedOutError or DeadlineSoonError. Cancelling a blocked reserve closes the
        connection (the server would still hand it a job).
        """
        command = p.Reserve() if timeout is None else p.ReserveWithTimeout(timeout)
        return await self._call(command, p.Reserved)

    async def reserve_job(self, job_id: int) -> p.Reserved:
        return await self._call(p.ReserveJob(job_id), p.Reserved)

    async def delete(self, job_id: int) -> None:
        await self._call(p.Delete(job_id), p.Deleted)

    async def release(
        self, job_id: int, *, priority: int = p.DEFAULT_PRIORITY, delay: int = 0
    ) -> None:
        await self._call(p.Release(job_id, priority, delay), p.Released)

    async def bury(self, job_id: int, *, priority: int = p.DEFAULT_PRIORITY) -> None:
        reply = await self.request(p.Bury(job_id, priority))
        if not isinstance(reply, p.Buried):
            raise_for_reply(reply)

    async def touch(self, job_id: int) -> None:
        await self._call(p.Touch(job_id), p.Touched)

    async def watch(self, tube: str) -> int:
        return (await self._call(p.Watch(tube), p.Watching)).count

    async def ignore(self, tube: str) -> int:
        return (await self._call(p.Ignore(tube), p.Watching)).count

    async def peek(self, job_id: int) -> p.Found:
        return await self._call(p.Peek(job_id), p.Found)

    async def peek_ready(self) -> p.Found:
        return await self._call(p.PeekReady(), p.Found)

    async def peek_delayed(self) -> p.Found:
        return await self._call(p.PeekDelayed(), p.Found)

    async def peek_buried(self) -> p.Found:
        return await self._call(p.PeekBuried(), p.Found)

    async def kick(self, bound: int) -> int:
        count = (await self._call(p.Kick(bound), p.Kicked)).count
        if count is None:
            raise RemoteProtocolError("KICKED without a count in reply to kick")
        return count

    async def kick_job(self, job_id: int) -> None:
        await self._call(p.KickJob(job_id), p.Kicked)

    async def stats_job(self, job_id: int) -> p.JobStats:
        return await self._call(p.StatsJob(job_id), p.JobStats)

    async def stats_tube(self, tube: str) -> p.TubeStats:
        return await self._call(p.StatsTube(tube), p.TubeStats)

    async def stats(self) -> p.ServerStats:
        return await self._call(p.Stats(), p.ServerStats)

    async def list_tubes(self) -> tuple[str, ...]:
        return (await self._call(p.ListTubes(), p.TubeList)).tubes

    async def list_tube_used(self) -> str:
        return (await self._call(p.ListTubeUsed(), p.Using)).tube

    async def list_tubes_watched(self) -> tuple[str, ...]:
        return (await self._call(p.ListTubesWatched(), p.TubeList)).tubes

    async def pause_tube(self, tube: str, delay: int) -> None:
        await self._call(p.PauseTube(tube, delay), p.Paused)

    async def quit(self) -> None:
        """Say goodbye and close."""
        if self.is_usable:
            with suppress(ConnectionLostError):
                await self.send(p.Quit())
        await self.aclose()


def _no_reply(allowance: float, pending: int) -> str:
    return (
        f"no reply from beanstalkd for {allowance:g} s (the connection is dead or the "
        f"server is hung; {pending} replies owed)"
    )


def _raise_lost(exc: BaseException, gave_up: str | None = None) -> None:
    """Translate transport errors (the one place that knows Trio's and the OS's).
    ``gave_up``: the watcher closed the connection, for this reason."""
    if isinstance(exc, ConnectionLostError):
        raise exc
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
        raise ConnectionLostError(gave_up or f"connection lost: {exc!r}") from exc
    if isinstance(exc, ssl.SSLError):  # pragma: no cover - only behind a TLS proxy
        raise ConnectionLostError(f"TLS error: {exc!r}") from exc


def set_keepalive(stream: trio.SocketStream, idle: float) -> None:
    """Probe an idle connection after ``idle`` s, then every idle/3 s; 3 unanswered probes
    (or data unacknowledged for as long) and the kernel resets it, waking any reader."""
    idle_s = max(1, round(idle))
    interval = max(1, idle_s // 3)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; other systems keep their defaults
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        stream.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, (idle_s + 3 * interval) * 1000
        )


async def _open_stream(
    address: Address, ssl_context: ssl.SSLContext | None, keepalive: float
) -> trio.abc.Stream:
    stream: trio.abc.Stream
    if address.unix_path is not None:
        stream = await trio.open_unix_socket(address.unix_path)
    else:
        tcp = await trio.open_tcp_stream(address.host, address.port)
        if keepalive > 0:
            set_keepalive(tcp, keepalive)
        stream = tcp
    if ssl_context is None and address.tls:
        ssl_context = tls_context()
    if ssl_context is not None:
        name = server_name(address.host)
        tls = trio.SSLStream(stream, ssl_context, server_hostname=name)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        stream = tls
    return stream


async def connect(
    address: Address | str,
    *,
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    reply_timeout: float = math.inf,
    keepalive: float = 0.0,
) -> Client:
    """Connect and take the server's ``stats``, both within ``connect_timeout`` seconds.

    ``reply_timeout`` and ``keepalive`` (seconds; 0: off) are described in the module.

    The stats tell max-job-size (bodies over it are refused before sending) and the
    server's instance id. The caller owns the client and must ``aclose()`` it.
    """
    if isinstance(address, str):
        address = parse_address(address)
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await _open_stream(address, ssl_context, keepalive)
            client = Client(stream, reply_timeout=reply_timeout)
            stats = await client.stats()
    except trio.TooSlowError:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise ServerUnresponsiveError(
            f"beanstalkd at {address} did not answer within {connect_timeout} s"
        ) from None
    except OSError as exc:  # ssl.SSLError too: a refused certificate says why
        reason = with_tls_hint(str(exc)) if address.tls else str(exc)
        raise ConnectionLostError(f"cannot connect to beanstalkd at {address}: {reason}") from exc
    except trio.BrokenResourceError as exc:  # the TLS peer hung up in the handshake
        if stream is not None:
            await trio.aclose_forcefully(stream)
        cause = exc.__cause__ or exc
        raise ConnectionLostError(
            f"TLS handshake with {address} failed: {cause} (is this client's certificate "
            "one the server accepts?)"
        ) from exc
    client.learned(stats)
    return client


@asynccontextmanager
async def open_client(
    address: Address | str,
    *,
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Client]:
    """``async with open_client("127.0.0.1:11300") as client: ...``"""
    client = await connect(address, connect_timeout=connect_timeout, ssl_context=ssl_context)
    try:
        yield client
    finally:
        await client.aclose()


async def connect_with_backoff(
    address: Address | str,
    *,
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    reply_timeout: float = math.inf,
    keepalive: float = 0.0,
    base: float = 0.1,
    cap: float = 30.0,
    attempts: int | None = None,
    on_retry: Callable[[int, float, Exception], None] | None = None,
    rng: random.Random | None = None,
    connector: Callable[[Address | str], Awaitable[Client]] | None = None,
) -> Client:
    """Connect, retrying with exponential backoff and full jitter.

    Retries forever unless ``attempts`` is given (then the last error is raised); bound it
    with a cancel scope. ``on_retry(attempt, delay, error)`` is called before each wait.
    ``connector`` replaces :func:`connect` (tests connect to a scripted server with it).
    """
    limit = math.inf if attempts is None else attempts
    attempt = 0
    while True:
        attempt += 1
        try:
            if connector is not None:
                return await connector(address)
            return await connect(
                address,
                connect_timeout=connect_timeout,
                ssl_context=ssl_context,
                reply_timeout=reply_timeout,
                keepalive=keepalive,
            )
        except (ConnectionLostError, RemoteProtocolError) as exc:
            if attempt >= limit:
                raise
            delay = full_jitter_delay(attempt, base=base, cap=cap, rng=rng)
            if on_retry is not None:
                on_retry(attempt, delay, exc)
            await trio.sleep(delay)
