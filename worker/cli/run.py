"""``tubeworker run``: the daemon in the foreground until SIGTERM/SIGINT drains it."""

from __future__ import annotations

import argparse

import trio

from tubeworker.cli.startup import EX_CONFIG, EX_OK, ConfigExit, load_or_exit, serve
from tubeworker.service.daemon import SIGNALS

__all__ = ["run"]


async def run(args: argparse.Namespace) -> int:
    # First thing: without a handler SIGTERM kills us with no cleanup, and as PID 1 it is
    # ignored (docs/beanstalkd.md#trio-signals).
    with trio.open_signal_receiver(*SIGNALS) as signals:
        try:
            config, registry = load_or_exit(args)
        except ConfigExit:
            return EX_CONFIG
        await serve(config, registry, signals)
    return EX_OK
