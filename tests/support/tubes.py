"""A tube as a test reads it back with greenstalk (an independent client): how many jobs
were ever put into it, and what its jobs' envelopes carry, in the order beanstalkd hands
them out (consumed)."""

from __future__ import annotations

import json

import greenstalk

from tests.support.beanstalkd import BeanstalkdProcess

__all__ = ["payload_ns", "put_count"]


def put_count(server: BeanstalkdProcess, tube: str) -> int:
    """Jobs ever put into ``tube`` (0 when beanstalkd does not know it)."""
    with greenstalk.Client((server.host, server.port)) as client:
        try:
            return int(client.stats_tube(tube)["total-jobs"])
        except greenstalk.NotFoundError:
            return 0


def payload_ns(server: BeanstalkdProcess, tube: str) -> list[int]:
    """The ``payload.n`` of every ready job of ``tube``, in the order they are reserved
    (priority, then id); each job is deleted."""
    found = []
    with greenstalk.Client((server.host, server.port), watch=tube) as client:
        while True:
            try:
                job = client.reserve(timeout=0)
            except greenstalk.TimedOutError:
                return found
            found.append(json.loads(job.body)["payload"]["n"])
            client.delete(job)
