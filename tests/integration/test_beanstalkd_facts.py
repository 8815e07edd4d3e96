"""The beanstalkd 1.12 facts in docs/beanstalkd.md, checked against a real server.

Each test checks one fact and is named in that fact's "Checked:" line. If an upgrade of
beanstalkd changes a behaviour, the test fails and the doc (and the design) must be revisited.
Some tests pin down a server bug (B1, B4, B5, ...): they fail once the bug is fixed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import greenstalk
import pytest
import trio

from tests.support.beanstalkd import BeanstalkdMissing, BeanstalkdProcess, find_beanstalkd
from tests.support.waiting import wait_until
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client, connect, open_client
from tubeworker.errors import LocalProtocolError

# ---- helpers


class RawConnection:
    """Bytes in, CRLF-terminated lines out: for what the typed client refuses to send."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def send(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def line(self) -> bytes:
        """The next line without its CRLF (a job body with no CRLF in it is one line too)."""
        while b"\r\n" not in self._buffer:
            data = await self._stream.receive_some(65_536)
            if not data:
                raise AssertionError(f"server closed the connection; buffered {self._buffer!r}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    async def exchange(self, data: bytes, replies: int = 1) -> list[bytes]:
        await self.send(data)
        return [await self.line() for _ in range(replies)]


@asynccontextmanager
async def open_raw(server: BeanstalkdProcess) -> AsyncIterator[RawConnection]:
    stream = await trio.open_tcp_stream(server.host, server.port)
    try:
        yield RawConnection(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def job_stats(server: BeanstalkdProcess, job_id: int) -> p.JobStats:
    async with open_client(server.address) as c:
        return await c.stats_job(job_id)


async def server_stats(server: BeanstalkdProcess) -> p.ServerStats:
    async with open_client(server.address) as c:
        return await c.stats()


async def wait_until_waiting(server: BeanstalkdProcess, count: int) -> None:
    """Until ``count`` connections are blocked in a reserve on the server."""

    async def waiting() -> bool:
        return (await server_stats(server)).current_waiting >= count

    await wait_until(waiting, timeout=5, what=f"{count} blocked reserve(s)")


async def restart(server: BeanstalkdProcess) -> None:
    """kill -9 and start again on the same port (and binlog, if any)."""
    await trio.to_thread.run_sync(server.restart)


@pytest.fixture
def binlog_server(tmp_path: Path) -> Iterator[Callable[..., BeanstalkdProcess]]:
    """Start beanstalkd with a binlog in tmp_path and extra flags; stopped afterwards.

    For the facts the shared fixtures cannot show (other -s or -z values). Skips or fails
    like them when beanstalkd is not installed.
    """
    try:
        find_beanstalkd()
    except BeanstalkdMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI must have it: integration tests cannot be skipped there)")
        pytest.skip(str(exc))
    started: list[BeanstalkdProcess] = []

    def start(**options: Any) -> BeanstalkdProcess:
        server = BeanstalkdProcess(binlog_dir=tmp_path, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


# ---- ownership by connection


@pytest.mark.parametrize("goodbye", ["close", "quit"])
async def test_close_returns_reserved_job(beanstalkd: BeanstalkdProcess, goodbye: str) -> None:
    """Given a job reserved on a connection, when that connection goes away (socket closed
    or `quit`), then the job is ready again at once: same priority, no delay, `reserves`
    still 1, and neither `releases` nor `timeouts` counted."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"x", priority=7, ttr=600)
        holder = await connect(beanstalkd.address)
        assert (await holder.reserve(timeout=0)).id == job_id
        await (holder.aclose() if goodbye == "close" else holder.quit())

        async def ready() -> bool:
            return (await job_stats(beanstalkd, job_id)).state == "ready"

        await wait_until(ready, timeout=5, what="the job back to ready")
        stats = await job_stats(beanstalkd, job_id)
        assert (stats.pri, stats.delay, stats.time_left) == (7, 0, 0)
        assert (stats.reserves, stats.releases, stats.timeouts, stats.buries) == (1, 0, 0, 0)
        assert (await server_stats(beanstalkd)).job_timeouts == 0


async def test_only_the_reserving_connection_may_finish_a_job(
    beanstalkd: BeanstalkdProcess,
) -> None:
    """Given a job reserved by connection A, when connection B tries to delete, release,
    bury, touch, kick-job or reserve-job it, then each gets NOT_FOUND; B can still see it."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as a, open_client(beanstalkd.address) as b:
            job_id = await a.put(b"mine")
            assert (await a.reserve(timeout=0)).id == job_id
            for attempt in (b.delete, b.release, b.bury, b.touch, b.kick_job, b.reserve_job):
                with pytest.raises(greenstalk.NotFoundError):
                    await attempt(job_id)
            assert (await b.peek(job_id)).body == b"mine"
            assert (await b.stats_job(job_id)).state == "reserved"
            await a.touch(job_id)
            await a.delete(job_id)


async def test_anyone_may_delete_ready_delayed_or_buried_jobs(
    beanstalkd: BeanstalkdProcess,
) -> None:
    """Given a ready, a delayed and a buried job, when an unrelated client (greenstalk, in
    a thread) deletes them, then all three are DELETED and a second delete is NOT_FOUND."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            ready = await c.put(b"ready")
            delayed = await c.put(b"delayed", delay=3600)
            buried = await c.put(b"buried", priority=0)
            assert (await c.reserve(timeout=0)).id == buried
            await c.bury(buried)
            states = [(await c.stats_job(i)).state for i in (ready, delayed, buried)]
            assert states == ["ready", "delayed", "buried"]

        def delete_twice_with_greenstalk() -> list[str]:
            outcomes = []
            with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as g:
                for job_id in (ready, delayed, buried, ready):
                    try:
                        g.delete(job_id)
                        outcomes.append("DELETED")
                    except greenstalk.NotFoundError:
                        outcomes.append("NOT_FOUND")
            return outcomes

        outcomes = await trio.to_thread.run_sync(delete_twice_with_greenstalk)
        assert outcomes == ["DELETED", "DELETED", "DELETED", "NOT_FOUND"]


# ---- pipelining and the blocking reserve


async def test_pipelined_replies_come_in_order(beanstalkd: BeanstalkdProcess) -> None:
    """Given six commands in one write, then six replies come back in the same order."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            replies = await c.pipeline(
                [
                    p.Use("pipe"),
                    p.Watch("pipe"),
                    p.Put(b"first", priority=1),
                    p.Put(b"second", priority=2),
                    p.ReserveWithTimeout(0),
                    p.StatsTube("pipe"),
                ]
            )
        use, watch, first, second, reserved, tube = replies
        assert (use, watch) == (p.Using("pipe"), p.Watching(2))
        assert isinstance(first, p.Inserted)
        assert isinstance(second, p.Inserted)
        assert isinstance(reserved, p.Reserved)
        assert (reserved.id, reserved.body) == (first.id, b"first")
        assert isinstance(tube, p.TubeStats)
        assert (tube.current_jobs_reserved, tube.current_jobs_ready) == (1, 1)


async def test_blocked_reserve_holds_back_later_commands(beanstalkd: BeanstalkdProcess) -> None:
    """Given `reserve` and `list-tube-used` in one write on an empty server, when the
    reserve blocks, then the second command is not even processed until a job arrives."""
    with trio.fail_after(10):
        before = (await server_stats(beanstalkd)).cmd_list_tube_used
        async with open_client(beanstalkd.address) as waiter:
            await waiter.send(p.Reserve(), p.ListTubeUsed())
            await wait_until_waiting(beanstalkd, 1)
            # Other connections are served meanwhile; this one's second command is not.
            for _ in range(3):
                assert (await server_stats(beanstalkd)).cmd_list_tube_used == before
            async with open_client(beanstalkd.address) as producer:
                job_id = await producer.put(b"wake up")
            reserved = await waiter.receive()
            assert isinstance(reserved, p.Reserved)
            assert reserved.id == job_id
            assert await waiter.receive() == p.Using("default")
        assert (await server_stats(beanstalkd)).cmd_list_tube_used == before + 1


async def test_abandoned_reserve_still_takes_a_job(beanstalkd: BeanstalkdProcess) -> None:
    """Given a client that sent `reserve` and stopped waiting for the reply (as a cancelled
    reserve does), when a job is put, then the server still hands it to that connection,
    and only closing the connection gives it back (with `reserves` already counted)."""
    with trio.fail_after(10):
        abandoned = await connect(beanstalkd.address)
        await abandoned.send(p.Reserve())  # the reply is never read
        await wait_until_waiting(beanstalkd, 1)
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"for nobody")

            async def taken() -> bool:
                return (await c.stats_job(job_id)).state == "reserved"

            await wait_until(taken, timeout=5, what="the abandoned reserve to take the job")
            with pytest.raises(greenstalk.TimedOutError):
                await c.reserve(timeout=0)
            await abandoned.aclose()

            async def ready() -> bool:
                return (await c.stats_job(job_id)).state == "ready"

            await wait_until(ready, timeout=5, what="the job back after close")
            assert (await c.stats_job(job_id)).reserves == 1


