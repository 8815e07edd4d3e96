"""A lane against a scripted beanstalkd (tests/support/fakestalk.py) under MockClock.

What goes over the wire in each batch, what happens to in-flight slots and outcomes when
the connection dies, touches, DEADLINE_SOON and NOT_FOUND replies, drain, dead and slow
connections, and the livelock guard. Real-server behaviour is in tests/integration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import trio
import trio.testing
from structlog.testing import capture_logs

from tests.support.fakestalk import FakeBeanstalkd
from tubeworker import Bury, Job, Retry, handler
from tubeworker.beanstalk.client import Address
from tubeworker.config import Config, LoggingConfig, PoolConfig, RetrySettings
from tubeworker.registry import Registry
from tubeworker.runtime.lane import Lane
from tubeworker.runtime.pool import Pool
from tubeworker.runtime.services import Services
from tubeworker.runtime.slots import InFlight
from tubeworker.runtime.state import WorkerState


@dataclass
class Rig:
    server: FakeBeanstalkd
    lane: Lane
    state: WorkerState
    in_flight: InFlight
    logs: list[dict[str, Any]]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["event"] == name]


def _config(**worker: Any) -> Config:
    pool = PoolConfig(
        name="p",
        tubes=("jobs",),
        concurrency=5,
        handler="h",
        retry=RetrySettings(max_attempts=3, backoff_base=1.0, backoff_cap=1.0),
    )
    config = Config(
        pools=(pool,),
        reserve_timeout=5,
        reply_timeout=10.0,
        logging=LoggingConfig(format="json", job_lines=True),
    )
    return replace(config, **worker)


@asynccontextmanager
async def lane_rig(
    func: Callable[..., Any], *, slots: int = 5, max_in_flight: int = 0, **worker: Any
) -> AsyncIterator[Rig]:
    """A lane on a fake server; on exit, drain and wait for the lane to return."""
    config = _config(**worker)
    state = WorkerState()
    in_flight = InFlight(max_in_flight or None)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            server = FakeBeanstalkd(nursery, reply_timeout=config.reply_timeout)
            services = Services(
                config=config,
                registry=Registry.from_functions({"h": func}),
                state=state,
                in_flight=in_flight,
                connector=server.connector,
            )
            lane = Lane(Pool(config.pools[0], services), 0, Address(), slots)
            done = trio.Event()

            async def run_lane() -> None:
                await lane.run()
                done.set()

            nursery.start_soon(run_lane)
            try:
                yield Rig(server, lane, state, in_flight, logs)
            finally:
                state.begin_drain("test over")
                with trio.fail_after(120):
                    await done.wait()
                nursery.cancel_scope.cancel()


async def wait_for(condition: Callable[[], bool], *, timeout: float = 60) -> None:
    """Under MockClock: polls cost virtual time only."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def noop(job: Job) -> None:
    pass


# --------------------------------------------------------------------------- batches


async def test_given_ready_jobs_when_a_lane_starts_then_one_write_reserves_and_one_asks_stats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lane_rig(noop) as rig:
        ids = [rig.server.put() for _ in range(3)]
        await wait_for(lambda: not rig.server.jobs)
    batches = [b.commands for b in rig.server.batches]
    # Watch the pool's tubes, then one reserve per free slot, all in one write.
    assert batches[0] == ("watch jobs", "ignore default", *["reserve-with-timeout 0"] * 5)
    assert batches[1] == tuple(f"stats-job {i}" for i in ids)
    flat = rig.server.commands()
    for i in ids:
        assert flat.count(f"delete {i}") == 1
    # After the first job, the lane holds jobs: every later reserve is a 0-timeout one in
    # the same write as the outcomes.
    outcome_batches = [b for b in batches if any(c.startswith("delete") for c in b)]
    assert all(
        c.startswith(("delete", "reserve-with-timeout 0")) for b in outcome_batches for c in b
    )
    assert len(rig.events("job done")) == 3


async def test_given_handlers_that_end_at_once_then_a_batchs_outcomes_go_in_one_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Before, the next exchange went out while the batch's handlers waited to start: the
    # lane settled into two half batches, twice the writes and reads per job.
    async with lane_rig(noop, slots=8) as rig:
        for _ in range(40):
            rig.server.put()
        await wait_for(lambda: not rig.server.jobs)
    deletes = [
        sum(c.startswith("delete") for c in b.commands)
        for b in rig.server.batches
        if any(c.startswith("delete") for c in b.commands)
    ]
    assert sum(deletes) == 40
    assert deletes == [8] * 5  # each batch of 8 jobs: its 8 deletes in one write


