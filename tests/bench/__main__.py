"""``python -m tests.bench``: run one benchmark scenario, print its table, write JSON.

Scenarios are modules exposing ``NAME``, ``add_arguments(parser)`` and ``run(args)``,
registered in ``SCENARIOS``. A module may set ``DEFAULT_JOBS`` (None: it picks the number of
jobs per run itself, e.g. per concurrency); otherwise ``--jobs`` defaults to 20000.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

from tests.bench import (
    batches,
    broker,
    client_roundtrip,
    daemon_io,
    dedup,
    floor,
    limits,
    memory,
    outage,
    overhead,
    schedules,
)
from tests.bench.common import BenchError, positive_int, sigterm_as_interrupt

SCENARIOS: dict[str, ModuleType] = {
    client_roundtrip.NAME: client_roundtrip,
    overhead.NAME: overhead,
    daemon_io.NAME: daemon_io,
    outage.NAME: outage,
    limits.NAME: limits,
    broker.NAME: broker,
    memory.NAME: memory,
    schedules.NAME: schedules,
    dedup.NAME: dedup,
    batches.NAME: batches,
    floor.NAME: floor,
}
_DEFAULT_JOBS = 20_000
_RESULTS = Path(__file__).parent / "results"  # gitignored


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="tubeworker benchmarks (see docs/benchmarks.md): medians of interleaved runs "
        "against one local beanstalkd.",
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default=client_roundtrip.NAME)
    parser.add_argument("--runs", type=positive_int, default=3, help="runs per system (default 3)")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help=f"jobs per run (default {_DEFAULT_JOBS}; the daemon scenarios pick per concurrency)",
    )
    parser.add_argument(
        "--json-dir", type=Path, default=_RESULTS, help=f"where JSON goes (default {_RESULTS})"
    )
    for module in SCENARIOS.values():
        module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs is None:
        args.jobs = getattr(SCENARIOS[args.scenario], "DEFAULT_JOBS", _DEFAULT_JOBS)
    sigterm_as_interrupt()
    try:
        code: int = SCENARIOS[args.scenario].run(args)
    except KeyboardInterrupt:
        # Every process we started was stopped by the context managers on the way out.
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
