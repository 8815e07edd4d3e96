"""Return records (tubeworker.returns) on a real beanstalkd: counted by any number of
readers at once without consuming them, survive a restart with a binlog, and swept once
their job is gone."""

from __future__ import annotations

import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tubeworker.beanstalk.client import open_client
from tubeworker.returns import count_returns, new_return, returned_tube, sweep_returns, write_return


async def test_given_returns_on_record_then_every_reader_counts_them(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(30):
        async with (
            open_client(beanstalkd.address) as client,
            open_client(beanstalkd.address) as other,
        ):
            await client.use("emails")
            job_id = await client.put(b"{}", ttr=30)
            stats = await client.stats_job(job_id)
            assert await count_returns(client, job_id) == 0
            for _ in range(3):
                await write_return(client, new_return(job_id, stats, "drain_deadline"))
            # Counting reserves nothing: two readers see the same three at once.
            assert await count_returns(client, job_id) == 3
            assert await count_returns(other, job_id) == 3
            assert await count_returns(other, job_id + 1) == 0


async def test_given_a_binlog_then_records_survive_a_restart(
    beanstalkd_binlog: BeanstalkdProcess,
) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd_binlog.address) as client:
            await client.use("emails")
            job_id = await client.put(b"{}", ttr=30)
            stats = await client.stats_job(job_id)
            await write_return(client, new_return(job_id, stats, "drain_deadline"))
        beanstalkd_binlog.restart()
        async with open_client(beanstalkd_binlog.address) as client:
            assert await count_returns(client, job_id) == 1


async def test_given_jobs_gone_or_buried_then_the_sweep_deletes_their_records_only(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with trio.fail_after(30):
        async with open_client(beanstalkd.address) as client:
            await client.use("emails")
            await client.watch("emails")
            ids = [await client.put(b"{}", ttr=30) for _ in range(3)]
            for job_id in ids:
                stats = await client.stats_job(job_id)
                await write_return(client, new_return(job_id, stats, "drain_deadline"))
            live, deleted, buried = ids
            await client.delete(deleted)
            await client.reserve_job(buried)
            await client.bury(buried)
            assert await sweep_returns(client) == 2
            assert await count_returns(client, live) == 1
            assert await count_returns(client, deleted) == 0
            assert await count_returns(client, buried) == 0
            assert returned_tube(deleted) not in await client.list_tubes()
            assert await sweep_returns(client) == 0  # nothing left to do
