"""The blocking producer (:class:`Producer`, thread-safe) on a plain socket speaking the
same sans-I/O protocol as the Trio client; the checks and failover are
:mod:`~tubeworker.producing.failover`'s."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tubeworker.batches.drive import drive_sync
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.tls import server_name, tls_context
from tubeworker.errors import ConnectionLostError, RemoteProtocolError
from tubeworker.producing import dedup
from tubeworker.producing.checks import (
    PutRequest,
    Seconds,
    ServersArg,
    check_size,
)
from tubeworker.producing.errors import NoServerAvailable, ProducerError, ServerFailure
from tubeworker.producing.failover import (
    BadReply,
    ProducerStatistics,
    SyncConnection,
    Unstored,
    check_used,
    lost_reason,
    stored_id,
    unreachable,
)
from tubeworker.producing.spool import (
    DEFAULT_MAX_BYTES,
    Receipt,
    Spool,
)
from tubeworker.producing.spooling import SyncSpooling
from tubeworker.producing.workflows import SyncWorkflows
from tubeworker.security.keys import KeyRing

__all__ = ["Producer", "SyncConnection", "enqueue"]


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
        if address.tls:
            try:
                return tls_context().wrap_socket(sock, server_hostname=server_name(address.host))
            except BaseException:
                sock.close()
                raise
        return sock
    except OSError as exc:
        raise ConnectionLostError(f"cannot connect to beanstalkd at {address}: {exc}") from exc


class Producer(SyncSpooling, SyncWorkflows):
    """Puts jobs, blocking; thread-safe. Create one when the app starts and share it.

    ``servers``: see :func:`parse_servers` (None: ``$TUBEWORKER_SERVERS``, else
    127.0.0.1:11300). ``connect_timeout`` bounds a connect and the server's first reply,
    ``reply_timeout`` a reply that makes no progress. ``max_job_size``: refuse larger
    bodies before connecting (the server's own limit is always checked).
    ``on_failure(failure)`` is called for each server that did not store a job, before
    the next one is tried (to log it). ``connector`` replaces the TCP connection (tests
    pass scripted servers).

    ``spool``: a file (or a :class:`Spool`) where a job goes when no server stores it;
    then ``enqueue`` returns a receipt with ``spooled`` true instead of raising
    NoServerAvailable, and a background thread delivers the spooled jobs, oldest first,
    every ``flush_every`` seconds once a server takes them again (later jobs wait behind
    them, so they keep their order). ``spool_max_bytes`` bounds it: when full,
    :class:`SpoolFull` is raised.

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
        spool: str | Path | Spool | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        flush_every: float = 1.0,
        signing_keys: str | Path | KeyRing | None = None,
        encryption_keys: str | Path | KeyRing | None = None,
    ) -> None:
        super().__init__(
            servers,
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
            max_job_size=max_job_size,
            demote_for=demote_for,
            clock=clock,
            on_failure=on_failure,
            signing_keys=signing_keys,
            encryption_keys=encryption_keys,
        )
        self._connector = connector
        self._connections: dict[Address, SyncConnection] = {}
        self._lock = threading.RLock()  # on_failure may read statistics()
        self._open_spool(spool, spool_max_bytes, flush_every)

    def enqueue(
        self,
        tube: str,
        task: str,
        payload: Any = None,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
        id: str | None = None,
        unique_for: Seconds | None = None,
        secret: Any = None,
    ) -> Receipt:
        """Put the envelope ``{"task": task, "payload": payload}`` into ``tube`` (``id``:
        its idempotency key; a registered task's payload is validated first). With
        ``unique_for`` (a duration), not if a job with this ``id`` was put that recently:
        best effort, see :mod:`tubeworker.producing.dedup` (the receipt says
        ``duplicate``, with the first job's id). ``secret``: sealed with the encryption
        keys, opened only in the worker (``job.secret``). Returns its id
        (on the server that stored it), or a spooled receipt."""
        body = self._envelope(task, payload, id, secret)
        seconds = self._unique_seconds(id, unique_for)
        if seconds is None or id is None:
            return self.put(tube, body, priority=priority, delay=delay, ttr=ttr)
        with self._lock:
            first = self._dedup(id, dedup.check(id))
        if first is not None:
            return self._duplicate(id, first)
        receipt = self.put(tube, body, priority=priority, delay=delay, ttr=ttr)
        if not receipt.spooled:
            with self._lock:
                self._dedup(id, dedup.mark(id, receipt, seconds))
        return receipt

    def _dedup_conn(self, server: Address) -> SyncConnection:
        conn = self._connections.get(server)
        return conn if conn is not None and conn.usable else self._connect(server, conn)

    def _dedup(self, key: str, steps: dedup.Steps) -> int | None:
        """Run a de-duplication exchange on the first server (the lock held); None if
        that server cannot be asked (said in the log)."""
        server = self.servers[0]
        try:
            conn = self._dedup_conn(server)
            conn.tube = ""  # the marker tube or none: the next put says `use` (as before)
            return drive_sync(conn.exchange, steps)
        except (ConnectionLostError, RemoteProtocolError, Unstored) as exc:
            self._dedup_unasked(key, server, exc)
        return None

    def _first_server(self) -> Address:
        with self._lock:
            return self._health.order(self.servers)[0]

    def _own_connection(self, server: Address) -> SyncConnection:
        if self._connector is not None:
            return self._connector(server)
        return _SocketConnection(
            server, connect_timeout=self.connect_timeout, reply_timeout=self.reply_timeout
        )

    def put(
        self,
        tube: str,
        body: bytes | str,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
        prefer: str | Address | None = None,
    ) -> Receipt:
        """Put a raw body (for pools bound to one handler); ``prefer``: try that server
        first. Returns the job's id (a :class:`Receipt`: spooled, with a spool)."""
        request = self._request(tube, body, priority, delay, ttr)
        with self._lock:
            spool = self._spool
            if spool is not None and spool.pending:
                # Jobs wait in the spool: this one goes after them, unless they all go now.
                if self._clock() - self._last_flush >= self._flush_every:
                    self._flush_locked(spool)
                if spool.pending:
                    return self._to_spool(spool, request, None)
            try:
                return Receipt(self._put_now(request, prefer))
            except NoServerAvailable as error:
                if spool is None:
                    raise
                return self._to_spool(spool, request, error)

    def _put_now(self, request: PutRequest, prefer: str | Address | None = None) -> int:
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
        """Close every connection (a later put opens new ones) and stop the spool's
        flusher (what is spooled stays there for the next producer or
        ``tubeworker spool flush``)."""
        self._stop.set()
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
