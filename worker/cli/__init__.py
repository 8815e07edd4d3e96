"""The ``tubeworker`` command: one module per subcommand; shared start-up in ``startup``.

Exit codes follow sysexits: 0 after a clean drain (also when recycling), 78 (EX_CONFIG) for
a bad config so service managers can refuse to restart on it, 69 (EX_UNAVAILABLE) when
beanstalkd cannot be started for ``dev``/``demo``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from tubeworker import __version__
from tubeworker.cli.startup import EX_OK, add_run_options

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tubeworker", description="A Trio worker daemon for beanstalkd."
    )
    parser.add_argument("--version", action="version", version=f"tubeworker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon in the foreground")
    add_run_options(run)
    check = commands.add_parser("check", help="validate a config and show what would run")
    add_run_options(check)
    handlers = commands.add_parser(
        "handlers", help="list handlers (entry points, and with -c the config's [handlers])"
    )
    handlers.add_argument("-c", "--config", help="also load this config's [handlers]")
    dev = commands.add_parser("dev", help="run the daemon with a private beanstalkd")
    add_run_options(dev)
    demo = commands.add_parser("demo", help="a private beanstalkd, demo jobs, the daemon")
    demo.add_argument("--jobs", type=int, default=60, help="how many demo jobs (default 60)")
    demo.add_argument("--log-format", choices=("auto", "json", "console"), default="console")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args) if args.command else _help(parser)
    except KeyboardInterrupt:  # only before the signal receiver is installed
        return 130


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EX_OK


def _dispatch(args: argparse.Namespace) -> int:
    # Each command's module is imported when it runs: start-up pays only for its own.
    if args.command == "run":
        from tubeworker.cli.run import run

        return trio.run(run, args)
    if args.command == "check":
        from tubeworker.cli.check import check

        return check(args)
    if args.command == "handlers":
        from tubeworker.cli.list_handlers import list_handlers

        return list_handlers(args)
    if args.command == "dev":
        from tubeworker.cli.dev import run_dev

        return trio.run(run_dev, args)
    from tubeworker.cli.demo import run_demo

    return trio.run(run_demo, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
