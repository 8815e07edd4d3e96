"""Failover, written once for the blocking and the Trio producer: the order servers are
tried in (one that just failed goes last for ``demote_for`` seconds), what each reply or
error means for a put (stored, not stored here: try the next server, or a bug), and the
error when no server stored the job. The producers only do the I/O."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.contracts import Contract, make_contract
from tubeworker.envelope import BatchRef
from tubeworker.producing.checks import (
    PutRequest,
    Seconds,
    ServersArg,
    as_address,
    make_envelope,
    parse_servers,
    prepare_put,
    to_seconds,
)
from tubeworker.producing.errors import (
    InvalidJob,
    JobBuried,
    JobTooBig,
    NoServerAvailable,
    ServerDraining,
    ServerFailure,
    ServerOutOfMemory,
    ServerUnreachable,
)
from tubeworker.producing.spool import Receipt
from tubeworker.security.keys import KeyRing, load_keys

log = logging.getLogger("tubeworker.producer")

__all__ = [
    "BadReply",
    "Failover",
    "ProducerCore",
    "ProducerStatistics",
    "ServerHealth",
    "Unstored",
    "check_used",
    "lost_reason",
    "stored_id",
    "unreachable",
]


class SyncConnection(Protocol):
    """What :class:`Producer` needs of a connection (tests pass scripted ones)."""

    tube: str  # the tube in use
    max_job_size: int | None  # the server's, when known

    @property
    def usable(self) -> bool: ...

    def exchange(self, commands: Sequence[p.Command]) -> list[p.Reply]: ...

    def close(self) -> None: ...


class Unstored(Exception):
    """This server did not store the job: try the next one."""

    def __init__(self, failure: ServerFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class BadReply(Exception):
    """A reply a put cannot have: the connection is closed, and ProducerError raised."""


def lost_reason(exc: BaseException) -> str:
    """The OS's words for a failed connect or read ("connection refused"), else the message."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop(0)
        if isinstance(current, TimeoutError):
            return "no answer in time"
        if isinstance(current, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
            return f"TLS: {current.reason or current}".replace("_", " ").lower()
        if isinstance(current, OSError) and (current.errno or current.strerror):
            errno = current.errno  # socket.gaierror's is negative: its strerror is the words
            words = os.strerror(errno) if errno and errno > 0 else str(current.strerror)
            return words[:1].lower() + words[1:]
        if isinstance(current, BaseExceptionGroup):  # trio: every address failed
            seen.extend(current.exceptions)
        if current.__cause__ is not None:
            seen.append(current.__cause__)
    return str(exc)


def unreachable(server: Address, exc: BaseException, *, lost: bool) -> Unstored:
    what = "lost its connection" if lost else "cannot be reached"
    return Unstored(ServerFailure(str(server), ServerUnreachable, f"{what} ({lost_reason(exc)})"))


def check_used(reply: p.Reply, server: Address) -> None:
    if isinstance(reply, p.OutOfMemory):
        raise Unstored(
            ServerFailure(str(server), ServerOutOfMemory, "is out of memory (OUT_OF_MEMORY)")
        )
    if not isinstance(reply, p.Using):
        raise BadReply(f"{server} answered use with {type(reply).__name__}")


def stored_id(reply: p.Reply, server: Address, request: PutRequest) -> int:
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
            raise Unstored(ServerFailure(name, ServerDraining, reason))
        case p.OutOfMemory():
            reason = "is out of memory (OUT_OF_MEMORY: it cannot store jobs now)"
            raise Unstored(ServerFailure(name, ServerOutOfMemory, reason))
        case p.InternalError():
            raise Unstored(ServerFailure(name, NoServerAvailable, "answered INTERNAL_ERROR"))
        case p.JobTooBig():
            raise JobTooBig(
                f"job too big: {name} answered JOB_TOO_BIG to a body of {len(request.body)} bytes",
                len(request.body),
                None,
                name,
            )
    raise BadReply(f"{name} answered put with {type(reply).__name__}")


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
    duplicates_skipped: int = 0  # enqueues with unique_for that found their id's marker


@dataclass
class _Counters:
    jobs_put: int = 0
    server_failures: int = 0
    connections_opened: int = 0
    duplicates_skipped: int = 0

    def snapshot(self, health: ServerHealth) -> ProducerStatistics:
        demoted = tuple(sorted(str(a) for a in health.demoted()))
        return ProducerStatistics(
            self.jobs_put,
            self.server_failures,
            self.connections_opened,
            demoted,
            self.duplicates_skipped,
        )


class Failover:
    """One put's walk over the servers: try :attr:`servers` in order; tell each server's
    outcome with :meth:`stored` or :meth:`unstored`; :meth:`none_stored` is the error when
    the walk ends without one."""

    def __init__(self, core: ProducerCore, prefer: Address | None) -> None:
        self._core = core
        self.servers = core._health.order(core.servers, prefer)
        self.failures: list[ServerFailure] = []

    def stored(self, server: Address, job_id: int) -> int:
        self._core._health.succeeded(server)
        self._core._counters.jobs_put += 1
        return job_id

    def unstored(self, server: Address, unstored: Unstored) -> None:
        """``server`` did not store it (said to ``on_failure``): the next one is tried."""
        core = self._core
        core._health.failed(server)
        core._counters.server_failures += 1
        self.failures.append(unstored.failure)
        if core.on_failure is not None:
            core.on_failure(unstored.failure)

    def none_stored(self) -> NoServerAvailable:
        return _no_server(self.failures)


class ProducerCore:
    """What the blocking and the Trio producer share: their servers and limits, each
    server's health, their counters, the checks of a put and its failover."""

    def __init__(
        self,
        servers: ServersArg,
        *,
        connect_timeout: float,
        reply_timeout: float,
        max_job_size: int | None,
        demote_for: float,
        clock: Callable[[], float],
        on_failure: Callable[[ServerFailure], None] | None,
        signing_keys: str | os.PathLike[str] | KeyRing | None = None,
        encryption_keys: str | os.PathLike[str] | KeyRing | None = None,
    ) -> None:
        self.servers = parse_servers(servers)
        self.on_failure = on_failure
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.max_job_size = max_job_size
        self._clock = clock
        self._health = ServerHealth(demote_for, clock)
        self._counters = _Counters()
        self._contracts: dict[str, Contract] = {}
        # Keys envelopes are signed with (the first of the file): given, else this process's.
        self._signer = (
            signing_keys
            if isinstance(signing_keys, KeyRing) or signing_keys is None
            else load_keys(signing_keys)
        )
        # Keys secrets are sealed with (AES-256: 32-byte keys): given, else this process's.
        self._sealer = (
            encryption_keys
            if isinstance(encryption_keys, KeyRing) or encryption_keys is None
            else load_keys(encryption_keys, exact_bytes=32)
        )

    def register(
        self,
        task: str,
        payload: Any,
        *,
        version: int = 1,
        upcast: Mapping[int, Callable[[Any], Any]] | None = None,
    ) -> None:
        """Check every ``enqueue`` of ``task`` against ``payload`` (a pydantic model, a
        dataclass, a ``TypedDict``…) before anything is sent (:class:`PayloadInvalid`), and
        write ``version`` as the envelope's ``v``: the same declaration as the handler's
        ``@handler(payload=..., version=...)``, for processes that do not load handlers."""
        contract = make_contract(payload, version, upcast)
        if contract is None:
            self._contracts.pop(task, None)
        else:
            self._contracts[task] = contract

    def _envelope(
        self,
        task: str,
        payload: Any,
        id: str | None,
        secret: Any = None,
        batch: BatchRef | None = None,
    ) -> bytes:
        return make_envelope(
            task,
            payload,
            id=id,
            contracts=self._contracts,
            signer=self._signer,
            secret=secret,
            sealer=self._sealer,
            batch=batch,
        )

    @staticmethod
    def _unique_seconds(id: str | None, unique_for: Seconds | None) -> int | None:
        if unique_for is None:
            return None
        if id is None:
            raise InvalidJob("unique_for needs id= (the key jobs are told apart by)")
        return to_seconds(unique_for, "unique_for", minimum=1)

    def _duplicate(self, key: str, first: int) -> Receipt:
        self._counters.duplicates_skipped += 1
        log.info("duplicate enqueue skipped: %r was put as job %d", key, first)
        return Receipt(first, duplicate=True)

    @staticmethod
    def _dedup_unasked(key: str, server: Address, exc: Exception) -> None:
        log.warning(
            "unique_for: cannot check %r on %s (%s): put without the check", key, server, exc
        )

    def _request(
        self, tube: str, body: bytes | str, priority: int, delay: Seconds, ttr: Seconds
    ) -> PutRequest:
        return prepare_put(
            tube, body, priority=priority, delay=delay, ttr=ttr, max_job_size=self.max_job_size
        )

    def _failover(self, prefer: str | Address | None) -> Failover:
        return Failover(self, as_address(prefer))

    def _snapshot(self) -> ProducerStatistics:
        return self._counters.snapshot(self._health)
