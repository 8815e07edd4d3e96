"""The admin operations on beanstalkd, below every front end: the ``tubeworker`` admin
commands (``worker/cli``) and the dashboard (``worker/control``) both call them.

Each operation opens its own connection (:func:`admin_client`), does one thing, and returns
what happened; printing and HTTP are the callers'. Expected failures are
:class:`AdminError` with a sysexits code (the CLI exits with it; the dashboard maps it to an
HTTP status), or greenstalk's and our connection errors, which :func:`error_line` words.
Bodies are rendered for display by :func:`render_body` (safe on a terminal and as text in
a page: JSON pretty-printed, text with control characters escaped, binary as a hex dump).
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import greenstalk

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.beanstalk.protocol import MAX_INT
from tubeworker.beanstalk.tls import with_tls_hint
from tubeworker.burials import BurialRecord, read_record, read_records
from tubeworker.config import duration_seconds
from tubeworker.errors import (
    ConnectionLostError,
    LocalProtocolError,
    RemoteProtocolError,
    ServerUnresponsiveError,
)
from tubeworker.redact import FieldPath, parse_paths, paths_from_env, redact_text
from tubeworker.security.secrets import describe_secret

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_BODY_LIMIT",
    "EXPECTED",
    "EX_DATAERR",
    "EX_NOINPUT",
    "EX_OK",
    "EX_PROTOCOL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "MAX_JOB_ID",
    "REPLY_TIMEOUT",
    "AdminError",
    "RenderedBody",
    "admin_client",
    "attempts",
    "burial_of",
    "buried_records",
    "count_buried",
    "delete_buried",
    "delete_job",
    "error_line",
    "escape_text",
    "find_job",
    "format_duration",
    "hex_dump",
    "kick_buried",
    "kick_by_reason",
    "kick_job",
    "parse_duration",
    "parse_int",
    "parse_interval",
    "parse_job_id",
    "pause_tube",
    "peek_job",
    "pretty_json",
    "put_job",
    "render_body",
    "task_of",
]

# sysexits(3)
EX_OK: Final = 0
EX_USAGE: Final = 64  # the command was used wrongly
EX_DATAERR: Final = 65  # bad input: a duration, a number, a tube name, a body too big
EX_NOINPUT: Final = 66  # the job or tube does not exist
EX_UNAVAILABLE: Final = 69  # beanstalkd is down, unreachable, draining or out of memory
EX_PROTOCOL: Final = 76  # beanstalkd said something we did not expect

CONNECT_TIMEOUT: Final = 5.0
REPLY_TIMEOUT: Final = 10.0  # an admin command never hangs on a silent server
DEFAULT_BODY_LIMIT: Final = 4096
MAX_JOB_ID: Final = 2**64 - 1


class AdminError(Exception):
    """An expected failure: printed as one line, the command exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- connections


