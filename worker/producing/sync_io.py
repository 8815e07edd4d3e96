"""The blocking producer (:class:`Producer`, thread-safe) on a plain socket speaking the
same sans-I/O protocol as the Trio client; the checks and failover are
:mod:`~tubeworker.producing.failover`'s."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.errors import ConnectionLostError, RemoteProtocolError
from tubeworker.producing.checks import (
    PutRequest,
    Seconds,
    ServersArg,
    check_size,
    make_envelope,
)
from tubeworker.producing.errors import ProducerError, ServerFailure
from tubeworker.producing.failover import (
    BadReply,
    ProducerCore,
    ProducerStatistics,
    Unstored,
    check_used,
    lost_reason,
    stored_id,
    unreachable,
)

__all__ = ["Producer", "SyncConnection", "enqueue"]


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
            raise ConnectionLostError(
                f"connection to {self.address} lost: {lost_reason(exc)}"
            ) from exc
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


class Producer(ProducerCore):
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
        super().__init__(
            servers,
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
            max_job_size=max_job_size,
            demote_for=demote_for,
            clock=clock,
            on_failure=on_failure,
        )
        self._connector = connector
        self._connections: dict[Address, SyncConnection] = {}
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
        request = self._request(tube, body, priority, delay, ttr)
        with self._lock:
            failover = self._failover(prefer)
            for server in failover.servers:
                try:
                    return failover.stored(server, self._put_on(server, request))
                except Unstored as unstored:
                    failover.unstored(server, unstored)
            raise failover.none_stored()

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
                    raise unreachable(server, exc, lost=True) from None
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
            raise unreachable(server, exc, lost=False) from None
        self._counters.connections_opened += 1
        self._connections[server] = conn
        return conn

    @staticmethod
    def _send(conn: SyncConnection, server: Address, request: PutRequest) -> int:
        check_size(len(request.body), conn.max_job_size, str(server))
        try:
            if conn.tube != request.tube:
                # Never pipelined with the put: if `use` failed, the put would land in the
                # tube used before.
                (reply,) = conn.exchange([p.Use(request.tube)])
                check_used(reply, server)
                conn.tube = request.tube
            (reply,) = conn.exchange(
                [p.Put(request.body, request.priority, request.delay, request.ttr)]
            )
            return stored_id(reply, server, request)
        except BadReply as exc:
            conn.close()
            raise ProducerError(str(exc)) from None

    def statistics(self) -> ProducerStatistics:
        with self._lock:
            return self._snapshot()

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
