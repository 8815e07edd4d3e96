"""The ``tubeworker`` command: one module per subcommand; shared start-up in ``startup``.

Exit codes follow sysexits: 0 after a clean drain (also when recycling), 78 (EX_CONFIG) for
a bad config so service managers can refuse to restart on it, 69 (EX_UNAVAILABLE) when
beanstalkd cannot be started for ``dev``/``demo``, 64 (EX_USAGE) for a command line that
cannot be parsed (argparse's own 2 would be read as "no such file" by sysexits readers).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

import trio

from tubeworker import __version__
from tubeworker.cli.admin import EX_USAGE, add_admin_commands
from tubeworker.cli.audit import add_audit_command
from tubeworker.cli.batches import add_batch_commands
from tubeworker.cli.browse import add_browse_commands
from tubeworker.cli.dashboard import add_dashboard_command
from tubeworker.cli.schedules import add_schedule_commands
from tubeworker.cli.schemas import add_schemas_command
from tubeworker.cli.spool import add_spool_command
from tubeworker.cli.startup import EX_OK, add_run_options

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line and exit 64 (EX_USAGE) like every other
    usage error of the commands, instead of the usage text and exit 2. The subcommands'
    parsers are of this class too (add_subparsers makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"tubeworker: {message} (see '{self.prog} --help')\n")


if TYPE_CHECKING:  # not subscriptable at run time
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> tuple[argparse.ArgumentParser, Commands]:
    """The parser, and its subcommands' (each a :class:`_Parser`)."""
    parser = _Parser(prog="tubeworker", description="A Trio worker daemon for beanstalkd.")
    parser.add_argument("--version", action="version", version=f"tubeworker {__version__}")
    # Typed as the ArgumentParser they are, for the add_*_command functions.
    commands = cast("Commands", parser.add_subparsers(dest="command", metavar="COMMAND"))
    run = commands.add_parser("run", help="run the daemon in the foreground")
    add_run_options(run)
    check = commands.add_parser("check", help="validate a config and show what would run")
    add_run_options(check)
    handlers = commands.add_parser(
        "handlers",
        help="list handlers (entry points, and with -c the config's [handlers])",
        description="Every handler the daemon would know: the entry points of group "
        "tubeworker.handlers and, with -c, the config's [handlers] table. One that cannot "
        "be loaded is listed as BROKEN with its error. Exit status: 0; with -c, 78 when "
        "the config has a problem 'tubeworker run' would refuse to start with (a BROKEN "
        "[handlers] entry is one), each printed on stderr. A broken entry point alone "
        "keeps 0: the daemon starts without it unless a pool binds it.",
    )
    handlers.add_argument("-c", "--config", help="also load this config's [handlers]")
    dev = commands.add_parser("dev", help="run the daemon with a private beanstalkd")
    add_run_options(dev)
    demo = commands.add_parser("demo", help="a private beanstalkd, demo jobs, the daemon")
    demo.add_argument("--jobs", type=int, default=60, help="how many demo jobs (default 60)")
    demo.add_argument("--log-format", choices=("auto", "json", "console"), default="console")
    top = commands.add_parser(
        "top", help="a live view of running daemons, through their control planes"
    )
    top.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        help="a daemon's control plane (default http://127.0.0.1:9090); several allowed",
    )
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="refresh (default 1)"
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    add_admin_commands(commands)  # stats, peek, kick, kick-job, delete, put, pause
    add_dashboard_command(commands)
    add_schedule_commands(commands)  # schedules, schedule trigger|pause|resume
    add_spool_command(commands)
    add_browse_commands(commands)  # jobs, move, flush, tail
    add_schemas_command(commands)
    add_audit_command(commands)
    add_batch_commands(commands)  # batches, batch ID
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's parser: its --help is the one to see
        owner = commands.choices.get(args.command or "", parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = _dispatch(args) if args.command else _help(parser)
    except KeyboardInterrupt:  # only before the signal receiver is installed
        return 130
    if _changes_something(args):
        _audit(args, list(sys.argv[1:] if argv is None else argv), code)
    return code


# Commands that change a server's jobs or tubes: each run is on the audit trail.
_CHANGING: Final = frozenset(
    {"put", "kick", "kick-job", "delete", "pause", "move", "flush", "schedule"}
)


def _changes_something(args: argparse.Namespace) -> bool:
    if args.command not in _CHANGING:
        return False
    return not (getattr(args, "list", False) or getattr(args, "dry_run", False))


def _audit(args: argparse.Namespace, argv: list[str], code: int) -> None:
    """The run's record on the server it acted on (tubeworker audit lists them), and its
    line in ``TUBEWORKER_AUDIT_LOG`` when that is set. A body on the command line is
    recorded with ``TUBEWORKER_REDACT``'s fields masked."""
    import os
    import shlex

    from tubeworker.audit import AUDIT_LOG_ENV, AuditRecord, append_audit_line, command_actor
    from tubeworker.audit import record as write_record
    from tubeworker.cli.admin import AdminError, server_list, single_server
    from tubeworker.redact import paths_from_env, redact_text

    given = getattr(args, "server", None)
    try:
        address = single_server(args) if isinstance(given, str) else server_list(args)[0]
    except (AdminError, IndexError, AttributeError):
        return  # no server named well enough to act on: nothing was changed
    who, where = command_actor()
    masked = paths_from_env(os.environ)
    fields = {
        "who": who,
        "where": where,
        "what": args.command,
        "target": shlex.join(redact_text(arg, masked) for arg in argv),
        "result": f"exit {code}",
    }
    problems = [trio.run(partial(write_record, address, **fields, log_line=False))]
    destination = os.environ.get(AUDIT_LOG_ENV)
    if destination:
        entry = AuditRecord(round(time.time(), 3), **fields)
        problems.append(append_audit_line(destination, entry, str(address)))
    for problem in problems:
        if problem is not None and code == 0:
            print(f"tubeworker: audit record not written: {problem}", file=sys.stderr)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EX_OK


# Command → (module, function); a function named run_* runs under trio.run. Each
# command's module is imported when it runs: start-up pays only for its own.
_COMMANDS: Final = {
    "run": ("tubeworker.cli.run", "run"),
    "check": ("tubeworker.cli.check", "check"),
    "handlers": ("tubeworker.cli.list_handlers", "list_handlers"),
    "dev": ("tubeworker.cli.dev", "run_dev"),
    "demo": ("tubeworker.cli.demo", "run_demo"),
    "top": ("tubeworker.cli.top", "top"),
    "schedules": ("tubeworker.cli.schedules", "schedules"),
    "schedule": ("tubeworker.cli.schedules", "schedule_action"),
    "spool": ("tubeworker.cli.spool", "spool"),
    "jobs": ("tubeworker.cli.browse", "jobs"),
    "move": ("tubeworker.cli.browse", "move"),
    "flush": ("tubeworker.cli.browse", "flush"),
    "tail": ("tubeworker.cli.browse", "tail"),
    "dashboard": ("tubeworker.cli.dashboard", "dashboard"),
    "schemas": ("tubeworker.cli.schemas", "schemas"),
    "audit": ("tubeworker.cli.audit", "audit"),
    "batches": ("tubeworker.cli.batches", "batches"),
    "batch": ("tubeworker.cli.batches", "batch"),
}


def _dispatch(args: argparse.Namespace) -> int:
    found = _COMMANDS.get(args.command)
    if found is None:
        return _dispatch_admin(args)
    module, name = found
    command: Callable[..., Any] = getattr(importlib.import_module(module), name)
    if name == "run" or name.startswith("run_"):
        return int(trio.run(command, args))
    return int(command(args))


def _dispatch_admin(args: argparse.Namespace) -> int:
    # The admin commands talk to beanstalkd directly; each runs its own trio.run.
    if args.command == "stats":
        from tubeworker.cli.stats import stats

        return stats(args)
    if args.command == "peek":
        from tubeworker.cli.peek import peek

        return peek(args)
    if args.command == "kick" and args.reason is not None:
        from tubeworker.cli.buried import kick_by_reason

        return kick_by_reason(args)
    if args.command == "kick":
        from tubeworker.cli.kick import kick

        return kick(args)
    if args.command == "buried":
        from tubeworker.cli.buried import buried

        return buried(args)
    if args.command == "kick-job":
        from tubeworker.cli.kick import kick_job

        return kick_job(args)
    if args.command == "delete":
        from tubeworker.cli.delete import delete

        return delete(args)
    if args.command == "put":
        from tubeworker.cli.put import put

        return put(args)
    from tubeworker.cli.pause import pause

    return pause(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
