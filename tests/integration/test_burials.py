"""Burial records against a real beanstalkd: one row per buried job, from its latest
record, however the records were written; stale ones deleted when read; records at their
size bound accepted by a default beanstalkd."""

from __future__ import annotations

import json

import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tubeworker.admin_ops import buried_records, kick_by_reason
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client, connect, open_client, parse_address
from tubeworker.burials import (
    MAX_RECORD_BYTES,
    new_record,
    read_record,
    read_records,
    records_tube,
    trim_traceback,
    write_record,
)

TUBE = "graves"


async def bury(client: Client, job_id: int) -> p.JobStats:
    """Reserve ``job_id`` and bury it; its stats as they were while it was reserved."""
    await client.reserve_job(job_id)
    stats = await client.stats_job(job_id)
    await client.bury(job_id)
    return stats


async def records_left(client: Client) -> int:
    return (await client.stats_tube(records_tube(TUBE))).current_jobs_ready


async def reader(server: BeanstalkdProcess) -> Client:
    return await connect(parse_address(server.address))


def legacy(job_id: int, stats: p.JobStats, reason: str, attempt: int, buried_at: float) -> bytes:
    """A record as tubeworker wrote them before it kept kicks and tracebacks."""
    record = new_record(job_id, stats, "handler_error", reason, attempt)
    data = json.loads(record.to_body())
    data.pop("kicks")
    return json.dumps({**data, "buried_at": buried_at}).encode()


async def test_given_old_records_of_a_job_written_newest_first_then_the_latest_is_read(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as client:
            await client.use(TUBE)
            job_id = await client.put(b"job", ttr=60)
            first = await bury(client, job_id)
            await client.kick_job(job_id)
            second = await bury(client, job_id)
            # The second burial's record arrives first, from a worker whose clock is behind.
            await client.use(records_tube(TUBE))
            await client.put(legacy(job_id, second, "new reason", 2, 1000.0), priority=2**31)
            await client.put(legacy(job_id, first, "old reason", 1, 2000.0), priority=2**31)

            count, rows = await buried_records(parse_address(beanstalkd.address), TUBE)
            assert count == 1
            assert [(r.job_id, r.attempt, r.reason) for r, _ in rows] == [(job_id, 2, "new reason")]
            assert await records_left(client) == 1  # the superseded one was deleted

            address = parse_address(beanstalkd.address)
            assert await kick_by_reason(address, TUBE, "old reason") == 0
            assert (await client.stats_job(job_id)).state == "buried"
            assert await kick_by_reason(address, TUBE, "new reason") == 1
            assert (await client.stats_job(job_id)).state == "ready"


async def test_given_a_job_kicked_and_buried_by_another_client_then_its_record_is_stale(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as client:
            await client.use(TUBE)
            job_id = await client.put(b"job", ttr=60)
            stats = await bury(client, job_id)
            await write_record(client, new_record(job_id, stats, "poison", "r", 1))
            await client.kick_job(job_id)
            await bury(client, job_id)  # not by tubeworker: no record of this burial

            assert await read_records(await reader(beanstalkd), TUBE) == []
            assert await records_left(client) == 0


async def test_given_a_buried_job_then_its_latest_record_is_found_and_others_left_alone(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as client:
            await client.use(TUBE)
            job_id = await client.put(b"job", ttr=60)
            other = await client.put(b"other", ttr=60)
            first = await bury(client, job_id)
            await write_record(client, new_record(job_id, first, "handler_error", "old", 1))
            other_stats = await bury(client, other)
            await write_record(client, new_record(other, other_stats, "bad_body", "x", 1))
            await client.kick_job(job_id)
            second = await bury(client, job_id)
            await write_record(
                client,
                new_record(job_id, second, "handler_error", "new", 2, traceback="T\n"),
            )
            now = await client.stats_job(job_id)

            found = await read_record(await reader(beanstalkd), job_id, now)
            assert found is not None
            assert (found.attempt, found.reason, found.traceback) == (2, "new", "T\n")
            assert await records_left(client) == 2  # the other job's record is still there
            rows = await read_records(await reader(beanstalkd), TUBE)
            assert sorted((r.job_id, r.reason) for r, _ in rows) == [
                (job_id, "new"),
                (other, "x"),
            ]


async def test_given_a_record_at_its_size_bound_then_a_default_beanstalkd_keeps_it(
    beanstalkd: BeanstalkdProcess,
) -> None:
    frames = "".join(f'  File "h.py", line {i}, in h\n    "😀\\x00😀"\n' for i in range(2000))
    text = trim_traceback(frames + "ValueError: 😀\n", "ValueError: 😀\n")
    with trio.fail_after(10):
        async with open_client(beanstalkd.address) as client:
            await client.use(TUBE)
            job_id = await client.put(b"job", ttr=60)
            stats = await bury(client, job_id)
            record = new_record(job_id, stats, "handler_error", "😀" * 5000, 1, traceback=text)
            assert len(record.to_body()) <= MAX_RECORD_BYTES
            await write_record(client, record)

            now = await client.stats_job(job_id)
            found = await read_record(await reader(beanstalkd), job_id, now)
            assert found is not None
            assert found.traceback.endswith("ValueError: 😀\n")
            assert len(found.reason) == 1000
