"""Start many jobs' runs in one Trio task, one after another, for as long as each ends
without waiting; give a run a task and a cancel scope of its own only once it waits.

A Trio task per job costs a spawn, a scheduler step and an exit, and a cancel scope per
job an enter and an exit that register and drop its deadline: together about a third of a
no-op job's CPU. Yet many runs never wait (a handler that computes and returns), and a
run that never waits can be neither scheduled nor cancelled: it needs neither. So
:func:`run_in_turn` steps each run once in the current task, inside a cancel scope that
nobody else sees yet; one that ends there cost no task and no scope of its own. The first
that waits keeps this task and that scope as its own (it was started in them: Trio's
bookkeeping for its waits and its own cancel scopes is theirs), its deadline and any
cancellation already asked for are put on the scope (:meth:`Turn.scope_taken`), and the
runs after it go on in a new task.

What a task and a scope of its own would give each run, and what this keeps:

- its own ``contextvars`` context: each run is started and resumed in a copy of the
  context it would have been spawned with, so what one sets (``CALLER``, structlog's
  bound variables) is not seen by the next;
- its deadline and its cancellation: they can only reach a run at a wait, and at its
  first wait the scope becomes its own (a cancellation asked for before is applied then);
  a cancellation of the scope is caught there, and the run finishes with no result, as
  it did when its own ``with scope:`` caught it;
- its cleanup (:meth:`Turn.stopped`) after its body, however the body ended, and its
  finish (:meth:`Turn.finish`) after that, outside its scope, which may wait too;
- failures: a run that raises ends this task with its exception (the nursery cancels its
  siblings, as before), the runs not yet started handed to a new task first.
"""

from __future__ import annotations

import contextvars
import math
import types
from collections.abc import Coroutine, Generator, Sequence
from typing import Any, Protocol, TypeVar

import trio

__all__ = ["Turn", "run_in_turn"]

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)


class Turn(Protocol[T_contra, R]):
    """What :func:`run_in_turn` does with each item."""

    def start(self, item: T_contra) -> Coroutine[Any, Any, R]:
        """Its body: what runs under its own cancel scope."""
        ...

    def deadline(self, item: T_contra) -> float:
        """Its deadline as it starts: the scope it starts in is made with it (runs begun
        together mostly share one), so that taking the scope seldom has to move it."""
        ...

    def scope_taken(self, item: T_contra, scope: trio.CancelScope) -> None:
        """Its body waits: ``scope``, around it, is its own from now on."""
        ...

    def stopped(self, item: T_contra) -> None:
        """Its body ended, however (not awaited: a ``finally``)."""
        ...

    def finish(self, item: T_contra, result: R | None) -> Coroutine[Any, Any, None]:
        """After its body, outside its scope: ``result`` None when its scope cancelled it."""
        ...


class _Waits:
    """A coroutine's first step yielded: it waits, on ``trap``."""

    __slots__ = ("trap",)

    def __init__(self, trap: Any) -> None:
        self.trap = trap


def _step(context: contextvars.Context, coro: Coroutine[Any, Any, R]) -> R | _Waits:
    """The coroutine's first step, in ``context``: its result, or that it waits."""
    try:
        trap = context.run(coro.send, None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    return _Waits(trap)


# What an item's first steps left: None (it ended, finish and all), or the coroutine that
# waits, its trap, and whether it is its body (else its finish).
_Left = tuple[Coroutine[Any, Any, Any], Any, bool] | None


def _first_steps(turn: Turn[T, R], item: T) -> _Left:
    """In the item's context (one ``Context.run`` for the common case): its body's first
    step; if that ended it, its cleanup and its finish's first step."""
    try:
        body = turn.start(item)
        trap = body.send(None)
    except StopIteration as done:
        result = done.value
    except BaseException:
        turn.stopped(item)
        raise
    else:
        return body, trap, True
    turn.stopped(item)
    finish = turn.finish(item, result)
    try:
        trap = finish.send(None)
    except StopIteration:
        return None
    return finish, trap, False


async def run_in_turn(
    nursery: trio.Nursery, turn: Turn[T, R], items: Sequence[T], first: int = 0
) -> None:
    """Run each item from ``first`` on (see the module docstring); ``nursery`` takes the
    rest when one waits or fails."""
    context = contextvars.copy_context()  # what a task spawned now would start with
    rest = first
    while rest < len(items):
        waiting: tuple[T, contextvars.Context] | None = None
        result: R | None = None
        # Whose it is: the first run that waits in it. Made with the next run's deadline
        # (never a past one: the scope would be cancelled for the runs after it too).
        deadline = turn.deadline(items[rest])
        if deadline <= trio.current_time():
            deadline = math.inf
        with trio.CancelScope(deadline=deadline) as scope:
            while rest < len(items):
                item, own = items[rest], context.copy()
                rest += 1
                try:
                    left = own.run(_first_steps, turn, item)
                except BaseException:
                    _hand_on(nursery, turn, items, rest)
                    raise
                if left is None:
                    continue  # it ended without waiting: no task, no scope of its own
                coro, trap, in_body = left
                # It waits: this task is its own from now on; the rest go on in another.
                _hand_on(nursery, turn, items, rest)
                rest = len(items)
                if not in_body:  # its finish waits (its body is over: no scope needed)
                    await _resume(own, coro, trap)
                    return
                turn.scope_taken(item, scope)  # and this scope is its own
                waiting = item, own
                try:
                    result = await _resume(own, coro, trap)
                finally:
                    own.run(turn.stopped, item)
        if waiting is not None:  # ended, or cancelled by its scope (result None)
            item, own = waiting
            await _resume_from_start(own, turn.finish(item, result))
            return


def _hand_on(nursery: trio.Nursery, turn: Turn[T, R], items: Sequence[T], rest: int) -> None:
    if rest < len(items):
        nursery.start_soon(run_in_turn, nursery, turn, items, rest)


async def _resume_from_start(context: contextvars.Context, coro: Coroutine[Any, Any, R]) -> R:
    step = _step(context, coro)
    if not isinstance(step, _Waits):
        return step
    return await _resume(context, coro, step.trap)


@types.coroutine
def _resume(
    context: contextvars.Context, coro: Coroutine[Any, Any, R], trap: Any
) -> Generator[Any, Any, R]:
    """Drive a coroutine that has waited once (``trap``, yielded to Trio by us) to its end,
    in its own context: what Trio sends or throws to this task is passed on."""
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                trap = context.run(coro.throw, exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            continue
        try:
            trap = context.run(coro.send, value)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
