"""The daemon in-process against a real beanstalkd: outcomes, retries, deadlines, bad input."""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import greenstalk
import pytest
import structlog
import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.daemon import (
    make_config,
    prefill,
    running_daemon,
    tube_totals,
    wait_tubes_empty,
)
from tests.support.waiting import wait_until
from tubeworker import Bury, Job, Retry, handler
from tubeworker.beanstalk.client import open_client, parse_address
from tubeworker.config import RecycleConfig, RetrySettings
from tubeworker.envelope import encode_envelope


def envelope(task: str, **payload: object) -> bytes:
    return encode_envelope(task, payload)


@pytest.mark.slow
async def test_20000_envelope_jobs_over_5_tubes_each_deleted_exactly_once(
    beanstalkd: BeanstalkdProcess,
) -> None:
    tubes = [f"t{i}" for i in range(5)]
    runs: Counter[int] = Counter()

    async def count(job: Job) -> None:
        runs[job.payload["n"]] += 1

    total = 20_000
    with trio.fail_after(120):
        for i, tube in enumerate(tubes):
            share = range(i, total, len(tubes))
            await prefill(beanstalkd.address, tube, (envelope("count", n=n) for n in share))
        config = make_config(beanstalkd.address, tubes, concurrency=200)
        async with running_daemon(config, {"count": count}) as state:
            await wait_tubes_empty(beanstalkd.address, tubes, timeout=100)
            await wait_until(lambda: state.counters.deleted == total, what="deletes")
        async with open_client(beanstalkd.address) as client:
            server = await client.stats()
    assert sorted(runs) == list(range(total))
    assert set(runs.values()) == {1}  # every job ran exactly once
    assert state.counters.reserved == total
    assert (state.counters.released, state.counters.buried, state.counters.returned) == (0, 0, 0)
    assert server.cmd_delete == total
    assert server.current_jobs_buried == 0


async def test_bound_pool_hands_raw_bodies_byte_for_byte(beanstalkd: BeanstalkdProcess) -> None:
    bodies = [b"", b"\x00\xff\r\n" * 50, b"not json at all", bytes(range(256)), b"x" * 65_000]
    seen: list[bytes] = []

    async def raw(job: Job) -> None:
        assert job.task is None
        assert job.payload is None
        seen.append(job.body)

    with trio.fail_after(30):
        await prefill(beanstalkd.address, "raw", bodies)
        config = make_config(beanstalkd.address, ["raw"], concurrency=1, handler="raw")
        async with running_daemon(config, {"raw": raw}):
            await wait_tubes_empty(beanstalkd.address, ["raw"])
    assert seen == bodies  # one lane: in order, intact


async def test_failing_handler_is_released_with_whole_second_delays_then_buried(
    beanstalkd: BeanstalkdProcess,
) -> None:
    attempts: list[int] = []

    async def always_fails(job: Job) -> None:
        attempts.append(job.attempt)
        raise ValueError("nope")

    retry = RetrySettings(max_attempts=3, backoff_base=1.0, backoff_cap=2.0)
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        [job_id] = await prefill(beanstalkd.address, "jobs", [envelope("fails")], priority=77)
        config = make_config(beanstalkd.address, concurrency=2, retry=retry)
        async with running_daemon(config, {"fails": always_fails}) as state:
            await wait_tubes_empty(beanstalkd.address, ["jobs"], buried=1)
        async with open_client(beanstalkd.address) as client:
            stats = await client.stats_job(job_id)
    assert attempts == [1, 2, 3]
    assert (stats.state, stats.pri, stats.releases, stats.buries) == ("buried", 77, 2, 1)
    released = [e for e in logs if e.get("outcome") == "released"]
    assert [e["attempt"] for e in released] == [1, 2]
    for event in released:
        assert isinstance(event["delay"], int)
        assert 1 <= event["delay"] <= 2 ** (event["attempt"] - 1)  # within the envelope, whole s
        assert event["reason"] == "ValueError: nope"
    [buried] = [e for e in logs if e.get("outcome") == "buried"]
    assert buried["job_id"] == job_id
    assert "attempt 3 of 3" in buried["reason"]
    assert state.counters.deleted == 0


