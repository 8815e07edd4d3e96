"""Putting jobs from Python applications: the JSON envelope, checked before anything is sent.

::

    from tubeworker.producer import Producer

    producer = Producer(["10.0.0.1:11300", "10.0.0.2:11300"])  # once, when the app starts
    job_id = producer.enqueue("emails", "send-welcome", {"user_id": 42}, delay="30s")

:class:`Producer` blocks and is thread-safe (a web app's request threads share one);
:class:`AsyncProducer` is the same for Trio, and what ``job.put()`` uses inside the daemon.
Both keep one connection per server (opened on first use, reused, opened again after a
failure; :class:`Producer` also after a ``fork``), and fail over: a job goes to the first
server, in the order given, that stores it. A server that just failed is tried last for
``demote_for`` seconds. A job stored on a server is processed by the workers watching that
server.

Checked before anything is sent (:class:`InvalidJob`): the tube name (beanstalkd's rules:
1 to 200 bytes of ``A-Z a-z 0-9 - + / ; . $ _ ( )``, not starting with ``-``), the task name
(a non-empty string), the payload (strict JSON: no NaN), the body's size (against
``max_job_size`` when given, and against the server's own ``max-job-size``, read from
``stats`` when connecting), the priority (0, most urgent, to 2**32-1), and delay and ttr:
whole seconds, or a float, a ``timedelta`` or a duration such as ``"30s"``, ``"5m"``,
``"1h"``, ``"250ms"``, rounded up to whole seconds (beanstalkd counts whole seconds); a ttr
is at least 1 s.

The errors, all :class:`ProducerError` (also ``greenstalk.Error``, like every error of
talking to beanstalkd; each server reply keeps its greenstalk class too)::

    ProducerError
    ├── InvalidJob              nothing was sent: a bad tube, task, payload, number, or
    │   │                       body (also ValueError and LocalProtocolError)
    │   └── JobTooBig           the body is over max-job-size: ours, the server's (read
    │                           when connecting), or the server said JOB_TOO_BIG
    ├── NoServerAvailable       no server stored the job; ``failures`` says why, per server
    │   ├── ServerUnreachable   every server: cannot connect, or the connection was lost
    │   │                       (also ConnectionLostError)
    │   ├── ServerDraining      every server: DRAINING (drain mode, after SIGUSR1: it
    │   │                       takes no new jobs until it is restarted)
    │   └── ServerOutOfMemory   every server: OUT_OF_MEMORY (it cannot reserve binlog
    │                           space, or allocate: "try again later")
    └── JobBuried               BURIED <id>: the server ran out of memory growing its
                                queue; the job *is* stored, buried (in memory only: it
                                may not survive a restart), and runs only when kicked.
                                It is never put again elsewhere.

When servers fail for different reasons, :class:`NoServerAvailable` itself is raised. A
put whose connection breaks after the command was sent may have been stored all the same,
so a failover can store a job twice: at least once, like everything else here.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction
from typing import Any, Final, Protocol, TypeAlias

import greenstalk
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect, parse_address
from tubeworker.config import duration_seconds
from tubeworker.errors import (
    ConfigError,
    ConnectionLostError,
    LocalProtocolError,
    RemoteProtocolError,
    TubeworkerError,
)

__all__ = [
    "DEFAULT_SERVER",
    "SERVERS_ENV",
    "AsyncProducer",
    "InvalidJob",
    "JobBuried",
    "JobTooBig",
    "NoServerAvailable",
    "Producer",
    "ProducerError",
    "ProducerStatistics",
    "PutRequest",
    "Seconds",
    "ServerDraining",
    "ServerFailure",
    "ServerHealth",
    "ServerOutOfMemory",
    "ServerUnreachable",
    "enqueue",
    "enqueue_async",
    "make_envelope",
    "parse_servers",
    "prepare_put",
    "to_seconds",
]

SERVERS_ENV: Final = "TUBEWORKER_SERVERS"
DEFAULT_SERVER: Final = "127.0.0.1:11300"
MAX_INT: Final = p.MAX_INT

#: Seconds for delay and ttr: an int, a float or a ``timedelta`` (rounded up to whole
#: seconds), or a duration string: ``"30"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"``.
Seconds: TypeAlias = int | float | str | timedelta
ServersArg: TypeAlias = str | Address | Iterable[str | Address] | None


# --------------------------------------------------------------------------- errors


class ProducerError(TubeworkerError, greenstalk.Error):
    """Base class of what putting a job can raise."""


class InvalidJob(ProducerError, LocalProtocolError):
    """The job is not valid: nothing was sent. Also a ``ValueError``."""


class JobTooBig(InvalidJob, greenstalk.JobTooBigError):
    """The body is over max-job-size (``size`` and ``limit`` in bytes; ``server`` when it
    was that server's limit). Nothing was stored."""

    def __init__(
        self, message: str, size: int, limit: int | None = None, server: str | None = None
    ) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.server = server

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.size, self.limit, self.server))


