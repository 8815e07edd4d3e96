"""The beanstalkd protocol (1.12), sans I/O.

Commands become bytes with :meth:`Connection.send`; bytes from the server go in with
:meth:`Connection.receive_data` and typed replies come out of :meth:`Connection.next_event`,
which returns :data:`NEED_DATA` until a whole reply is buffered. Nothing here opens a
socket, sleeps or logs (in the style of h11 and wsproto).

Several commands may be sent before any reply is read (pipelining): beanstalkd answers
in order, and each reply is checked against the command it answers. A reply the command
cannot have, or bytes that do not parse, raise :class:`RemoteProtocolError` and poison the
connection: every later call raises it again. Arguments are validated before any state
changes, so a :class:`LocalProtocolError` leaves the connection usable.

Error replies (``NOT_FOUND``, ``TIMED_OUT``, ``JOB_TOO_BIG``, ``OUT_OF_MEMORY``, …) are
ordinary replies here; the Trio client turns them into greenstalk's exceptions.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from enum import Enum
from typing import Any, ClassVar, Final, TypeAlias

from tubeworker.errors import LocalProtocolError, RemoteProtocolError
from tubeworker.frozen import frozen

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_TTR",
    "MAX_INT",
    "MAX_RESERVE_TIMEOUT",
    "NEED_DATA",
    "BadFormat",
    "Buried",
    "Bury",
    "Command",
    "Connection",
    "DeadlineSoon",
    "Delete",
    "Deleted",
    "Draining",
    "ErrorReply",
    "ExpectedCrlf",
    "Found",
    "Ignore",
    "Inserted",
    "InternalError",
    "JobStats",
    "JobTooBig",
    "Kick",
    "KickJob",
    "Kicked",
    "ListTubeUsed",
    "ListTubes",
    "ListTubesWatched",
    "NotFound",
    "NotIgnored",
    "OutOfMemory",
    "PauseTube",
    "Paused",
    "Peek",
    "PeekBuried",
    "PeekDelayed",
    "PeekReady",
    "Put",
    "Quit",
    "Release",
    "Released",
    "Reply",
    "Reserve",
    "ReserveJob",
    "ReserveWithTimeout",
    "Reserved",
    "ServerStats",
    "Stats",
    "StatsJob",
    "StatsTube",
    "TimedOut",
    "Touch",
    "Touched",
    "TubeList",
    "TubeStats",
    "UnknownCommand",
    "Use",
    "Using",
    "Watch",
    "Watching",
    "validate_tube_name",
]

DEFAULT_PRIORITY: Final = 1024  # "not urgent" (urgent is < 1024); what Pheanstalk and Laravel use
DEFAULT_TTR: Final = 60
MAX_INT: Final = 2**32 - 1  # priorities, delays, TTRs and pauses are unsigned 32-bit
MAX_RESERVE_TIMEOUT: Final = 2**31 - 1  # beanstalkd 1.12 misparses larger or negative (B7)
MAX_JOB_ID: Final = 2**64 - 1
MAX_TUBE_NAME: Final = 200
# The longest reply line beanstalkd writes is short ("RESERVED <u64> <u32>"); anything much
# longer without a CRLF is garbage, not a slow reply.
_MAX_REPLY_LINE: Final = 256

_TUBE_NAME = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9\-+/;.$_()]*\Z")


class _NeedData(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""Returned by :meth:`Connection.next_event` when no whole reply is buffered yet."""


# --------------------------------------------------------------------------- validation


def validate_tube_name(name: str, argument: str = "tube") -> bytes:
    """Return the wire form of a tube name, or raise LocalProtocolError saying why not."""
    if not isinstance(name, str):
        raise LocalProtocolError(f"{argument} must be a str, got {type(name).__name__}")
    raw = name.encode("ascii", "replace")
    if not 1 <= len(raw) <= MAX_TUBE_NAME:
        raise LocalProtocolError(
            f"{argument} {name!r}: must be 1 to {MAX_TUBE_NAME} bytes, got {len(raw)}"
        )
    if not _TUBE_NAME.match(name):
        raise LocalProtocolError(
            f"{argument} {name!r}: only A-Z a-z 0-9 - + / ; . $ _ ( ) are allowed, "
            "and it must not start with '-'"
        )
    return raw


