"""beanstalkd's job states as a pure model, command by command, for exchanges that carry
no I/O of their own (tubeworker.batches.ops): a scripted server on which a test runs
several exchanges in any interleaving and makes any of their connections drop between
two round trips.

What it keeps is what batches rely on (docs/beanstalkd.md): a reserved job belongs to the
connection that reserved it (another's delete, release and bury answer NOT_FOUND; its
close makes the job ready); ``kick-job`` moves a buried or delayed job to ready, once;
``reserve-job`` takes a ready, delayed or buried job, not a reserved one; ``stats-tube``
counts by state, urgent meaning ready below priority 1024, and says NOT_FOUND for a tube
with no job and no user; ``peek-delayed`` gives the soonest deadline, ``peek-buried`` the
first buried. Time does not pass: a delayed job stays delayed.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from tubeworker.beanstalk import protocol as p


@dataclass
class ModelJob:
    id: int
    tube: str
    body: bytes
    pri: int
    state: str  # ready | delayed | reserved | buried
    delay: int = 0
    due: tuple[int, int] = (0, 0)  # the order delayed jobs come due in: (delay, event)
    owner: int | None = None
    kicks: int = 0
    buried_at: int = 0


@dataclass
class ModelConnection:
    index: int
    tube: str = "default"
    closed: bool = False


@dataclass
class ModelServer:
    jobs: dict[int, ModelJob] = field(default_factory=dict)
    deletes: dict[str, int] = field(default_factory=dict)  # cmd-delete per tube
    connections: list[ModelConnection] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _events: Any = field(default_factory=lambda: itertools.count(1))

    def connect(self) -> ModelConnection:
        conn = ModelConnection(len(self.connections))
        self.connections.append(conn)
        return conn

    def close(self, conn: ModelConnection) -> None:
        """The connection drops: its reserved jobs are ready again at once."""
        conn.closed = True
        for job in self.jobs.values():
            if job.owner == conn.index:
                job.state, job.owner = "ready", None

    def in_tube(self, tube: str) -> list[ModelJob]:
        return [job for job in self.jobs.values() if job.tube == tube]

    def run(self, conn: ModelConnection, commands: list[p.Command]) -> list[p.Reply]:
        assert not conn.closed, "a closed connection sends nothing"
        return [self._one(conn, command) for command in commands]

    def _owned(self, conn: ModelConnection, job_id: int) -> ModelJob | None:
        job = self.jobs.get(job_id)
        if job is None or job.state != "reserved" or job.owner != conn.index:
            return None
        return job

    def _one(self, conn: ModelConnection, command: p.Command) -> p.Reply:
        event = next(self._events)
        match command:
            case p.Use(tube=tube):
                conn.tube = tube
                return p.Using(tube)
            case p.Put(body=body, priority=pri, delay=delay):
                job = ModelJob(next(self._ids), conn.tube, body, pri, "ready")
                if delay:
                    job.state, job.delay, job.due = "delayed", delay, (delay, event)
                self.jobs[job.id] = job
                return p.Inserted(job.id)
            case p.ReserveJob(id=job_id):
                found = self.jobs.get(job_id)
                if found is None or found.state == "reserved":
                    return p.NotFound()
                found.state, found.owner = "reserved", conn.index
                return p.Reserved(found.id, found.body)
            case p.Release(id=job_id, priority=pri, delay=delay):
                owned = self._owned(conn, job_id)
                if owned is None:
                    return p.NotFound()
                owned.pri, owned.owner = pri, None
                owned.state = "delayed" if delay else "ready"
                owned.delay, owned.due = delay, (delay, event)
                return p.Released()
            case p.Bury(id=job_id, priority=pri):
                owned = self._owned(conn, job_id)
                if owned is None:
                    return p.NotFound()
                owned.pri, owned.owner, owned.state, owned.buried_at = pri, None, "buried", event
                return p.Buried()
            case p.Delete(id=job_id):
                found = self.jobs.get(job_id)
                if found is None or (found.state == "reserved" and found.owner != conn.index):
                    return p.NotFound()
                del self.jobs[job_id]
                self.deletes[found.tube] = self.deletes.get(found.tube, 0) + 1
                return p.Deleted()
            case p.KickJob(id=job_id):
                found = self.jobs.get(job_id)
                if found is None or found.state not in ("buried", "delayed"):
                    return p.NotFound()
                found.state, found.kicks = "ready", found.kicks + 1
                return p.Kicked()
            case p.StatsTube(tube=tube):
                return self._stats_tube(tube)
            case p.StatsJob(id=job_id):
                found = self.jobs.get(job_id)
                return p.NotFound() if found is None else _job_stats(found)
            case p.Peek(id=job_id):
                found = self.jobs.get(job_id)
                return p.NotFound() if found is None else p.Found(found.id, found.body)
            case p.PeekReady() | p.PeekDelayed() | p.PeekBuried():
                return self._peek(conn.tube, command)
        raise AssertionError(f"the model has no {command!r}")

    def _stats_tube(self, tube: str) -> p.Reply:
        jobs = self.in_tube(tube)
        used = any(c.tube == tube and not c.closed for c in self.connections)
        if not jobs and not used:
            return p.NotFound()

        def count(state: str) -> int:
            return sum(1 for job in jobs if job.state == state)

        return p.TubeStats(
            name=tube,
            current_jobs_urgent=sum(1 for j in jobs if j.state == "ready" and j.pri < 1024),
            current_jobs_ready=count("ready"),
            current_jobs_reserved=count("reserved"),
            current_jobs_delayed=count("delayed"),
            current_jobs_buried=count("buried"),
            total_jobs=len(jobs),
            current_using=0,
            current_watching=0,
            current_waiting=0,
            cmd_delete=self.deletes.get(tube, 0),
            cmd_pause_tube=0,
            pause=0,
            pause_time_left=0,
        )

    def _peek(self, tube: str, command: p.Command) -> p.Reply:
        jobs = self.in_tube(tube)
        if isinstance(command, p.PeekReady):
            ready = sorted((j.pri, j.id) for j in jobs if j.state == "ready")
            chosen = self.jobs[ready[0][1]] if ready else None
        elif isinstance(command, p.PeekDelayed):
            delayed = sorted((j.due, j.id) for j in jobs if j.state == "delayed")
            chosen = self.jobs[delayed[0][1]] if delayed else None
        else:
            buried = sorted((j.buried_at, j.id) for j in jobs if j.state == "buried")
            chosen = self.jobs[buried[0][1]] if buried else None
        return p.NotFound() if chosen is None else p.Found(chosen.id, chosen.body)


def _job_stats(job: ModelJob) -> p.JobStats:
    return p.JobStats(
        id=job.id,
        tube=job.tube,
        state=job.state,
        pri=job.pri,
        age=0,
        delay=job.delay,
        ttr=60,
        time_left=0,
        file=0,
        reserves=0,
        timeouts=0,
        releases=0,
        buries=0,
        kicks=job.kicks,
    )


class Runner:
    """One exchange on its own connection, advanced one round trip at a time."""

    def __init__(self, server: ModelServer, exchange: Generator[Any, Any, Any]) -> None:
        self.server = server
        self.conn = server.connect()
        self._exchange = exchange
        self._pending: list[p.Command] | None = next(exchange)
        self.result: Any = None

    @property
    def done(self) -> bool:
        return self._pending is None

    def step(self) -> None:
        """Send one round trip and take its replies."""
        assert self._pending is not None
        replies = self.server.run(self.conn, self._pending)
        try:
            self._pending = self._exchange.send(replies)
        except StopIteration as finished:
            self._pending = None
            self.result = finished.value

    def crash(self) -> None:
        """The process dies here: its connection drops, the rest is never sent."""
        self._pending = None
        self._exchange.close()
        self.server.close(self.conn)

    def finish(self) -> Any:
        while not self.done:
            self.step()
        self.server.close(self.conn)
        return self.result


def run_to_end(server: ModelServer, exchange: Generator[Any, Any, Any]) -> Any:
    return Runner(server, exchange).finish()