async def test_reserved_reply_carries_no_priority_or_ttr(beanstalkd: BeanstalkdProcess) -> None:
    """Given a job put with pri 5 and ttr 42, when it is reserved, then the RESERVED line
    is only `RESERVED <id> <bytes>`; stats-job is what tells pri and ttr."""
    with trio.fail_after(10):
        async with open_raw(beanstalkd) as raw:
            lines = await raw.exchange(b"put 5 0 42 2\r\nhi\r\nreserve-with-timeout 0\r\n", 3)
        assert lines[0].startswith(b"INSERTED ")
        job_id = int(lines[0].split()[1])
        assert lines[1:] == [b"RESERVED %d 2" % job_id, b"hi"]
        stats = await job_stats(beanstalkd, job_id)
        assert (stats.pri, stats.ttr, stats.reserves) == (5, 42, 1)


# ---- TTR


async def test_ttr_zero_becomes_one(beanstalkd: BeanstalkdProcess) -> None:
    """Given a put with ttr 0, then the job's ttr is 1 s."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"x", ttr=0)
            assert (await c.stats_job(job_id)).ttr == 1


async def test_touch_restarts_the_ttr(beanstalkd: BeanstalkdProcess) -> None:
    """Given a reserved ttr-2 job whose time-left has run down to 0, when its holder
    touches it, then time-left is back to the full ttr (floored: 1) and nothing timed out."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"x", ttr=2)
            await c.reserve(timeout=0)
            assert (await c.stats_job(job_id)).time_left == 1  # whole seconds, floored

            async def run_down() -> bool:
                return (await c.stats_job(job_id)).time_left == 0

            await wait_until(run_down, timeout=3, what="time-left to reach 0")
            await c.touch(job_id)
            stats = await c.stats_job(job_id)
            assert (stats.state, stats.time_left, stats.timeouts) == ("reserved", 1, 0)