@dataclass(frozen=True, slots=True)
class ServerFailure:
    """Why one server did not store a job; ``kind`` is the error class that says it."""

    server: str
    kind: type[NoServerAvailable]
    reason: str

    def __str__(self) -> str:
        return f"{self.server} {self.reason}"


class NoServerAvailable(ProducerError):
    """No server stored the job; ``failures`` has each server's reason, in the order tried.
    Try again later (the job was not stored, unless a connection broke mid-put)."""

    def __init__(self, message: str, failures: tuple[ServerFailure, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.failures))


class ServerUnreachable(NoServerAvailable, ConnectionLostError):
    """No server could be reached (connect failed, or the connection was lost)."""


class ServerDraining(NoServerAvailable, greenstalk.DrainingError):
    """Every server tried is in drain mode: it takes no new jobs until it is restarted."""


class ServerOutOfMemory(NoServerAvailable, greenstalk.OutOfMemoryError):
    """Every server tried answered OUT_OF_MEMORY: it cannot store jobs now (its binlog
    cannot reserve space, or memory ran out)."""


class JobBuried(ProducerError, greenstalk.BuriedError):
    """The server answered ``BURIED <id>``: out of memory growing its queue, it stored the
    job but buried it. ``id`` is the job's id on ``server``; it runs only once kicked."""

    def __init__(self, message: str, job_id: int | None, server: str) -> None:
        Exception.__init__(self, message)  # not greenstalk's: it parses reply words
        self.id = job_id
        self.server = server

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.id, self.server))


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True, slots=True)
class PutRequest:
    """A put that passed every check: what is sent."""

    tube: str
    body: bytes
    priority: int
    delay: int
    ttr: int


def _exact(value: object, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | str | timedelta):
        raise InvalidJob(
            f"{what} must be seconds or a duration like '30s', got {type(value).__name__}"
        )
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidJob(f"{what} must be a finite number of seconds, got {value}")
        return Fraction(value)
    if isinstance(value, timedelta):
        return Fraction(value.days * 86_400 + value.seconds) + Fraction(value.microseconds, 10**6)
    seconds = duration_seconds(value)
    if seconds is not None:
        return seconds
    raise InvalidJob(f"bad {what} {value!r}: expected whole seconds or a duration like 30s, 5m, 1h")


def to_seconds(value: Seconds, what: str, *, minimum: int = 0) -> int:
    """Whole seconds for beanstalkd, rounded up, ``minimum`` to 2**32-1; ``what`` names
    the value in the error (:class:`InvalidJob`)."""
    exact = _exact(value, what)
    seconds = math.ceil(exact)
    if exact < 0 or seconds < minimum:
        raise InvalidJob(f"{what} {value!r} is out of range: {minimum} to {MAX_INT} seconds")
    if seconds > MAX_INT:
        raise InvalidJob(
            f"{what} {value!r} is too long: beanstalkd takes {minimum} to {MAX_INT} seconds"
        )
    return seconds


def _priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"priority must be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_INT:
        raise InvalidJob(f"priority {value} is out of range: 0 (most urgent) to {MAX_INT}")
    return value


def _tube(tube: str) -> str:
    try:
        p.validate_tube_name(tube)  # a str of beanstalkd's characters, 1 to 200 bytes
    except LocalProtocolError as exc:
        raise InvalidJob(str(exc)) from None
    return tube


def _check_size(size: int, limit: int | None, server: str | None = None) -> None:
    if limit is not None and size > limit:
        whose = f"the server's ({server})" if server else "the"
        raise JobTooBig(
            f"job too big: the body is {size} bytes; {whose} max-job-size is {limit}",
            size,
            limit,
            server,
        )


