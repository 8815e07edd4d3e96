"""What every daemon-running command shares: the config or exit 78, the handler registry,
logging, and the daemon run under the signal receiver."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import AsyncIterator
from typing import Final

import trio

from tubeworker.config import Config, Overrides, load_config
from tubeworker.errors import ConfigError
from tubeworker.observe.logs import configure_logging
from tubeworker.registry import Registry, discover, load_middleware, load_targets
from tubeworker.runtime.state import WorkerState
from tubeworker.service.daemon import run_daemon

__all__ = [
    "EX_CONFIG",
    "EX_OK",
    "EX_UNAVAILABLE",
    "ConfigExit",
    "add_run_options",
    "build_registry",
    "load_or_exit",
    "overrides_from",
    "serve",
]

EX_OK: Final = 0
EX_UNAVAILABLE: Final = 69
EX_CONFIG: Final = 78


class ConfigExit(Exception):
    """The config is bad: the message was printed; exit with EX_CONFIG."""


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="TOML config file (or TUBEWORKER_CONFIG)")
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="beanstalkd address (repeatable; unix:/path for a socket)",
    )
    parser.add_argument(
        "--tube",
        action="append",
        default=[],
        metavar="NAME",
        help="tube name or glob pattern (repeatable); replaces the config's pools with one",
    )
    parser.add_argument(
        "--concurrency", type=int, help="jobs each pool runs at once (its in-flight limit)"
    )
    parser.add_argument("--handler", help="bind every job to this handler (raw bodies)")
    parser.add_argument("--profile", choices=("io", "compute"))
    parser.add_argument("--drain-timeout", metavar="SECONDS")
    parser.add_argument("--max-attempts", type=int)
    parser.add_argument("--log-format", choices=("auto", "json", "console"))
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error", "critical"))
    parser.add_argument(
        "--control",
        metavar="HOST:PORT",
        help="serve the control plane (metrics, health, status, events) here; "
        "127.0.0.1 keeps it local",
    )


def overrides_from(args: argparse.Namespace) -> Overrides:
    return Overrides(
        servers=tuple(args.server),
        tubes=tuple(args.tube),
        concurrency=args.concurrency,
        handler=args.handler,
        profile=args.profile,
        drain_timeout=args.drain_timeout,
        max_attempts=args.max_attempts,
        log_format=args.log_format,
        log_level=args.log_level,
        control=args.control,
    )


def build_registry(config: Config) -> Registry:
    """Entry points plus the config's [handlers] (found beside the config file first);
    every handler a pool binds must load."""
    registry = discover()
    load_targets(registry, config.handlers, source=config.source, search=config.config_dir)
    registry.require((pool.handler for pool in config.pools if pool.handler), source=config.source)
    registry.middleware = load_middleware(
        config.middleware.enabled, config.middleware.options, source=config.source
    )
    return registry


def load_or_exit(
    args: argparse.Namespace, *, overrides: Overrides | None = None
) -> tuple[Config, Registry]:
    """The config and registry, or ConfigExit after printing the problem in one line."""
    try:
        config = load_config(args.config, overrides=overrides or overrides_from(args))
        return config, build_registry(config)
    except ConfigError as exc:
        print(f"tubeworker: bad config: {exc}", file=sys.stderr)
        raise ConfigExit from None


def warn_broken(registry: Registry) -> None:
    for broken in registry.broken.values():
        print(
            f"tubeworker: warning: handler {broken.name!r} ({broken.target} from "
            f"{broken.distribution}) failed to load: {broken.error}",
            file=sys.stderr,
        )


async def serve(
    config: Config,
    registry: Registry,
    signals: AsyncIterator[int],
    *,
    state: WorkerState | None = None,
    batched: bool = True,
) -> WorkerState:
    """Logging as configured, then the daemon until it has drained, with the control plane
    beside it when one is configured."""
    configure_logging(config.logging.format, config.logging.level, batched=batched)
    # Many small objects per job: the collector's default thresholds make it run every
    # few hundred jobs; raising them took back about 10% of throughput.
    gc.set_threshold(50_000, 20, 20)
    warn_broken(registry)
    state = state or WorkerState(max_jobs=config.recycle.max_jobs)
    if config.control.listen is None:
        return await run_daemon(config, registry, signals=signals, state=state)
    from tubeworker.control.server import run_control_plane

    async with trio.open_nursery() as nursery:
        await nursery.start(run_control_plane, config, state)
        await run_daemon(config, registry, signals=signals, state=state)
        nursery.cancel_scope.cancel()  # the daemon has drained: so does the control plane
    return state
