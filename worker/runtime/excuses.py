"""Deliveries this process saw end by its own lost connection, per job.

beanstalkd counts every reservation, and cannot tell a job that crashed its worker from
one whose connection died under it. The process can: when a lane loses its connection with
a job (or before beanstalkd confirmed the job's outcome), the job's next delivery to this
process is excused from the redelivery limit, so a flaky network does not bury healthy
jobs as poison. A job that kills the process leaves no excuse behind, so poison still ends.

Keyed by the server's instance id and the job id (ids restart on a server restarted without
a binlog), bounded, oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["Excuses"]


class Excuses:
    def __init__(self, limit: int = 10_000) -> None:
        self._counts: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._limit = limit

    def add(self, server: str, job_id: int) -> None:
        key = (server, job_id)
        self._counts[key] = self._counts.pop(key, 0) + 1
        while len(self._counts) > self._limit:
            self._counts.popitem(last=False)

    def of(self, server: str, job_id: int) -> int:
        return self._counts.get((server, job_id), 0)

    def forget(self, server: str, job_id: int) -> None:
        """The job ended (deleted or buried): its excuses go with it."""
        self._counts.pop((server, job_id), None)

    def __len__(self) -> int:
        return len(self._counts)

    def __bool__(self) -> bool:
        return bool(self._counts)
