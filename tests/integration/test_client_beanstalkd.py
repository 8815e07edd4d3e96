"""The client against a real beanstalkd 1.12: every command, and the facts we rely on."""

from __future__ import annotations

import greenstalk
import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.docs import block, run_code
from tests.support.waiting import wait_until
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client, connect, open_client
from tubeworker.errors import ConnectionLostError, LocalProtocolError


async def job_state(server: BeanstalkdProcess, job_id: int) -> str:
    async with open_client(server.address) as c:
        return (await c.stats_job(job_id)).state


async def wait_until_waiting(server: BeanstalkdProcess, count: int) -> None:
    """Until ``count`` connections are blocked in reserve on the server."""

    async def waiting() -> bool:
        async with open_client(server.address) as c:
            return (await c.stats()).current_waiting >= count

    await wait_until(waiting, what=f"{count} blocked reserves")


async def test_the_docs_protocol_client_example_runs(beanstalkd: BeanstalkdProcess) -> None:
    # docs/architecture.md's block as written, on our server (we are in Trio already).
    code = block("docs/architecture.md", "import trio").code.replace(
        "127.0.0.1:11300", beanstalkd.address
    )
    assert code.rstrip().endswith("trio.run(main)")
    main = run_code(code.rstrip().removesuffix("trio.run(main)"))["main"]
    with greenstalk.Client(_address(beanstalkd)) as client:
        before = client.stats()
        with trio.fail_after(10):
            await main()  # type: ignore[operator]
        after = client.stats()
    for counter in ("cmd-put", "cmd-reserve-with-timeout", "cmd-stats-job", "cmd-delete"):
        assert after[counter] == before[counter] + 1, counter


