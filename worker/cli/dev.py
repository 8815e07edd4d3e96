"""``tubeworker dev``: the daemon with a private beanstalkd, until Ctrl-C, for trying
handlers by hand."""

from __future__ import annotations

import argparse
from dataclasses import replace

import trio

from tubeworker.cli.demo import say
from tubeworker.cli.devserver import open_private_beanstalkd
from tubeworker.cli.startup import (
    EX_CONFIG,
    EX_OK,
    EX_UNAVAILABLE,
    ConfigExit,
    load_or_exit,
    overrides_from,
    serve,
)
from tubeworker.service.daemon import SIGNALS

__all__ = ["run_dev"]


async def run_dev(args: argparse.Namespace) -> int:
    """A private beanstalkd plus the daemon on the tubes of the flags (default: default)."""
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with open_private_beanstalkd(say) as server:
            if server is None:
                return EX_UNAVAILABLE
            overrides = replace(overrides_from(args), servers=(server.address,))
            if not overrides.tubes and not args.config:
                overrides = replace(overrides, tubes=("default",))
            try:
                config, registry = load_or_exit(args, overrides=overrides)
            except ConfigExit:
                return EX_CONFIG
            say(f"private beanstalkd at {server.address} (pid {server.pid}); Ctrl-C drains")
            say(
                "put a job: python -c \"import greenstalk; greenstalk.Client(('127.0.0.1', "
                f'{server.port})).put(\'{{\\"task\\": \\"demo.echo\\", \\"payload\\": 1}}\')"'
            )
            await serve(config, registry, signals, batched=False)
    return EX_OK
