"""``tubeworker dev``: the daemon with a private beanstalkd, until Ctrl-C, for trying
handlers by hand."""

from __future__ import annotations

import argparse
import shlex
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
from tubeworker.config import Config
from tubeworker.registry import Registry
from tubeworker.service.daemon import SIGNALS
from tubeworker.tubes import is_pattern

__all__ = ["put_suggestion", "run_dev"]

_TRY_TASK = "demo.echo"  # a built-in handler that logs the job and succeeds


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
            say(f"put a job: {put_suggestion(config, registry, server.address)}")
            await serve(config, registry, signals, batched=False)
    return EX_OK


def put_suggestion(config: Config, registry: Registry, address: str) -> str:
    """A ``tubeworker put`` command line that gives this daemon a job on ``address``: a raw
    body for a pool bound to a handler, else an envelope for demo.echo (or another handler
    it knows). It runs wherever ``tubeworker`` does (no Python client needed)."""
    pool = next((p for p in config.pools if any(not is_pattern(t) for t in p.tubes)), None)
    if pool is None:  # only patterns: the user picks a tube that matches one
        tube = "TUBE"
        note = f"  (TUBE: a tube matching {config.pools[0].tubes[0]!r})" if config.pools else ""
    else:
        tube = next(t for t in pool.tubes if not is_pattern(t))
        note = ""
    if pool is not None and pool.handler:
        body = ["hello"]
    else:
        task = (
            _TRY_TASK if _TRY_TASK in registry.handlers else min(registry.handlers, default="TASK")
        )
        body = ["--task", task, "--payload", '{"hello": 1}']
    return shlex.join(["tubeworker", "put", tube, *body, "--server", address]) + note
