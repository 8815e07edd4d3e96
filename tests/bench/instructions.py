"""User-space instructions per job, counted by valgrind's callgrind: a before/after figure
for the daemon's hot path that a busy machine does not blur.

CPU seconds per job (the ``overhead`` scenario) move by 10-20 % from run to run on a shared
machine; instruction counts move by about 1 %. Each system runs twice under callgrind on a
private beanstalkd, on N1 and then N2 prefilled no-op jobs (the overhead scenario's setup:
one pool bound to the ``noop`` handler, job lines on), and the figure is
``(I(N2) - I(N1)) / (N2 - N1)``: start-up, imports and the drain cancel out.

Counts are user-space only: the kernel's share (system calls) is not in them. So they
compare tubeworker with tubeworker (this checkout against ``TUBEWORKER_BENCH_BASELINE``,
another tree laid out as for the ``tubeworker-baseline`` system), not with a peer that
makes a system call per command; ``aiostalk`` is offered as a reference only.

``tubeworker-nolog`` is this checkout with ``job_lines = false``: the difference is what
the per-job log line costs. The variants of tests/bench/variants.py count the same way
(``tubeworker-envelope``, ``tubeworker-secret``, ``tubeworker-signed``,
``tubeworker-tls``, ``tubeworker-features``): their bodies, their config, and for ``-tls``
a stunnel in the way (its own instructions are not counted; the daemon's TLS, OpenSSL in
its process, is).

    python -m tests.bench.instructions                      # this checkout
    TUBEWORKER_BENCH_BASELINE=/tmp/base \
        python -m tests.bench.instructions --systems baseline,tubeworker

``--guard`` is ``make bench``'s regression check, which cannot flake: tubeworker's count per
job over aiostalk's, against the ratio stored in ``tests/bench/baseline.json``; more than
15 % above it fails (exit 1, one line). ``--record`` stores the ratio measured now (after a
change that is meant to cost more, say why in the commit).

valgrind is not a dependency: ``apt-get install valgrind`` (``make bench`` installs it).
Under it the daemon runs about 50 times slower; the defaults (500 and 2,500 jobs) take
about a minute and a half per system.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import greenstalk

from tests.bench import variants
from tests.bench.common import BenchError, positive_int
from tests.bench.daemon import BASELINE_ENV
from tests.support.beanstalkd import BeanstalkdProcess

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "tests" / "bench" / "baseline.json"
GUARD_MARGIN = 1.15  # the ratio may rise this much before --guard fails
PEER = REPO / "tests" / "bench" / "peers" / "aiostalk_coroutines.py"
SYSTEMS = ("tubeworker", "tubeworker-nolog", "baseline", "aiostalk", *variants.VARIANTS)
_COLLECTED = re.compile(rb"Collected : (\d+)")
_TUBE = "bench"


def _config(address: str, concurrency: int, bound: bool = True, job_lines: bool = True) -> str:
    return (
        "[worker]\n"
        f'servers = ["{address}"]\n'
        "drain_timeout = 5\n"
        "[logging]\n"
        'format = "json"\n' + ("" if job_lines else "job_lines = false\n") + "[handlers]\n"
        '"bench.noop" = "tests.bench.handlers:noop"\n'
        "[[pool]]\n"
        'name = "bench"\n'
        f'tubes = ["{_TUBE}"]\n'
        f"concurrency = {concurrency}\n" + ('handler = "bench.noop"\n' if bound else "")
    )


def _argv_env(
    system: str, address: str, config: Path, concurrency: int
) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUBEWORKER_")}
    if system == "aiostalk":
        argv = [str(PEER), address, _TUBE, str(concurrency), "--handler", "noop"]
        return [sys.executable, *argv], env
    path = [str(REPO)]
    if system == "baseline":
        baseline = os.environ.get(BASELINE_ENV)
        if not baseline:
            raise BenchError(
                f"--systems baseline needs {BASELINE_ENV}=DIR (see tests/bench/daemon.py)"
            )
        path.insert(0, baseline)
    env["PYTHONPATH"] = os.pathsep.join(path)
    return [sys.executable, "-m", "tubeworker", "run", "-c", str(config)], env


def _drained(client: greenstalk.Client, jobs: int) -> bool:
    stats = client.stats_tube(_TUBE)
    return (
        stats["current-jobs-ready"] == 0
        and stats["current-jobs-reserved"] == 0
        and stats["total-jobs"] >= jobs
    )


def instructions(system: str, jobs: int, concurrency: int, timeout: float) -> int:
    """Instructions the system's process ran to do ``jobs`` prefilled jobs and stop."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(BeanstalkdProcess())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        route = stack.enter_context(variants.open_route(system, server, workdir))
        host, port = server.address.rsplit(":", 1)
        with greenstalk.Client((host, int(port)), use=_TUBE, encoding=None) as client:
            body = variants.body_of(system, "noop") or (lambda seq: b"x" * 100)
            for seq in range(jobs):
                client.put(body(seq))
            config = Path(workdir) / "worker.toml"
            bound = system not in variants.ENVELOPE_POOLS
            text = _config(route.address, concurrency, bound, system != "tubeworker-nolog")
            if system in variants.VARIANTS:
                text += variants.config_of(system, workdir, route)
            config.write_text(text)
            argv, env = _argv_env(system, route.address, config, concurrency)
            out = Path(workdir) / "callgrind.out"
            process = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                cwd=workdir,
            )
            try:
                deadline = time.monotonic() + timeout
                while not _drained(client, jobs):
                    if process.poll() is not None:
                        raise BenchError(f"{system} exited early with {process.returncode}")
                    if time.monotonic() > deadline:
                        raise BenchError(f"{system}: {jobs} jobs not done in {timeout:g} s")
                    time.sleep(0.2)  # polling a queue from outside: nothing to wait on
                process.send_signal(signal.SIGTERM)
                _, err = process.communicate(timeout=timeout)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    found = _COLLECTED.search(err)
    if found is None:
        raise BenchError(f"{system}: callgrind printed no count: {err[-400:]!r}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="tubeworker", help=f"comma-separated, of {SYSTEMS}")
    parser.add_argument("--n1", type=positive_int, default=500)
    parser.add_argument("--n2", type=positive_int, default=2500)
    parser.add_argument("--concurrency", type=positive_int, default=200)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument(
        "--guard", action="store_true", help="fail if tubeworker/aiostalk rose >15 %% (baseline)"
    )
    parser.add_argument("--record", action="store_true", help="store the ratio as the baseline")
    args = parser.parse_args(argv)
    if args.guard or args.record:
        args.systems = "tubeworker,aiostalk"
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or args.n2 <= args.n1:
        parser.error(f"unknown systems {unknown}" if unknown else "--n2 must exceed --n1")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    per_job: dict[str, float] = {}
    try:
        for system in systems:
            low = instructions(system, args.n1, args.concurrency, args.timeout)
            high = instructions(system, args.n2, args.concurrency, args.timeout)
            per_job[system] = (high - low) / (args.n2 - args.n1)
            print(f"{system:<20} c={args.concurrency}: {per_job[system]:,.0f} instructions per job")
    except BenchError as exc:
        print(f"benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    if args.guard or args.record:
        return _guard(per_job["tubeworker"] / per_job["aiostalk"], args.concurrency, args.record)
    return 0


def _guard(ratio: float, concurrency: int, record: bool) -> int:
    key = f"instructions_per_job_vs_aiostalk_c{concurrency}"
    stored = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    if record:
        stored[key] = round(ratio, 3)
        BASELINE.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        print(f"recorded {key} = {ratio:.3f} in {BASELINE.relative_to(REPO)}")
        return 0
    if key not in stored:
        print(f"no {key} in {BASELINE.relative_to(REPO)}: run with --record", file=sys.stderr)
        return 1
    limit = stored[key] * GUARD_MARGIN
    if ratio > limit:
        print(
            f"benchmark FAILED: tubeworker runs {ratio:.2f}x aiostalk's instructions per job "
            f"(c={concurrency}); the baseline is {stored[key]:.2f}x, the limit {limit:.2f}x",
            file=sys.stderr,
        )
        return 1
    print(f"guard: {ratio:.2f}x aiostalk's instructions per job, within {limit:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