def make_envelope(task: str, payload: Any = None) -> bytes:
    """The body ``{"task": TASK, "payload": PAYLOAD}`` that tubeworker dispatches on, in the
    form :func:`tubeworker.envelope.encode_envelope` writes, but strict JSON (no NaN or
    Infinity, which other languages' parsers refuse)."""
    if not isinstance(task, str) or not task:
        raise InvalidJob(f"task must be a non-empty string, got {task!r}")
    try:
        text = json.dumps(
            {"task": task, "payload": payload}, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidJob(f"the payload of task {task!r} is not JSON: {exc}") from None
    return text.encode()


def prepare_put(
    tube: str,
    body: bytes | bytearray | memoryview | str,
    *,
    priority: int = p.DEFAULT_PRIORITY,
    delay: Seconds = 0,
    ttr: Seconds = p.DEFAULT_TTR,
    max_job_size: int | None = None,
) -> PutRequest:
    """Check a put (:class:`InvalidJob` says what is wrong) and return what will be sent.
    A str body is sent as UTF-8."""
    name = _tube(tube)
    if isinstance(body, str):
        data = body.encode("utf-8")
    elif isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
    else:
        raise InvalidJob(f"body must be bytes or str, got {type(body).__name__}")
    _check_size(len(data), max_job_size)
    return PutRequest(
        name,
        data,
        _priority(priority),
        to_seconds(delay, "delay"),
        to_seconds(ttr, "ttr", minimum=1),
    )


def parse_servers(
    servers: ServersArg = None, env: Mapping[str, str] | None = None
) -> tuple[Address, ...]:
    """``"host:port"``, ``"a:11300,b:11300"``, a list of them (or of ``Address``); None:
    ``$TUBEWORKER_SERVERS`` (comma-separated), else 127.0.0.1:11300. Raises ConfigError."""
    source = "servers"
    if servers is None:
        text = (os.environ if env is None else env).get(SERVERS_ENV, "")
        servers, source = (text, f"${SERVERS_ENV}") if text.strip() else (DEFAULT_SERVER, "")
    items: list[str | Address]
    if isinstance(servers, Address):
        items = [servers]
    elif isinstance(servers, str):
        items = list(servers.split(","))
    else:
        items = list(servers)
    found: list[Address] = []
    for item in items:
        if isinstance(item, Address):
            found.append(item)
            continue
        if not item.strip():
            continue
        try:
            found.append(parse_address(item.strip()))
        except ValueError as exc:
            raise ConfigError(str(exc), key="servers", source=source or None) from None
    if not found:
        raise ConfigError("no beanstalkd server given", key="servers", source=source or None)
    return tuple(dict.fromkeys(found))


def _address(server: str | Address | None) -> Address | None:
    return parse_address(server) if isinstance(server, str) else server


# --------------------------------------------------------------------------- replies


class _Unstored(Exception):
    """This server did not store the job: try the next one."""

    def __init__(self, failure: ServerFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class _BadReply(Exception):
    """A reply a put cannot have: the connection is closed, and ProducerError raised."""


def _why(exc: BaseException) -> str:
    """The OS's words for a failed connect or read ("connection refused"), else the message."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop(0)
        if isinstance(current, TimeoutError):
            return "no answer in time"
        if isinstance(current, OSError) and (current.errno or current.strerror):
            errno = current.errno  # socket.gaierror's is negative: its strerror is the words
            words = os.strerror(errno) if errno and errno > 0 else str(current.strerror)
            return words[:1].lower() + words[1:]
        if isinstance(current, BaseExceptionGroup):  # trio: every address failed
            seen.extend(current.exceptions)
        if current.__cause__ is not None:
            seen.append(current.__cause__)
    return str(exc)


def _unreachable(server: Address, exc: BaseException, *, lost: bool) -> _Unstored:
    what = "lost its connection" if lost else "cannot be reached"
    return _Unstored(ServerFailure(str(server), ServerUnreachable, f"{what} ({_why(exc)})"))


def _used(reply: p.Reply, server: Address) -> None:
    if isinstance(reply, p.OutOfMemory):
        raise _Unstored(
            ServerFailure(str(server), ServerOutOfMemory, "is out of memory (OUT_OF_MEMORY)")
        )
    if not isinstance(reply, p.Using):
        raise _BadReply(f"{server} answered use with {type(reply).__name__}")


def _stored(reply: p.Reply, server: Address, request: PutRequest) -> int:
    """The job's id, or the error the put's reply means."""
    name = str(server)
    match reply:
        case p.Inserted(id=job_id):
            return job_id
        case p.Buried(id=job_id):
            raise JobBuried(
                f"beanstalkd at {name} is out of memory: it stored job {job_id} in tube "
                f"{request.tube!r} but buried it (it runs only when kicked)",
                job_id,
                name,
            )
        case p.Draining():
            reason = "is draining (it takes no new jobs until it is restarted)"
            raise _Unstored(ServerFailure(name, ServerDraining, reason))
        case p.OutOfMemory():
            reason = "is out of memory (OUT_OF_MEMORY: it cannot store jobs now)"
            raise _Unstored(ServerFailure(name, ServerOutOfMemory, reason))
        case p.InternalError():
            raise _Unstored(ServerFailure(name, NoServerAvailable, "answered INTERNAL_ERROR"))
        case p.JobTooBig():
            raise JobTooBig(
                f"job too big: {name} answered JOB_TOO_BIG to a body of {len(request.body)} bytes",
                len(request.body),
                None,
                name,
            )
    raise _BadReply(f"{name} answered put with {type(reply).__name__}")


def _no_server(failures: Sequence[ServerFailure]) -> NoServerAvailable:
    kinds = {failure.kind for failure in failures}
    kind = kinds.pop() if len(kinds) == 1 else NoServerAvailable
    reasons = "; ".join(str(failure) for failure in failures)
    return kind(f"job not stored: {reasons}", tuple(failures))


# --------------------------------------------------------------------------- failover


class ServerHealth:
    """Which servers to try, in which order: the preferred one first (a job's own server),
    then the others as configured; a server that failed less than ``demote_for`` seconds
    ago goes to the end (still tried: it may be the only one). Pure, with an injected
    clock."""

    def __init__(self, demote_for: float, clock: Callable[[], float]) -> None:
        self.demote_for = demote_for
        self._clock = clock
        self._failed_at: dict[Address, float] = {}

    def order(self, servers: Sequence[Address], prefer: Address | None = None) -> list[Address]:
        ordered = [s for s in servers if s != prefer]
        if prefer is not None:
            ordered.insert(0, prefer)
        demoted = self.demoted()
        return [s for s in ordered if s not in demoted] + [s for s in ordered if s in demoted]

    def demoted(self) -> set[Address]:
        now = self._clock()
        return {a for a, at in self._failed_at.items() if now - at < self.demote_for}

    def failed(self, server: Address) -> None:
        self._failed_at[server] = self._clock()

    def succeeded(self, server: Address) -> None:
        self._failed_at.pop(server, None)


@dataclass(frozen=True, slots=True)
class ProducerStatistics:
    jobs_put: int  # stored (INSERTED)
    server_failures: int  # a server did not store a job, and the next one was tried
    connections_opened: int
    demoted: tuple[str, ...]  # servers tried last for now (they failed recently)


@dataclass
class _Counters:
    jobs_put: int = 0
    server_failures: int = 0
    connections_opened: int = 0

    def snapshot(self, health: ServerHealth) -> ProducerStatistics:
        demoted = tuple(sorted(str(a) for a in health.demoted()))
        return ProducerStatistics(
            self.jobs_put, self.server_failures, self.connections_opened, demoted
        )


# --------------------------------------------------------------------------- blocking


class SyncConnection(Protocol):
    """What :class:`Producer` needs of a connection (tests pass scripted ones)."""

    tube: str  # the tube in use
    max_job_size: int | None  # the server's, when known

    @property
    def usable(self) -> bool: ...

    def exchange(self, commands: Sequence[p.Command]) -> list[p.Reply]: ...

    def close(self) -> None: ...


class _SocketConnection:
    """One blocking beanstalkd connection on the same sans-I/O protocol as the Trio client:
    a read or write that fails or is interrupted closes it (it is never reused with half a
    reply in flight), and so does a ``fork`` (the child opens its own)."""

    def __init__(self, address: Address, *, connect_timeout: float, reply_timeout: float):
        self.address = address
        self.tube = "default"
        self.max_job_size: int | None = None
        self._pid = os.getpid()
        self._proto = p.Connection()
        self._sock: socket.socket | None = _open_socket(address, connect_timeout)
        # The first reply has the connect deadline too: a beanstalkd out of file
        # descriptors completes the handshake but never answers (B2).
        (stats,) = self.exchange([p.Stats()])
        if not isinstance(stats, p.ServerStats):  # pragma: no cover - the parser checks
            self.close()
            raise ConnectionLostError(f"{address} answered stats with {stats!r}")
        self.max_job_size = self._proto.max_job_size = stats.max_job_size
        assert self._sock is not None
        self._sock.settimeout(reply_timeout)

    @property
    def usable(self) -> bool:
        return self._sock is not None and self._pid == os.getpid()

    def exchange(self, commands: Sequence[p.Command]) -> list[p.Reply]:
        if self._sock is None:
            raise ConnectionLostError(f"connection to {self.address} is closed")
        data = self._proto.send_many(commands)  # LocalProtocolError: nothing sent
        try:
            self._sock.sendall(data)
            return [self._receive(self._sock) for _ in commands]
        except (OSError, RemoteProtocolError) as exc:
            self.close()
            raise ConnectionLostError(f"connection to {self.address} lost: {_why(exc)}") from exc
        except BaseException:  # KeyboardInterrupt mid-reply: the stream's position is unknown
            self.close()
            raise

    def _receive(self, sock: socket.socket) -> p.Reply:
        while True:
            event = self._proto.next_event()
            if event is not p.NEED_DATA:
                assert isinstance(event, p.Reply)
                return event
            self._proto.receive_data(sock.recv(65_536))  # b"": EOF, the parser objects

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # after a fork: the child's descriptor only, never a shutdown()


def _open_socket(address: Address, timeout: float) -> socket.socket:
    try:
        if address.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address.unix_path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except OSError as exc:
        raise ConnectionLostError(f"cannot connect to beanstalkd at {address}: {exc}") from exc


class Producer:
    """Puts jobs, blocking; thread-safe. Create one when the app starts and share it.

    ``servers``: see :func:`parse_servers` (None: ``$TUBEWORKER_SERVERS``, else
    127.0.0.1:11300). ``connect_timeout`` bounds a connect and the server's first reply,
    ``reply_timeout`` a reply that makes no progress. ``max_job_size``: refuse larger
    bodies before connecting (the server's own limit is always checked).
    ``on_failure(failure)`` is called for each server that did not store a job, before
    the next one is tried (to log it). ``connector`` replaces the TCP connection (tests
    pass scripted servers).

    One connection per server, used by one thread at a time (puts are serialised by a
    lock: a put is one round trip, two when the tube changes). After a ``fork`` the child
    opens connections of its own (fork while no other thread is putting, as a pre-forking
    server's master does).
    """

    def __init__(
        self,
        servers: ServersArg = None,
        *,
        connect_timeout: float = 5.0,
        reply_timeout: float = 10.0,
        max_job_size: int | None = None,
        demote_for: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        connector: Callable[[Address], SyncConnection] | None = None,
        on_failure: Callable[[ServerFailure], None] | None = None,
    ) -> None:
        self.servers = parse_servers(servers)
        self.on_failure = on_failure
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.max_job_size = max_job_size
        self._connector = connector
        self._health = ServerHealth(demote_for, clock)
        self._connections: dict[Address, SyncConnection] = {}
        self._counters = _Counters()
        self._lock = threading.RLock()  # on_failure may read statistics()

    def enqueue(
        self,
        tube: str,
        task: str,
        payload: Any = None,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
    ) -> int:
        """Put the envelope ``{"task": task, "payload": payload}`` into ``tube``; its id
        (on the server that stored it)."""
        body = make_envelope(task, payload)
        return self.put(tube, body, priority=priority, delay=delay, ttr=ttr)

    def put(
        self,
        tube: str,
        body: bytes | str,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
        prefer: str | Address | None = None,
    ) -> int:
        """Put a raw body (for pools bound to one handler); ``prefer``: try that server
        first. Returns the job's id."""
        request = prepare_put(
            tube, body, priority=priority, delay=delay, ttr=ttr, max_job_size=self.max_job_size
        )
        with self._lock:
            failures: list[ServerFailure] = []
            for server in self._health.order(self.servers, _address(prefer)):
                try:
                    job_id = self._put_on(server, request)
                except _Unstored as unstored:
                    self._failed(server, unstored.failure)
                    failures.append(unstored.failure)
                    continue
                self._health.succeeded(server)
                self._counters.jobs_put += 1
                return job_id
            raise _no_server(failures)

    def _put_on(self, server: Address, request: PutRequest) -> int:
        conn = self._connections.get(server)
        kept = conn is not None and conn.usable
        while True:
            if conn is None or not kept:
                conn = self._connect(server, conn)
            try:
                return self._send(conn, server, request)
            except ConnectionLostError as exc:
                if not kept:
                    raise _unreachable(server, exc, lost=True) from None
                kept = False  # a kept connection gone stale (say, a server restart): once more

    def _connect(self, server: Address, old: SyncConnection | None) -> SyncConnection:
        if old is not None:
            old.close()
        self._connections.pop(server, None)
        try:
            if self._connector is not None:
                conn = self._connector(server)
            else:
                conn = _SocketConnection(
                    server, connect_timeout=self.connect_timeout, reply_timeout=self.reply_timeout
                )
        except (ConnectionLostError, RemoteProtocolError) as exc:
            raise _unreachable(server, exc, lost=False) from None
        self._counters.connections_opened += 1
        self._connections[server] = conn
        return conn

    @staticmethod
    def _send(conn: SyncConnection, server: Address, request: PutRequest) -> int:
        _check_size(len(request.body), conn.max_job_size, str(server))
        try:
            if conn.tube != request.tube:
                # Never pipelined with the put: if `use` failed, the put would land in the
                # tube used before.
                (reply,) = conn.exchange([p.Use(request.tube)])
                _used(reply, server)
                conn.tube = request.tube
            (reply,) = conn.exchange(
                [p.Put(request.body, request.priority, request.delay, request.ttr)]
            )
            return _stored(reply, server, request)
        except _BadReply as exc:
            conn.close()
            raise ProducerError(str(exc)) from None

    def _failed(self, server: Address, failure: ServerFailure) -> None:
        self._health.failed(server)
        self._counters.server_failures += 1
        if self.on_failure is not None:
            self.on_failure(failure)

    def statistics(self) -> ProducerStatistics:
        with self._lock:
            return self._counters.snapshot(self._health)

    def close(self) -> None:
        """Close every connection (a later put opens new ones)."""
        with self._lock:
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- Trio


@dataclass
class _Slot:
    """One server's connection in an AsyncProducer, and the tube it uses."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    client: Client | None = None
    tube: str = "default"
    # When it last could not be reached, and why: tasks that were waiting for the lock
    # meanwhile fail over at once instead of each waiting out a connect of its own.
    down: tuple[float, _Unstored] | None = None


class AsyncProducer:
    """Puts jobs from Trio code: :class:`Producer`'s twin (same checks, errors and
    failover) on tubeworker's Trio client. Tasks share it; one connection per server,
    used by one task at a time. Use it within one ``trio.run``. A put cancelled midway
    closes its connection (the job may or may not have been stored)."""

    def __init__(
        self,
        servers: ServersArg = None,
        *,
        connect_timeout: float = 5.0,
        reply_timeout: float = 10.0,
        max_job_size: int | None = None,
        demote_for: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        connector: Callable[[Address], Awaitable[Client]] | None = None,
        on_failure: Callable[[ServerFailure], None] | None = None,
    ) -> None:
        self.servers = parse_servers(servers)
        self.on_failure = on_failure
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.max_job_size = max_job_size
        self._connector = connector
        self._clock = clock
        self._health = ServerHealth(demote_for, clock)
        self._slots: dict[Address, _Slot] = {}
        self._counters = _Counters()

    async def enqueue(
        self,
        tube: str,
        task: str,
        payload: Any = None,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
    ) -> int:
        """Put the envelope ``{"task": task, "payload": payload}`` into ``tube``; its id."""
        body = make_envelope(task, payload)
        return await self.put(tube, body, priority=priority, delay=delay, ttr=ttr)

    async def put(
        self,
        tube: str,
        body: bytes | str,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
        prefer: str | Address | None = None,
    ) -> int:
        """Put a raw body; ``prefer``: try that server first. Returns the job's id."""
        request = prepare_put(
            tube, body, priority=priority, delay=delay, ttr=ttr, max_job_size=self.max_job_size
        )
        failures: list[ServerFailure] = []
        for server in self._health.order(self.servers, _address(prefer)):
            try:
                job_id = await self._put_on(server, request)
            except _Unstored as unstored:
                self._failed(server, unstored.failure)
                failures.append(unstored.failure)
                continue
            self._health.succeeded(server)
            self._counters.jobs_put += 1
            return job_id
        raise _no_server(failures)

    async def _put_on(self, server: Address, request: PutRequest) -> int:
        slot = self._slots.setdefault(server, _Slot())
        asked = self._clock()
        async with slot.lock:
            kept = slot.client is not None and slot.client.is_usable
            if not kept and slot.down is not None and slot.down[0] >= asked:
                raise slot.down[1]  # it failed while we waited for it
            while True:
                if not kept:
                    await self._connect(server, slot)
                try:
                    return await self._send(slot, server, request)
                except (ConnectionLostError, RemoteProtocolError) as exc:
                    if not kept:
                        raise self._down(slot, _unreachable(server, exc, lost=True)) from None
                    kept = False  # a kept connection gone stale: once more on a new one

    async def _connect(self, server: Address, slot: _Slot) -> None:
        if slot.client is not None:
            await slot.client.aclose()
            slot.client = None
        try:
            if self._connector is not None:
                client = await self._connector(server)
            else:
                client = await connect(
                    server, connect_timeout=self.connect_timeout, reply_timeout=self.reply_timeout
                )
        except (ConnectionLostError, RemoteProtocolError) as exc:
            raise self._down(slot, _unreachable(server, exc, lost=False)) from None
        self._counters.connections_opened += 1
        slot.client, slot.tube, slot.down = client, "default", None

    def _down(self, slot: _Slot, unstored: _Unstored) -> _Unstored:
        slot.down = (self._clock(), unstored)
        return unstored

    @staticmethod
    async def _send(slot: _Slot, server: Address, request: PutRequest) -> int:
        client = slot.client
        assert client is not None
        limit = client.server.max_job_size if client.server is not None else None
        _check_size(len(request.body), limit, str(server))
        try:
            if slot.tube != request.tube:  # never pipelined with the put (see Producer)
                _used(await client.request(p.Use(request.tube)), server)
                slot.tube = request.tube
            put = p.Put(request.body, request.priority, request.delay, request.ttr)
            return _stored(await client.request(put), server, request)
        except _BadReply as exc:
            await client.aclose()
            raise ProducerError(str(exc)) from None

    def _failed(self, server: Address, failure: ServerFailure) -> None:
        self._health.failed(server)
        self._counters.server_failures += 1
        if self.on_failure is not None:
            self.on_failure(failure)

    def statistics(self) -> ProducerStatistics:
        return self._counters.snapshot(self._health)

    async def aclose(self) -> None:
        """Close every connection (a later put opens new ones)."""
        for slot in self._slots.values():
            if slot.client is not None:
                await slot.client.aclose()
                slot.client = None

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- one-shots


def enqueue(
    tube: str,
    task: str,
    payload: Any = None,
    *,
    servers: ServersArg = None,
    priority: int = p.DEFAULT_PRIORITY,
    delay: Seconds = 0,
    ttr: Seconds = p.DEFAULT_TTR,
) -> int:
    """One job, on a connection opened and closed for it: for scripts and cron jobs. An
    app that puts many keeps a :class:`Producer`."""
    with Producer(servers) as producer:
        return producer.enqueue(tube, task, payload, priority=priority, delay=delay, ttr=ttr)


async def enqueue_async(
    tube: str,
    task: str,
    payload: Any = None,
    *,
    servers: ServersArg = None,
    priority: int = p.DEFAULT_PRIORITY,
    delay: Seconds = 0,
    ttr: Seconds = p.DEFAULT_TTR,
) -> int:
    """:func:`enqueue` for Trio code."""
    async with AsyncProducer(servers) as producer:
        return await producer.enqueue(tube, task, payload, priority=priority, delay=delay, ttr=ttr)
