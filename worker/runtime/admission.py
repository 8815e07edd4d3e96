"""Admitting a job whose APIs may be open: run now, or hold it (touched, no attempt burned)
until its APIs let it through, as a probe when one is half-open."""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio
import trio.lowlevel

from tubeworker.flow import ApiTracker, Permit

__all__ = ["HELD_POLL", "wait_for_apis"]

# A held job looks at its APIs at least this often (and at once when their cool-down
# ends); it also notices a drain this fast.
HELD_POLL = 1.0


async def wait_for_apis(
    apis: frozenset[str],
    tracker: ApiTracker,
    *,
    draining: Callable[[], bool],
    log: structlog.typing.FilteringBoundLogger,
) -> Permit | None:
    """Until the tracker admits a job needing ``apis`` (its permit), or the daemon drains
    (None: hand the job back)."""
    told = False
    while True:
        permit = tracker.try_admit(apis)
        if permit is not None:
            if told:
                log.info("job admitted", apis=sorted(apis), probe=list(permit.probes))
            return permit
        if draining():
            return None
        now = trio.current_time()
        until = tracker.blocked_until(apis)
        if not told:
            told = True
            log.info(
                "job waits: its API is open",
                apis=sorted(apis),
                next_probe_in=round(max(0.0, (until or now) - now), 1),
            )
        await trio.sleep_until(min(until if until is not None else now, now + HELD_POLL))
        await trio.lowlevel.checkpoint()
