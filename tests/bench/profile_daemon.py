"""Profile the daemon on the same setup as the ``overhead``/``io`` scenarios.

One run: a private beanstalkd, N prefilled jobs behind the pause gate, ``tubeworker run``
with the benchmark's generated config started under a profiler, the gate opened, SIGTERM
once the tube is empty (the daemon drains and exits 0, so the profile is written).

- ``--profiler cprofile`` (default): ``python -m cProfile -o OUT -m tubeworker run -c CONFIG``;
  prints the top functions by own time. Deterministic, but it inflates the cost of small
  calls (Trio's scheduler is many of them): read it for where, not for how much.
- ``--profiler py-spy --py-spy PATH``: ``py-spy record --pid`` attached once the lanes
  wait (sampling; ``--format raw`` collapsed stacks, or ``speedscope``), closer to the real
  proportions. py-spy is not a project dependency: install it into a throwaway venv.

    python -m tests.bench.profile_daemon --concurrency 200 --jobs 20000 -o /tmp/daemon.prof
"""

from __future__ import annotations

import argparse
import contextlib
import pstats
import sys
import tempfile
import time
from pathlib import Path

from tests.bench import daemon
from tests.bench.common import BenchError, SyncBeanstalk, positive_int, prefill, unique_tube
from tests.support.beanstalkd import BeanstalkdProcess
from tubeworker.beanstalk import protocol as p


def _daemon_argv(args: argparse.Namespace, config: Path) -> list[str]:
    run = ["-m", "tubeworker", "run", "-c", str(config)]
    if args.profiler == "cprofile":
        return [sys.executable, "-m", "cProfile", "-o", str(args.output), *run]
    return [sys.executable, *run]


def _py_spy_argv(args: argparse.Namespace, pid: int) -> list[str]:
    # Attached by PID once the lanes wait: it samples the consume window (and the drain),
    # and writes its output when the daemon exits.
    if not args.py_spy:
        raise SystemExit("--profiler py-spy needs --py-spy /path/to/py-spy")
    return [
        args.py_spy,
        "record",
        "--rate",
        str(args.rate),
        "--format",
        args.format,
        "-o",
        str(args.output),
        "--pid",
        str(pid),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=positive_int, default=200)
    parser.add_argument("--jobs", type=positive_int, default=20_000)
    parser.add_argument("--handler", choices=("noop", "sleep20"), default="noop")
    parser.add_argument("--no-job-lines", action="store_true", help="per-job logging off")
    parser.add_argument("--profiler", choices=("cprofile", "py-spy"), default="cprofile")
    parser.add_argument("--py-spy", help="path of the py-spy binary")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--format", default="raw", help="py-spy output format (default raw)")
    parser.add_argument("-o", "--output", type=Path, default=Path("/tmp/daemon.prof"))
    parser.add_argument("--top", type=int, default=25, help="cProfile: rows to print")
    args = parser.parse_args(argv)
    handler = daemon.SLEEP20 if args.handler == "sleep20" else daemon.NOOP
    with (
        BeanstalkdProcess() as server,
        SyncBeanstalk(server.host, server.port) as admin,
        tempfile.TemporaryDirectory(prefix="tubeworker-profile-") as tmp,
    ):
        tube = unique_tube("profile", 1)
        prefill(admin, tube, args.jobs)
        admin.request(p.PauseTube(tube, 3600))
        config = Path(tmp) / "config.toml"
        config.write_text(
            daemon._tubeworker_config(
                server.address,
                tube,
                args.concurrency,
                handler,
                job_lines=not args.no_job_lines,
            )
        )
        with contextlib.ExitStack() as stack:
            child = stack.enter_context(
                daemon._Child(_daemon_argv(args, config), Path(tmp), "daemon")
            )
            deadline = time.monotonic() + 60
            connections = daemon.connections_of("tubeworker", args.concurrency)
            while admin.tube_stats(tube).current_waiting < connections:
                child.check_alive("starting")
                if time.monotonic() > deadline:
                    raise BenchError("the daemon did not start its lanes within 60 s")
                time.sleep(0.01)
            spy = None
            if args.profiler == "py-spy":
                spy = stack.enter_context(
                    daemon._Child(_py_spy_argv(args, child.pid), Path(tmp), "py-spy")
                )
                time.sleep(1.0)  # let it attach
            t0 = time.perf_counter()
            admin.request(p.PauseTube(tube, 0))
            while True:
                stats = admin.tube_stats(tube)
                if stats.cmd_delete >= args.jobs and not stats.current_jobs_reserved:
                    break
                child.check_alive("consuming")
                time.sleep(0.005)
            elapsed = time.perf_counter() - t0
            child.stop()
            if spy is not None:
                spy.proc.wait(timeout=60)
                print(spy.stderr_tail(), file=sys.stderr)
        print(
            f"{args.jobs} jobs in {elapsed:.2f} s = {args.jobs / elapsed:,.0f} jobs/s "
            f"under {args.profiler} (profiled: slower than the benchmark); wrote {args.output}"
        )
    if args.profiler == "cprofile":
        stats_view = pstats.Stats(str(args.output))
        stats_view.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