async def test_retry_and_bury_outcomes(beanstalkd: BeanstalkdProcess) -> None:
    async def asks_retry(job: Job) -> None:
        if job.attempt == 1:
            raise Retry(delay=1, reason="not yet")

    async def asks_bury(job: Job) -> None:
        raise Bury("payload refers to a deleted account")

    with trio.fail_after(30):
        retry_id, bury_id = await prefill(
            beanstalkd.address, "jobs", [envelope("retry"), envelope("bury")]
        )
        config = make_config(beanstalkd.address, concurrency=2)
        async with running_daemon(config, {"retry": asks_retry, "bury": asks_bury}) as state:
            await wait_tubes_empty(beanstalkd.address, ["jobs"], buried=1)
        async with open_client(beanstalkd.address) as client:
            assert (await client.stats_job(bury_id)).state == "buried"
            with pytest.raises(greenstalk.NotFoundError):
                await client.stats_job(retry_id)  # deleted after the retry
    assert (state.counters.released, state.counters.deleted, state.counters.buried) == (1, 1, 1)


async def test_overrunning_handler_is_cancelled_and_released_before_ttr(
    beanstalkd: BeanstalkdProcess,
) -> None:
    cancelled = trio.Event()

    async def overruns(job: Job) -> None:
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            cancelled.set()
            raise

    with trio.fail_after(30):
        [job_id] = await prefill(beanstalkd.address, "jobs", [envelope("slow")], ttr=2)
        config = make_config(beanstalkd.address, concurrency=1)
        async with running_daemon(config, {"slow": overruns}):
            await cancelled.wait()

            async def released() -> bool:
                async with open_client(beanstalkd.address) as client:
                    return (await client.stats_job(job_id)).releases >= 1

            await wait_until(released, what="the worker's own release")
            async with open_client(beanstalkd.address) as client:
                stats = await client.stats_job(job_id)
    # Our deadline (TTR 2 - 1 s margin) fired first: beanstalkd's TTR never expired.
    assert stats.timeouts == 0
    assert stats.state in ("delayed", "ready", "reserved")
    assert stats.time_left >= 0


@pytest.mark.slow
async def test_long_running_handler_is_touched_past_its_ttr(beanstalkd: BeanstalkdProcess) -> None:
    @handler(long_running=True, timeout=30)
    async def long(job: Job) -> None:
        await trio.sleep(8)  # four times the TTR

    with trio.fail_after(30):
        [job_id] = await prefill(beanstalkd.address, "jobs", [envelope("long")], ttr=2)
        config = make_config(beanstalkd.address, concurrency=2)
        async with running_daemon(config, {"long": long}) as state:
            await wait_until(lambda: state.counters.deleted == 1, timeout=25, what="long job")
        async with open_client(beanstalkd.address) as client:
            server = await client.stats()
    assert server.job_timeouts == 0  # never expired
    assert server.cmd_reserve_with_timeout >= 1
    assert state.counters.reserved == 1  # never redelivered
    assert server.cmd_touch >= 7  # every TTR/2 = 1 s
    del job_id


async def test_handler_touch_on_demand(beanstalkd: BeanstalkdProcess) -> None:
    async def touches(job: Job) -> None:
        for _ in range(3):
            await trio.sleep(0.6)
            await job.touch()  # each touch moves our 1 s deadline (TTR 2 - margin) too

    with trio.fail_after(30):
        await prefill(beanstalkd.address, "jobs", [envelope("touch")], ttr=2)
        config = make_config(beanstalkd.address, concurrency=1)
        async with running_daemon(config, {"touch": touches}) as state:
            await wait_until(lambda: state.counters.deleted == 1, what="done")
        async with open_client(beanstalkd.address) as client:
            server = await client.stats()
    assert (server.cmd_touch, server.job_timeouts) == (3, 0)
    assert (state.counters.deleted, state.counters.released) == (1, 0)  # ran 1.8 s, not cut


