"""run_in_turn: bodies started one after another in one task while each ends without
waiting; the first that waits keeps the task and the cancel scope around it, with its
deadline and any cancellation asked before; the rest go on in a new task. Each sees only
its own contextvars; its cleanup runs however its body ended, its finish after that
(outside its scope, and it may wait too); failures reach each as in a task of its own."""

from __future__ import annotations

import contextvars
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tubeworker.runtime.in_turn import run_in_turn

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@dataclass
class Item:
    n: int
    deadline: float = math.inf
    cancel_first: bool = False  # cancellation asked for before its first wait
    scope: trio.CancelScope | None = None


@dataclass
class Calls:
    """A Turn that runs ``body(item)`` and records what happens to each item."""

    body: Callable[[Item], Awaitable[Any]]
    finish_body: Callable[[Item, Any], Awaitable[None]] | None = None
    log: list[tuple[str, int]] = field(default_factory=list)
    results: dict[int, Any] = field(default_factory=dict)
    tasks: dict[tuple[str, int], trio.lowlevel.Task] = field(default_factory=dict)

    def start(self, item: Item) -> Coroutine[Any, Any, Any]:
        self.log.append(("start", item.n))
        self.tasks["start", item.n] = trio.lowlevel.current_task()

        async def body() -> Any:
            return await self.body(item)

        return body()

    def deadline(self, item: Item) -> float:
        return item.deadline

    def scope_taken(self, item: Item, scope: trio.CancelScope) -> None:
        self.log.append(("scope", item.n))
        scope.deadline = item.deadline
        if item.cancel_first:
            scope.cancel()
        item.scope = scope

    def stopped(self, item: Item) -> None:
        self.log.append(("stopped", item.n))

    async def finish(self, item: Item, result: Any) -> None:
        self.log.append(("finish", item.n))
        self.tasks["finish", item.n] = trio.lowlevel.current_task()
        self.results[item.n] = result
        if self.finish_body is not None:
            await self.finish_body(item, result)


async def _returns(item: Item) -> int:
    return item.n * 10


async def test_bodies_that_never_wait_share_one_task_and_need_no_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = Calls(_returns)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, calls, [Item(i) for i in range(4)])
    assert calls.log == [(what, i) for i in range(4) for what in ("start", "stopped", "finish")]
    assert calls.results == {0: 0, 1: 10, 2: 20, 3: 30}
    assert len(set(calls.tasks.values())) == 1


async def test_the_first_that_waits_keeps_the_task_and_the_scope_and_the_rest_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body(item: Item) -> int:
        if item.n == 1:
            await trio.sleep(1)
        return item.n

    calls = Calls(body)
    items = [Item(i) for i in range(4)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, calls, items)
        await trio.testing.wait_all_tasks_blocked()
        assert set(calls.results) == {0, 2, 3}  # not held up by the one that waits
        await trio.sleep(2)
    assert calls.results == {0: 0, 1: 1, 2: 2, 3: 3}
    assert [i.n for i in items if i.scope is not None] == [1]  # only the one that waited
    assert calls.tasks["start", 0] is calls.tasks["start", 1] is calls.tasks["finish", 1]
    assert calls.tasks["start", 2] is calls.tasks["start", 3] is not calls.tasks["start", 1]
    one = [entry for entry in calls.log if entry[1] == 1]
    assert one == [("start", 1), ("scope", 1), ("stopped", 1), ("finish", 1)]


async def test_its_deadline_on_the_taken_scope_cancels_it_and_it_finishes_with_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body(item: Item) -> str:
        await trio.sleep(10)
        return "slept"

    calls = Calls(body)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, calls, [Item(0, deadline=trio.current_time() + 1)])
        nursery.start_soon(run_in_turn, nursery, calls, [Item(1)])
    assert calls.results == {0: None, 1: "slept"}
    assert trio.current_time() == pytest.approx(10)


