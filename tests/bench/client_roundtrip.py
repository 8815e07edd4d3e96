"""Scenario ``client``: reserve+delete round trips over ONE connection, prefilled tube.

This measures the protocol layer and the Trio client, not the daemon: no handler, no
lanes, no logging. Each system consumes its own freshly prefilled tube on the same
beanstalkd; systems are interleaved (A B C D E, A B C D E, …) and compared by median.

Systems:

- ``tubeworker-plain``: ``Client.reserve(timeout=0)`` then ``Client.delete``, one round
  trip each.
- ``tubeworker-pipelined``: the lane hot path: delete of the previous job and the next
  reserve written together, then two receives (one round trip per job).
- ``tubeworker-batched``: K reserve-with-timeout 0 in one write, K replies, then K deletes
  in one write (two round trips per K jobs).
- ``greenstalk-sync``: the greenstalk loop in its own process (tests/bench/peers).
- ``raw-pipelined``: a plain socket, deletes of batch N and reserves of batch N+1 in one
  write, minimal parsing: the broker's ceiling for one connection.

Every system reserves with ``reserve-with-timeout 0`` until TIMED_OUT (so the batched ones
pay for up to K-1 trailing TIMED_OUTs, a few ms at most). The clock and the CPU meters
cover the consume loop only: connect, watch and the subprocess start-up are outside.
Client CPU is this process's ``time.process_time`` (the peer subprocess measures its own
loop the same way); beanstalkd CPU comes from /proc/<pid>/stat around the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import greenstalk
import trio

from tests.bench.common import (
    BODY_SIZE,
    BenchError,
    Meter,
    Sample,
    Summary,
    SyncBeanstalk,
    environment_info,
    format_table,
    positive_int,
    prefill,
    ratio,
    run_child,
    sample_records,
    summarize,
    unique_tube,
    verify_consumed,
    write_json,
)
from tests.support.beanstalkd import BeanstalkdProcess
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client, connect

NAME = "client"
_PEER_DIR = Path(__file__).parent / "peers"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_RAW_BATCH = 1000
_RESERVE_NOW = p.ReserveWithTimeout(0)  # the tube is prefilled: TIMED_OUT means empty


@dataclass(frozen=True)
class RunContext:
    system: str
    run: int
    host: str
    port: int
    server_pid: int
    tube: str
    jobs: int
    batch: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def sample(self, meter: Meter, reserved: int, deleted: int, **extra: Any) -> Sample:
        return Sample(
            system=self.system,
            run=self.run,
            jobs=self.jobs,
            elapsed=meter.elapsed,
            client_cpu=meter.client_cpu,
            server_cpu=meter.server_cpu,
            reserved=reserved,
            deleted=deleted,
            extra=extra,
        )


def _unexpected(ctx: RunContext, reply: p.Reply, doing: str) -> BenchError:
    return BenchError(f"{ctx.system}: {reply!r} in reply to {doing}")


async def open_client_watching(address: str, tube: str) -> Client:
    """A client watching only ``tube`` (setup, outside the measured window)."""
    client = await connect(address)
    try:
        await client.watch(tube)
        await client.ignore("default")
    except BaseException:
        await client.aclose()
        raise
    return client


# --------------------------------------------------------------------------- tubeworker


async def _tubeworker_plain(ctx: RunContext) -> Sample:
    meter = Meter(ctx.server_pid)
    reserved = deleted = 0
    client = await open_client_watching(ctx.address, ctx.tube)
    try:
        meter.start()
        while True:
            try:
                job = await client.reserve(timeout=0)
            except greenstalk.TimedOutError:
                break
            reserved += 1
            await client.delete(job.id)
            deleted += 1
        meter.stop()
    finally:
        await client.aclose()
    return ctx.sample(meter, reserved, deleted)


async def _tubeworker_pipelined(ctx: RunContext) -> Sample:
    meter = Meter(ctx.server_pid)
    reserved = deleted = 0
    client = await open_client_watching(ctx.address, ctx.tube)
    try:
        meter.start()
        await client.send(_RESERVE_NOW)
        reply = await client.receive()
        while isinstance(reply, p.Reserved):
            reserved += 1
            # The lane's hot path: finish this job and ask for the next in one write.
            await client.send(p.Delete(reply.id), _RESERVE_NOW)
            done = await client.receive()
            if not isinstance(done, p.Deleted):
                raise _unexpected(ctx, done, f"delete {reply.id}")
            deleted += 1
            reply = await client.receive()
        meter.stop()
    finally:
        await client.aclose()
    if not isinstance(reply, p.TimedOut):
        raise _unexpected(ctx, reply, "reserve-with-timeout 0")
    return ctx.sample(meter, reserved, deleted)


async def _tubeworker_batched(ctx: RunContext) -> Sample:
    meter = Meter(ctx.server_pid)
    reserved = deleted = 0
    reserves = [_RESERVE_NOW] * ctx.batch
    client = await open_client_watching(ctx.address, ctx.tube)
    try:
        meter.start()
        empty = False
        while not empty:
            await client.send(*reserves)
            ids = []
            for _ in reserves:
                reply = await client.receive()
                if isinstance(reply, p.Reserved):
                    ids.append(reply.id)
                elif isinstance(reply, p.TimedOut):
                    empty = True  # later replies of this batch time out too: read them all
                else:
                    raise _unexpected(ctx, reply, "reserve-with-timeout 0")
            reserved += len(ids)
            if not ids:
                break
            await client.send(*[p.Delete(job_id) for job_id in ids])
            for job_id in ids:
                reply = await client.receive()
                if not isinstance(reply, p.Deleted):
                    raise _unexpected(ctx, reply, f"delete {job_id}")
                deleted += 1
        meter.stop()
    finally:
        await client.aclose()
    return ctx.sample(meter, reserved, deleted, batch=ctx.batch)


# --------------------------------------------------------------------------- peers


def _greenstalk_sync(ctx: RunContext) -> Sample:
    # A subprocess: its own interpreter and GIL, as a greenstalk user would run it. The
    # child times its loop itself; beanstalkd CPU is read around the whole child.
    meter = Meter(ctx.server_pid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    meter.start()
    out = run_child(
        [
            sys.executable,
            str(_PEER_DIR / "greenstalk_sync.py"),
            ctx.address,
            ctx.tube,
            str(ctx.jobs),
        ],
        timeout=max(60.0, ctx.jobs / 500),
        cwd=_REPO_ROOT,
    )
    meter.stop()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.strip().splitlines()[-1])
    return Sample(
        system=ctx.system,
        run=ctx.run,
        jobs=ctx.jobs,
        elapsed=result["elapsed"],
        client_cpu=result["cpu"],
        server_cpu=meter.server_cpu,
        reserved=result["reserved"],
        deleted=result["deleted"],
        # The whole child, interpreter start-up and imports included (for the record).
        extra={
            "child_wall_with_startup": meter.elapsed,
            "child_cpu_with_startup": (children_after.ru_utime + children_after.ru_stime)
            - (children_before.ru_utime + children_before.ru_stime),
        },
    )


class _RawReader:
    """Counts replies on a blocking socket; parses only what a delete needs (the job id)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._pos = 0

    def _fill(self) -> None:
        data = self._sock.recv(1 << 20)
        if not data:
            raise BenchError("raw-pipelined: beanstalkd closed the connection")
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def line(self) -> bytes:
        while (end := self._buf.find(b"\r\n", self._pos)) < 0:
            self._fill()
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 2
        return line

    def skip(self, size: int) -> None:
        while len(self._buf) < self._pos + size:
            self._fill()
        self._pos += size

    def read(self, n_deletes: int, n_reserves: int) -> tuple[int, list[int], int]:
        """(DELETED count, reserved ids, TIMED_OUT count) for one pipelined write."""
        deleted = timed_out = 0
        ids: list[int] = []
        for _ in range(n_deletes):
            if self.line() != b"DELETED":
                raise BenchError("raw-pipelined: delete not answered DELETED")
            deleted += 1
        for _ in range(n_reserves):
            head = self.line()
            if head.startswith(b"RESERVED "):
                _, job_id, size = head.split()
                ids.append(int(job_id))
                self.skip(int(size) + 2)
            elif head == b"TIMED_OUT":
                timed_out += 1
            else:
                raise BenchError(f"raw-pipelined: {head[:60]!r} in reply to a reserve")
        return deleted, ids, timed_out