def _root_reason(exc: BaseException) -> str:
    """The OS's words for why a connect failed ("connection refused"), else the message."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop(0)
        if isinstance(current, BaseExceptionGroup):
            seen.extend(current.exceptions)
        elif isinstance(current, OSError) and (current.errno or current.strerror):
            errno = current.errno
            # socket.gaierror's errno is negative: its strerror is the words
            words = os.strerror(errno) if errno and errno > 0 else str(current.strerror)
            return words[:1].lower() + words[1:]
        if current.__cause__ is not None:
            seen.append(current.__cause__)
    return str(exc)


@asynccontextmanager
async def admin_client(address: Address) -> AsyncIterator[Client]:
    """One connection; failures become one-line :class:`AdminError` naming the server."""
    try:
        client = await connect(
            address, connect_timeout=CONNECT_TIMEOUT, reply_timeout=REPLY_TIMEOUT
        )
    except ServerUnresponsiveError as exc:
        raise AdminError(str(exc), EX_UNAVAILABLE) from None
    except ConnectionLostError as exc:
        reason = _root_reason(exc)
        if address.tls:
            reason = with_tls_hint(reason)
        raise AdminError(
            f"cannot connect to beanstalkd at {address}: {reason}", EX_UNAVAILABLE
        ) from None
    except RemoteProtocolError as exc:
        raise AdminError(f"{address} does not speak beanstalkd: {exc}", EX_PROTOCOL) from None
    try:
        yield client
    except ConnectionLostError as exc:
        raise AdminError(f"lost beanstalkd at {address}: {exc}", EX_UNAVAILABLE) from None
    except RemoteProtocolError as exc:
        raise AdminError(f"unexpected reply from {address}: {exc}", EX_PROTOCOL) from None
    finally:
        await client.aclose()


# Error replies a command does not handle itself: (class, code, message).
_REPLY_ERRORS: Final[tuple[tuple[type[Exception], int, str], ...]] = (
    (
        greenstalk.JobTooBigError,
        EX_DATAERR,
        "job too big: the body is over the server's max-job-size",
    ),
    (greenstalk.DrainingError, EX_UNAVAILABLE, "beanstalkd is draining: it takes no new jobs"),
    (greenstalk.OutOfMemoryError, EX_UNAVAILABLE, "beanstalkd is out of memory"),
    (
        greenstalk.BuriedError,
        EX_UNAVAILABLE,
        "beanstalkd is out of memory: it buried the job it was given",
    ),
    (greenstalk.NotFoundError, EX_NOINPUT, "not found"),
)


def error_line(exc: Exception) -> tuple[str, int]:
    """The message and exit code for an expected error (re-raises anything else)."""
    if isinstance(exc, AdminError):
        return str(exc), exc.code
    if isinstance(exc, LocalProtocolError):  # checked before sending: nothing was sent
        return str(exc), EX_DATAERR
    if isinstance(exc, ConnectionLostError):
        return str(exc), EX_UNAVAILABLE
    for kind, code, message in _REPLY_ERRORS:
        if isinstance(exc, kind):
            return message, code
    if isinstance(exc, greenstalk.Error):
        return f"beanstalkd replied with an error: {type(exc).__name__}", EX_PROTOCOL
    raise exc


#: What an admin command may raise and :func:`fail` reports as one line.
EXPECTED: Final = (AdminError, greenstalk.Error, ConnectionLostError)


# --------------------------------------------------------------------------- values


# The config's duration syntax, counted exactly (then rounded up to whole seconds).
def _exact_seconds(text: str, what: str) -> Fraction:
    seconds = duration_seconds(text)
    if seconds is None:
        raise AdminError(
            f"bad {what} {text!r}: expected whole seconds or a duration like 30s, 5m, 1h",
            EX_DATAERR,
        )
    return seconds


def parse_duration(text: str, what: str = "duration") -> int:
    """``"30"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1.5s"``, ``"250ms"``: whole seconds,
    rounded up (beanstalkd counts whole seconds), 0 to 2^32-1."""
    seconds = math.ceil(_exact_seconds(text, what))
    if seconds > MAX_INT:
        raise AdminError(
            f"{what} {text!r} is too long: beanstalkd takes 0 to {MAX_INT} seconds", EX_DATAERR
        )
    return seconds


def parse_interval(text: str, what: str = "interval") -> float:
    """A refresh interval: a duration, fractions allowed, more than 0 and at most a day."""
    seconds = _exact_seconds(text, what)
    if not 0 < seconds <= 86_400:
        raise AdminError(f"{what} {text!r}: must be more than 0 and at most 24h", EX_DATAERR)
    return float(seconds)


def parse_int(text: str, what: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]{1,20}", text.strip()):
        raise AdminError(f"bad {what} {text!r}: expected a whole number", EX_DATAERR)
    value = int(text)
    if not low <= value <= high:
        raise AdminError(f"{what} {text!r} is out of range: {low} to {high}", EX_DATAERR)
    return value


def parse_job_id(text: str) -> int:
    return parse_int(text, "job id", 1, MAX_JOB_ID)


def format_duration(seconds: int) -> str:
    """``3725`` → ``"1h2m5s"``; ``0`` → ``"0s"``."""
    if seconds <= 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


# --------------------------------------------------------------------------- bodies


@dataclass(frozen=True, slots=True)
class RenderedBody:
    kind: str  # "JSON", "text", "binary" or "empty"
    text: str  # safe to print on a terminal
    note: str | None = None  # what was left out


# Shown escaped: C0/C1 controls and DEL (ESC starts terminal sequences; CR overwrites a
# line), bidi overrides and isolates (text that reads differently than it is: "Trojan
# Source"), line/paragraph separators and the BOM. Newline and tab are kept.
_UNSAFE: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]"
)
_NAMED: Final = {"\r": "\\r", "\x0b": "\\v", "\x0c": "\\f", "\x00": "\\0"}
_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_SPACE: Final = frozenset(" \t\n\r")
_BINARY_CONTROL_SHARE: Final = 0.3


def escape_text(text: str) -> str:
    """Control and bidi characters as ``\\x1b``, ``\\r``, ``\\u202e``; the rest as is."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        named = _NAMED.get(char)
        if named is not None:
            return named
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE.sub(escape, text)


