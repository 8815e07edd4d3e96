"""What every daemon-running command shares: the config or exit 78, the handler registry,
logging, and the daemon run under the signal receiver."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Final

import trio

from tubeworker.config import Config, Overrides, validate_config
from tubeworker.contracts import declare
from tubeworker.errors import ConfigError
from tubeworker.job import Middleware
from tubeworker.observe.logs import configure_logging
from tubeworker.registry import (
    CONFIG_DISTRIBUTION,
    Registry,
    discover,
    load_middleware,
    load_targets,
)
from tubeworker.runtime.state import WorkerState
from tubeworker.service.daemon import run_daemon

__all__ = [
    "EX_CONFIG",
    "EX_OK",
    "EX_UNAVAILABLE",
    "ConfigExit",
    "Loaded",
    "add_run_options",
    "build_registry",
    "collect_registry",
    "collector_threshold",
    "load_all",
    "load_or_exit",
    "overrides_from",
    "print_problems",
    "serve",
]

EX_OK: Final = 0
EX_UNAVAILABLE: Final = 69
EX_CONFIG: Final = 78

# The garbage collector's first threshold: at least this, and this many objects more for
# each job a worker may hold (see collector_threshold).
_MIN_COLLECTOR_THRESHOLD: Final = 50_000
_OBJECTS_PER_JOB_HELD: Final = 50


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
    parser.add_argument(
        "--control-token-file",
        metavar="PATH",
        help="the control plane's actions (POST /quiet, /resume, /drain) need the token "
        "in this file (or TUBEWORKER_CONTROL_TOKEN_FILE, or [control] token_file)",
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
        control_token_file=args.control_token_file,
    )


@dataclass(frozen=True, slots=True)
class Loaded:
    """The config, the handler registry, and every problem found in both in one pass.
    ``config`` and ``registry`` are what the daemon runs only when ``problems`` is empty;
    with problems they hold what could be read (``config`` is None when the file could not
    be read at all)."""

    config: Config | None
    registry: Registry
    problems: tuple[ConfigError, ...]


def collect_registry(config: Config) -> tuple[Registry, tuple[ConfigError, ...]]:
    """Entry points plus the config's [handlers] (found beside the config file first), and
    every problem: a [handlers] entry that cannot load (also in ``registry.broken``), a
    handler a pool binds that is missing or broken, a middleware that cannot be set up."""
    registry = discover()
    problems = list(
        load_targets(registry, config.handlers, source=config.source, search=config.config_dir)
    )
    for index, pool in enumerate(config.pools):
        broken = registry.broken.get(pool.handler or "")
        if pool.handler is None or (broken and broken.distribution == CONFIG_DISTRIBUTION):
            continue  # not bound, or its [handlers] entry is reported already
        try:
            registry.require([pool.handler], source=config.source)
        except ConfigError as exc:
            key = f"pool[{index}].handler"
            problems.append(ConfigError(exc.problem, key=key, source=exc.source))
    middleware: list[Middleware] = []
    for name in config.middleware.enabled:
        try:
            middleware += load_middleware([name], config.middleware.options, source=config.source)
        except ConfigError as exc:
            problems.append(exc)
    registry.middleware = tuple(middleware)
    declare(registry.contracts())  # puts from this process are checked against them
    return registry, tuple(problems)


def build_registry(config: Config) -> Registry:
    """The registry :func:`collect_registry` builds; raises its first problem."""
    registry, problems = collect_registry(config)
    if problems:
        raise problems[0]
    return registry


def load_all(args: argparse.Namespace, *, overrides: Overrides | None = None) -> Loaded:
    """The config of ``-c`` and the flags, its registry, and every problem in either."""
    report = validate_config(args.config, overrides=overrides or overrides_from(args))
    if report.config is None:
        return Loaded(None, discover(), report.problems)
    registry, problems = collect_registry(report.config)
    return Loaded(report.config, registry, report.problems + problems)


def print_problems(problems: Iterable[ConfigError]) -> None:
    """Each problem as one line on stderr: file (or variable, or flag), key, problem."""
    for problem in problems:
        print(f"tubeworker: bad config: {problem}", file=sys.stderr)


def load_or_exit(
    args: argparse.Namespace, *, overrides: Overrides | None = None
) -> tuple[Config, Registry]:
    """The config and registry, or ConfigExit after printing every problem, one a line."""
    loaded = load_all(args, overrides=overrides)
    if loaded.problems or loaded.config is None:
        print_problems(loaded.problems)
        raise ConfigExit
    return loaded.config, loaded.registry


def collector_threshold(config: Config) -> int:
    """The garbage collector's first threshold for this config.

    Many small objects per job: with the default (700) it ran every few hundred jobs, and
    50,000 took back about 10 % of throughput. A young collection walks every object made
    since the last one that is still alive, and with thousands of jobs in flight most are
    (at 10,000 jobs held: a 15-50 ms pause every half second, a tenth of the CPU). So the
    threshold grows with the jobs the worker may hold. Only objects in reference cycles
    wait for a collection; everything else is freed as soon as it is dropped.
    """
    held = config.total_concurrency
    if config.max_in_flight:
        held = min(held, config.max_in_flight)
    return max(_MIN_COLLECTOR_THRESHOLD, _OBJECTS_PER_JOB_HELD * held)


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
    gc.set_threshold(collector_threshold(config), 20, 20)
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