async def test_deadline_soon_within_the_margin(beanstalkd: BeanstalkdProcess) -> None:
    """Given a connection holding a job within 1 s of its deadline, when it reserves again
    with nothing else ready, then it gets DEADLINE_SOON: at once inside the margin (ttr 1),
    and for a reserve already blocked, when the margin starts (ttr 2: after about 1 s)."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            short = await c.put(b"short", ttr=1)  # with ttr 1 the whole TTR is the margin
            await c.reserve(timeout=0)
            with trio.fail_after(0.5), pytest.raises(greenstalk.DeadlineSoonError):
                await c.reserve(timeout=5)
            await c.delete(short)
        async with open_client(beanstalkd.address) as c:
            await c.put(b"longer", ttr=2)
            await c.reserve(timeout=0)
            start = trio.current_time()
            with pytest.raises(greenstalk.DeadlineSoonError):
                await c.reserve(timeout=5)
            assert 0.5 < trio.current_time() - start < 1.8


async def test_ready_job_beats_deadline_soon(beanstalkd: BeanstalkdProcess) -> None:
    """B8. Given a connection holding a ttr-1 job (inside the margin), when it reserves
    while another job is ready, then it gets RESERVED, not DEADLINE_SOON."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            first = await c.put(b"first", priority=1, ttr=1)
            second = await c.put(b"second", priority=2, ttr=1)
            assert (await c.reserve(timeout=0)).id == first
            assert (await c.reserve(timeout=5)).id == second
            with pytest.raises(greenstalk.DeadlineSoonError):
                await c.reserve(timeout=5)