def _check_int(value: int, argument: str, maximum: int, minimum: int = 0) -> int:
    # bool is an int subclass; True as a priority is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalProtocolError(f"{argument} must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise LocalProtocolError(f"{argument} must be in {minimum}..{maximum}, got {value}")
    return value


# --------------------------------------------------------------------------- replies


@frozen
class Reply:
    """Base class of everything :meth:`Connection.next_event` returns."""


@frozen
class Inserted(Reply):
    id: int


@frozen
class Buried(Reply):
    """``BURIED`` after bury; ``BURIED <id>`` when put or release had to bury (server OOM)."""

    id: int | None = None


@frozen
class Using(Reply):
    tube: str


@frozen
class Reserved(Reply):
    id: int
    body: bytes


@frozen
class Found(Reply):
    id: int
    body: bytes


@frozen
class DeadlineSoon(Reply):
    pass


@frozen
class TimedOut(Reply):
    pass


@frozen
class Deleted(Reply):
    pass


@frozen
class Released(Reply):
    pass


@frozen
class Touched(Reply):
    pass


@frozen
class NotFound(Reply):
    pass


@frozen
class Watching(Reply):
    count: int


@frozen
class NotIgnored(Reply):
    pass


@frozen
class Kicked(Reply):
    """``KICKED <count>`` after kick; ``KICKED`` (count None) after kick-job."""

    count: int | None = None


@frozen
class Paused(Reply):
    pass


@frozen
class TubeList(Reply):
    tubes: tuple[str, ...]


@frozen
class ErrorReply(Reply):
    """A reply saying the server could not do what was asked."""


@frozen
class OutOfMemory(ErrorReply):
    pass


@frozen
class InternalError(ErrorReply):
    pass


@frozen
class BadFormat(ErrorReply):
    pass


@frozen
class UnknownCommand(ErrorReply):
    pass


@frozen
class ExpectedCrlf(ErrorReply):
    pass


@frozen
class JobTooBig(ErrorReply):
    pass


@frozen
class Draining(ErrorReply):
    pass


@frozen
class JobStats(Reply):
    """``stats-job``: what RESERVED does not say (priority, TTR, counters)."""

    id: int
    tube: str
    state: str  # ready | delayed | reserved | buried
    pri: int
    age: int
    delay: int
    ttr: int
    time_left: int
    file: int
    reserves: int
    timeouts: int
    releases: int
    buries: int
    kicks: int


@frozen
class TubeStats(Reply):
    name: str
    current_jobs_urgent: int
    current_jobs_ready: int
    current_jobs_reserved: int
    current_jobs_delayed: int
    current_jobs_buried: int
    total_jobs: int
    current_using: int
    current_watching: int
    current_waiting: int
    cmd_delete: int
    cmd_pause_tube: int
    pause: int
    pause_time_left: int


@frozen
class ServerStats(Reply):
    """``stats``. Keys a server does not print keep their defaults (other versions differ)."""

    current_jobs_urgent: int = 0
    current_jobs_ready: int = 0
    current_jobs_reserved: int = 0
    current_jobs_delayed: int = 0
    current_jobs_buried: int = 0
    cmd_put: int = 0
    cmd_peek: int = 0
    cmd_peek_ready: int = 0
    cmd_peek_delayed: int = 0
    cmd_peek_buried: int = 0
    cmd_reserve: int = 0
    cmd_reserve_with_timeout: int = 0
    cmd_delete: int = 0
    cmd_release: int = 0
    cmd_use: int = 0
    cmd_watch: int = 0
    cmd_ignore: int = 0
    cmd_bury: int = 0
    cmd_kick: int = 0
    cmd_touch: int = 0
    cmd_stats: int = 0
    cmd_stats_job: int = 0
    cmd_stats_tube: int = 0
    cmd_list_tubes: int = 0
    cmd_list_tube_used: int = 0
    cmd_list_tubes_watched: int = 0
    cmd_pause_tube: int = 0
    job_timeouts: int = 0
    total_jobs: int = 0
    max_job_size: int = 65535
    current_tubes: int = 0
    current_connections: int = 0
    current_producers: int = 0
    current_workers: int = 0
    current_waiting: int = 0
    total_connections: int = 0
    pid: int = 0
    version: str = ""
    rusage_utime: float = 0.0
    rusage_stime: float = 0.0
    uptime: int = 0
    binlog_oldest_index: int = 0
    binlog_current_index: int = 0
    binlog_records_migrated: int = 0
    binlog_records_written: int = 0
    binlog_max_size: int = 0
    draining: bool = False
    id: str = ""  # random per server start: a change means ids may have been reused (B10)
    hostname: str = ""
    os: str = ""
    platform: str = ""


