"""What the admin commands share: their parsers, servers, tables, and one line on stderr
with a sysexits code for every expected error.

The admin commands talk to beanstalkd directly with the project's own client, never to a
running daemon. Each command module has one sync entry point (``stats(args) -> int``, …)
that runs its async part with :func:`run_admin`. The operations themselves, durations and
body rendering live one layer down, in ``tubeworker.admin_ops`` (the dashboard uses them
too); they are re-exported here for the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Final

import trio

from tubeworker.admin_ops import (
    DEFAULT_BODY_LIMIT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_OK,
    EX_PROTOCOL,
    EX_UNAVAILABLE,
    EX_USAGE,
    EXPECTED,
    AdminError,
    RenderedBody,
    admin_client,
    error_line,
    escape_text,
    format_duration,
    hex_dump,
    parse_duration,
    parse_int,
    parse_interval,
    parse_job_id,
    pretty_json,
    render_body,
)
from tubeworker.beanstalk.client import Address, parse_address

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
    "confirmed",
    "error_line",
    "escape_text",
    "fail",
    "format_duration",
    "hex_dump",
    "parse_duration",
    "parse_int",
    "parse_interval",
    "parse_job_id",
    "plural",
    "pretty_json",
    "render_body",
    "render_table",
    "run_admin",
    "server_list",
    "single_server",
]

DEFAULT_SERVER: Final = "127.0.0.1:11300"
SERVERS_ENV: Final = "TUBEWORKER_SERVERS"


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
            help=f"{_SERVER_HELP}; with several listed, the first is used",
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
        "buried, urgent, waiting workers, pause time left, total jobs put. tubeworker's own "
        "tubes (tubeworker.buried.*, tubeworker.limit.*) are not work: they are left out of "
        "the table and their jobs out of the summary's counts, unless named or --all.",
    )
    stats.add_argument("tubes", nargs="*", metavar="TUBE", help="tubes to show (default: all)")
    stats.add_argument(
        "--all", action="store_true", help="show and count tubeworker's own tubes too"
    )
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
        "escaped, anything else as a hex dump; --raw writes the exact bytes. A buried job "
        "also shows why it was buried: the cause, reason and attempt the daemon recorded, "
        "and the handler's traceback when an error buried it.",
    )
    peek.add_argument("target", metavar="ID|TUBE", help="a job id, or a tube with STATE")
    peek.add_argument("state", nargs="?", choices=("ready", "delayed", "buried"), help="STATE")
    peek.add_argument(
        "--raw",
        action="store_true",
        help="write the body's bytes to stdout (TUBEWORKER_REDACT's fields masked)",
    )
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
    buried.add_argument(
        "-v", "--verbose", action="store_true", help="also each handler error's traceback"
    )
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
    put.add_argument("tube", metavar="TUBE", help="the tube to put the job into")
    put.add_argument("body", nargs="?", metavar="BODY|-", help="the body; '-': read stdin")
    put.add_argument("--task", metavar="NAME", help="build an envelope for this task")
    put.add_argument("--payload", metavar="JSON", help="the envelope's payload (JSON)")
    put.add_argument("--id", metavar="KEY", help="the envelope's idempotency key")
    put.add_argument(
        "-c",
        "--config",
        help="with --task: also load this config's [handlers] (a typed task's payload is "
        "validated, and its version written, as the handler declares; entry points always)",
    )
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
    pause.add_argument("--all", action="store_true", help="with --list: tubeworker's own tubes too")
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


# --------------------------------------------------------------------------- running


def fail(exc: Exception) -> int:
    message, code = error_line(exc)
    print(f"tubeworker: {message}", file=sys.stderr, flush=True)
    return code


def confirmed(question: str, *, yes: bool) -> bool:
    """Whether the user agrees to ``question`` (``yes``: --yes was given); AdminError when
    there is nobody to ask (stdin is not a terminal)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise AdminError(
            f"refusing to {question[:-1]} without confirmation: stdin is not a terminal "
            "(pass --yes)",
            EX_USAGE,
        )
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


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


# --------------------------------------------------------------------------- words and tables


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 job``, ``2 jobs``, ``0 jobs`` (``words``: the plural when not ``word + "s"``)."""
    return f"{count} {word}" if count == 1 else f"{count} {words or word + 's'}"


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