async def test_the_scope_is_made_with_the_first_runs_deadline_and_moved_for_the_one_that_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Run 0 ends at once under a near deadline (past, for run 1's sibling batch); run 1,
    # which waits, gets its own, later deadline on the scope: neither cuts it short.
    async def body(item: Item) -> str:
        if item.n in (1, 3):
            await trio.sleep(10)
        return "done"

    now = trio.current_time()
    calls = Calls(body)
    async with trio.open_nursery() as nursery:
        first = [Item(0, deadline=now + 1), Item(1, deadline=now + 100)]
        nursery.start_soon(run_in_turn, nursery, calls, first)
        second = [Item(2, deadline=now - 1), Item(3)]  # a past deadline: never the scope's
        nursery.start_soon(run_in_turn, nursery, calls, second)
    assert calls.results == {0: "done", 1: "done", 2: "done", 3: "done"}
    assert trio.current_time() == pytest.approx(now + 10)


async def test_a_cancellation_asked_before_its_first_wait_reaches_it_there(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reached: list[str] = []

    async def body(item: Item) -> str:
        reached.append("before the wait")
        await trio.sleep(5)
        reached.append("after the wait")
        return "done"

    calls = Calls(body)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, calls, [Item(0, cancel_first=True)])
    assert reached == ["before the wait"]
    assert calls.results == {0: None}
    assert trio.current_time() == 0


async def test_each_sees_only_its_own_context_across_its_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    WHO.set("spawner")
    seen: dict[int, list[str]] = {}

    async def body(item: Item) -> None:
        seen[item.n] = [WHO.get()]
        WHO.set(f"job {item.n}")
        if item.n % 2:
            await trio.sleep(1)
        seen[item.n].append(WHO.get())

    async def finish(item: Item, result: Any) -> None:
        seen[item.n].append(WHO.get())  # the finish runs in the body's context

    calls = Calls(body, finish)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, calls, [Item(i) for i in range(6)])
    assert seen == {i: ["spawner", f"job {i}", f"job {i}"] for i in range(6)}
    assert WHO.get() == "spawner"


async def test_a_finish_that_waits_hands_the_rest_on_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def finish(item: Item, result: Any) -> None:
        if item.n == 0:
            await trio.sleep(1)

    calls = Calls(_returns, finish)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, calls, [Item(i) for i in range(3)])
        await trio.testing.wait_all_tasks_blocked()
        assert set(calls.results) == {0, 1, 2}
        assert trio.current_time() == 0
    assert calls.tasks["start", 1] is not calls.tasks["start", 0]


async def test_a_failure_ends_its_task_after_its_cleanup_and_the_rest_clean_up_when_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ran: list[int] = []

    async def body(item: Item) -> None:
        if item.n == 1:
            raise ValueError("handler bug")
        await trio.sleep(10)
        ran.append(item.n)

    calls = Calls(body)

    async def two_batches() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_in_turn, nursery, calls, [Item(i) for i in range(4)])
            nursery.start_soon(run_in_turn, nursery, calls, [Item(4)])

    with pytest.raises(ExceptionGroup) as info:
        await two_batches()
    assert info.group_contains(ValueError, match="handler bug")
    assert sorted(n for what, n in calls.log if what == "stopped") == [0, 1, 2, 3, 4]
    assert ran == []
    assert calls.results == {}  # nothing finished: the nursery's cancellation is no result


async def test_a_cancelled_nursery_reaches_the_one_being_driven_and_is_not_caught(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended: list[str] = []

    async def body(item: Item) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            ended.append(f"{item.n} cancelled")
            raise

    calls = Calls(body)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_in_turn, nursery, calls, [Item(0), Item(1)])
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert sorted(ended) == ["0 cancelled", "1 cancelled"]
    assert calls.results == {}
    assert sorted(n for what, n in calls.log if what == "stopped") == [0, 1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=2)),
        max_size=12,
    )
)
def test_every_item_is_started_stopped_and_finished_once(waits: list[tuple[int, int]]) -> None:
    """Each item: (waits in its body, waits in its finish): checkpoints and sleeps."""

    async def wait(times: int) -> None:
        for k in range(times):
            if k % 2:
                await trio.sleep(0.001 * k)
            else:
                await trio.lowlevel.checkpoint()

    async def body(item: Item) -> int:
        await wait(waits[item.n][0])
        return item.n

    async def finish(item: Item, result: Any) -> None:
        await wait(waits[item.n][1])

    calls = Calls(body, finish)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            items = [Item(i) for i in range(len(waits))]
            nursery.start_soon(run_in_turn, nursery, calls, items)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    for what in ("start", "stopped", "finish"):
        assert sorted(n for w, n in calls.log if w == what) == list(range(len(waits)))
    assert calls.results == {i: i for i in range(len(waits))}
    for i in range(len(waits)):  # in order for each item
        mine = [w for w, n in calls.log if n == i and w != "scope"]
        assert mine == ["start", "stopped", "finish"]
        assert (("scope", i) in calls.log) == (waits[i][0] > 0)