async def test_bad_bodies_are_buried_with_reasons_and_good_ones_done(
    beanstalkd: BeanstalkdProcess,
) -> None:
    rng = random.Random(5)
    bad_kinds = [
        (b"\xff\xfe not utf-8", "not valid UTF-8"),
        (b"{broken json", "not valid JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'"just a string"', "must be a JSON object"),
        (b'{"payload": {}}', 'no "task"'),
        (envelope("no.such.task"), "no handler registered for task 'no.such.task'"),
        (bytes(rng.getrandbits(8) for _ in range(60_000)), "not valid"),
    ]
    bodies: list[bytes] = []
    expected: dict[int, str] = {}
    good = 0
    for i in range(1_200):
        if i % 6 == 0:
            good += 1
            bodies.append(envelope("ok", n=i))
        else:
            body, reason = bad_kinds[i % len(bad_kinds)]
            bodies.append(body)
            expected[i] = reason
    done: list[int] = []

    async def ok(job: Job) -> None:
        done.append(job.payload["n"])

    with trio.fail_after(60), structlog.testing.capture_logs() as logs:
        ids = await prefill(beanstalkd.address, "mixed", bodies)
        config = make_config(beanstalkd.address, ["mixed"], concurrency=20)
        async with running_daemon(config, {"ok": ok}) as state:
            await wait_tubes_empty(beanstalkd.address, ["mixed"], buried=len(expected))
    assert len(done) == good
    reasons = {e["job_id"]: e["reason"] for e in logs if e.get("outcome") == "buried"}
    for index, reason in expected.items():
        assert reason in reasons[ids[index]]
    assert state.counters.released == 0  # bad input is never retried


async def test_follow_up_put_from_a_handler(beanstalkd: BeanstalkdProcess) -> None:
    async def first(job: Job) -> None:
        await job.put({"task": "second", "payload": job.payload}, tube="next", priority=3)

    async def second(job: Job) -> None:
        pass

    with trio.fail_after(30):
        await prefill(beanstalkd.address, "jobs", [envelope("first", n=1)])
        config = make_config(beanstalkd.address, ["jobs", "next"], concurrency=2)
        async with running_daemon(config, {"first": first, "second": second}) as state:
            await wait_until(lambda: state.counters.deleted == 2, what="both jobs")
    assert state.counters.buried == 0


async def test_tube_patterns_pick_up_new_tubes(beanstalkd: BeanstalkdProcess) -> None:
    async def ok(job: Job) -> None:
        pass

    with trio.fail_after(30):
        config = make_config(
            beanstalkd.address, ["tenant-*"], concurrency=2, tube_poll_interval=0.1
        )
        async with running_daemon(config, {"ok": ok}) as state:
            await prefill(beanstalkd.address, "tenant-a", [envelope("ok")])
            await prefill(beanstalkd.address, "tenant-b", [envelope("ok")])
            await prefill(beanstalkd.address, "other", [envelope("ok")])
            await wait_until(lambda: state.counters.deleted == 2, what="tenant jobs")
        totals = await tube_totals(beanstalkd.address, ["other"])
    assert totals["ready"] == 1  # not matched, not touched


async def test_lost_connection_cancels_the_handler_and_sends_nothing_on_the_new_one(
    beanstalkd: BeanstalkdProcess,
) -> None:
    started = trio.Event()
    cancelled = trio.Event()

    async def blocks(job: Job) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    with trio.fail_after(30):
        [job_id] = await prefill(beanstalkd.address, "jobs", [envelope("block")])
        config = make_config(beanstalkd.address, concurrency=1)
        async with running_daemon(config, {"block": blocks}) as state:
            await started.wait()
            # The server restarts without a binlog: the job is gone, ids start again at 1.
            await trio.to_thread.run_sync(beanstalkd.restart)
            await cancelled.wait()
            # A new job that reuses the old id sits in a tube the worker does not watch.
            [new_id] = await prefill(beanstalkd.address, "elsewhere", [b"x"])
            assert new_id == job_id

            async def reconnected() -> bool:
                async with open_client(beanstalkd.address) as client:
                    return (await client.stats()).current_waiting >= 1

            await wait_until(reconnected, what="the lane to reconnect and reserve")
            async with open_client(beanstalkd.address) as client:
                server = await client.stats()
                assert (await client.stats_job(new_id)).state == "ready"
    assert server.cmd_delete == 0  # no stale delete reached the new server (B10)
    assert server.cmd_release == 0
    assert state.counters.returned == 1


async def test_poison_job_is_buried_before_running_again(beanstalkd: BeanstalkdProcess) -> None:
    # Given a job that two earlier deliveries ended without an outcome (a crashed worker):
    # reserve it twice and close the connection each time.
    runs = 0

    async def poison(job: Job) -> None:
        nonlocal runs
        runs += 1

    with trio.fail_after(30):
        [job_id] = await prefill(beanstalkd.address, "jobs", [envelope("poison")])
        for _ in range(3):
            async with open_client(beanstalkd.address) as client:
                await client.watch("jobs")
                await client.reserve(timeout=1)
        config = make_config(beanstalkd.address, concurrency=1)  # redelivery_limit 3
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(config, {"poison": poison}):
                await wait_tubes_empty(beanstalkd.address, ["jobs"], buried=1)
    assert runs == 0
    [event] = [e for e in logs if e.get("outcome") == "buried"]
    assert event["job_id"] == job_id
    assert "without an outcome" in event["reason"]


async def test_kicked_job_gets_a_fresh_budget(beanstalkd: BeanstalkdProcess) -> None:
    attempts: list[int] = []

    async def fails(job: Job) -> None:
        attempts.append(job.attempt)
        raise RuntimeError("down")

    retry = RetrySettings(max_attempts=1, backoff_base=1.0, backoff_cap=1.0)
    with trio.fail_after(30):
        [job_id] = await prefill(beanstalkd.address, "jobs", [envelope("fails")])
        config = make_config(beanstalkd.address, concurrency=1, retry=retry)
        async with running_daemon(config, {"fails": fails}):
            await wait_tubes_empty(beanstalkd.address, ["jobs"], buried=1)
            async with open_client(beanstalkd.address) as client:
                await client.kick_job(job_id)
            await wait_until(lambda: len(attempts) == 2, what="the kicked run")
            await wait_tubes_empty(beanstalkd.address, ["jobs"], buried=1)
    # one attempt per budget: buried, kicked (budget 2), failed once more, buried again
    assert attempts == [1, 2]


async def test_drain_returns_running_jobs_after_the_deadline(beanstalkd: BeanstalkdProcess) -> None:
    started = 0

    async def slow(job: Job) -> None:
        nonlocal started
        started += 1
        await trio.sleep_forever()

    with trio.fail_after(30):
        ids = await prefill(beanstalkd.address, "jobs", [envelope("slow") for _ in range(3)])
        config = make_config(beanstalkd.address, concurrency=3, drain_timeout=0.5)
        async with running_daemon(config, {"slow": slow}) as state:
            await wait_until(lambda: started == 3, what="three running jobs")
        # the daemon has stopped: every job is back to ready, none reserved
        async with open_client(beanstalkd.address) as client:
            states = [(await client.stats_job(i)).state for i in ids]
    assert states == ["ready"] * 3
    assert state.counters.returned == 3


async def test_quiet_mode_stops_fetching_and_resumes(beanstalkd: BeanstalkdProcess) -> None:
    done: list[int] = []

    async def ok(job: Job) -> None:
        done.append(job.id)

    with trio.fail_after(30):
        config = make_config(beanstalkd.address, concurrency=2)
        async with running_daemon(config, {"ok": ok}) as state:
            state.set_quiet(True)

            async def nobody_waiting() -> bool:
                async with open_client(beanstalkd.address) as client:
                    return (await client.stats()).current_waiting == 0

            await wait_until(nobody_waiting, what="lanes to stop reserving")
            await prefill(beanstalkd.address, "jobs", [envelope("ok")])
            assert (await tube_totals(beanstalkd.address, ["jobs"]))["ready"] == 1
            state.set_quiet(False)
            await wait_until(lambda: len(done) == 1, what="the job after resuming")


async def test_max_jobs_recycles(beanstalkd: BeanstalkdProcess) -> None:
    async def ok(job: Job) -> None:
        pass

    with trio.fail_after(30):
        await prefill(beanstalkd.address, "jobs", [envelope("ok") for _ in range(20)])
        config = make_config(beanstalkd.address, concurrency=1, recycle=RecycleConfig(max_jobs=5))
        async with running_daemon(config, {"ok": ok}) as state:
            await state.drain_started.wait()
    assert state.drain_reason == "recycling: max_jobs 5 reached"
    assert state.counters.deleted == 5
    assert (await tube_totals(beanstalkd.address, ["jobs"]))["ready"] == 15


async def test_compute_profile_runs_sync_handlers_in_worker_processes(
    beanstalkd: BeanstalkdProcess, tmp_path: Path
) -> None:
    from tests.e2e.handlers import write_pid

    out = tmp_path / "pids"
    bodies = [envelope("pid", path=str(out), n=n) for n in range(8)]
    with trio.fail_after(60):
        await prefill(beanstalkd.address, "jobs", bodies)
        config = make_config(beanstalkd.address, concurrency=2)
        config = replace(config, pools=(replace(config.pools[0], profile="compute"),))
        async with running_daemon(config, {"pid": write_pid}) as state:
            await wait_until(lambda: state.counters.deleted == 8, timeout=50, what="8 jobs")
    lines = [line.split() for line in out.read_text().splitlines()]
    assert sorted(int(n) for _, n in lines) == list(range(8))
    assert {int(pid) for pid, _ in lines}.isdisjoint({os.getpid()})


async def test_pool_spreads_lanes_over_servers_and_survives_one_down(
    beanstalkd: BeanstalkdProcess,
) -> None:
    done: list[int] = []

    async def ok(job: Job) -> None:
        done.append(job.payload["n"])

    with BeanstalkdProcess() as second, trio.fail_after(30):
        await prefill(beanstalkd.address, "jobs", [envelope("ok", n=n) for n in range(10)])
        await prefill(second.address, "jobs", [envelope("ok", n=n) for n in range(10, 20)])
        config = make_config(beanstalkd.address, concurrency=4)
        config = replace(config, servers=(*config.servers, parse_address(second.address)))
        async with running_daemon(config, {"ok": ok}):
            await wait_until(lambda: len(done) == 20, what="jobs from both servers")
            await trio.to_thread.run_sync(second.stop)
            await prefill(beanstalkd.address, "jobs", [envelope("ok", n=n) for n in range(20, 30)])
            await wait_until(lambda: len(done) == 30, what="jobs while one server is down")
    assert sorted(done) == list(range(30))


async def test_max_in_flight_caps_jobs_across_pools(beanstalkd: BeanstalkdProcess) -> None:
    running = 0
    peak = 0

    async def slow(job: Job) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.05)
        running -= 1

    with trio.fail_after(30):
        await prefill(beanstalkd.address, "jobs", [envelope("slow") for _ in range(20)])
        config = make_config(beanstalkd.address, concurrency=6, max_in_flight=2)
        async with running_daemon(config, {"slow": slow}) as state:
            await wait_until(lambda: state.counters.deleted == 20, what="20 jobs")
    assert peak == 2