def _escape_json(text: str) -> str:
    # Inside JSON, \u escapes keep the output valid JSON.
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def pretty_json(text: str, indent: str = "  ") -> str:
    """Re-indent valid JSON without parsing its values: numbers, escapes and duplicate keys
    are shown exactly as they are in the body."""
    out: list[str] = []
    depth = 0
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            match = _JSON_STRING.match(text, i)
            assert match is not None  # the text is valid JSON
            out.append(match.group())
            i = match.end()
            continue
        i += 1
        if char in _JSON_SPACE:
            continue
        if char in "{[":
            j = i
            while j < n and text[j] in _JSON_SPACE:
                j += 1
            if j < n and text[j] in "}]":  # empty: {} or []
                out.append(char + text[j])
                i = j + 1
                continue
            depth += 1
            out.append(f"{char}\n{indent * depth}")
        elif char in "}]":
            depth -= 1
            out.append(f"\n{indent * depth}{char}")
        elif char == ",":
            out.append(f",\n{indent * depth}")
        elif char == ":":
            out.append(": ")
        else:
            out.append(char)
    return "".join(out)


def hex_dump(data: bytes, *, offset: int = 0) -> str:
    """``hexdump -C`` style: offset, 16 bytes in hex (two groups of 8), printable ASCII."""
    lines: list[str] = []
    for start in range(0, len(data), 16):
        chunk = data[start : start + 16]
        hex_left = " ".join(f"{b:02x}" for b in chunk[:8])
        hex_right = " ".join(f"{b:02x}" for b in chunk[8:])
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{offset + start:08x}  {hex_left:<23}  {hex_right:<23}  |{ascii_}|")
    return "\n".join(lines)