async def test_ttr_expiry_returns_job_and_late_delete_succeeds(
    beanstalkd: BeanstalkdProcess,
) -> None:
    """Given a reserved ttr-1 job left alone, when its TTR runs out, then it is ready again
    with the same priority and `timeouts` 1; its old holder then gets NOT_FOUND for
    release/bury/touch, but its late `delete` succeeds because nobody re-reserved it."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as holder:
            job_id = await holder.put(b"slow", priority=9, ttr=1)
            await holder.reserve(timeout=0)

            async def expired() -> bool:
                # Polled on the holder itself: a command on the holding connection also
                # rescues an expiry that beanstalkd lost (B1), so this cannot hang.
                return (await holder.stats_job(job_id)).state == "ready"

            await wait_until(expired, timeout=5, what="the TTR to expire")
            stats = await holder.stats_job(job_id)
            assert (stats.pri, stats.timeouts, stats.reserves) == (9, 1, 1)
            assert (await holder.stats()).job_timeouts == 1
            for attempt in (holder.release, holder.bury, holder.touch):
                with pytest.raises(greenstalk.NotFoundError):
                    await attempt(job_id)
            await holder.delete(job_id)


async def test_stats_job_not_found_after_expired_job_finished_elsewhere(
    beanstalkd: BeanstalkdProcess,
) -> None:
    """Given a job whose TTR expired on connection A, when worker B reserves and deletes
    it, then A's `stats-job` and `delete` for that id answer NOT_FOUND."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as a, open_client(beanstalkd.address) as b:
            job_id = await a.put(b"slow", ttr=1)
            await a.reserve(timeout=0)

            async def expired() -> bool:
                return (await a.stats_job(job_id)).state == "ready"  # on A: see B1

            await wait_until(expired, timeout=5, what="the TTR to expire")
            assert (await b.reserve(timeout=0)).id == job_id
            await b.delete(job_id)
            with pytest.raises(greenstalk.NotFoundError):
                await a.stats_job(job_id)
            with pytest.raises(greenstalk.NotFoundError):
                await a.delete(job_id)


@pytest.mark.slow
async def test_ttr_expiry_can_be_lost_until_the_holder_speaks(
    beanstalkd: BeanstalkdProcess,
) -> None:
    """B1. Given 100 idle connections each holding a ttr-1 job, then some job stays
    `reserved` with a negative time-left and `timeouts` 0 (beanstalkd lost its expiry);
    when its holder sends any command, then the job is returned at once.

    Probabilistic: in our runs 10-90 % of such expiries are lost, so with 100 jobs the
    chance that none is lost is negligible. This test fails once beanstalkd fixes the bug.
    """
    count = 100
    with trio.fail_after(20):
        async with open_client(beanstalkd.address) as c:
            ids = [(await c.put(b"%d" % i, ttr=1)) for i in range(count)]
        holders: dict[int, Client] = {}
        try:
            for _ in ids:
                holder = await connect(beanstalkd.address)
                holders[(await holder.reserve(timeout=0)).id] = holder
            stuck: list[p.JobStats] = []
            async with open_client(beanstalkd.address) as observer:

                async def some_expiry_lost() -> bool:
                    replies = await observer.pipeline([p.StatsJob(i) for i in ids])
                    stuck[:] = [
                        s
                        for s in replies
                        if isinstance(s, p.JobStats) and s.state == "reserved" and s.time_left < 0
                    ]
                    return bool(stuck)

                await wait_until(some_expiry_lost, timeout=6, what="a lost TTR expiry")
                lost = stuck[0]
                assert lost.timeouts == 0
                await holders[lost.id].list_tube_used()  # any command on the holder
                after = await observer.stats_job(lost.id)
                assert (after.state, after.timeouts) == ("ready", 1)
        finally:
            for holder in holders.values():
                await holder.aclose()


# ---- attempt counters