# No-field replies are immutable; share one instance of each.
_DEADLINE_SOON: Final = DeadlineSoon()
_TIMED_OUT: Final = TimedOut()
_DELETED: Final = Deleted()
_RELEASED: Final = Released()
_TOUCHED: Final = Touched()
_NOT_FOUND: Final = NotFound()
_NOT_IGNORED: Final = NotIgnored()
_PAUSED: Final = Paused()
_BURIED: Final = Buried()
_KICKED: Final = Kicked()

_ERRORS_ANY_COMMAND: Final[frozenset[type[Reply]]] = frozenset(
    {OutOfMemory, InternalError, BadFormat, UnknownCommand}
)

# --------------------------------------------------------------------------- commands

_OkDecoder: TypeAlias = Callable[[bytes], Reply]


@frozen
class _Expect:
    """What a command may be answered with, and how to read an ``OK <bytes>`` body."""

    replies: frozenset[type[Reply]]
    ok: _OkDecoder | None = None


@frozen
class Command:
    """Base class of commands. ``wire()`` validates and returns the exact bytes."""

    expect: ClassVar[_Expect | None]  # None: no reply (quit)

    def wire(self) -> bytes:
        raise NotImplementedError


def _expect(*replies: type[Reply], ok: _OkDecoder | None = None) -> _Expect:
    return _Expect(frozenset(replies) | _ERRORS_ANY_COMMAND, ok)


_EXPECT_PUT = _expect(Inserted, Buried, ExpectedCrlf, JobTooBig, Draining)
_EXPECT_RESERVE = _expect(Reserved, DeadlineSoon, TimedOut)
_EXPECT_PEEK = _expect(Found, NotFound)


@frozen
class Put(Command):
    body: bytes
    priority: int = DEFAULT_PRIORITY
    delay: int = 0
    ttr: int = DEFAULT_TTR
    expect: ClassVar[_Expect | None] = _EXPECT_PUT

    def wire(self) -> bytes:
        if not isinstance(self.body, bytes | bytearray | memoryview):
            raise LocalProtocolError(f"body must be bytes, got {type(self.body).__name__}")
        pri = _check_int(self.priority, "priority", MAX_INT)
        delay = _check_int(self.delay, "delay", MAX_INT)
        ttr = _check_int(self.ttr, "ttr", MAX_INT)
        body = bytes(self.body)
        return b"put %d %d %d %d\r\n%b\r\n" % (pri, delay, ttr, len(body), body)


@frozen
class Use(Command):
    tube: str
    expect: ClassVar[_Expect | None] = _expect(Using)

    def wire(self) -> bytes:
        return b"use %b\r\n" % validate_tube_name(self.tube)


@frozen
class Reserve(Command):
    """Blocks until a job is ready in a watched tube. Holds the connection meanwhile."""

    expect: ClassVar[_Expect | None] = _EXPECT_RESERVE

    def wire(self) -> bytes:
        return b"reserve\r\n"


@frozen
class ReserveWithTimeout(Command):
    timeout: int
    expect: ClassVar[_Expect | None] = _EXPECT_RESERVE

    def wire(self) -> bytes:
        t = self.timeout
        if type(t) is not int or not 0 <= t <= MAX_RESERVE_TIMEOUT:  # (per job: no call)
            _check_int(t, "timeout", MAX_RESERVE_TIMEOUT)
        return b"reserve-with-timeout %d\r\n" % t


