"""What the admin commands share: their parsers, servers, durations, body rendering, tables,
one connection per server, and one line on stderr with a sysexits code for every expected
error.

The admin commands talk to beanstalkd directly with the project's own client, never to a
running daemon. Each command module has one sync entry point (``stats(args) -> int``, …)
that runs its async part with :func:`run_admin`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import greenstalk
import trio

from tubeworker.beanstalk.client import Address, Client, connect, parse_address
from tubeworker.beanstalk.protocol import MAX_INT
from tubeworker.config import DURATION
from tubeworker.errors import (
    ConnectionLostError,
    LocalProtocolError,
    RemoteProtocolError,
    ServerUnresponsiveError,
)

__all__ = [
    "EXPECTED",
    "EX_DATAERR",
    "EX_NOINPUT",
    "EX_OK",
    "EX_PROTOCOL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "AdminError",
    "RenderedBody",
    "add_admin_commands",
    "admin_client",
    "error_line",
    "fail",
    "format_duration",
    "hex_dump",
    "parse_duration",
    "parse_int",
    "parse_interval",
    "parse_job_id",
    "pretty_json",
    "render_body",
    "render_table",
    "run_admin",
    "server_list",
    "single_server",
]

# sysexits(3)
EX_OK: Final = 0
EX_USAGE: Final = 64  # the command was used wrongly
EX_DATAERR: Final = 65  # bad input: a duration, a number, a tube name, a body too big
EX_NOINPUT: Final = 66  # the job or tube does not exist
EX_UNAVAILABLE: Final = 69  # beanstalkd is down, unreachable, draining or out of memory
EX_PROTOCOL: Final = 76  # beanstalkd said something we did not expect

DEFAULT_SERVER: Final = "127.0.0.1:11300"
SERVERS_ENV: Final = "TUBEWORKER_SERVERS"
CONNECT_TIMEOUT: Final = 5.0
REPLY_TIMEOUT: Final = 10.0  # an admin command never hangs on a silent server
DEFAULT_BODY_LIMIT: Final = 4096
MAX_JOB_ID: Final = 2**64 - 1


class AdminError(Exception):
    """An expected failure: printed as one line, the command exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- parsers

_SERVER_HELP: Final = (
    f"beanstalkd address (default: ${SERVERS_ENV}, comma-separated, else {DEFAULT_SERVER})"
)
_DURATIONS_HELP: Final = (
    "Durations: whole seconds or 30s, 5m, 1h, 250ms; rounded up to whole seconds "
    "(beanstalkd counts whole seconds), 0 to 4294967295 s."
)