async def test_bury_counts_and_kick_resets_nothing(beanstalkd: BeanstalkdProcess) -> None:
    """Given a job reserved twice, released once and buried once, when it is kicked, then
    reserves 2, releases 1, buries 1, kicks 1 and the same id; a kicked delayed job keeps
    its `delay` too."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"x", priority=3)
            await c.reserve(timeout=0)
            await c.release(job_id, priority=4)
            await c.reserve(timeout=0)
            await c.bury(job_id, priority=5)
            stats = await c.stats_job(job_id)
            assert (stats.state, stats.reserves, stats.releases, stats.buries) == (
                "buried",
                2,
                1,
                1,
            )
            assert await c.kick(10) == 1
            stats = await c.stats_job(job_id)
            assert (stats.id, stats.state, stats.pri) == (job_id, "ready", 5)
            assert (stats.reserves, stats.releases, stats.buries, stats.kicks) == (2, 1, 1, 1)
            assert stats.timeouts == 0

            delayed = await c.put(b"later", delay=3600)
            await c.kick_job(delayed)
            stats = await c.stats_job(delayed)
            assert (stats.state, stats.delay, stats.kicks) == ("ready", 3600, 1)


async def test_restart_adds_one_to_buries(beanstalkd_binlog: BeanstalkdProcess) -> None:
    """B5. Given a buried job in a binlog, when beanstalkd restarts, then `buries` is 2."""
    server = beanstalkd_binlog
    with trio.fail_after(10):
        async with open_client(server.address) as c:
            job_id = await c.put(b"x")
            await c.reserve(timeout=0)
            await c.bury(job_id)
            assert (await c.stats_job(job_id)).buries == 1
        await restart(server)
        stats = await job_stats(server, job_id)
        assert (stats.state, stats.buries) == ("buried", 2)


async def test_restart_keeps_only_counters_written_to_the_binlog(
    beanstalkd_binlog: BeanstalkdProcess,
) -> None:
    """B6. Given three jobs in a binlog: one released with a delay, one released with delay
    0, one still reserved, when beanstalkd is killed and restarted, then only the first keeps
    its new priority and counters; the others are back to what their put wrote."""
    server = beanstalkd_binlog
    with trio.fail_after(10):
        async with open_client(server.address) as c:
            delayed = await c.put(b"delayed release", priority=1)
            at_once = await c.put(b"release 0", priority=2)
            held = await c.put(b"held", priority=3)
            await c.reserve_job(delayed)
            await c.release(delayed, priority=11, delay=1)
            await c.reserve_job(at_once)
            await c.release(at_once, priority=12, delay=0)
            await c.reserve_job(held)
            await restart(server)
        after = {i: await job_stats(server, i) for i in (delayed, at_once, held)}
        assert (after[delayed].pri, after[delayed].reserves, after[delayed].releases) == (11, 1, 1)
        assert (after[at_once].pri, after[at_once].reserves, after[at_once].releases) == (2, 0, 0)
        assert (after[held].state, after[held].pri, after[held].reserves) == ("ready", 3, 0)


# ---- numbers, names and sizes


# (name on the wire, what beanstalkd says to `use <name>`)
TUBE_NAMES: list[tuple[bytes, bytes]] = [
    (b"a" * 200, b"USING " + b"a" * 200),
    (b"a" * 201, b"BAD_FORMAT"),
    (b"AZaz09-+/;.$_()", b"USING AZaz09-+/;.$_()"),
    (b"x-", b"USING x-"),
    (b"-x", b"BAD_FORMAT"),
    (b"", b"BAD_FORMAT"),
    (b"a b", b"BAD_FORMAT"),
    (b"a*b", b"BAD_FORMAT"),
    (b"a:b", b"BAD_FORMAT"),
    (b"a@b", b"BAD_FORMAT"),
    (b"a,b", b"BAD_FORMAT"),
    (b"a#b", b"BAD_FORMAT"),
    (b"a=b", b"BAD_FORMAT"),
    ("é".encode(), b"BAD_FORMAT"),
]


async def test_tube_name_rules_match_local_validation(beanstalkd: BeanstalkdProcess) -> None:
    """Given legal and illegal tube names, then beanstalkd's `use` answer (USING or
    BAD_FORMAT) and our local validation agree on every one."""
    with trio.fail_after(10):
        async with open_raw(beanstalkd) as raw:
            for wire, expected in TUBE_NAMES:
                assert await raw.exchange(b"use %b\r\n" % wire) == [expected], wire
                server_accepts = expected.startswith(b"USING ")
                try:
                    p.validate_tube_name(wire.decode())
                    local_accepts = True
                except LocalProtocolError:
                    local_accepts = False
                assert local_accepts == server_accepts, wire


async def test_numbers_are_unsigned_32_bit_whole_seconds(beanstalkd: BeanstalkdProcess) -> None:
    """Given put/pause-tube arguments at and past 2**32-1, negative or fractional, then the
    server takes the largest and answers BAD_FORMAT to the rest; so does local validation."""
    with trio.fail_after(10):
        async with open_raw(beanstalkd) as raw:
            top = await raw.exchange(b"put 4294967295 0 4294967295 1\r\nx\r\n")
            assert top[0].startswith(b"INSERTED ")
            for bad in (b"4294967296 0 1", b"-1 0 1", b"0 1.5 1", b"0 0 4294967296"):
                # the rejected put leaves its body to be read as a command (see B13)
                replies = await raw.exchange(b"put %b 1\r\nx\r\n" % bad, 2)
                assert replies == [b"BAD_FORMAT", b"UNKNOWN_COMMAND"], bad
            assert await raw.exchange(b"pause-tube default 4294967295\r\n") == [b"PAUSED"]
            assert await raw.exchange(b"pause-tube default 4294967296\r\n") == [b"BAD_FORMAT"]
            assert await raw.exchange(b"pause-tube default 1.5\r\n") == [b"BAD_FORMAT"]
        for command in (
            p.Put(b"x", priority=2**32),
            p.Put(b"x", delay=-1),
            p.PauseTube("t", 2**32),
        ):
            with pytest.raises(LocalProtocolError):
                command.wire()


async def test_bad_put_header_runs_the_body_as_a_command(beanstalkd: BeanstalkdProcess) -> None:
    """B13. Given a put whose header is malformed (ttr 1.5) and whose body is `use evil`,
    then the server answers BAD_FORMAT and then executes the body: USING evil."""
    with trio.fail_after(10):
        async with open_raw(beanstalkd) as raw:
            replies = await raw.exchange(b"put 0 0 1.5 8\r\nuse evil\r\nlist-tube-used\r\n", 3)
        assert replies == [b"BAD_FORMAT", b"USING evil", b"USING evil"]


async def test_reserve_with_timeout_misparses(beanstalkd: BeanstalkdProcess) -> None:
    """B7. Given `reserve-with-timeout` arguments a strict parser would refuse, then 1.12
    accepts them: `0abc` and `4294967296` (wraps to 0) time out at once, and `-1` blocks
    (a reserve without timeout). Our client refuses to send them."""
    with trio.fail_after(10):
        async with open_raw(beanstalkd) as raw:
            assert await raw.exchange(b"reserve-with-timeout 0abc\r\n") == [b"TIMED_OUT"]
            assert await raw.exchange(b"reserve-with-timeout 4294967296\r\n") == [b"TIMED_OUT"]
            await raw.send(b"reserve-with-timeout -1\r\n")
            await wait_until_waiting(beanstalkd, 1)
        for timeout in (-1, 2**31):
            with pytest.raises(LocalProtocolError):
                p.ReserveWithTimeout(timeout).wire()


async def test_body_size_limit_is_65535_bytes(beanstalkd: BeanstalkdProcess) -> None:
    """Given the default max-job-size, then a 65535-byte and an empty body are accepted, a
    65536-byte body gets JOB_TOO_BIG, and the connection stays usable."""
    with trio.fail_after(10):
        assert (await server_stats(beanstalkd)).max_job_size == 65_535
        # A client built on a bare stream does not know the limit, so it sends the body.
        raw = Client(await trio.open_tcp_stream(beanstalkd.host, beanstalkd.port))
        try:
            assert await raw.put(b"x" * 65_535) > 0
            assert await raw.put(b"") > 0
            with pytest.raises(greenstalk.JobTooBigError):
                await raw.put(b"x" * 65_536)
            assert await raw.list_tube_used() == "default"
        finally:
            await raw.aclose()


# ---- pause-tube


async def test_pause_stops_reserves_and_zero_lifts_it(beanstalkd: BeanstalkdProcess) -> None:
    """Given a paused tube with a ready job, then reserve finds nothing (but reserve-job
    ignores the pause); when `pause-tube <t> 0` is sent, then a blocked reserve gets the job
    at once and the pause shows 0."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c, open_client(beanstalkd.address) as w:
            job_id = await c.put(b"x")
            other = await c.put(b"y", priority=0)
            await c.pause_tube("default", 3600)
            assert (await c.stats_tube("default")).pause == 3600
            with pytest.raises(greenstalk.TimedOutError):
                await w.reserve(timeout=0)
            assert (await w.reserve_job(job_id)).id == job_id
            await w.delete(job_id)
            async with trio.open_nursery() as nursery:

                async def reserve() -> None:
                    assert (await w.reserve(timeout=5)).id == other

                nursery.start_soon(reserve)
                await wait_until_waiting(beanstalkd, 1)
                start = trio.current_time()
                await c.pause_tube("default", 0)
            assert trio.current_time() - start < 0.5
            assert (await c.stats_tube("default")).pause == 0