async def test_a_handler_that_blocks_the_event_loop_is_named(beanstalkd: BeanstalkdProcess) -> None:
    import time

    async def blocks_the_loop(job: Job) -> None:
        time.sleep(1.0)  # noqa: ASYNC251 - the mistake under test: blocking in async code

    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        await prefill(beanstalkd.address, "jobs", [envelope("blocker")])
        config = make_config(beanstalkd.address, concurrency=1, stall_threshold=0.3)
        async with running_daemon(config, {"blocker": blocks_the_loop}) as state:
            await wait_until(lambda: state.counters.deleted == 1, what="the job")
    [warning] = [e for e in logs if e["event"].startswith("event loop blocked")]
    assert warning["handler"] == "blocker"
    assert any("blocks_the_loop" in frame for frame in warning["where"])
    assert warning["blocked_for"] >= 0.3


@pytest.mark.parametrize(
    ("recycle", "reason"),
    [
        (RecycleConfig(max_lifetime=0.5), "recycling: max_lifetime 0.5 s reached"),
        (RecycleConfig(max_memory_mb=1), "recycling: RSS over max_memory_mb 1"),
    ],
)
async def test_recycling_drains_on_lifetime_and_memory(
    beanstalkd: BeanstalkdProcess, recycle: RecycleConfig, reason: str
) -> None:
    async def ok(job: Job) -> None:
        pass

    with trio.fail_after(30):
        config = make_config(beanstalkd.address, concurrency=1, recycle=recycle)
        async with running_daemon(config, {"ok": ok}) as state:
            await state.drain_started.wait()
    assert state.drain_reason == reason


