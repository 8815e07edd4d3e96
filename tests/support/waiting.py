"""Wait for a condition with a deadline, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio

__all__ = ["wait_until", "wait_until_sync"]


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    what: str = "condition",
) -> None:
    """Poll a condition (sync or async) every 10 ms until true; fail after ``timeout`` s."""
    with trio.move_on_after(timeout):
        while True:
            result = condition()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await trio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_until_sync(
    condition: Callable[[], bool], *, timeout: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or 'condition'}")
        time.sleep(0.01)