def _server_option(parser: argparse.ArgumentParser, *, repeatable: bool) -> None:
    if repeatable:
        parser.add_argument(
            "--server",
            action="append",
            default=[],
            metavar="HOST:PORT",
            help=f"{_SERVER_HELP}; repeatable: each server is asked",
        )
    else:
        parser.add_argument(
            "--server",
            metavar="HOST:PORT",
            help=f"{_SERVER_HELP}; with several listed, the first",
        )


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The admin subcommands: stats, peek, kick, kick-job, buried, delete, put, pause."""
    _add_stats(commands)
    _add_peek(commands)
    _add_kick(commands)
    _add_delete(commands)
    _add_put(commands)
    _add_pause(commands)


def _add_stats(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = commands.add_parser(
        "stats",
        help="server summary and per-tube counts",
        description="The server's summary and a table of tubes: ready, reserved, delayed, "
        "buried, urgent, waiting workers, pause time left, total jobs put.",
    )
    stats.add_argument("tubes", nargs="*", metavar="TUBE", help="tubes to show (default: all)")
    stats.add_argument("--json", action="store_true", help="one JSON document instead")
    stats.add_argument(
        "--watch",
        nargs="?",
        const="2s",
        metavar="SECONDS",
        help="refresh every SECONDS (default 2s) until Ctrl-C",
    )
    _server_option(stats, repeatable=True)


def _add_peek(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    peek = commands.add_parser(
        "peek",
        help="show a job: its stats and its body",
        description="peek ID, or peek TUBE ready|delayed|buried (the next job in that "
        "state). Bodies are shown safely: JSON pretty-printed, text with control characters "
        "escaped, anything else as a hex dump; --raw writes the exact bytes.",
    )
    peek.add_argument("target", metavar="ID|TUBE", help="a job id, or a tube with STATE")
    peek.add_argument("state", nargs="?", choices=("ready", "delayed", "buried"), help="STATE")
    peek.add_argument("--raw", action="store_true", help="write the body's bytes to stdout")
    peek.add_argument(
        "--limit",
        default=str(DEFAULT_BODY_LIMIT),
        metavar="N",
        help=f"show at most N bytes of the body (default {DEFAULT_BODY_LIMIT}; 0: all)",
    )
    _server_option(peek, repeatable=False)


def _add_kick(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kick = commands.add_parser(
        "kick",
        help="make buried jobs of a tube ready again",
        description="Kick up to N buried jobs of TUBE (default: all of them) back to ready. "
        "A tube with no buried job is left alone (beanstalkd would kick delayed jobs).",
    )
    kick.add_argument("tube", metavar="TUBE")
    kick.add_argument("count", nargs="?", metavar="N", help="at most this many (default: all)")
    kick.add_argument(
        "--reason",
        metavar="TEXT",
        help="only the jobs buried for a reason containing TEXT (or with that cause)",
    )
    _server_option(kick, repeatable=True)
    buried = commands.add_parser(
        "buried",
        help="buried jobs of a tube, with why they were buried",
        description="Each buried job of TUBE with its age, attempts, and the cause and "
        "reason the daemon recorded when it buried it (kept in beanstalkd, in the tube "
        "tubeworker.buried.TUBE, across worker restarts).",
    )
    buried.add_argument("tube", metavar="TUBE")
    buried.add_argument("--json", action="store_true", help="one JSON document instead")
    _server_option(buried, repeatable=True)
    kick_job = commands.add_parser(
        "kick-job",
        help="make one buried or delayed job ready",
        description="Kick one buried or delayed job by id.",
    )
    kick_job.add_argument("id", metavar="ID")
    _server_option(kick_job, repeatable=False)


def _add_delete(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    delete = commands.add_parser(
        "delete",
        help="delete jobs by id, or every buried job of a tube",
        description="Delete jobs by id, or with --buried TUBE every buried job of a tube "
        "(after a confirmation; --yes for scripts). There is no 'bury' command: only the "
        "connection that reserved a job may bury it, and a job reserved by a worker cannot "
        "be deleted by anyone else either.",
    )
    delete.add_argument("ids", nargs="*", metavar="ID")
    delete.add_argument("--buried", metavar="TUBE", help="delete every buried job of TUBE")
    delete.add_argument(
        "-y", "--yes", action="store_true", help="do not ask for confirmation (scripts)"
    )
    _server_option(delete, repeatable=True)


def _add_put(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    put = commands.add_parser(
        "put",
        help="put a job and print its id",
        description="Put BODY (as given; '-' reads the bytes of stdin) or, with --task, the "
        f'JSON envelope {{"task": NAME, "payload": JSON}} into TUBE. {_DURATIONS_HELP}',
    )
    put.add_argument("tube", metavar="TUBE")
    put.add_argument("body", nargs="?", metavar="BODY|-", help="the body; '-': read stdin")
    put.add_argument("--task", metavar="NAME", help="build an envelope for this task")
    put.add_argument("--payload", metavar="JSON", help="the envelope's payload (JSON)")
    put.add_argument("--priority", metavar="N", help="0 (most urgent) to 4294967295 (default 1024)")
    put.add_argument("--delay", metavar="DURATION", help="ready after this long (default 0)")
    put.add_argument("--ttr", metavar="DURATION", help="time to run (default 60s)")
    _server_option(put, repeatable=False)


def _add_pause(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pause = commands.add_parser(
        "pause",
        help="pause a tube (0 resumes), or --list paused tubes",
        description="Stop reserves from TUBE for DURATION, for every worker (0 resumes). "
        "The tube must exist; a pause ends when beanstalkd restarts or frees the tube. "
        f"{_DURATIONS_HELP}",
    )
    pause.add_argument("tube", nargs="?", metavar="TUBE")
    pause.add_argument("duration", nargs="?", metavar="DURATION")
    pause.add_argument("--list", action="store_true", help="list tubes with pause time left")
    _server_option(pause, repeatable=True)


# --------------------------------------------------------------------------- servers


def _configured(env: Mapping[str, str]) -> tuple[list[str], str]:
    text = env.get(SERVERS_ENV, "")
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names:
        return names, f"${SERVERS_ENV}"
    return [DEFAULT_SERVER], "the default"


def _parse_servers(names: Iterable[str], source: str) -> list[Address]:
    addresses: list[Address] = []
    for name in names:
        try:
            addresses.append(parse_address(name))
        except ValueError as exc:
            raise AdminError(f"bad server in {source}: {exc}", EX_USAGE) from None
    return addresses


def server_list(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> list[Address]:
    """The servers of a repeatable ``--server``, else of ``TUBEWORKER_SERVERS``, else the
    default."""
    given: list[str] = list(args.server or [])
    if given:
        return _parse_servers(given, "--server")
    names, source = _configured(os.environ if env is None else env)
    return _parse_servers(names, source)


def single_server(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Address:
    """The server of a single ``--server``, else the first configured one."""
    if args.server:
        return _parse_servers([args.server], "--server")[0]
    names, source = _configured(os.environ if env is None else env)
    return _parse_servers(names[:1], source)[0]


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


# --------------------------------------------------------------------------- running

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


def fail(exc: Exception) -> int:
    message, code = error_line(exc)
    print(f"tubeworker: {message}", file=sys.stderr, flush=True)
    return code


#: What an admin command may raise and :func:`fail` reports as one line.
EXPECTED: Final = (AdminError, greenstalk.Error, ConnectionLostError)


def run_admin(main: Callable[[], Awaitable[int]]) -> int:
    """Run an admin command's async part; expected errors are one line on stderr."""
    try:
        return trio.run(main)
    except EXPECTED as exc:
        return fail(exc)
    except BrokenPipeError:
        # Our reader went away (``peek --raw | head -c 10``): nothing left to say to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_OK