async def test_one_connection_holds_many_jobs_with_every_outcome(
    beanstalkd: BeanstalkdProcess,
) -> None:
    # Given one lane holding up to 20 jobs at once, and jobs that succeed, fail, bury,
    # run past their TTR (long-running, touched) and touch on demand, all at the same time.
    @handler(long_running=True, timeout=30)
    async def long(job: Job) -> None:
        await trio.sleep(3)  # TTR 2

    async def toucher(job: Job) -> None:
        await trio.sleep(0.6)
        await job.touch()
        await trio.sleep(0.6)

    async def fails(job: Job) -> None:
        raise RuntimeError("no")

    async def buries(job: Job) -> None:
        raise Bury("bad")

    async def ok(job: Job) -> None:
        await trio.sleep(0.1)

    tasks = ["long"] * 3 + ["toucher"] * 3 + ["fails"] * 3 + ["buries"] * 3 + ["ok"] * 8
    retry = RetrySettings(max_attempts=1, backoff_base=1.0, backoff_cap=1.0)
    with trio.fail_after(30):
        await prefill(beanstalkd.address, "jobs", [envelope(t) for t in tasks], ttr=2)
        config = make_config(beanstalkd.address, concurrency=20, retry=retry)
        functions = {"long": long, "toucher": toucher, "fails": fails, "buries": buries, "ok": ok}
        async with running_daemon(config, functions) as state:
            await wait_until(lambda: state.counters.in_flight >= 10, what="jobs held at once")
            async with open_client(beanstalkd.address) as client:
                workers_while_busy = (await client.stats()).current_workers
            await wait_tubes_empty(beanstalkd.address, ["jobs"], buried=6)
        async with open_client(beanstalkd.address) as client:
            server = await client.stats()
    assert workers_while_busy == 1  # every job held by the one lane's connection
    assert (state.counters.deleted, state.counters.buried) == (14, 6)
    assert server.job_timeouts == 0  # no TTR ever expired: touches went out in time
    assert server.cmd_touch >= 3 + 3
    assert state.counters.reserved == 20  # nothing redelivered


