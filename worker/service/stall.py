"""Notice when a handler blocks the event loop, and name it while it still blocks.

A blocked loop stops every lane: no reserves, no touches, no deadlines, no signals. A
watcher thread checks a heartbeat the loop updates; when it is older than the threshold,
the thread reads the main thread's stack and reports the handler on it. Nothing is added
to the per-job path.

A stopped process (SIGSTOP, a paused VM or container, a laptop asleep) also leaves the
heartbeat old, but then the watcher was stopped too: its own wait overslept by about as
long. That is reported as a suspension, not blamed on a handler.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from types import CodeType
from typing import Any

import structlog
import trio

__all__ = ["run_stall_detector"]

log = structlog.get_logger("tubeworker")


def _blocking_site(
    thread_id: int, handler_codes: dict[CodeType, str]
) -> tuple[str | None, list[str]]:
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return None, []
    stack = traceback.extract_stack(frame)
    handler = None
    walker: Any = frame
    while walker is not None:
        name = handler_codes.get(walker.f_code)
        if name is not None:
            handler = name
            break
        walker = walker.f_back
    where = [f"{f.filename}:{f.lineno} in {f.name}" for f in stack[-4:]]
    return handler, where


async def run_stall_detector(
    threshold: float,
    handlers: Iterable[tuple[str, Callable[..., Any]]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Heartbeat every threshold/4; a thread warns once per stall longer than threshold."""
    codes = {func.__code__: name for name, func in handlers if hasattr(func, "__code__")}
    loop_thread = threading.get_ident()
    beat = [time.monotonic()]
    stop = threading.Event()

    tick = threshold / 4

    def watch() -> None:
        reported_for = 0.0
        woke = time.monotonic()
        while not stop.wait(tick):
            now = time.monotonic()
            overslept = now - woke - tick
            woke = now
            last = beat[0]
            stalled = now - last
            if overslept > threshold / 2 and reported_for != last:
                # The watcher itself did not run: the whole process was stopped (or, what
                # it cannot tell apart, a C extension held the GIL all along).
                reported_for = last
                log.warning(
                    "process was suspended: the stall watcher stopped too",
                    suspended_for=round(overslept, 2),
                    hint="SIGSTOP, a paused VM or container, or a C extension holding "
                    "the GIL; no async handler is to blame",
                )
            elif stalled > threshold and reported_for != last:
                reported_for = last
                handler, where = _blocking_site(loop_thread, codes)
                log.warning(
                    "event loop blocked: a handler is not awaiting",
                    blocked_for=round(stalled, 2),
                    handler=handler,
                    where=where,
                    hint="run blocking code in a sync handler (threads or the compute profile)",
                )

    thread = threading.Thread(target=watch, name="tubeworker-stall-detector", daemon=True)
    thread.start()
    task_status.started()
    try:
        while True:
            beat[0] = time.monotonic()
            await trio.sleep(tick)
    finally:
        stop.set()
