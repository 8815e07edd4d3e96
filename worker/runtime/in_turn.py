"""Start many handler coroutines in one Trio task, one after another, for as long as each
ends without waiting.

A Trio task per job costs a spawn, a scheduler step and an exit: about a tenth of a no-op
job's CPU. Most of a batch's jobs may never wait (a handler that computes and returns),
and a coroutine that never waits needs no task of its own. So :func:`run_in_turn` steps
each coroutine once in the current task; one that ends there cost no task. The first that
waits keeps this task as its own (it was started in it: Trio's bookkeeping for its waits
and cancel scopes is this task's), and the coroutines after it continue in a new task.

What a task of its own would give each coroutine, and what this keeps:

- its own ``contextvars`` context: each one is started and resumed in a copy of the
  context it would have been spawned with, so what one sets (``CALLER``, structlog's
  bound variables) is not seen by the next;
- its own cancel scopes: each coroutine opens its own, as it would in its own task;
- failures: a coroutine that raises ends this task with its exception (the nursery
  cancels its siblings, as before); the coroutines not yet started are first given tasks
  of their own, so that each runs its own cleanup when that cancellation reaches it.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, TypeVar

import trio

__all__ = ["run_in_turn"]

T = TypeVar("T")

Start = Callable[[T], Coroutine[Any, Any, None]]


async def run_in_turn(
    nursery: trio.Nursery, start: Start[T], items: Sequence[T], first: int = 0
) -> None:
    """``start(item)`` for each item from ``first`` on, in this task while each ends
    without waiting (see the module docstring); ``nursery`` takes the rest when one waits
    or fails."""
    context = contextvars.copy_context()  # what a task spawned now would start with
    for i in range(first, len(items)):
        own = context.copy()
        coro = start(items[i])
        try:
            trap = own.run(coro.send, None)
        except StopIteration:
            continue  # ended without waiting: no task needed
        except BaseException:
            for later in items[i + 1 :]:
                nursery.start_soon(start, later)
            raise
        if i + 1 < len(items):
            nursery.start_soon(run_in_turn, nursery, start, items, i + 1)
        await _resume(own, coro, trap)
        return


@types.coroutine
def _resume(
    context: contextvars.Context, coro: Coroutine[Any, Any, None], trap: Any
) -> Generator[Any, Any, None]:
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
            except StopIteration:
                return
            continue
        try:
            trap = context.run(coro.send, value)
        except StopIteration:
            return