@frozen
class ReserveJob(Command):
    id: int
    expect: ClassVar[_Expect | None] = _expect(Reserved, NotFound)

    def wire(self) -> bytes:
        return b"reserve-job %d\r\n" % _check_int(self.id, "id", MAX_JOB_ID)


@frozen
class Delete(Command):
    id: int
    expect: ClassVar[_Expect | None] = _expect(Deleted, NotFound)

    def wire(self) -> bytes:
        job_id = self.id
        if type(job_id) is not int or not 0 <= job_id <= MAX_JOB_ID:  # (per job: no call)
            _check_int(job_id, "id", MAX_JOB_ID)
        return b"delete %d\r\n" % job_id


@frozen
class Release(Command):
    id: int
    priority: int = DEFAULT_PRIORITY
    delay: int = 0
    expect: ClassVar[_Expect | None] = _expect(Released, Buried, NotFound)

    def wire(self) -> bytes:
        return b"release %d %d %d\r\n" % (
            _check_int(self.id, "id", MAX_JOB_ID),
            _check_int(self.priority, "priority", MAX_INT),
            _check_int(self.delay, "delay", MAX_INT),
        )


@frozen
class Bury(Command):
    id: int
    priority: int = DEFAULT_PRIORITY
    expect: ClassVar[_Expect | None] = _expect(Buried, NotFound)

    def wire(self) -> bytes:
        return b"bury %d %d\r\n" % (
            _check_int(self.id, "id", MAX_JOB_ID),
            _check_int(self.priority, "priority", MAX_INT),
        )


@frozen
class Touch(Command):
    id: int
    expect: ClassVar[_Expect | None] = _expect(Touched, NotFound)

    def wire(self) -> bytes:
        return b"touch %d\r\n" % _check_int(self.id, "id", MAX_JOB_ID)


@frozen
class Watch(Command):
    tube: str
    expect: ClassVar[_Expect | None] = _expect(Watching)

    def wire(self) -> bytes:
        return b"watch %b\r\n" % validate_tube_name(self.tube)


@frozen
class Ignore(Command):
    tube: str
    expect: ClassVar[_Expect | None] = _expect(Watching, NotIgnored)

    def wire(self) -> bytes:
        return b"ignore %b\r\n" % validate_tube_name(self.tube)


@frozen
class Peek(Command):
    id: int
    expect: ClassVar[_Expect | None] = _EXPECT_PEEK

    def wire(self) -> bytes:
        return b"peek %d\r\n" % _check_int(self.id, "id", MAX_JOB_ID)


@frozen
class PeekReady(Command):
    expect: ClassVar[_Expect | None] = _EXPECT_PEEK

    def wire(self) -> bytes:
        return b"peek-ready\r\n"


@frozen
class PeekDelayed(Command):
    expect: ClassVar[_Expect | None] = _EXPECT_PEEK

    def wire(self) -> bytes:
        return b"peek-delayed\r\n"


@frozen
class PeekBuried(Command):
    expect: ClassVar[_Expect | None] = _EXPECT_PEEK

    def wire(self) -> bytes:
        return b"peek-buried\r\n"


@frozen
class Kick(Command):
    """Kick up to ``bound`` buried (or, if none, delayed) jobs of the used tube."""

    bound: int
    expect: ClassVar[_Expect | None] = _expect(Kicked)

    def wire(self) -> bytes:
        return b"kick %d\r\n" % _check_int(self.bound, "bound", MAX_INT)


@frozen
class KickJob(Command):
    id: int
    expect: ClassVar[_Expect | None] = _expect(Kicked, NotFound)

    def wire(self) -> bytes:
        return b"kick-job %d\r\n" % _check_int(self.id, "id", MAX_JOB_ID)


