"""A server whose binlog has no room: hold what would be stranded, until it has room again.

With its binlog on a full disk, beanstalkd still deletes, touches and releases with delay
0 (none of them needs a new record), but answers ``OUT_OF_MEMORY`` to a put or a release
with a delay, and ``INTERNAL_ERROR`` to a bury, *after* unlinking the job: that job is
stranded, reserved by nobody, until beanstalkd restarts (docs/beanstalkd.md#b3). So one
refusal per failing job would strand one job per failure for as long as the disk is full.

After the first such refusal from a server (to a release, a bury or a put), the daemon
treats the server as full (:class:`BinlogHealth`): a job that fails is held by its lane,
touched, for its backoff, then released with delay 0 (no record needed); a job that would
be buried is held until the server has room. A probe (:func:`run_binlog_probe`) puts and
deletes a tiny job every few seconds; once a put succeeds, held jobs get their outcomes as
usual. At most the outcomes already on the wire when the first refusal came back are
stranded per episode, not one per failure. The state change is logged once each way and
shown in ``/status`` and the metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeGuard

import greenstalk
import structlog
import trio

from tubeworker.beanstalk.client import Address, connect
from tubeworker.config import Config
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.runtime.outcome import BuryJob, Cause, Outcome, ReleaseJob
from tubeworker.tubes import INTERNAL_PREFIX

if TYPE_CHECKING:
    from tubeworker.runtime.run import Run

__all__ = ["PROBE_EVERY", "BinlogHealth", "hold_for_binlog", "needs_room", "run_binlog_probe"]

log = structlog.get_logger("tubeworker")

PROBE_EVERY = 5.0  # seconds between probes of a full server
_PROBE_TUBE = INTERNAL_PREFIX + "probe"
_HELD_POLL = 1.0  # a job held for binlog room looks again at least this often (a drain)


class BinlogHealth:
    """Whether one server's binlog has room, as the daemon last learned it."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.full = False
        self.since: float | None = None  # wall time it was found full
        self.refusals = 0  # outcomes and puts refused for want of room, ever
        self.held = 0  # jobs held now because of it
        self.episodes = 0
        self._recovered = trio.Event()
        self._became_full = trio.Event()

    def refused(self, what: str, job_id: int | None = None) -> None:
        """beanstalkd refused ``what`` for want of binlog room (the first refusal of an
        episode strands its job)."""
        self.refusals += 1
        if self.full:
            return
        self.full = True
        self.since = time.time()
        self.episodes += 1
        self._recovered = trio.Event()
        self._became_full.set()
        log.error(
            "binlog full: failing jobs are held in the worker until the server has room",
            server=self.server,
            refused=what,
            job_id=job_id,
            hint="free disk space on the beanstalkd host; a job refused this way is stranded "
            "(reserved by nobody) until beanstalkd restarts",
        )

    def recovered(self) -> None:
        if not self.full:
            return
        self.full = False
        held_for = round(time.time() - (self.since or time.time()), 1)
        self.since = None
        self._became_full = trio.Event()
        self._recovered.set()
        log.warning("binlog has room again", server=self.server, full_for=held_for)

    async def wait_recovered(self) -> None:
        await self._recovered.wait()

    async def wait_full(self) -> None:
        await self._became_full.wait()


async def run_binlog_probe(config: Config, address: Address, health: BinlogHealth) -> None:
    """While ``health`` says full: every few seconds, put a tiny job and delete it; the
    first put that is stored means the binlog has room again."""
    while True:
        await health.wait_full()
        while health.full:
            await trio.sleep(PROBE_EVERY)
            if await _probe(config, address):
                health.recovered()


async def _probe(config: Config, address: Address) -> bool:
    try:
        with trio.fail_after(config.reply_timeout * 2):
            client = await connect(
                address, connect_timeout=config.connect_timeout, reply_timeout=config.reply_timeout
            )
            try:
                await client.use(_PROBE_TUBE)
                job_id = await client.put(b"probe", priority=0, ttr=1)
                await client.delete(job_id)
            finally:
                await client.aclose()
    except greenstalk.OutOfMemoryError:
        return False
    except (ConnectionLostError, ProtocolError, trio.TooSlowError, OSError, greenstalk.Error):
        return False  # cannot tell: ask again later
    return True


def needs_room(outcome: Outcome) -> TypeGuard[ReleaseJob | BuryJob]:
    """An outcome beanstalkd must write to its binlog: a release with a delay, a bury."""
    return isinstance(outcome, BuryJob) or (isinstance(outcome, ReleaseJob) and outcome.delay > 0)


async def hold_for_binlog(
    run: Run,
    outcome: ReleaseJob | BuryJob,
    binlog: BinlogHealth,
    draining: Callable[[], bool],
) -> Outcome:
    """The run's server has no binlog room: hold the job, touched, for its backoff, then
    release it with delay 0 (no record needed); hold a burial until the server has room.
    A drain releases a held failure at once and hands back a held burial (cancelling the
    run's scope)."""
    now = trio.current_time()
    due = now + outcome.delay if isinstance(outcome, ReleaseJob) else math.inf
    run.hold()
    binlog.held += 1
    try:
        while binlog.full and not draining() and trio.current_time() < due:
            with trio.move_on_at(min(due, trio.current_time() + _HELD_POLL)):
                await binlog.wait_recovered()
    finally:
        binlog.held -= 1
    if not binlog.full:  # room again: its outcome as decided, the rest of its backoff
        if isinstance(outcome, ReleaseJob):
            left = max(1, math.ceil(due - trio.current_time()))
            return replace(outcome, delay=min(outcome.delay, left))
        return outcome
    if isinstance(outcome, BuryJob):  # draining: it cannot be buried, it goes back
        run.give_back(Cause.BINLOG_FULL, "draining while its burial waited for binlog room")
        await trio.lowlevel.checkpoint()  # the cancelled scope ends the run here
    waited = round(trio.current_time() - now)
    detail = f"{outcome.detail} (binlog full: released with delay 0 after {waited} s)"
    return ReleaseJob(0, outcome.priority, outcome.cause, detail)
