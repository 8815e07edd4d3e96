"""The tick holder against a real beanstalkd: a tick whose reservation ran out while this
process was stopped (its reserve reply read only when it ran again) is not fired."""

from __future__ import annotations

import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tubeworker.beanstalk.client import Address, connect
from tubeworker.errors import ConnectionLostError
from tubeworker.runtime.clock_fire import TickHolder


async def test_given_a_tick_taken_back_by_its_ttr_then_the_holder_gives_it_up(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = Address(beanstalkd.host, beanstalkd.port)
    holder, watcher = await connect(address), await connect(address)
    try:
        await holder.use("tubeworker.schedule.s")
        await holder.watch("tubeworker.schedule.s")
        job_id = await holder.put(b"{}", ttr=1)
        reserved = await holder.reserve(0)
        # the "stopped" holder: its TTR runs out and another daemon, waiting in a reserve,
        # gets the tick (and gives it back here, to be reserved again below)
        await watcher.watch("tubeworker.schedule.s")
        taken = await watcher.reserve(5)
        assert taken.id == job_id
        await watcher.release(taken.id)
        since = trio.current_time()  # as a process that only now reads the reply would
        with pytest.raises(ConnectionLostError, match="taken back"):
            await TickHolder._still_ours(holder, reserved.id, since)
        # still held: no complaint (and the touch renewed it)
        again = await holder.reserve(0)
        await TickHolder._still_ours(holder, again.id, trio.current_time())
        assert (await watcher.stats_job(again.id)).state == "reserved"
    finally:
        await holder.aclose()
        await watcher.aclose()
