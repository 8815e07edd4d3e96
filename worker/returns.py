"""Jobs the daemon handed back by its own choice, kept in beanstalkd itself.

A job handed back with no outcome (its connection closed while its handler ran) is a
*redelivery* when it comes again: beanstalkd's ``reserves`` counter grew with no release,
timeout or bury beside it. Too many redeliveries and the job is buried as poison, since a
job that crashes or hangs its worker looks exactly like that (docs/beanstalkd.md,
"Counting attempts from the counters"). But some returns are the daemon's choice, not the
job's fault: the drain deadline of a rolling deploy, a second SIGTERM, a drain while the
job waited for its API or limit, a compute worker stopped by the service manager.

So, for each such return, the daemon puts a small JSON *record* in a tube of the job's own,
``tubeworker.returned.<job id>``, on the job's server. Whichever worker gets the job next
and would bury it as poison first counts its records (one ``stats-tube``, no reserve: any
number of workers may look at once) and excuses that many redeliveries. A job that crashes
its worker leaves no record, so poison still ends buried. A job's records outlive it until
a daemon's sweep (:func:`sweep_returns`, every few minutes) finds the job gone and deletes
them: the tubes are bounded by the jobs returned and not yet finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Final

import greenstalk

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client
from tubeworker.tubes import INTERNAL_PREFIX

__all__ = [
    "PREFIX",
    "ReturnRecord",
    "count_returns",
    "new_return",
    "returned_tube",
    "sweep_returns",
    "write_return",
]

PREFIX: Final = INTERNAL_PREFIX + "returned."
MAX_RECORDS: Final = 100  # per job: more returns than this are not worth a record each


@dataclass(frozen=True, slots=True)
class ReturnRecord:
    job_id: int
    tube: str
    cause: str
    returned_at: float  # wall time
    reserves: int  # the job's deliveries so far, this one included

    def to_body(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def new_return(job_id: int, stats: p.JobStats, cause: str) -> ReturnRecord:
    return ReturnRecord(job_id, stats.tube, cause, round(time.time(), 3), stats.reserves)


def returned_tube(job_id: int) -> str:
    return f"{PREFIX}{job_id}"


async def write_return(client: Client, record: ReturnRecord) -> None:
    """Put ``record`` in its job's tube (on the job's server)."""
    tube = returned_tube(record.job_id)
    if await count_returns(client, record.job_id) >= MAX_RECORDS:
        return
    await client.use(tube)
    await client.put(record.to_body(), priority=2**31, ttr=60)


async def count_returns(client: Client, job_id: int) -> int:
    """How many of the job's redeliveries were returns by a daemon's choice."""
    try:
        stats = await client.stats_tube(returned_tube(job_id))
    except greenstalk.NotFoundError:
        return 0
    return (
        stats.current_jobs_ready
        + stats.current_jobs_reserved
        + stats.current_jobs_delayed
        + stats.current_jobs_buried
    )


async def sweep_returns(client: Client, *, limit: int = 10_000) -> int:
    """Delete the records of jobs that are gone (deleted) or no longer need them (buried:
    a kick grants a fresh budget); returns how many jobs' records were deleted. Looks at
    ``limit`` record tubes at most."""
    swept = 0
    tubes = [t for t in await client.list_tubes() if t.startswith(PREFIX)][:limit]
    for tube in tubes:
        try:
            job_id = int(tube.removeprefix(PREFIX))
        except ValueError:
            continue
        try:
            state = (await client.stats_job(job_id)).state
        except greenstalk.NotFoundError:
            state = "deleted"
        if state in ("deleted", "buried") and await _delete_all(client, tube):
            swept += 1
    if tubes:
        await client.use("default")  # a tube we used would stay listed while we use it
    return swept


async def _delete_all(client: Client, tube: str) -> int:
    await client.use(tube)
    deleted = 0
    for _ in range(MAX_RECORDS * 2):
        try:
            record = await client.peek_ready()
        except greenstalk.NotFoundError:
            break
        try:
            await client.delete(record.id)
            deleted += 1
        except greenstalk.NotFoundError:
            continue  # another daemon's sweep took it
    return deleted
