"""The ``tubeworker`` command: run, check, handlers, dev, demo.

Exit codes follow sysexits: 0 after a clean drain (also when recycling), 78 (EX_CONFIG) for
a bad config so service managers can refuse to restart on it, 69 (EX_UNAVAILABLE) when
beanstalkd cannot be started for ``dev``/``demo``.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from typing import Final

import trio
from tubeworker import __version__
from tubeworker.config import Config, Overrides, load_config
from tubeworker.errors import ConfigError
from tubeworker.registry import Registry, discover, load_targets
from tubeworker.runtime.lane import lane_sizes

EX_OK: Final = 0
EX_UNAVAILABLE: Final = 69
EX_CONFIG: Final = 78


def _add_run_options(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--concurrency", type=int, help="lanes per pool")
    parser.add_argument("--handler", help="bind every job to this handler (raw bodies)")
    parser.add_argument("--profile", choices=("io", "compute"))
    parser.add_argument("--drain-timeout", metavar="SECONDS")
    parser.add_argument("--max-attempts", type=int)
    parser.add_argument("--log-format", choices=("auto", "json", "console"))
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error", "critical"))


def _overrides(args: argparse.Namespace) -> Overrides:
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
    )


def build_registry(config: Config) -> Registry:
    """Entry points plus the config's [handlers]; every handler a pool binds must load."""
    registry = discover()
    load_targets(registry, config.handlers, source=config.source)
    registry.require((pool.handler for pool in config.pools if pool.handler), source=config.source)
    return registry


def load(args: argparse.Namespace) -> tuple[Config, Registry]:
    config = load_config(args.config, overrides=_overrides(args))
    return config, build_registry(config)


async def _run(args: argparse.Namespace) -> int:
    from tubeworker.observe.logs import configure_logging
    from tubeworker.service.daemon import SIGNALS, run_daemon

    # First thing: without a handler SIGTERM kills us with no cleanup, and as PID 1 it is
    # ignored (BEANSTALKD.md §10.5).
    with trio.open_signal_receiver(*SIGNALS) as signals:
        try:
            config, registry = load(args)
        except ConfigError as exc:
            print(f"tubeworker: bad config: {exc}", file=sys.stderr)
            return EX_CONFIG
        configure_logging(config.logging.format, config.logging.level, batched=True)
        # Many small objects per job: the collector's default thresholds make it run every
        # few hundred jobs; raising them took back about 10% of throughput (BENCHMARKS.md).
        gc.set_threshold(50_000, 20, 20)
        for broken in registry.broken.values():
            print(
                f"tubeworker: warning: handler {broken.name!r} ({broken.target} from "
                f"{broken.distribution}) failed to load: {broken.error}",
                file=sys.stderr,
            )
        await run_daemon(config, registry, signals=signals)
    return EX_OK


def _check(args: argparse.Namespace) -> int:
    try:
        config, registry = load(args)
    except ConfigError as exc:
        print(f"tubeworker: bad config: {exc}", file=sys.stderr)
        return EX_CONFIG
    print(f"config: {config.source}")
    print(f"servers: {', '.join(str(s) for s in config.servers)}")
    print(
        f"drain_timeout: {config.drain_timeout:g} s; "
        f"max_in_flight: {config.max_in_flight or config.total_concurrency}"
    )
    for pool in config.pools:
        print(f"pool {pool.name}:")
        print(
            f"  tubes: {', '.join(pool.tubes)}" + ("  (patterns: polled)" if pool.has_globs else "")
        )
        servers = len(pool.servers or config.servers)
        connections = len(lane_sizes(pool.concurrency, pool.jobs_per_connection, servers))
        print(
            f"  concurrency: {pool.concurrency} ({pool.profile} profile) on {connections} "
            f"connection(s) of up to {pool.jobs_per_connection} jobs"
        )
        if pool.handler:
            print(f"  handler: {pool.handler} (bound: raw bodies)")
        else:
            print(
                f"  handler: by JSON envelope task; known: {', '.join(sorted(registry.handlers))}"
            )
        limit = f"TTR - {config.ttr_margin:g} s"
        timeout = f"{pool.timeout:g} s, capped at {limit}" if pool.timeout else limit
        print(f"  handler timeout: {timeout} (long-running handlers are touched instead)")
        r = pool.retry
        print(
            f"  retries: max_attempts {r.max_attempts}, backoff {r.backoff_base:g} s doubling "
            f"to {r.backoff_cap:g} s with full jitter, redelivery_limit {r.redelivery_limit}"
        )
    for broken in registry.broken.values():
        print(f"warning: handler {broken.name!r} failed to load: {broken.error}")
    print("ok")
    return EX_OK


def _handlers(args: argparse.Namespace) -> int:
    registry = discover()
    if not registry.handlers and not registry.broken:
        print("no handlers registered in entry-point group 'tubeworker.handlers'")
    for name, registered in sorted(registry.handlers.items()):
        spec = registered.spec
        options = [
            "async" if spec.is_async else "sync",
            *([f"apis={','.join(spec.apis)}"] if spec.apis else []),
            *([f"timeout={spec.timeout:g}s"] if spec.timeout else []),
            *([f"max_attempts={spec.max_attempts}"] if spec.max_attempts else []),
            *(["long_running"] if spec.long_running else []),
        ]
        print(f"{name:24} {registered.target:32} {registered.distribution:16} {' '.join(options)}")
    for name, broken in sorted(registry.broken.items()):
        print(f"{name:24} {broken.target:32} {broken.distribution:16} BROKEN: {broken.error}")
    return EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tubeworker", description="A Trio worker daemon for beanstalkd."
    )
    parser.add_argument("--version", action="version", version=f"tubeworker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon in the foreground")
    _add_run_options(run)
    check = commands.add_parser("check", help="validate a config and show what would run")
    _add_run_options(check)
    commands.add_parser("handlers", help="list discovered handlers")
    dev = commands.add_parser("dev", help="run the daemon with a private beanstalkd")
    _add_run_options(dev)
    demo = commands.add_parser("demo", help="a private beanstalkd, demo jobs, the daemon")
    demo.add_argument("--jobs", type=int, default=60, help="how many demo jobs (default 60)")
    demo.add_argument("--log-format", choices=("auto", "json", "console"), default="console")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return trio.run(_run, args)
        if args.command == "check":
            return _check(args)
        if args.command == "handlers":
            return _handlers(args)
        if args.command in ("dev", "demo"):
            from tubeworker.cli import demo as demo_module

            return trio.run(
                demo_module.run_dev if args.command == "dev" else demo_module.run_demo, args
            )
    except KeyboardInterrupt:  # only before the signal receiver is installed
        return 130
    parser.print_help()
    return EX_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
