"""beanstalkd's replies, sans I/O: what :meth:`Connection.next_event` returns, and how
their numbers and ``OK <bytes>`` bodies are read.

Every reply is a frozen record named with the protocol's words (``Reserved(id, body)``,
``DeadlineSoon``, ``NotFound``, …); error replies derive from :class:`ErrorReply`. The
stats records (``JobStats``, ``TubeStats``, ``ServerStats``) are decoded from the server's
YAML-ish bodies: the layout beanstalkd 1.12 writes matches one regular expression, anything
else goes through the generic decoder, which says what is wrong;
:mod:`~tubeworker.beanstalk.commands` names the body decoders in its expectations, and
:mod:`~tubeworker.beanstalk.connection` reads the reply lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Final

from tubeworker.errors import RemoteProtocolError
from tubeworker.frozen import frozen

__all__ = [
    "BadFormat",
    "Buried",
    "DeadlineSoon",
    "Deleted",
    "Draining",
    "ErrorReply",
    "ExpectedCrlf",
    "Found",
    "Inserted",
    "InternalError",
    "JobStats",
    "JobTooBig",
    "Kicked",
    "NotFound",
    "NotIgnored",
    "OutOfMemory",
    "Paused",
    "Released",
    "Reply",
    "Reserved",
    "ServerStats",
    "TimedOut",
    "Touched",
    "TubeList",
    "TubeStats",
    "UnknownCommand",
    "Using",
    "Watching",
]

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


# --------------------------------------------------------------------------- OK bodies

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