async def test_given_a_trickle_of_jobs_then_the_lane_asks_for_one_or_two_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Before, every job was followed by a reserve per free slot, each answered TIMED_OUT:
    # at 1,000 jobs a second those replies were most of the daemon's work.
    async with lane_rig(noop) as rig:
        for _ in range(5):
            rig.server.put()
            await wait_for(lambda: not rig.server.jobs)
            await trio.sleep(1)
    reserves = [c for c in rig.server.commands() if c == "reserve-with-timeout 0"]
    assert len(rig.events("job done")) == 5
    assert len(reserves) <= 5 + 2 * 5  # the first batch's five, then one or two a job


async def test_given_jobs_held_when_more_come_then_reserves_fill_the_free_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def held(job: Job) -> None:
        await release.wait()

    async with lane_rig(held, slots=4) as rig:
        for _ in range(6):
            rig.server.put()
        await wait_for(lambda: len(rig.lane.jobs) == 4)
        assert rig.in_flight.statistics().held == 4
        release.set()
        await wait_for(lambda: not rig.server.jobs)
    assert rig.in_flight.statistics().held == 0


# --------------------------------------------------------------------------- lost connections


async def test_given_a_connection_lost_mid_batch_then_no_slot_leaks_and_nothing_old_is_resent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def held(job: Job) -> None:
        await release.wait()

    async with lane_rig(held, slots=3, max_in_flight=3) as rig:
        first = [rig.server.put() for _ in range(3)]
        await wait_for(lambda: len(rig.lane.jobs) == 3)
        # The server dies on the lane's next write, with the handlers' outcomes unsent.
        rig.server.close_on = lambda command: command.startswith("delete")
        release.set()
        await wait_for(lambda: len(rig.server.connections) >= 2)
        rig.server.close_on = None
        await wait_for(lambda: not rig.server.jobs, timeout=120)
    assert rig.in_flight.statistics().held == 0
    old_connection = rig.server.connections[0].index
    new_commands = [
        c for b in rig.server.batches if b.connection != old_connection for c in b.commands
    ]
    # Jobs of the old connection were given back by the server and reserved anew: their
    # outcomes went out only after a new reservation (they ran again), never as leftovers.
    for job_id in first:
        assert new_commands.index(f"stats-job {job_id}") < new_commands.index(f"delete {job_id}")
    unconfirmed = [e for e in rig.events("job returned") if e["cause"] == "unconfirmed"]
    assert {e["job_id"] for e in unconfirmed} == set(first)


async def test_given_a_handler_running_when_the_connection_dies_then_it_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled: list[int] = []

    async def slow(job: Job) -> None:
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            cancelled.append(job.id)
            raise

    async with lane_rig(slow, slots=2) as rig:
        job_id = rig.server.put()
        await wait_for(lambda: len(rig.lane.jobs) == 1)
        conn = rig.server.connections[0]
        rig.server._give_back(conn)  # the server side goes away: EOF on our idle socket
        await trio.aclose_forcefully(conn.stream)
        await wait_for(lambda: cancelled == [job_id])
        returned = rig.events("job returned")
        assert returned[0]["cause"] == "connection_lost"
        await wait_for(lambda: not rig.server.jobs, timeout=120)  # it runs again, and ends


# --------------------------------------------------------------------------- touches