def _looks_binary(text: str) -> bool:
    """Valid UTF-8 that is still binary: a NUL, or mostly control characters."""
    if "\x00" in text:
        return True
    controls = sum(1 for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t\r")
    return controls > len(text) * _BINARY_CONTROL_SHARE


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _truncation_note(shown: int, total: int, unit: str, hint: str) -> str | None:
    if shown >= total:
        return None
    return f"truncated: showing {shown} of {total} {unit}; {hint}"


# Payload paths masked in every body shown ([control] redact for the daemon's control plane
# and dashboard; TUBEWORKER_REDACT, comma-separated, for the commands): see redact.py.
_redact: tuple[FieldPath, ...] = paths_from_env(os.environ)


def install_redact(paths: Iterable[str]) -> None:
    """Mask these payload paths (``payload.card_number``) in every body shown."""
    global _redact
    _redact = parse_paths(paths)


def redacting() -> tuple[FieldPath, ...]:
    """The payload paths masked in every body shown (what :func:`install_redact` set)."""
    return _redact


def _secret_hidden(text: str) -> str:
    """An envelope's sealed secret shown as what it is (its size and key), not as its
    ciphertext, and the redacted payload fields masked; any other JSON exactly as it is."""
    text = redact_text(text, _redact)
    if '"secret"' not in text:
        return text
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if not isinstance(data, dict) or not isinstance(data.get("secret"), dict):
        return text
    data["secret"] = describe_secret(data["secret"])
    return json.dumps(data, ensure_ascii=False)


def render_body(
    body: bytes, limit: int = DEFAULT_BODY_LIMIT, *, hint: str = "--raw for the whole body"
) -> RenderedBody:
    """A body, safe to print: JSON pretty-printed, UTF-8 text with control characters
    escaped, anything else as a hex dump. ``limit`` (0: none) bounds what is shown: bytes
    of the body (text, binary) or characters of the pretty-printed JSON; a truncation note
    ends with ``hint`` (how to get the whole body)."""
    if not body:
        return RenderedBody("empty", "")
    cap = limit if limit > 0 else len(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or _looks_binary(text):
        head = body[:cap]
        return RenderedBody(
            "binary", hex_dump(head), _truncation_note(len(head), len(body), "bytes", hint)
        )
    if _is_json(text):
        text = _secret_hidden(text)
        pretty = _escape_json(pretty_json(text))
        cap = limit if limit > 0 else len(pretty)
        note = _truncation_note(
            min(cap, len(pretty)), len(pretty), "characters (pretty-printed)", hint
        )
        return RenderedBody("JSON", pretty[:cap], note)
    shown = body[:cap].decode("utf-8", errors="ignore")  # a character cut in two is dropped
    note = _truncation_note(len(shown.encode()), len(body), "bytes", hint)
    return RenderedBody("text", escape_text(shown), note)


# --------------------------------------------------------------------------- operations


async def kick_buried(address: Address, tube: str, bound: int) -> int | None:
    """Kick up to ``bound`` buried jobs of ``tube``: how many were kicked (None: no such
    tube on this server). A tube with no buried job is left alone: ``kick`` would move its
    delayed jobs instead, which is not what was asked."""
    async with admin_client(address) as client:
        try:
            buried = (await client.stats_tube(tube)).current_jobs_buried
        except greenstalk.NotFoundError:
            return None
        if buried == 0:
            return 0
        await client.use(tube)
        # Bounded by the buried count: were they kicked by someone else meanwhile, we
        # would not go on to delayed jobs beyond that many.
        return await client.kick(min(bound, buried))


async def kick_job(address: Address, job_id: int) -> None:
    """Kick one buried or delayed job (AdminError EX_NOINPUT if it is neither)."""
    async with admin_client(address) as client:
        try:
            await client.kick_job(job_id)
        except greenstalk.NotFoundError:
            raise AdminError(
                f"job {job_id} not found, or neither buried nor delayed", EX_NOINPUT
            ) from None


async def delete_job(client: Client, job_id: int) -> bool:
    """Delete one job on ``client``'s server; False if it is not found (or reserved by a
    worker: only its connection may delete it)."""
    try:
        await client.delete(job_id)
    except greenstalk.NotFoundError:
        return False
    return True


async def count_buried(address: Address, tube: str) -> int | None:
    """Buried jobs of ``tube`` on this server (None: no such tube)."""
    async with admin_client(address) as client:
        try:
            return (await client.stats_tube(tube)).current_jobs_buried
        except greenstalk.NotFoundError:
            return None


async def delete_buried(address: Address, tube: str, count: int) -> int:
    """Delete from the head of the tube's buried list at most ``count`` jobs (those counted
    when the caller asked: jobs buried since are not part of the answer); how many went."""
    deleted = 0
    async with admin_client(address) as client:
        await client.use(tube)
        for _ in range(count):
            try:
                job = await client.peek_buried()
            except greenstalk.NotFoundError:
                break  # kicked or deleted by someone else meanwhile
            if await delete_job(client, job.id):
                deleted += 1
    return deleted


async def pause_tube(address: Address, tube: str, seconds: int) -> bool:
    """Pause ``tube`` for ``seconds`` (0 resumes); False if the server has no such tube."""
    async with admin_client(address) as client:
        try:
            await client.pause_tube(tube, seconds)
        except greenstalk.NotFoundError:
            return False
    return True


async def put_job(
    address: Address, tube: str, body: bytes, *, priority: int, delay: int, ttr: int
) -> int:
    """Put one job; its id."""
    async with admin_client(address) as client:
        await client.use(tube)
        try:
            return await client.put(body, priority=priority, delay=delay, ttr=ttr)
        except LocalProtocolError as exc:  # over the server's max-job-size: nothing sent
            raise AdminError(f"job too big: {exc}", EX_DATAERR) from None


async def find_job(client: Client, target: str, state: str | None) -> p.Found:
    """``target`` a job id (``state`` None), or a tube and the next job of it in ``state``
    (ready, delayed or buried)."""
    if state is None:
        job_id = parse_job_id(target)
        try:
            return await client.peek(job_id)
        except greenstalk.NotFoundError:
            raise AdminError(f"job {job_id} not found", EX_NOINPUT) from None
    try:
        await client.stats_tube(target)
    except greenstalk.NotFoundError:
        raise AdminError(f"tube {target!r} not found", EX_NOINPUT) from None
    await client.use(target)
    peeks = {"ready": client.peek_ready, "delayed": client.peek_delayed}
    try:
        return await peeks.get(state, client.peek_buried)()
    except greenstalk.NotFoundError:
        raise AdminError(f"no {state} job in tube {target!r}", EX_NOINPUT) from None


async def peek_job(
    address: Address, target: str, state: str | None
) -> tuple[p.Found, p.JobStats | None]:
    """The job :func:`find_job` finds, and its stats (None: deleted meanwhile)."""
    async with admin_client(address) as client:
        found = await find_job(client, target, state)
        try:
            stats: p.JobStats | None = await client.stats_job(found.id)
        except greenstalk.NotFoundError:
            stats = None
    return found, stats


async def burial_of(address: Address, job_id: int, stats: p.JobStats) -> BurialRecord | None:
    """The latest burial record of buried job ``job_id`` (``stats``: its stats), if it has
    one. Its stale records are cleaned up on the way (``tubeworker.burials``)."""
    async with admin_client(address) as reader:
        return await read_record(reader, job_id, stats)


async def buried_records(
    address: Address, tube: str, *, limit: int | None = None
) -> tuple[int, list[tuple[BurialRecord, p.JobStats]]]:
    """How many jobs of ``tube`` are buried on this server, and the latest burial record
    of those that have one (at most ``limit`` jobs), each with the job's stats: one per
    job. Stale records are cleaned up on the way (``tubeworker.burials``)."""
    async with admin_client(address) as client:
        try:
            count = (await client.stats_tube(tube)).current_jobs_buried
        except greenstalk.NotFoundError:
            raise AdminError(f"tube {tube!r} not found on {address}", EX_NOINPUT) from None
    async with admin_client(address) as reader:
        if limit is None:
            return count, await read_records(reader, tube)
        return count, await read_records(reader, tube, limit=limit)


def attempts(stats: p.JobStats) -> int:
    """Attempts a job has used: beanstalkd's releases, timeouts and buries."""
    return stats.releases + stats.timeouts + stats.buries


async def kick_by_reason(address: Address, tube: str, text: str) -> int:
    """Kick the buried jobs of ``tube`` whose latest recorded reason contains ``text`` (or
    whose cause is ``text``); how many were kicked. A kicked job's record is deleted."""
    _, records = await buried_records(address, tube)
    matching = [r for r, _ in records if text in r.reason or text == r.cause]
    kicked = 0
    async with admin_client(address) as client:
        for record in matching:
            try:
                await client.kick_job(record.job_id)
            except greenstalk.NotFoundError:
                continue  # kicked or deleted meanwhile
            kicked += 1
            await client.delete(record.record_id)  # its reason is history now
    return kicked


def task_of(body: bytes) -> str | None:
    """The envelope's task, when the body is one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    task = data.get("task") if isinstance(data, dict) else None
    return task if isinstance(task, str) else None
