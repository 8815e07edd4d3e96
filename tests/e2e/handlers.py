"""Handlers for the end-to-end tests, loaded by the daemon subprocess through [handlers].

Each run appends "<event> <n>" to the file named by TUBEWORKER_TEST_RUNLOG (O_APPEND
writes of one short line are atomic), so the test can count runs across processes.
"""

from __future__ import annotations

import os
import time

import trio

from tubeworker import Job, Retry, handler


def _log(event: str, job: Job) -> None:
    n = job.payload["n"] if isinstance(job.payload, dict) else job.id
    fd = os.open(os.environ["TUBEWORKER_TEST_RUNLOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event} {n}\n".encode())
    finally:
        os.close(fd)


async def sleepy(job: Job) -> None:
    _log("start", job)
    await trio.sleep(job.payload.get("seconds", 0))
    _log("end", job)


async def crash_on(job: Job) -> None:
    _log("start", job)
    if job.payload.get("crash"):
        os._exit(3)  # the whole worker dies mid-job, as with a segfault or the OOM killer
    _log("end", job)


def write_pid(job: Job) -> None:
    """Sync: appends "<pid> <n>" to payload["path"], to show which process ran it."""
    with open(job.payload["path"], "a") as f:
        f.write(f"{os.getpid()} {job.payload['n']}\n")


def crunch(job: Job) -> None:
    """Sync and CPU-bound, for compute pools: logs start/end with the job id, and the pid."""
    _log("start", job)
    total = 0
    for i in range(200_000):
        total += i * i
    job.log.info("crunched", total=total, pid=os.getpid())
    _log("end", job)


@handler(apis=["partner"], max_attempts=3)
async def call_partner(job: Job) -> None:
    """Calls the test's local HTTP API through the shared client (flow control counts it);
    a 5xx is a failed attempt."""
    _log("start", job)
    response = await job.http.get(job.payload["url"], timeout=5)
    if response.status_code >= 500:
        raise Retry(reason=f"partner answered {response.status_code}")
    _log("end", job)


async def fail_loudly(job: Job) -> None:
    """Raises: a failed attempt for error trackers to see."""
    raise ValueError(f"handler failed on purpose for job {job.id}")


async def block_loop(job: Job) -> None:
    """Async, yet blocks the event loop (as a sync call in an async handler does) until the
    file payload["release"] exists, or payload["max_seconds"] (default 30) have passed."""
    _log("start", job)
    give_up = time.monotonic() + job.payload.get("max_seconds", 30)
    release = job.payload["release"]
    # The mistake under test: blocking calls in async code. Nothing else in the process runs.
    while not os.path.exists(release) and time.monotonic() < give_up:  # noqa: ASYNC240 - same
        time.sleep(0.01)  # noqa: ASYNC251 - the mistake under test
    _log("end", job)


def crunch_and_put(job: Job) -> None:
    """Sync, for compute pools (runs in a worker process): puts a follow-up envelope with
    job.put_sync() into payload["next"], carrying n and the worker's pid."""
    _log("start", job)
    n = job.payload["n"]
    job.put_sync(
        task="producer.followup", payload={"n": n, "pid": os.getpid()}, tube=job.payload["next"]
    )
    _log("end", job)


async def put_when_released(job: Job) -> None:
    """Async, for io pools: waits until the file payload["release"] exists (the test changes
    the servers meanwhile), then puts a follow-up envelope into payload["next"]."""
    _log("start", job)
    while not await trio.Path(job.payload["release"]).exists():
        await trio.sleep(0.01)
    followup = {"n": job.payload["n"], "pid": os.getpid()}
    await job.put(task="producer.followup", payload=followup, tube=job.payload["next"])
    _log("end", job)


async def record_followup(job: Job) -> None:
    """Logs "followup <n>": the follow-up job of run n was processed."""
    _log("followup", job)


def record_followup_pid(job: Job) -> None:
    """Sync: logs "followup <n>", and "put-by <pid>": the process that put the follow-up."""
    _log("followup", job)
    fd = os.open(os.environ["TUBEWORKER_TEST_RUNLOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"put-by {job.payload['pid']}\n".encode())
    finally:
        os.close(fd)


def _parse_rows(rows: list[str]) -> int:
    return sum(int(row) for row in rows)


def fail_in_process(job: Job) -> None:
    """Sync, for compute pools: fails two frames deep, in a worker process."""
    _parse_rows(["1", "two"])
