"""The outbox's wake-ups: a finished job's outcome wakes the idle pump at once when it was
the last job running, else within LINGER (so that the outcomes of jobs started together
travel in one write); any other command wakes it at once."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from tubeworker.beanstalk import protocol as p
from tubeworker.runtime.outbox import LINGER, Entry, Outbox


async def _woken_after(outbox: Outbox, act: Callable[[], None]) -> float:
    """How long the pump's idle wait (up to 10 s) lasts when ``act`` runs during it."""
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def pump() -> None:
            with trio.move_on_after(10) as scope:
                outbox.wake = scope
                await trio.sleep_forever()
            outbox.wake = None

        nursery.start_soon(pump)
        await trio.testing.wait_all_tasks_blocked()
        act()
    return trio.current_time() - start


async def test_the_last_running_jobs_outcome_wakes_the_pump_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox()
    waited = await _woken_after(outbox, lambda: outbox.queue_outcome(Entry(p.Delete(1)), running=0))
    assert waited == 0
    assert [e.command for e in outbox.take()] == [p.Delete(1)]


async def test_an_outcome_with_jobs_still_running_waits_linger_for_theirs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox()

    def two_outcomes() -> None:
        outbox.queue_outcome(Entry(p.Delete(1)), running=3)
        outbox.queue_outcome(Entry(p.Delete(2)), running=2)  # does not push the wake later

    waited = await _woken_after(outbox, two_outcomes)
    assert waited == LINGER
    assert [e.command for e in outbox.take()] == [p.Delete(1), p.Delete(2)]


async def test_any_other_command_wakes_the_pump_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox()
    waited = await _woken_after(outbox, lambda: outbox.queue(Entry(p.Touch(7))))
    assert waited == 0


async def test_an_outcome_queued_while_the_pump_is_busy_just_waits_for_its_next_write() -> None:
    outbox = Outbox()
    outbox.queue_outcome(Entry(p.Delete(1)), running=5)  # no wait in progress: nothing to wake
    assert [e.command for e in outbox.take()] == [p.Delete(1)]