async def test_pause_is_lost_when_the_tube_is_freed(beanstalkd: BeanstalkdProcess) -> None:
    """B9. Given a paused tube with no job, when its last user disconnects, then the tube
    is gone and, used again, comes back unpaused."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            await c.use("brief")
            await c.pause_tube("brief", 3600)
            assert (await c.stats_tube("brief")).pause == 3600
        async with open_client(beanstalkd.address) as c:

            async def freed() -> bool:
                return "brief" not in await c.list_tubes()

            await wait_until(freed, timeout=5, what="the tube to be freed")
            await c.use("brief")
            assert (await c.stats_tube("brief")).pause == 0


async def test_pause_is_lost_on_restart(beanstalkd_binlog: BeanstalkdProcess) -> None:
    """B9. Given a paused tube holding a job in a binlog, when beanstalkd restarts, then the
    job is back and the tube is not paused any more."""
    server = beanstalkd_binlog
    with trio.fail_after(10):
        async with open_client(server.address) as c:
            await c.use("paused")
            job_id = await c.put(b"x")
            await c.pause_tube("paused", 3600)
        await restart(server)
        async with open_client(server.address) as c:
            assert (await c.stats_tube("paused")).pause == 0
            await c.watch("paused")
            assert (await c.reserve(timeout=0)).id == job_id


# ---- durability, restarts, drain mode


async def test_sigusr1_puts_the_server_in_drain_mode(beanstalkd: BeanstalkdProcess) -> None:
    """Given SIGUSR1 sent to beanstalkd, then `stats` says draining, every put is answered
    DRAINING, and reserve, release, bury, kick, touch and delete still work."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"before")
            beanstalkd.enter_drain_mode()

            async def draining() -> bool:
                return (await c.stats()).draining

            await wait_until(draining, timeout=5, what="drain mode")
            with pytest.raises(greenstalk.DrainingError):
                await c.put(b"after")
            assert c.is_usable
            await c.reserve(timeout=0)
            await c.touch(job_id)
            await c.release(job_id)
            await c.reserve(timeout=0)
            await c.bury(job_id)
            assert await c.kick(1) == 1
            await c.delete(job_id)


