"""The beanstalkd protocol (1.12), sans I/O: the one import path for its names.

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

This module re-exports; the code is split by concern, each file importing only those
before it:

- ``replies.py``: :class:`Reply` and its subclasses, the stats records, how ``OK <bytes>``
  bodies are decoded;
- ``commands.py``: :class:`Command` and its subclasses (one flat table), argument
  validation, the replies each command may get;
- ``connection.py``: :class:`Connection` (the pipelined parser, its states and the tables
  it reads reply lines with) and :data:`NEED_DATA`.
"""

from __future__ import annotations

from tubeworker.beanstalk.commands import (
    DEFAULT_PRIORITY,
    DEFAULT_TTR,
    MAX_INT,
    MAX_RESERVE_TIMEOUT,
    Bury,
    Command,
    Delete,
    Ignore,
    Kick,
    KickJob,
    ListTubes,
    ListTubesWatched,
    ListTubeUsed,
    PauseTube,
    Peek,
    PeekBuried,
    PeekDelayed,
    PeekReady,
    Put,
    Quit,
    Release,
    Reserve,
    ReserveJob,
    ReserveWithTimeout,
    Stats,
    StatsJob,
    StatsTube,
    Touch,
    Use,
    Watch,
    validate_tube_name,
)

# Importable from here as before the split, though not in __all__.
from tubeworker.beanstalk.commands import MAX_JOB_ID as MAX_JOB_ID
from tubeworker.beanstalk.commands import MAX_TUBE_NAME as MAX_TUBE_NAME
from tubeworker.beanstalk.connection import NEED_DATA, Connection
from tubeworker.beanstalk.replies import (
    BadFormat,
    Buried,
    DeadlineSoon,
    Deleted,
    Draining,
    ErrorReply,
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
)

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