@pytest.mark.parametrize("jobs", [1, 5])
async def test_lost_connection_cancels_every_handler_on_it(
    beanstalkd: BeanstalkdProcess, jobs: int
) -> None:
    running = 0
    cancelled = 0
    all_started = trio.Event()

    async def blocks(job: Job) -> None:
        nonlocal running, cancelled
        running += 1
        if running == jobs:
            all_started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled += 1
            raise

    with trio.fail_after(30):
        await prefill(beanstalkd.address, "jobs", [envelope("block") for _ in range(jobs)])
        config = make_config(beanstalkd.address, concurrency=jobs)  # one lane, `jobs` slots
        async with running_daemon(config, {"block": blocks}) as state:
            await all_started.wait()
            await trio.to_thread.run_sync(beanstalkd.restart)  # no binlog: the jobs are gone
            await wait_until(lambda: cancelled == jobs, what="every handler cancelled")
            await wait_until(lambda: state.counters.returned == jobs, what="jobs returned")
            async with open_client(beanstalkd.address) as client:
                server = await client.stats()
    assert (server.cmd_delete, server.cmd_release, server.cmd_bury) == (0, 0, 0)


async def test_jobs_per_connection_sets_the_number_of_connections(
    beanstalkd: BeanstalkdProcess,
) -> None:
    async def ok(job: Job) -> None:
        pass

    with trio.fail_after(30):
        config = make_config(beanstalkd.address, concurrency=30)
        config = replace(config, pools=(replace(config.pools[0], jobs_per_connection=7),))
        async with running_daemon(config, {"ok": ok}):

            async def five_waiting() -> bool:
                async with open_client(beanstalkd.address) as client:
                    return (await client.stats()).current_waiting == 5

            await wait_until(five_waiting, what="5 lanes of 6 slots blocked in reserve")


async def test_idle_lanes_wait_for_a_free_in_flight_slot(beanstalkd: BeanstalkdProcess) -> None:
    # Given three one-job lanes and a process-wide cap of one job in flight: lanes that
    # find the cap taken must wait for it to free, not stop fetching.
    done: list[int] = []

    async def ok(job: Job) -> None:
        await trio.sleep(0.01)
        done.append(job.id)

    with trio.fail_after(30):
        config = make_config(beanstalkd.address, concurrency=3, max_in_flight=1)
        config = replace(config, pools=(replace(config.pools[0], jobs_per_connection=1),))
        async with running_daemon(config, {"ok": ok}):
            for _ in range(3):  # in waves, so the idle lanes are the ones that get them
                await prefill(beanstalkd.address, "jobs", [envelope("ok") for _ in range(5)])
                await wait_tubes_empty(beanstalkd.address, ["jobs"])
    assert len(done) == 15
