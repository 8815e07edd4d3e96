"""``tubeworker dashboard --server HOST:PORT [--listen 127.0.0.1:PORT] [--token-file F]
[--daemon ADDR ...]``: the web dashboard on its own, for a host with no daemon (a daemon's
control plane serves the same page at its own address)."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING, Final

import trio

from tubeworker.admin_ops import parse_interval
from tubeworker.beanstalk.client import Address, parse_address
from tubeworker.cli.admin import EX_OK, EX_USAGE, AdminError, server_list

if TYPE_CHECKING:
    from tubeworker.control.access import Access

__all__ = ["DEFAULT_LISTEN", "add_dashboard_command", "dashboard"]

DEFAULT_LISTEN: Final = "127.0.0.1:9180"
_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")


def add_dashboard_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dashboard",
        help="the web dashboard on its own (a daemon's --control serves it too)",
        description="Serve the web dashboard for beanstalkd servers and tubeworker daemons: "
        "tubes, workers, APIs, buried jobs with their reasons, and token-guarded actions. "
        "Reads need no token (unless --read-token-file): keep it on loopback.",
    )
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="beanstalkd address (repeatable; default: $TUBEWORKER_SERVERS, else 127.0.0.1:11300)",
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to serve the page (default {DEFAULT_LISTEN}: this host only)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="the bearer token actions need (without it the dashboard is read-only)",
    )
    parser.add_argument(
        "--read-token-file",
        metavar="FILE",
        help="a viewer's token: with it every read but /healthz needs a token (this one "
        "reads only, --token-file's reads and acts); see docs/security.md",
    )
    parser.add_argument(
        "--show-bodies-to",
        choices=("operator", "viewer"),
        default="operator",
        help="with --read-token-file: who sees job bodies (default: operator)",
    )
    parser.add_argument(
        "--daemon",
        action="append",
        default=[],
        metavar="ADDR",
        help="a daemon's control plane (HOST:PORT or http://HOST:PORT) for the Workers "
        "and APIs views; repeatable",
    )
    parser.add_argument(
        "--interval",
        default="2s",
        metavar="SECONDS",
        help="how often tube stats are read, whatever the number of viewers (default 2s)",
    )
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")


def _listen_address(text: str) -> Address:
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise AdminError(f"--listen: {exc}", EX_USAGE) from None
    if address.unix_path is not None or ":" not in text:
        raise AdminError(f"--listen must be HOST:PORT, got {text!r}", EX_USAGE)
    return address


def _token(path: str | None, flag: str = "--token-file") -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError as exc:
        raise AdminError(f"{flag}: {exc.strerror or exc}: {path}", EX_USAGE) from None


async def _serve(
    servers: list[Address],
    listen: Address,
    access: Access,
    daemons: list[str],
    interval: float,
) -> int:
    from tubeworker.control.standalone import run_dashboard  # the server: only when it runs

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                lambda task_status: run_dashboard(
                    servers,
                    listen,
                    token=access.operator,
                    access=access,
                    daemons=daemons,
                    interval=interval,
                    task_status=task_status,
                )
            )
            print(f"tubeworker dashboard: {url}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return EX_OK


def dashboard(args: argparse.Namespace) -> int:
    try:
        servers = server_list(args)
        listen = _listen_address(args.listen)
        token = _token(args.token_file)
        viewer = _token(args.read_token_file, "--read-token-file")
        interval = parse_interval(args.interval, "--interval")
    except AdminError as exc:
        print(f"tubeworker: {exc}", file=sys.stderr)
        return exc.code
    from tubeworker.observe.logs import configure_logging  # only when it runs

    configure_logging(args.log_format, "info")
    from tubeworker.control.access import Access as Roles  # only when it runs

    bodies_to: Final = "viewer" if args.show_bodies_to == "viewer" else "operator"
    access = Roles(token, viewer, bodies_to=bodies_to)
    if listen.host not in _LOOPBACK and access.reads_open:
        print(
            f"tubeworker: warning: the dashboard listens on {listen}: reads need no token, "
            "so anyone who can reach it sees the tubes and job bodies",
            file=sys.stderr,
        )
    if token is None:
        print(
            "tubeworker: note: no --token-file: the dashboard is read-only (it shows no "
            "actions, and refuses them)",
            file=sys.stderr,
        )
    if token is not None:  # its put dialog checks typed tasks' payloads, as producers do
        from tubeworker.contracts import declare
        from tubeworker.registry import discover

        declare(discover().contracts())
    return trio.run(_serve, servers, listen, access, list(args.daemon), interval)