async def test_every_command_against_the_real_server(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            assert c.server is not None
            assert c.server.version == "1.12"
            assert await c.use("emails") == "emails"
            assert await c.list_tube_used() == "emails"
            assert await c.watch("emails") == 2
            assert await c.ignore("default") == 1
            assert await c.list_tubes_watched() == ("emails",)
            with pytest.raises(greenstalk.NotIgnoredError):
                await c.ignore("emails")
            assert set(await c.list_tubes()) == {"default", "emails"}

            first = await c.put(b"one", priority=10, ttr=30)
            later = await c.put(b"later", delay=100)
            assert (await c.peek(first)).body == b"one"
            assert (await c.peek_ready()).id == first
            assert (await c.peek_delayed()).id == later
            with pytest.raises(greenstalk.NotFoundError):
                await c.peek_buried()

            job = await c.reserve(timeout=0)
            assert (job.id, job.body) == (first, b"one")
            stats = await c.stats_job(first)
            assert (stats.state, stats.pri, stats.ttr, stats.reserves) == ("reserved", 10, 30, 1)
            await c.touch(first)
            await c.release(first, priority=11, delay=0)
            assert (await c.stats_job(first)).releases == 1
            job = await c.reserve_job(first)
            await c.bury(job.id, priority=12)
            assert (await c.peek_buried()).id == first
            assert (await c.stats_job(first)).pri == 12
            assert await c.kick(10) == 1
            await c.bury((await c.reserve(timeout=0)).id)
            await c.kick_job(first)
            assert (await c.stats_job(first)).kicks == 2

            tube = await c.stats_tube("emails")
            assert (tube.current_jobs_ready, tube.current_jobs_delayed) == (1, 1)
            await c.pause_tube("emails", 1)
            assert (await c.stats_tube("emails")).pause == 1
            await c.pause_tube("emails", 0)

            await c.delete(first)
            await c.delete(later)
            with pytest.raises(greenstalk.NotFoundError):
                await c.delete(first)
            with pytest.raises(greenstalk.TimedOutError):
                await c.reserve(timeout=0)
            assert (await c.stats()).cmd_delete == 3
            await c.quit()


async def test_only_the_reserving_connection_may_finish_a_job(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as a, open_client(beanstalkd.address) as b:
            job_id = await a.put(b"mine")
            assert (await a.reserve(timeout=0)).id == job_id
            for attempt in (b.delete, b.touch, b.release, b.bury, b.kick_job, b.reserve_job):
                with pytest.raises(greenstalk.NotFoundError):
                    await attempt(job_id)
            assert (await b.stats_job(job_id)).state == "reserved"
            await a.delete(job_id)


async def test_closing_a_connection_returns_its_job_at_once_with_its_priority(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"x", priority=7, ttr=600)
        holder = await connect(beanstalkd.address)
        assert (await holder.reserve(timeout=0)).id == job_id
        await holder.aclose()

        async def ready() -> bool:
            return await job_state(beanstalkd, job_id) == "ready"

        await wait_until(ready, timeout=5, what="job back to ready")
        async with open_client(beanstalkd.address) as c:
            stats = await c.stats_job(job_id)
        assert (stats.pri, stats.reserves, stats.releases, stats.timeouts) == (7, 1, 0, 0)


async def test_deadline_soon_inside_the_ttr_margin(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            await c.put(b"short", ttr=1)  # with ttr 1 the whole TTR is the safety margin
            await c.reserve(timeout=0)
            with pytest.raises(greenstalk.DeadlineSoonError):
                await c.reserve(timeout=5)
            assert c.is_usable


async def test_timed_out(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            with pytest.raises(greenstalk.TimedOutError):
                await c.reserve(timeout=0)
            with pytest.raises(greenstalk.TimedOutError):
                await c.reserve(timeout=1)
            assert c.is_usable


async def test_pause_tube_holds_reserves_and_zero_lifts_it(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"x")
            await c.pause_tube("default", 3600)
            with pytest.raises(greenstalk.TimedOutError):
                await c.reserve(timeout=0)
            await c.pause_tube("default", 0)
            assert (await c.reserve(timeout=1)).id == job_id


async def test_job_too_big_from_the_server_keeps_the_connection(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(30):
        # A client that does not know max-job-size sends the body; the server refuses it.
        stream = await trio.open_tcp_stream(beanstalkd.host, beanstalkd.port)
        raw = Client(stream)
        with pytest.raises(greenstalk.JobTooBigError):
            await raw.put(b"x" * 65_536)
        assert await raw.put(b"fine") > 0
        await raw.aclose()
        # One that knows refuses it before anything is sent.
        async with open_client(beanstalkd.address) as c:
            with pytest.raises(LocalProtocolError, match="max-job-size is 65535"):
                await c.put(b"x" * 65_536)
            assert c.is_usable


async def test_draining_after_sigusr1(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"before")
            beanstalkd.enter_drain_mode()

            async def draining() -> bool:
                return (await c.stats()).draining

            await wait_until(draining, what="drain mode")
            with pytest.raises(greenstalk.DrainingError):
                await c.put(b"after")
            # reserving and deleting still work while draining
            assert (await c.reserve(timeout=0)).id == job_id
            await c.delete(job_id)


async def test_cancelled_reserve_strands_no_job(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        waiter = await connect(beanstalkd.address)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.reserve)  # blocks: the tube is empty
            await wait_until_waiting(beanstalkd, 1)
            nursery.cancel_scope.cancel()
        assert not waiter.is_usable  # closed, so the server's reserve is abandoned too
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(b"after the cancel")
            # had the old connection stayed open, the server would hand this job to it
            assert (await c.reserve(timeout=2)).id == job_id
            assert (await c.stats_job(job_id)).reserves == 1


@pytest.mark.parametrize(
    "body",
    [b"", b"x" * 65_535, bytes(range(256)) * 3 + b"\r\n\r\nput 1 0 1 1\r\n", "ünï".encode()],
    ids=["empty", "max-size", "binary-crlf", "utf8"],
)
async def test_bodies_round_trip_intact(beanstalkd: BeanstalkdProcess, body: bytes) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            job_id = await c.put(body)
            assert (await c.peek(job_id)).body == body
            job = await c.reserve(timeout=0)
            assert (job.id, job.body) == (job_id, body)
            await c.delete(job_id)


async def test_pipelined_delete_and_reserve(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            ids = [await c.put(b"%d" % i) for i in range(3)]
            job = await c.reserve(timeout=0)
            for expected in ids[1:]:
                deleted, job = await c.pipeline([p.Delete(job.id), p.ReserveWithTimeout(0)])
                assert deleted == p.Deleted()
                assert isinstance(job, p.Reserved)
                assert job.id == expected
            assert await c.pipeline([p.Delete(job.id), p.ReserveWithTimeout(0)]) == [
                p.Deleted(),
                p.TimedOut(),
            ]


async def test_server_gone_mid_reserve_is_connection_lost(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        c = await connect(beanstalkd.address)
        async with trio.open_nursery() as nursery:

            async def stop_server() -> None:
                await wait_until_waiting(beanstalkd, 1)
                await trio.to_thread.run_sync(beanstalkd.kill9)

            nursery.start_soon(stop_server)
            with pytest.raises(ConnectionLostError):
                await c.reserve()
        assert not c.is_usable


async def test_binlog_keeps_acknowledged_jobs_across_kill9(
    beanstalkd_binlog: BeanstalkdProcess,
) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd_binlog.address) as c:
            ids = [await c.put(b"durable %d" % i, priority=i) for i in range(5)]
        await trio.to_thread.run_sync(beanstalkd_binlog.restart)
        async with open_client(beanstalkd_binlog.address) as c:
            for i, job_id in enumerate(ids):
                assert (await c.peek(job_id)).body == b"durable %d" % i


# ---- greenstalk as an independent client, both ways


async def test_greenstalk_reads_what_we_put(beanstalkd: BeanstalkdProcess) -> None:
    bodies = [b"", b"plain", b"\r\n\x00\xff" * 100]
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            await c.use("cross")
            ids = [await c.put(body, priority=5) for body in bodies]

    def read_with_greenstalk() -> list[tuple[int, bytes]]:
        address = (beanstalkd.host, beanstalkd.port)
        with greenstalk.Client(address, encoding=None, watch="cross") as g:
            got = []
            for _ in bodies:
                job = g.reserve(timeout=1)
                got.append((job.id, job.body))
                g.delete(job)
            return got

    got = await trio.to_thread.run_sync(read_with_greenstalk)
    assert got == list(zip(ids, bodies, strict=True))


async def test_we_read_what_greenstalk_puts(beanstalkd: BeanstalkdProcess) -> None:
    bodies = [b"", b"plain", b"\r\n\x00\xff" * 100]

    def put_with_greenstalk() -> list[int]:
        address = (beanstalkd.host, beanstalkd.port)
        with greenstalk.Client(address, encoding=None, use="cross") as g:
            return [g.put(body, priority=5, ttr=30) for body in bodies]

    ids = await trio.to_thread.run_sync(put_with_greenstalk)
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as c:
            await c.watch("cross")
            for job_id, body in zip(ids, bodies, strict=True):
                job = await c.reserve(timeout=1)
                assert (job.id, job.body) == (job_id, body)
                stats = await c.stats_job(job.id)
                assert (stats.tube, stats.pri, stats.ttr) == ("cross", 5, 30)
                await c.delete(job.id)


def _address(server: BeanstalkdProcess) -> tuple[str, int]:
    host, port = server.address.rsplit(":", 1)
    return host, int(port)