def _raw_pipelined(ctx: RunContext) -> Sample:
    meter = Meter(ctx.server_pid)
    reserved = deleted = 0
    with socket.create_connection((ctx.host, ctx.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _RawReader(sock)
        sock.sendall(b"watch %b\r\nignore default\r\n" % ctx.tube.encode())
        if reader.line() != b"WATCHING 2" or reader.line() != b"WATCHING 1":
            raise BenchError("raw-pipelined: watch/ignore failed")
        reserves = b"reserve-with-timeout 0\r\n" * _RAW_BATCH
        ids: list[int] = []
        meter.start()
        while True:
            # Deletes of the previous batch and the next batch of reserves: one write.
            deletes = b"".join(b"delete %d\r\n" % job_id for job_id in ids)
            sock.sendall(deletes + reserves)
            n_deleted, ids, timed_out = reader.read(len(ids), _RAW_BATCH)
            deleted += n_deleted
            reserved += len(ids)
            if timed_out:
                break
        if ids:
            sock.sendall(b"".join(b"delete %d\r\n" % job_id for job_id in ids))
            n_deleted, _, _ = reader.read(len(ids), 0)
            deleted += n_deleted
        meter.stop()
    return ctx.sample(meter, reserved, deleted, batch=_RAW_BATCH)


# --------------------------------------------------------------------------- the scenario


def _in_trio(fn: Callable[[RunContext], Awaitable[Sample]]) -> Callable[[RunContext], Sample]:
    # A fresh trio.run per run: no state carried between runs; its start-up is not timed.
    def run(ctx: RunContext) -> Sample:
        return trio.run(fn, ctx)

    return run


SYSTEMS: dict[str, Callable[[RunContext], Sample]] = {
    "tubeworker-plain": _in_trio(_tubeworker_plain),
    "tubeworker-pipelined": _in_trio(_tubeworker_pipelined),
    "tubeworker-batched": _in_trio(_tubeworker_batched),
    "greenstalk-sync": _greenstalk_sync,
    "raw-pipelined": _raw_pipelined,
}
BASELINE = "greenstalk-sync"
CEILING = "raw-pipelined"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(f"scenario {NAME}")
    group.add_argument(
        "--batch", type=positive_int, default=100, help="K for tubeworker-batched (default 100)"
    )
    group.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated subset, in run order (default: all)",
    )


def _one_run(server: BeanstalkdProcess, system: str, run: int, args: argparse.Namespace) -> Sample:
    tube = unique_tube(system, run)
    with SyncBeanstalk(server.host, server.port) as admin:
        prefill(admin, tube, args.jobs)
        ctx = RunContext(
            system, run, server.host, server.port, server.pid, tube, args.jobs, args.batch
        )
        gc.collect()  # start each run with the same (empty) collector debt
        sample = SYSTEMS[system](ctx)
        verify_consumed(admin, tube, args.jobs, sample)
    return sample


def _table(summaries: list[Summary], args: argparse.Namespace) -> str:
    headers = [
        "system",
        "runs",
        "jobs/s median",
        "min-max",
        f"x {BASELINE}",
        f"x {CEILING}",
        "client CPU s/1k jobs",
        "beanstalkd CPU s/1k jobs",
    ]
    rows = [
        [
            s.system,
            str(s.runs),
            f"{s.median:,.0f}",
            f"{s.low:,.0f}-{s.high:,.0f}",
            ratio(summaries, s, BASELINE),
            ratio(summaries, s, CEILING),
            f"{s.client_cpu_per_1k:.3f}",
            f"{s.server_cpu_per_1k:.3f}",
        ]
        for s in summaries
    ]
    title = (
        f"scenario {NAME}: reserve+delete over one connection, prefilled tube, "
        f"{args.jobs:,} jobs of {BODY_SIZE} B per run, {args.runs} interleaved runs, "
        f"batched K={args.batch}, raw batch {_RAW_BATCH}"
    )
    return title + "\n" + format_table(headers, rows)


def run(args: argparse.Namespace) -> int:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    samples: dict[str, list[Sample]] = {name: [] for name in systems}
    with BeanstalkdProcess() as server:
        env = environment_info(server.binary)
        for run_no in range(1, args.runs + 1):
            for system in systems:  # interleaved: A B C D E, A B C D E, …
                sample = _one_run(server, system, run_no, args)
                samples[system].append(sample)
                print(
                    f"run {run_no}/{args.runs}  {system:<22} {sample.jobs_per_s:>10,.0f} jobs/s",
                    file=sys.stderr,
                    flush=True,
                )
    summaries = summarize(samples)
    table = _table(summaries, args)
    print(table)
    path = write_json(
        args.json_dir,
        NAME,
        {
            "scenario": NAME,
            "environment": env,
            "parameters": {
                "runs": args.runs,
                "jobs_per_run": args.jobs,
                "body_bytes": BODY_SIZE,
                "batch": args.batch,
                "raw_batch": _RAW_BATCH,
                "systems": systems,
                "baseline": BASELINE,
            },
            "summary": [asdict(s) for s in summaries],
            "runs": sample_records(samples),
            "table": table,
        },
    )
    print(f"\nwrote {path}")
    return 0