async def test_given_a_long_running_handler_then_it_is_touched_every_half_ttr(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @handler(long_running=True)
    async def long(job: Job) -> None:
        await trio.sleep(9)

    async with lane_rig(long) as rig:
        rig.server.put(ttr=4)
        await wait_for(lambda: not rig.server.jobs)
    touches = [b.at for b in rig.server.batches if "touch 1" in b.commands]
    started = next(b.at for b in rig.server.batches if "stats-job 1" in b.commands)
    assert [round(t - started) for t in touches] == [2, 4, 6, 8]


async def test_given_a_touch_answered_not_found_then_the_handler_stops_and_nothing_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @handler(long_running=True)
    async def long(job: Job) -> None:
        await trio.sleep(100)

    async with lane_rig(long) as rig:
        job_id = rig.server.put(ttr=4)
        await wait_for(lambda: len(rig.lane.jobs) == 1)
        rig.server.jobs[job_id].owner = 99  # its TTR ran out and another worker has it
        await wait_for(lambda: bool(rig.events("job returned")))
        assert rig.events("job returned")[0]["cause"] == "not_ours"
    old = [c for b in rig.server.batches if b.connection == 0 for c in b.commands]
    assert f"delete {job_id}" not in old
    assert not any(c.startswith(f"release {job_id} ") for c in old)


# --------------------------------------------------------------------------- replies


async def test_given_deadline_soon_then_it_counts_as_no_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def held(job: Job) -> None:
        await release.wait()

    async with lane_rig(held, slots=3) as rig:
        first = rig.server.put()
        await wait_for(lambda: len(rig.lane.jobs) == 1)
        rig.server.deadline_soon = True  # the held job is in its safety margin
        second = rig.server.put()
        await trio.sleep(1)
        assert rig.server.state_of(second) == "ready"
        assert not rig.events("connection lost")
        rig.server.deadline_soon = False
        release.set()
        await wait_for(lambda: first not in rig.server.jobs and second not in rig.server.jobs)


async def test_given_delete_answered_not_found_then_the_job_is_recorded_as_not_ours(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lane_rig(noop) as rig:
        job_id = rig.server.put()
        rig.server.delete_not_found.add(job_id)
        await wait_for(lambda: bool(rig.events("job returned")))
    (returned,) = rig.events("job returned")
    assert returned["cause"] == "not_ours"
    assert not rig.events("job done")


async def test_given_stats_job_not_found_then_that_job_is_skipped_and_the_lane_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def held(job: Job) -> None:
        await release.wait()

    async with lane_rig(held, slots=3) as rig:
        first = rig.server.put()
        await wait_for(lambda: len(rig.lane.jobs) == 1)
        stale, fresh = rig.server.put(), rig.server.put()
        rig.server.stats_not_found.add(stale)
        await wait_for(lambda: len(rig.lane.jobs) == 2)
        rig.server.stats_not_found.clear()
        release.set()
        await wait_for(lambda: first not in rig.server.jobs and fresh not in rig.server.jobs)
    assert not rig.events("connection lost")
    (skipped,) = rig.events("job skipped: no longer ours")
    assert skipped["job_id"] == stale
    assert rig.state.counters.skipped == 1


# --------------------------------------------------------------------------- drain


async def test_given_jobs_running_when_draining_then_they_finish_and_their_deletes_go_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slowish(job: Job) -> None:
        await trio.sleep(3)

    async with lane_rig(slowish, slots=3) as rig:
        ids = [rig.server.put() for _ in range(3)]
        await wait_for(lambda: len(rig.lane.jobs) == 3)
        assert rig.state.in_flight_by_tube() == {"jobs": 3}  # what /status reports
        rig.state.begin_drain("test")
        extra = rig.server.put()
    assert all(i not in rig.server.jobs for i in ids)
    assert rig.server.state_of(extra) == "ready"  # nothing reserved after the drain began


# --------------------------------------------------------------------------- dead and slow links


async def test_given_an_idle_lane_when_the_link_goes_silent_then_it_reconnects_in_bounded_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lane_rig(noop) as rig:
        await wait_for(lambda: len(rig.server.batches) >= 1)  # blocked in reserve
        silenced = trio.current_time()
        rig.server.silent = True
        await wait_for(lambda: bool(rig.events("connection lost")), timeout=60)
        detected = trio.current_time() - silenced
        rig.server.silent = False
        rig.server.put()
        await wait_for(lambda: not rig.server.jobs, timeout=60)
    # reserve_timeout (5) + reply_timeout (10): the goal is within both.
    assert detected <= 5 + 10 + 0.5
    assert "no reply from beanstalkd" in rig.events("connection lost")[0]["error"]


async def test_given_a_busy_lane_when_the_link_goes_silent_then_a_heartbeat_finds_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def long(job: Job) -> None:
        await trio.sleep(50)

    async with lane_rig(long, slots=1) as rig:
        rig.server.put(ttr=100)
        await wait_for(lambda: len(rig.lane.jobs) == 1)
        silenced = trio.current_time()
        rig.server.silent = True
        await wait_for(lambda: bool(rig.events("connection lost")), timeout=60)
        detected = trio.current_time() - silenced
        rig.server.silent = False
    assert detected <= 5 + 10 + 0.5
    assert any("list-tube-used" in b.commands for b in rig.server.batches)


async def test_given_a_slow_link_that_still_delivers_then_no_connection_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lane_rig(noop, slots=20) as rig:
        for _ in range(20):
            rig.server.put(b"x" * 200)
        # 1 byte every 50 ms: one batch of replies takes minutes, well over reply_timeout.
        rig.server.drip = 0.05
        await wait_for(lambda: not rig.server.jobs, timeout=3600)
    assert not rig.events("connection lost")
    assert len(rig.events("job done")) == 20


async def test_given_large_bodies_then_batches_are_bounded_in_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lane_rig(noop, slots=50, batch_bytes=100_000) as rig:
        for _ in range(60):
            rig.server.put(b"x" * 40_000)
        await wait_for(lambda: not rig.server.jobs, timeout=600)
    reserves = [sum(c.startswith("reserve") for c in b.commands) for b in rig.server.batches]
    assert max(reserves[2:]) <= 2  # after the first job is seen: 100 kB / 40 kB


LIVELOCK = "connection keeps failing before beanstalkd confirms our outcomes"


async def test_given_every_connection_lost_before_confirming_then_the_lane_says_so_and_backs_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lane_rig(noop, slots=10) as rig:
        for _ in range(10):
            rig.server.put()
        rig.server.close_on = lambda command: command.startswith("delete")
        await wait_for(
            lambda: bool(rig.events(LIVELOCK)),
            timeout=600,
        )
        alarm = rig.events(LIVELOCK)[0]
        assert alarm["log_level"] == "error"
        assert alarm["batch_cap"] < 10
        connections = len(rig.server.connections)
        rig.server.close_on = None
        await wait_for(lambda: not rig.server.jobs)
    assert connections <= 6  # backed off: it did not spin through connections
    # Every delivery lost with the link was excused: the link's fault, not the jobs'.
    assert not rig.events("job buried")
    assert len(rig.lane.services.excuses) == 0  # forgotten once the jobs were deleted


# --------------------------------------------------------------------------- a full binlog


async def test_given_a_full_binlog_then_one_job_is_stranded_and_later_failures_are_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # beanstalkd refuses a release with a delay (OUT_OF_MEMORY) after unlinking the job:
    # that first job is stranded. Every later failure is held, touched, for its backoff and
    # released with delay 0 (no binlog record); burials wait for room.
    async def flaky(job: Job) -> None:
        raise Retry(delay=30, reason="try later")

    async with lane_rig(flaky, slots=1) as rig:
        rig.server.binlog_full = True
        ids = [rig.server.put(ttr=10) for _ in range(3)]
        health = rig.lane.services.binlog(rig.lane.address)
        await wait_for(lambda: health.full)
        started = trio.current_time()
        await wait_for(lambda: any(f"release {ids[1]} 1024 0" in c for c in rig.server.commands()))
        assert trio.current_time() - started >= 29.9  # its backoff, in the worker
        stranded = [i for i in ids if rig.server.state_of(i) == "stranded"]
        assert stranded == [ids[0]]
        # Touched meanwhile (TTR 10: every 5 s), so it never ran out.
        assert rig.server.commands().count(f"touch {ids[1]}") >= 5
        assert not any(c.startswith(f"release {ids[1]} 1024 30") for c in rig.server.commands())
        assert health.refusals == 1
        rig.server.binlog_full = False
        health.recovered()
        await wait_for(lambda: any(f"release {ids[2]} 1024 30" in c for c in rig.server.commands()))
    assert rig.events("binlog full: failing jobs are held in the worker until the server has room")
    assert rig.events("binlog has room again")


async def test_given_a_full_binlog_then_a_burial_waits_for_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hopeless(job: Job) -> None:
        raise Bury("no such user")

    async with lane_rig(hopeless, slots=1) as rig:
        rig.server.binlog_full = True
        first, second = rig.server.put(), rig.server.put()
        health = rig.lane.services.binlog(rig.lane.address)
        await wait_for(lambda: rig.server.state_of(first) == "stranded")
        await wait_for(lambda: health.held == 1)
        await trio.sleep(120)
        assert rig.server.state_of(second) == "reserved"  # held, not buried into the void
        rig.server.binlog_full = False
        health.recovered()
        await wait_for(lambda: rig.server.state_of(second) == "buried")
    (buried,) = [e for e in rig.events("job buried") if e["job_id"] == second]
    assert buried["reason"] == "no such user"


async def test_given_a_full_binlog_when_draining_then_a_held_failure_goes_out_with_delay_0(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def flaky(job: Job) -> None:
        raise Retry(delay=600)

    async with lane_rig(flaky, slots=1) as rig:
        health = rig.lane.services.binlog(rig.lane.address)
        health.refused("put")  # learned from a put: no job stranded at all
        rig.server.binlog_full = True
        job = rig.server.put()
        await wait_for(lambda: health.held == 1)
        rig.state.begin_drain("test")
        await wait_for(lambda: rig.server.state_of(job) == "ready")
    assert f"release {job} 1024 0" in rig.server.commands()
