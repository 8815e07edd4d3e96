"""A scripted beanstalkd on Trio memory streams, for testing lanes without a server.

It keeps what a lane relies on: jobs owned by the connection that reserved them and given
back when it closes; replies in command order; a blocked ``reserve-with-timeout N`` that
holds the connection until a job comes or N seconds pass; ``stats-job`` in beanstalkd's
exact layout. Faults are switches: stop answering (a black hole), answer slowly (a drip),
close the connection when a command arrives, answer NOT_FOUND or DEADLINE_SOON.

Every write the lane makes is recorded as one batch of command lines, per connection, with
the (Trio) time it arrived. Runs under MockClock: timeouts cost no real time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
import trio.testing

from tubeworker.beanstalk.client import Address, Client

__all__ = ["Batch", "FakeBeanstalkd", "FakeJob"]


@dataclass
class FakeJob:
    id: int
    body: bytes
    tube: str = "jobs"
    pri: int = 1024
    ttr: int = 60
    state: str = "ready"
    reserves: int = 0
    releases: int = 0
    buries: int = 0
    owner: int | None = None  # the connection that reserved it


@dataclass(frozen=True)
class Batch:
    connection: int
    at: float
    commands: tuple[str, ...]


@dataclass
class _Conn:
    index: int
    stream: trio.abc.Stream
    closed: bool = False
    reserved: set[int] = field(default_factory=set)


class FakeBeanstalkd:
    def __init__(self, nursery: trio.Nursery, *, reply_timeout: float = 10.0) -> None:
        self._nursery = nursery
        self.reply_timeout = reply_timeout
        self.jobs: dict[int, FakeJob] = {}
        self._ids = itertools.count(1)
        self._job_added = trio.Event()
        self.connections: list[_Conn] = []
        self.batches: list[Batch] = []
        # Switches (change them at any time):
        self.silent = False  # read nothing, answer nothing, keep the connection open
        self.drip: float = 0.0  # seconds between reply bytes (a slow link); 0: at once
        self.stats_not_found: set[int] = set()  # stats-job answers NOT_FOUND for these
        self.delete_not_found: set[int] = set()  # delete answers NOT_FOUND for these
        self.deadline_soon = False  # every reserve answers DEADLINE_SOON
        self.close_on: Callable[[str], bool] | None = None  # close when a command matches
        # The binlog has no room: a release with a delay answers OUT_OF_MEMORY and a bury
        # INTERNAL_ERROR, after unlinking the job ("stranded": reserved by nobody).
        self.binlog_full = False

    # ---- the test's side

    def put(self, body: bytes = b"{}", *, ttr: int = 60, pri: int = 1024) -> int:
        job = FakeJob(next(self._ids), body, ttr=ttr, pri=pri)
        self.jobs[job.id] = job
        self._job_added.set()
        self._job_added = trio.Event()
        return job.id

    def state_of(self, job_id: int) -> str:
        job = self.jobs.get(job_id)
        return "deleted" if job is None else job.state

    def commands(self, connection: int | None = None) -> list[str]:
        return [
            c
            for b in self.batches
            if connection is None or b.connection == connection
            for c in b.commands
        ]

    async def connector(self, address: Address | str) -> Client:
        ours, theirs = trio.testing.memory_stream_pair()
        conn = _Conn(len(self.connections), theirs)
        self.connections.append(conn)
        self._nursery.start_soon(self._serve, conn)
        return Client(ours, reply_timeout=self.reply_timeout)

    # ---- the server's side

    async def _serve(self, conn: _Conn) -> None:
        buffer = b""
        stream = conn.stream
        try:
            while not conn.closed:
                while self.silent:
                    await trio.sleep(0.05)
                data = await stream.receive_some(65536)
                if not data:
                    break
                buffer += data
                lines = buffer.split(b"\r\n")
                buffer = lines.pop()
                commands = tuple(line.decode() for line in lines)
                self.batches.append(Batch(conn.index, trio.current_time(), commands))
                for command in commands:
                    if self.close_on is not None and self.close_on(command):
                        return
                    reply = await self._answer(conn, command)
                    while self.silent:
                        await trio.sleep(0.05)
                    await self._send(stream, reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._give_back(conn)
            await trio.aclose_forcefully(stream)

    async def _send(self, stream: trio.abc.Stream, reply: bytes) -> None:
        if not self.drip:
            await stream.send_all(reply)
            return
        for i in range(len(reply)):
            await trio.sleep(self.drip)
            await stream.send_all(reply[i : i + 1])

    def _give_back(self, conn: _Conn) -> None:
        conn.closed = True
        for job_id in conn.reserved:  # beanstalkd gives a closed connection's jobs back
            job = self.jobs.get(job_id)
            if job is not None and job.owner == conn.index:
                job.state, job.owner = "ready", None
        conn.reserved.clear()
        self._job_added.set()
        self._job_added = trio.Event()

    async def _answer(self, conn: _Conn, command: str) -> bytes:
        verb, *args = command.split()
        if verb == "reserve-with-timeout":
            return await self._reserve(conn, int(args[0]))
        if verb in ("watch", "ignore"):
            return b"WATCHING 1\r\n"
        if verb == "list-tube-used":
            return b"USING default\r\n"
        job = self.jobs.get(int(args[0])) if args else None
        if verb == "stats-job":
            if job is None or job.id in self.stats_not_found:
                return b"NOT_FOUND\r\n"
            return _stats(job)
        mine = job is not None and job.owner == conn.index and job.state == "reserved"
        if not mine or job is None:
            return b"NOT_FOUND\r\n"
        return self._outcome(conn, verb, job, args)

    def _outcome(self, conn: _Conn, verb: str, job: FakeJob, command_args: list[str]) -> bytes:
        if verb == "touch":
            return b"TOUCHED\r\n"
        conn.reserved.discard(job.id)
        job.owner = None
        if verb == "delete":
            if job.id in self.delete_not_found:
                return b"NOT_FOUND\r\n"
            del self.jobs[job.id]
            return b"DELETED\r\n"
        if verb == "release":
            if self.binlog_full and int(command_args[2]) > 0:
                job.state = "stranded"
                return b"OUT_OF_MEMORY\r\n"
            job.state, job.releases = "ready", job.releases + 1
            return b"RELEASED\r\n"
        if verb == "bury":
            if self.binlog_full:
                job.state = "stranded"
                return b"INTERNAL_ERROR\r\n"
            job.state, job.buries = "buried", job.buries + 1
            return b"BURIED\r\n"
        return b"UNKNOWN_COMMAND\r\n"

    async def _reserve(self, conn: _Conn, timeout: int) -> bytes:
        if self.deadline_soon:
            return b"DEADLINE_SOON\r\n"
        with trio.move_on_after(timeout):
            while True:
                job = next((j for j in self.jobs.values() if j.state == "ready"), None)
                if job is not None:
                    job.state, job.owner = "reserved", conn.index
                    job.reserves += 1
                    conn.reserved.add(job.id)
                    return b"RESERVED %d %d\r\n%s\r\n" % (job.id, len(job.body), job.body)
                if timeout == 0:
                    break
                await self._job_added.wait()
        return b"TIMED_OUT\r\n"


def _stats(job: FakeJob) -> bytes:
    body = (
        f"---\nid: {job.id}\ntube: {job.tube}\nstate: {job.state}\npri: {job.pri}\nage: 0\n"
        f"delay: 0\nttr: {job.ttr}\ntime-left: {job.ttr - 1}\nfile: 0\n"
        f"reserves: {job.reserves}\ntimeouts: 0\nreleases: {job.releases}\n"
        f"buries: {job.buries}\nkicks: 0\n"
    ).encode()
    return b"OK %d\r\n%s\r\n" % (len(body), body)