async def test_ids_restart_at_one_without_binlog(beanstalkd: BeanstalkdProcess) -> None:
    """B10. Given an in-memory server that gave out id 1, when it restarts, then the next
    put gets id 1 again (only the `stats` instance id changes), and a stale `delete 1`
    deletes the new, unrelated job."""
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as c:
            old_id = await c.put(b"old")
            assert c.server is not None
            old_instance = c.server.id
        await restart(beanstalkd)
        async with open_client(beanstalkd.address) as c:
            assert c.server is not None
            assert c.server.id != old_instance
            assert await c.put(b"new, unrelated") == old_id
            await c.delete(old_id)  # meant for "old", removes "new, unrelated"
            with pytest.raises(greenstalk.NotFoundError):
                await c.peek(old_id)


async def test_binlog_keeps_acknowledged_jobs_and_ids_across_kill9(
    beanstalkd_binlog: BeanstalkdProcess,
) -> None:
    """Given acknowledged puts, a delete, a bury and a delayed job in a binlog, when
    beanstalkd is killed with SIGKILL and restarted, then every job is back in its state
    (reserved ones as ready) and new ids continue after the highest."""
    server = beanstalkd_binlog
    with trio.fail_after(10):
        async with open_client(server.address) as c:
            ready, gone, buried, delayed, held = [await c.put(b"%d" % i) for i in range(5)]
            await c.delete(gone)
            await c.reserve_job(buried)
            await c.bury(buried)
            await c.reserve_job(delayed)
            await c.release(delayed, delay=3600)
            await c.reserve_job(held)
            await restart(server)
        async with open_client(server.address) as c:
            states = [(await c.stats_job(i)).state for i in (ready, buried, delayed, held)]
            assert states == ["ready", "buried", "delayed", "ready"]
            with pytest.raises(greenstalk.NotFoundError):
                await c.peek(gone)
            assert await c.put(b"next") == held + 1