# --------------------------------------------------------------------------- values

# The config's duration syntax, counted exactly (then rounded up to whole seconds).
_UNITS: Final[dict[str | None, Fraction]] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    None: Fraction(1),
}


def _exact_seconds(text: str, what: str) -> Fraction:
    match = DURATION.match(text)
    if match:
        try:
            return Fraction(match.group(1)) * _UNITS[match.group(2)]
        except ValueError:  # more digits than Python converts
            pass
    raise AdminError(
        f"bad {what} {text!r}: expected whole seconds or a duration like 30s, 5m, 1h",
        EX_DATAERR,
    )


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


# --------------------------------------------------------------------------- tables


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: frozenset[int] = frozenset({0})
) -> str:
    """Columns padded to their widest cell; the ``left`` columns left-aligned, the others
    (numbers) right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if index in left else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


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


def _truncation_note(shown: int, total: int, unit: str) -> str | None:
    if shown >= total:
        return None
    return f"truncated: showing {shown} of {total} {unit}; --raw for the whole body"


def render_body(body: bytes, limit: int = DEFAULT_BODY_LIMIT) -> RenderedBody:
    """A body, safe to print: JSON pretty-printed, UTF-8 text with control characters
    escaped, anything else as a hex dump. ``limit`` (0: none) bounds what is shown: bytes
    of the body (text, binary) or characters of the pretty-printed JSON."""
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
            "binary", hex_dump(head), _truncation_note(len(head), len(body), "bytes")
        )
    if _is_json(text):
        pretty = _escape_json(pretty_json(text))
        cap = limit if limit > 0 else len(pretty)
        note = _truncation_note(min(cap, len(pretty)), len(pretty), "characters (pretty-printed)")
        return RenderedBody("JSON", pretty[:cap], note)
    shown = body[:cap].decode("utf-8", errors="ignore")  # a character cut in two is dropped
    note = _truncation_note(len(shown.encode()), len(body), "bytes")
    return RenderedBody("text", escape_text(shown), note)