# The stats decoders are defined below; the commands name them through these thunks so the
# dataclass definitions can stay in protocol order.
# beanstalkd 1.12 writes stats-job's keys in this order (prot.c fmt_job_stats).
_JOB_STATS = re.compile(
    rb"---\nid: (\d+)\ntube: ([^\n]+)\nstate: (\w+)\npri: (\d+)\nage: (\d+)\n"
    rb"delay: (\d+)\nttr: (\d+)\ntime-left: (-?\d+)\nfile: (\d+)\nreserves: (\d+)\n"
    rb"timeouts: (\d+)\nreleases: (\d+)\nburies: (\d+)\nkicks: (\d+)\n\Z"
)


def _ok_job_stats(body: bytes) -> Reply:
    # On every job's path: one match of beanstalkd's exact layout. Anything else (another
    # version's extra keys, garbage) takes the generic decoder, which says what is wrong.
    m = _JOB_STATS.match(body)
    if m is None:
        return _decode_record(body, JobStats)
    job_id, tube, state, *counts = m.groups()
    return JobStats(int(job_id), _name(tube), _name(state), *map(int, counts))


# Tube and state names as str, decoded once (they repeat job after job); bounded.
_NAMES: dict[bytes, str] = {}


def _name(raw: bytes) -> str:
    name = _NAMES.get(raw)
    if name is None:
        name = raw.decode("ascii", "replace")
        if len(_NAMES) < 10_000:
            _NAMES[raw] = name
    return name


_TUBE_STATS: Final = re.compile(
    rb"---\nname: ([^\n]+)\ncurrent-jobs-urgent: (\d+)\ncurrent-jobs-ready: (\d+)\n"
    rb"current-jobs-reserved: (\d+)\ncurrent-jobs-delayed: (\d+)\ncurrent-jobs-buried: (\d+)\n"
    rb"total-jobs: (\d+)\ncurrent-using: (\d+)\ncurrent-watching: (\d+)\n"
    rb"current-waiting: (\d+)\ncmd-delete: (\d+)\ncmd-pause-tube: (\d+)\npause: (\d+)\n"
    rb"pause-time-left: (\d+)\n\Z"
)


def _ok_tube_stats(body: bytes) -> Reply:
    # On a batch job's path (its end is counted): beanstalkd's exact layout, else the
    # generic decoder.
    m = _TUBE_STATS.match(body)
    if m is None:
        return _decode_record(body, TubeStats)
    g = m.groups()
    return TubeStats(g[0].decode("ascii", "replace"), *(int(v) for v in g[1:]))


def _ok_server_stats(body: bytes) -> Reply:
    return _decode_record(body, ServerStats, partial=True)


def _ok_tube_list(body: bytes) -> Reply:
    return TubeList(_decode_list(body))


@frozen
class StatsJob(Command):
    id: int
    expect: ClassVar[_Expect | None] = _expect(JobStats, NotFound, ok=_ok_job_stats)

    def wire(self) -> bytes:
        job_id = self.id
        if type(job_id) is not int or not 0 <= job_id <= MAX_JOB_ID:  # (per job: no call)
            _check_int(job_id, "id", MAX_JOB_ID)
        return b"stats-job %d\r\n" % job_id


@frozen
class StatsTube(Command):
    tube: str
    expect: ClassVar[_Expect | None] = _expect(TubeStats, NotFound, ok=_ok_tube_stats)

    def wire(self) -> bytes:
        return b"stats-tube %b\r\n" % validate_tube_name(self.tube)


@frozen
class Stats(Command):
    expect: ClassVar[_Expect | None] = _expect(ServerStats, ok=_ok_server_stats)

    def wire(self) -> bytes:
        return b"stats\r\n"


@frozen
class ListTubes(Command):
    expect: ClassVar[_Expect | None] = _expect(TubeList, ok=_ok_tube_list)

    def wire(self) -> bytes:
        return b"list-tubes\r\n"


@frozen
class ListTubeUsed(Command):
    expect: ClassVar[_Expect | None] = _expect(Using)

    def wire(self) -> bytes:
        return b"list-tube-used\r\n"


@frozen
class ListTubesWatched(Command):
    expect: ClassVar[_Expect | None] = _expect(TubeList, ok=_ok_tube_list)

    def wire(self) -> bytes:
        return b"list-tubes-watched\r\n"