async def test_delayed_releases_grow_the_binlog(
    binlog_server: Callable[..., BeanstalkdProcess], tmp_path: Path
) -> None:
    """B4. Given 20 live jobs released again and again with a delay, then the binlog keeps
    adding files while its oldest file stays pinned (nothing is compacted); deleting the
    jobs lets it shrink to one file."""
    server = binlog_server(extra_args=["-s", "20000"])  # small files: rollover comes soon
    with trio.fail_after(15):
        async with open_client(server.address) as c:
            ids = [await c.put(b"x" * 100) for _ in range(20)]
            for _ in range(60):
                await c.pipeline(
                    [cmd for i in ids for cmd in (p.ReserveJob(i), p.Release(i, 1, 1))]
                )
            stats = await c.stats()
            assert stats.binlog_oldest_index == 1
            assert stats.binlog_current_index >= 4
            assert stats.binlog_records_migrated == 0
            await c.pipeline([p.Delete(i) for i in ids])
            for _ in range(3):  # the binlog is trimmed on later writes
                await c.delete(await c.put(b"y"))
            stats = await c.stats()
            assert stats.binlog_oldest_index == stats.binlog_current_index
            assert len(list(await trio.Path(tmp_path).glob("binlog.*"))) == 1


async def test_smaller_max_job_size_on_restart_drops_records(
    binlog_server: Callable[..., BeanstalkdProcess],
) -> None:
    """B11. Given a 900-byte job and then a 1-byte job in a binlog written with -z 1000,
    when beanstalkd restarts with -z 100, then both are gone: the big one and every record
    after it in that binlog file."""
    server = binlog_server(max_job_size=1000)
    with trio.fail_after(10):
        async with open_client(server.address) as c:
            big = await c.put(b"b" * 900)
            small = await c.put(b"s")
        server.max_job_size = 100
        await restart(server)
        async with open_client(server.address) as c:
            for job_id in (big, small):
                with pytest.raises(greenstalk.NotFoundError):
                    await c.peek(job_id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
async def test_server_keeps_a_silent_peer_until_keepalive(beanstalkd: BeanstalkdProcess) -> None:
    """Given a client connection, then beanstalkd's side of it runs a TCP keepalive timer
    (timer 2 in /proc/net/tcp): a peer that vanishes without FIN is only noticed when
    keepalive gives up (Linux default: after 2 h of silence plus the probes)."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(beanstalkd.host, beanstalkd.port)
        try:
            await stream.send_all(b"list-tube-used\r\n")
            assert await stream.receive_some(64) == b"USING default\r\n"
            client_port = stream.socket.getsockname()[1]
            timers = []
            for row in (await trio.Path("/proc/net/tcp").read_text()).splitlines()[1:]:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if (local_port, remote_port) == (beanstalkd.port, client_port):
                    timers.append(fields[5].split(":")[0])
            assert timers == ["02"]
        finally:
            await trio.aclose_forcefully(stream)


# ---- Trio


async def test_trio_nursery_errors_arrive_grouped() -> None:
    """Given a nursery whose child raises, then the error leaves the nursery wrapped in an
    ExceptionGroup (strict exception groups, the default since Trio 0.25)."""

    async def fail() -> None:
        raise ValueError("boom")

    with pytest.RaisesGroup(ValueError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
