"""run_in_turn: coroutines started one after another in one task while each ends without
waiting; the first that waits keeps the task, the rest go on in a new one; each sees only
its own contextvars; cancellation and failures reach each as in a task of its own."""

from __future__ import annotations

import contextvars

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tubeworker.runtime.in_turn import run_in_turn

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


async def test_coroutines_that_never_wait_share_one_task_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[int, trio.lowlevel.Task]] = []

    async def start(i: int) -> None:
        seen.append((i, trio.lowlevel.current_task()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, start, [0, 1, 2, 3])
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert len({task for _, task in seen}) == 1


async def test_the_first_that_waits_keeps_the_task_and_the_rest_get_a_new_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: dict[int, trio.lowlevel.Task] = {}
    ends: dict[int, trio.lowlevel.Task] = {}

    async def start(i: int) -> None:
        starts[i] = trio.lowlevel.current_task()
        if i == 1:
            await trio.sleep(1)
        ends[i] = trio.lowlevel.current_task()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, start, [0, 1, 2, 3])
        await trio.testing.wait_all_tasks_blocked()
        assert set(ends) == {0, 2, 3}  # the ones after the waiting one did not wait for it
        await trio.sleep(2)  # virtual time
    assert starts[0] is starts[1] is ends[1]  # it waited and ended in the task it began in
    assert starts[2] is starts[3] is not starts[1]


async def test_each_sees_only_its_own_context_across_its_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    WHO.set("spawner")
    seen: dict[int, list[str]] = {}

    async def start(i: int) -> None:
        seen[i] = [WHO.get()]
        WHO.set(f"job {i}")
        if i % 2:
            await trio.sleep(1)
        seen[i].append(WHO.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, start, list(range(6)))
    assert seen == {i: ["spawner", f"job {i}"] for i in range(6)}
    assert WHO.get() == "spawner"


async def test_a_waiting_coroutine_is_cancelled_by_its_own_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    caught: list[int] = []

    async def start(i: int) -> None:
        with trio.move_on_after(i + 1) as scope:
            await trio.sleep_forever()
        if scope.cancelled_caught:
            caught.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, start, [2, 0, 1])
    assert caught == [0, 1, 2]  # each by its own deadline, the earliest first


async def test_a_failure_ends_its_task_and_the_later_ones_clean_up_when_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cleaned: list[int] = []
    ran: list[int] = []

    async def start(i: int) -> None:
        try:
            if i == 1:
                raise ValueError("handler bug")
            await trio.sleep(10)
            ran.append(i)
        finally:
            cleaned.append(i)

    with pytest.raises(ExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_in_turn, nursery, start, [0, 1, 2, 3])
    assert info.group_contains(ValueError, match="handler bug")
    assert sorted(cleaned) == [0, 1, 2, 3]
    assert ran == []


async def test_a_cancelled_nursery_reaches_the_one_being_driven(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended: list[str] = []

    async def start(i: int) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            ended.append(f"{i} cancelled")
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, start, [0, 1])
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert sorted(ended) == ["0 cancelled", "1 cancelled"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-1, max_value=3), max_size=12))
def test_every_coroutine_runs_to_its_end_whatever_waits(waits: list[int]) -> None:
    """Each item: -1 ends at once, n ≥ 0 waits n times (checkpoints or sleeps)."""
    done: list[int] = []

    async def start(i: int) -> None:
        for k in range(waits[i]):
            if k % 2:
                await trio.sleep(0.001 * k)
            else:
                await trio.lowlevel.checkpoint()
        done.append(i)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_in_turn, nursery, start, list(range(len(waits))))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(done) == list(range(len(waits)))
    # The ones that never wait, before the first that does, end in order and first.
    prefix = 0
    while prefix < len(waits) and waits[prefix] <= 0:
        prefix += 1
    assert done[:prefix] == list(range(prefix))