@frozen
class PauseTube(Command):
    """Pause reserves from ``tube`` for ``delay`` seconds, for every client (0 lifts it)."""

    tube: str
    delay: int
    expect: ClassVar[_Expect | None] = _expect(Paused, NotFound)

    def wire(self) -> bytes:
        return b"pause-tube %b %d\r\n" % (
            validate_tube_name(self.tube),
            _check_int(self.delay, "delay", MAX_INT),
        )


@frozen
class Quit(Command):
    """Close the connection. No reply; the server closes its end."""

    expect: ClassVar[_Expect | None] = None

    def wire(self) -> bytes:
        return b"quit\r\n"


# --------------------------------------------------------------------------- decoding


def _parse_uint(token: bytes, what: str) -> int:
    # bytes.isdigit is ASCII-only; int() alone would accept "+1", " 1" and "1_0".
    if not token.isdigit() or len(token) > 20:
        raise RemoteProtocolError(f"{what} is not an unsigned integer: {token[:40]!r}")
    return int(token)


def _parse_scalar(value: str) -> int | float | bool | str:
    if value.removeprefix("-").isdigit() and value.isascii():
        return int(value)
    if value in ("true", "false"):
        return value == "true"
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    try:
        return float(value)
    except ValueError:
        return value


def _decode_yaml_map(body: bytes) -> dict[str, int | float | bool | str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"stats body is not UTF-8: {exc}") from None
    lines = text.split("\n")
    if lines[0] != "---":
        raise RemoteProtocolError(f"stats body does not start with '---': {text[:40]!r}")
    out: dict[str, int | float | bool | str] = {}
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise RemoteProtocolError(f"stats line is not 'key: value': {line[:80]!r}")
        out[key.replace("-", "_")] = _parse_scalar(value)
    return out


_FIELD_TYPES: dict[type[Reply], Mapping[str, type]] = {}


def _field_types(record: type[Reply]) -> Mapping[str, type]:
    known = _FIELD_TYPES.get(record)
    if known is None:
        names = {"int": int, "str": str, "float": float, "bool": bool}
        known = {f.name: names[str(f.type)] for f in fields(record)}
        _FIELD_TYPES[record] = known
    return known


