"""beanstalkd's commands, sans I/O: one frozen record per command, its ``wire()`` bytes
and the replies it may be answered with.

A command validates its arguments in ``wire()`` and raises :class:`LocalProtocolError`
before anything is sent. ``expect`` (an :class:`_Expect`) is the set of replies the
command may get (the errors any command may get included) and, for commands answered
``OK <bytes>``, the decoder of that body (from :mod:`~tubeworker.beanstalk.replies`);
:class:`~tubeworker.beanstalk.connection.Connection` checks every reply against it. The
commands are one flat table, in the order of the protocol document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, Final, TypeAlias

from tubeworker.beanstalk.replies import (
    BadFormat,
    Buried,
    DeadlineSoon,
    Deleted,
    Draining,
    ExpectedCrlf,
    Found,
    Inserted,
    InternalError,
    JobStats,
    JobTooBig,
    Kicked,
    NotFound,
    NotIgnored,
    OutOfMemory,
    Paused,
    Released,
    Reply,
    Reserved,
    ServerStats,
    TimedOut,
    Touched,
    TubeList,
    TubeStats,
    UnknownCommand,
    Using,
    Watching,
    _ok_job_stats,
    _ok_server_stats,
    _ok_tube_list,
    _ok_tube_stats,
)
from tubeworker.errors import LocalProtocolError
from tubeworker.frozen import frozen

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_TTR",
    "MAX_INT",
    "MAX_JOB_ID",
    "MAX_RESERVE_TIMEOUT",
    "MAX_TUBE_NAME",
    "Bury",
    "Command",
    "Delete",
    "Ignore",
    "Kick",
    "KickJob",
    "ListTubeUsed",
    "ListTubes",
    "ListTubesWatched",
    "PauseTube",
    "Peek",
    "PeekBuried",
    "PeekDelayed",
    "PeekReady",
    "Put",
    "Quit",
    "Release",
    "Reserve",
    "ReserveJob",
    "ReserveWithTimeout",
    "Stats",
    "StatsJob",
    "StatsTube",
    "Touch",
    "Use",
    "Watch",
    "validate_tube_name",
]

DEFAULT_PRIORITY: Final = 1024  # "not urgent" (urgent is < 1024); what Pheanstalk and Laravel use
DEFAULT_TTR: Final = 60
MAX_INT: Final = 2**32 - 1  # priorities, delays, TTRs and pauses are unsigned 32-bit
MAX_RESERVE_TIMEOUT: Final = 2**31 - 1  # beanstalkd 1.12 misparses larger or negative (B7)
MAX_JOB_ID: Final = 2**64 - 1
MAX_TUBE_NAME: Final = 200

_TUBE_NAME = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9\-+/;.$_()]*\Z")

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