def _decode_record(body: bytes, record: type[Reply], *, partial: bool = False) -> Reply:
    raw = _decode_yaml_map(body)
    values: dict[str, Any] = {}
    for name, kind in _field_types(record).items():
        if name not in raw:
            if partial:
                continue
            raise RemoteProtocolError(f"{record.__name__}: missing key {name!r}")
        value = raw[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif kind is str and not isinstance(value, str):
            value = str(value).lower() if isinstance(value, bool) else str(value)
        if type(value) is not kind:
            raise RemoteProtocolError(
                f"{record.__name__}: key {name!r} should be {kind.__name__}, got {value!r}"
            )
        values[name] = value
    return record(**values)


def _decode_list(body: bytes) -> tuple[str, ...]:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError("tube list is not ASCII") from None
    lines = text.split("\n")
    if lines[0] != "---":
        raise RemoteProtocolError(f"list body does not start with '---': {text[:40]!r}")
    names = []
    for line in lines[1:]:
        if not line:
            continue
        if not line.startswith("- "):
            raise RemoteProtocolError(f"list line is not '- name': {line[:80]!r}")
        names.append(line[2:])
    return tuple(names)


# Replies that are a bare word, and those of the form "WORD <uint>".
_BARE: Final[dict[bytes, Reply]] = {
    b"DELETED": _DELETED,
    b"RELEASED": _RELEASED,
    b"TOUCHED": _TOUCHED,
    b"NOT_FOUND": _NOT_FOUND,
    b"DEADLINE_SOON": _DEADLINE_SOON,
    b"TIMED_OUT": _TIMED_OUT,
    b"NOT_IGNORED": _NOT_IGNORED,
    b"PAUSED": _PAUSED,
    b"BURIED": _BURIED,
    b"KICKED": _KICKED,
    b"OUT_OF_MEMORY": OutOfMemory(),
    b"INTERNAL_ERROR": InternalError(),
    b"BAD_FORMAT": BadFormat(),
    b"UNKNOWN_COMMAND": UnknownCommand(),
    b"EXPECTED_CRLF": ExpectedCrlf(),
    b"JOB_TOO_BIG": JobTooBig(),
    b"DRAINING": Draining(),
}
_WITH_UINT: Final[dict[bytes, Callable[[int], Reply]]] = {
    b"INSERTED": Inserted,
    b"BURIED": Buried,
    b"WATCHING": Watching,
    b"KICKED": Kicked,
}
_WITH_BODY: Final = (b"RESERVED", b"FOUND", b"OK")


class _State(Enum):
    OPEN = "open"
    CLOSED = "closed"  # quit sent, or EOF received with nothing outstanding
    ERROR = "error"


class Connection:
    """One beanstalkd connection's protocol state: pending commands and the read buffer."""

    __slots__ = ("_buffer", "_eof", "_error", "_pending", "_state", "max_job_size")

    def __init__(self, *, max_job_size: int | None = None) -> None:
        self._buffer = bytearray()
        self._pending: collections.deque[_Expect] = collections.deque()
        self._state = _State.OPEN
        self._error: RemoteProtocolError | None = None
        self._eof = False
        #: When known (from ``stats``), bodies longer than this are refused before sending.
        self.max_job_size = max_job_size

    # ---- state

    @property
    def pending(self) -> int:
        """How many replies are still owed by the server."""
        return len(self._pending)

    @property
    def poisoned(self) -> bool:
        return self._state is _State.ERROR

    def _fail(self, message: str) -> RemoteProtocolError:
        self._state = _State.ERROR
        self._error = RemoteProtocolError(message)
        return self._error

    def _check_open(self) -> None:
        if self._state is _State.ERROR:
            assert self._error is not None
            raise RemoteProtocolError(f"connection is poisoned: {self._error}")
        if self._state is _State.CLOSED:
            raise LocalProtocolError("connection is closed (quit sent or EOF received)")

    # ---- sending

    def send(self, command: Command) -> bytes:
        """Validate ``command`` and return its bytes; its reply is now expected."""
        self._check_open()
        data = self._wire(command)
        self._commit(command)
        return data

    def send_many(self, commands: Iterable[Command]) -> bytes:
        """Validate every command, then return their bytes joined (one write).

        All or nothing: if one command is illegal, none is expected and nothing is returned.
        """
        self._check_open()
        datas: list[bytes] = []
        expects: list[_Expect] = []
        closing = False
        for command in commands:
            if closing:
                raise LocalProtocolError("quit must be the last command of a pipeline")
            datas.append(self._wire(command) if isinstance(command, Put) else command.wire())
            expect = command.expect
            if expect is None:
                closing = True
            else:
                expects.append(expect)
        self._pending.extend(expects)  # only now: all or nothing
        if closing:
            self._state = _State.CLOSED
        return b"".join(datas)

    def _wire(self, command: Command) -> bytes:
        data = command.wire()
        if (
            self.max_job_size is not None
            and isinstance(command, Put)
            and len(command.body) > self.max_job_size
        ):
            raise LocalProtocolError(
                f"body is {len(command.body)} bytes; the server's max-job-size is "
                f"{self.max_job_size}"
            )
        return data

    def _commit(self, command: Command) -> None:
        if command.expect is None:
            self._state = _State.CLOSED
        else:
            self._pending.append(command.expect)

    # ---- receiving

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the server; ``b""`` means the server closed its end."""
        if self._state is _State.ERROR:
            self._check_open()
        if data:
            if self._eof:
                raise self._fail("data received after EOF")
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Reply | _NeedData:
        """The next whole reply, or NEED_DATA. Raises RemoteProtocolError on garbage."""
        if self._state is _State.ERROR:
            self._check_open()
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            # One place poisons the connection, whatever part of the parser objected.
            if self._state is not _State.ERROR:
                self._state = _State.ERROR
                self._error = exc
            raise

    def _next_event(self) -> Reply | _NeedData:
        buf = self._buffer
        if not self._pending:
            if buf:
                raise self._fail(f"unsolicited data from server: {bytes(buf[:40])!r}")
            if self._eof:
                self._state = _State.CLOSED
            return NEED_DATA
        end = buf.find(b"\r\n", 0, _MAX_REPLY_LINE)
        if end < 0:
            if len(buf) >= _MAX_REPLY_LINE:
                raise self._fail(f"reply line too long: {bytes(buf[:40])!r}…")
            return self._need_data()
        line = bytes(buf[:end])
        reply = _BARE.get(line)
        if reply is not None:  # DELETED, TIMED_OUT, …: most replies, parsed by one lookup
            expect = self._pending[0]
            if type(reply) not in expect.replies:
                raise self._fail(f"{type(reply).__name__} is not a possible reply here")
            self._pending.popleft()
            del buf[: end + 2]
            return reply
        words = line.split(b" ")
        head = words[0]
        if head in _WITH_BODY:
            return self._body_reply(words, end)
        reply = self._line_reply(words)
        del buf[: end + 2]
        return self._accept(reply)

    def _need_data(self) -> _NeedData:
        if self._eof:
            raise self._fail(f"server closed the connection with {self.pending} replies owed")
        return NEED_DATA

    def _line_reply(self, words: list[bytes]) -> Reply:
        head = words[0]
        if len(words) == 1 and head in _BARE:
            return _BARE[head]
        if len(words) == 2:
            if head in _WITH_UINT:
                return _WITH_UINT[head](_parse_uint(words[1], head.decode()))
            if head == b"USING":
                try:
                    name = words[1].decode("ascii")
                except UnicodeDecodeError:
                    raise self._fail("USING with a non-ASCII tube name") from None
                return Using(name)
        raise self._fail(f"unknown reply: {b' '.join(words)[:80]!r}")

    def _body_header(self, words: list[bytes]) -> tuple[int, int]:
        """(job id, body size) of ``RESERVED <id> <n>``, ``FOUND <id> <n>`` or ``OK <n>``."""
        head = words[0]
        if head == b"OK":
            if len(words) != 2:
                raise RemoteProtocolError("OK takes one argument")
            return 0, _parse_uint(words[1], "OK size")
        if len(words) != 3:
            raise RemoteProtocolError(f"{head.decode()} takes two arguments")
        return _parse_uint(words[1], "job id"), _parse_uint(words[2], "body size")

    def _body_reply(self, words: list[bytes], end: int) -> Reply | _NeedData:
        head = words[0]
        if (
            len(words) == 3
            and head != b"OK"
            and words[1].isdigit()
            and words[2].isdigit()
            and len(words[1]) <= 20
            and len(words[2]) <= 20
        ):  # RESERVED <id> <n> well formed (per job: no call); else the header says why
            job_id, size = int(words[1]), int(words[2])
        else:
            job_id, size = self._body_header(words)
        start = end + 2
        stop = start + size
        buf = self._buffer
        if len(buf) < stop + 2:
            return self._need_data()
        if buf[stop : stop + 2] != b"\r\n":
            raise self._fail(f"{head.decode()} body of {size} bytes is not followed by CRLF")
        body = bytes(buf[start:stop])
        del buf[: stop + 2]
        expect = self._pending[0]
        reply: Reply
        if head == b"RESERVED":
            reply = Reserved(job_id, body)
        elif head == b"FOUND":
            reply = Found(job_id, body)
        elif expect.ok is None:
            raise self._fail("OK reply to a command that has no OK reply")
        else:
            reply = expect.ok(body)
        if type(reply) not in expect.replies:
            raise self._fail(f"{type(reply).__name__} is not a possible reply here")
        self._pending.popleft()
        return reply

    def _accept(self, reply: Reply) -> Reply:
        expect = self._pending[0]
        if type(reply) not in expect.replies:
            raise self._fail(f"{type(reply).__name__} is not a possible reply here")
        self._pending.popleft()
        return reply
