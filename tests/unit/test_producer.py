"""tubeworker.producer without a server: what is checked before sending, the envelope, the
errors, the failover order, and both producers against scripted servers (a fake connection
for the blocking one, Trio memory streams for the async one). Also job.put()'s envelope
form and the plumbing that gives compute-profile handlers job.put()."""

from __future__ import annotations

import math
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import greenstalk
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.docs import run_block
from tubeworker import Job
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, parse_address
from tubeworker.config import Config, PoolConfig
from tubeworker.envelope import decode_envelope, encode_envelope
from tubeworker.errors import ConfigError, ConnectionLostError, LocalProtocolError
from tubeworker.job import JobRecord, services_for_records
from tubeworker.producer import (
    AsyncProducer,
    InvalidJob,
    JobBuried,
    JobTooBig,
    NoServerAvailable,
    Producer,
    ProducerError,
    ServerDraining,
    ServerFailure,
    ServerHealth,
    ServerOutOfMemory,
    ServerUnreachable,
    make_envelope,
    parse_servers,
    prepare_put,
    to_seconds,
)
from tubeworker.runtime import processes
from tubeworker.runtime.invoke import run_in_process
from tubeworker.runtime.services import put_servers

A = parse_address("10.0.0.1:11300")
B = parse_address("10.0.0.2:11300")
C = parse_address("10.0.0.3:11300")

NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-+/;.$_()"


# --------------------------------------------------------------------------- tube names


@settings(max_examples=300, deadline=None)
@given(
    first=st.sampled_from(NAME_CHARS.replace("-", "")),
    rest=st.text(alphabet=NAME_CHARS, max_size=199),
)
def test_given_a_name_of_beanstalkds_characters_then_it_is_a_tube(first: str, rest: str) -> None:
    assert prepare_put(first + rest, b"x").tube == first + rest


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=1, max_size=60).filter(lambda s: any(c not in NAME_CHARS for c in s)))
def test_given_any_other_character_then_invalid_and_nothing_sent(name: str) -> None:
    with pytest.raises(InvalidJob, match="tube"):
        prepare_put(name, b"x")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "1 to 200 bytes"),
        ("a" * 201, "1 to 200 bytes"),
        ("-starts-with-hyphen", "must not start with '-'"),
        ("has space", "only A-Z"),
        ("glob*", "only A-Z"),
        ("née", "only A-Z"),
    ],
)
def test_given_a_bad_tube_name_then_the_error_says_why(name: str, why: str) -> None:
    with pytest.raises(InvalidJob, match=why):
        prepare_put(name, b"x")
    assert prepare_put("a" * 200, b"x").tube == "a" * 200  # the longest legal one


def test_given_a_tube_that_is_not_a_str_then_invalid() -> None:
    with pytest.raises(InvalidJob, match="str"):
        prepare_put(b"emails", b"x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- envelope


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(task=st.text(min_size=1), payload=JSON)
def test_given_any_json_payload_then_the_envelope_round_trips_through_the_parser(
    task: str, payload: Any
) -> None:
    body = make_envelope(task, payload)
    assert body == encode_envelope(task, payload)  # the one format tubeworker writes
    assert decode_envelope(body) == (task, payload)


@pytest.mark.parametrize(
    "payload",
    [b"bytes", {1, 2}, float("nan"), {"x": float("inf")}, object()],
    ids=["bytes", "set", "nan", "infinity", "object"],
)
def test_given_a_payload_that_is_not_json_then_invalid(payload: Any) -> None:
    with pytest.raises(InvalidJob, match="not JSON"):
        make_envelope("send", payload)


def test_given_a_circular_payload_then_invalid() -> None:
    payload: list[Any] = []
    payload.append(payload)
    with pytest.raises(InvalidJob, match="not JSON"):
        make_envelope("send", payload)


@pytest.mark.parametrize("task", ["", None, 7])
def test_given_no_task_name_then_invalid(task: Any) -> None:
    with pytest.raises(InvalidJob, match="task must be a non-empty string"):
        make_envelope(task, {})


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0),
        (7, 7),
        (1.5, 2),
        (0.001, 1),
        ("30", 30),
        ("30s", 30),
        ("250ms", 1),
        ("1.5s", 2),
        ("5m", 300),
        ("1h", 3600),
        (timedelta(minutes=2), 120),
        (timedelta(seconds=1, microseconds=1), 2),
        (2**32 - 1, 2**32 - 1),
    ],
)
def test_given_a_delay_then_whole_seconds_rounded_up(value: Any, seconds: int) -> None:
    assert to_seconds(value, "delay") == seconds
    assert prepare_put("t", b"", delay=value).delay == seconds


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1, "out of range"),
        (-0.5, "out of range"),
        (2**32, "too long"),
        ("4294967296", "too long"),
        ("5x", "bad delay '5x'"),
        ("-1s", "bad delay '-1s'"),
        ("", "bad delay"),
        (math.inf, "finite"),
        (math.nan, "finite"),
        (True, "must be seconds"),
        (None, "must be seconds"),
        ("9" * 5000, "bad delay"),
    ],
)
def test_given_a_bad_delay_then_invalid(value: Any, match: str) -> None:
    with pytest.raises(InvalidJob, match=match):
        prepare_put("t", b"", delay=value)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 2**32 - 1), unit=st.sampled_from(["", "s"]))
def test_given_whole_seconds_in_any_form_then_the_same_number(n: int, unit: str) -> None:
    assert to_seconds(n, "delay") == to_seconds(f"{n}{unit}", "delay") == n


def test_given_a_ttr_below_one_second_after_rounding_then_invalid() -> None:
    with pytest.raises(InvalidJob, match="ttr 0 is out of range: 1 to"):
        prepare_put("t", b"", ttr=0)
    assert prepare_put("t", b"", ttr="0.5s").ttr == 1
    assert prepare_put("t", b"").ttr == 60  # the default


@pytest.mark.parametrize(
    ("priority", "match"),
    [(-1, "out of range"), (2**32, "out of range"), (True, "int"), (1.0, "int"), ("1", "int")],
)
def test_given_a_bad_priority_then_invalid(priority: Any, match: str) -> None:
    with pytest.raises(InvalidJob, match=match):
        prepare_put("t", b"", priority=priority)
    assert prepare_put("t", b"", priority=0).priority == 0
    assert prepare_put("t", b"", priority=2**32 - 1).priority == 2**32 - 1


def test_given_a_body_then_bytes_as_given_and_str_as_utf8() -> None:
    assert prepare_put("t", "héllo").body == "héllo".encode()
    assert prepare_put("t", bytearray(b"\x00\r\n")).body == b"\x00\r\n"
    with pytest.raises(InvalidJob, match="body must be bytes or str"):
        prepare_put("t", {"a": 1})  # type: ignore[arg-type]


def test_given_a_max_job_size_then_a_larger_body_is_refused_before_connecting() -> None:
    servers = {A: FakeServer()}
    producer = Producer([A], max_job_size=10, connector=connector_for(servers))
    producer.put("t", b"x" * 10)
    with pytest.raises(JobTooBig, match="the body is 11 bytes; the max-job-size is 10") as info:
        producer.put("t", b"x" * 11)
    assert (info.value.size, info.value.limit, info.value.server) == (11, 10, None)
    assert servers[A].puts == 1  # the second one was never sent


# --------------------------------------------------------------------------- servers


def test_given_servers_in_any_form_then_addresses_in_order_without_repeats() -> None:
    assert parse_servers("10.0.0.1:11300, 10.0.0.2:11300,,") == (A, B)
    assert parse_servers(["10.0.0.2:11300", A, "10.0.0.2:11300"]) == (B, A)
    assert parse_servers(A) == (A,)
    assert parse_servers(None, env={"TUBEWORKER_SERVERS": "10.0.0.3:11300"}) == (C,)
    assert parse_servers(None, env={}) == (Address("127.0.0.1", 11300),)
    assert parse_servers("unix:/run/beanstalkd.sock") == (
        Address(unix_path="/run/beanstalkd.sock"),
    )


def test_given_a_bad_server_then_a_config_error_naming_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"\$TUBEWORKER_SERVERS: servers: .*port"):
        parse_servers(None, env={"TUBEWORKER_SERVERS": "host:99999"})
    with pytest.raises(ConfigError, match="no beanstalkd server"):
        parse_servers([])


def test_given_the_daemons_config_then_puts_may_go_to_its_servers_then_pools_own() -> None:
    pool = PoolConfig(name="p", tubes=("t",), concurrency=1, servers=(C, A))
    config = Config(pools=(pool,), servers=(A, B))
    assert put_servers(config) == (A, B, C)


# --------------------------------------------------------------------------- failover order


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_given_a_preferred_server_then_it_is_tried_first_then_the_rest_in_order() -> None:
    health = ServerHealth(5.0, FakeClock())
    assert health.order([A, B, C]) == [A, B, C]
    assert health.order([A, B, C], prefer=B) == [B, A, C]
    assert health.order([A, B], prefer=C) == [C, A, B]  # a pool's own server, not listed


def test_given_a_server_that_failed_then_it_is_tried_last_until_its_time_is_up() -> None:
    clock = FakeClock()
    health = ServerHealth(5.0, clock)
    health.failed(A)
    assert health.order([A, B, C]) == [B, C, A]
    assert health.order([A, B, C], prefer=A) == [B, C, A]
    clock.now += 4.9
    assert health.demoted() == {A}
    clock.now += 0.1
    assert health.order([A, B, C], prefer=A) == [A, B, C]
    health.failed(B)
    health.succeeded(B)
    assert health.order([A, B, C]) == [A, B, C]


# --------------------------------------------------------------------------- errors


def test_given_the_error_tree_then_each_is_also_the_greenstalk_error_it_means() -> None:
    assert issubclass(ProducerError, greenstalk.Error)
    assert issubclass(InvalidJob, ValueError)
    assert issubclass(InvalidJob, LocalProtocolError)  # admin commands: exit 65
    assert issubclass(JobTooBig, InvalidJob)
    assert issubclass(JobTooBig, greenstalk.JobTooBigError)
    assert issubclass(ServerDraining, NoServerAvailable)
    assert issubclass(ServerDraining, greenstalk.DrainingError)
    assert issubclass(ServerOutOfMemory, greenstalk.OutOfMemoryError)
    assert issubclass(ServerUnreachable, ConnectionLostError)
    assert issubclass(ServerUnreachable, ConnectionError)
    assert issubclass(JobBuried, greenstalk.BuriedError)
    assert not issubclass(JobBuried, NoServerAvailable)  # stored: never put again elsewhere


@pytest.mark.parametrize(
    "error",
    [
        JobTooBig("too big", 70_000, 65_535, "10.0.0.1:11300"),
        ServerUnreachable(
            "job not stored: x", (ServerFailure("x", ServerUnreachable, "cannot be reached"),)
        ),
        ServerDraining("job not stored: y", (ServerFailure("y", ServerDraining, "draining"),)),
        JobBuried("buried", 7, "10.0.0.1:11300"),
        InvalidJob("bad tube"),
    ],
)
def test_given_an_error_when_pickled_then_it_comes_back_whole(error: Exception) -> None:
    # Compute-profile handlers raise them in worker processes: they cross back pickled.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


# --------------------------------------------------------------------------- scripted servers


@dataclass
class FakeServer:
    """A beanstalkd's behaviour, for FakeConnection: what it answers, whether it is up."""

    put_reply: p.Reply = field(default_factory=lambda: p.Inserted(1))
    use_reply: p.Reply | None = None
    down: bool = False
    drop_next: bool = False  # the next exchange finds the kept connection dead
    max_job_size: int = 65_535
    connections: int = 0
    writes: list[tuple[p.Command, ...]] = field(default_factory=list)

    @property
    def puts(self) -> int:
        return sum(isinstance(c, p.Put) for write in self.writes for c in write)


class FakeConnection:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.tube = "default"
        self.max_job_size: int | None = server.max_job_size
        self.closed = False

    @property
    def usable(self) -> bool:
        return not self.closed

    def exchange(self, commands: Any) -> list[p.Reply]:
        assert not self.closed
        if self.server.drop_next:
            self.server.drop_next = False
            self.closed = True
            raise ConnectionLostError("connection lost: [Errno 104] Connection reset by peer")
        self.server.writes.append(tuple(commands))
        replies: list[p.Reply] = []
        for command in commands:
            if isinstance(command, p.Use):
                replies.append(self.server.use_reply or p.Using(command.tube))
            else:
                assert isinstance(command, p.Put)
                replies.append(self.server.put_reply)
        return replies

    def close(self) -> None:
        self.closed = True


def connector_for(servers: dict[Address, FakeServer]) -> Callable[[Address], FakeConnection]:
    def connect(address: Address) -> FakeConnection:
        server = servers[address]
        if server.down:
            raise ConnectionLostError(
                f"cannot connect to beanstalkd at {address}"
            ) from ConnectionRefusedError(111, "Connection refused")
        server.connections += 1
        return FakeConnection(server)

    return connect


def test_given_the_first_server_down_then_the_job_goes_to_the_next() -> None:
    servers = {A: FakeServer(down=True), B: FakeServer(put_reply=p.Inserted(42))}
    producer = Producer([A, B], connector=connector_for(servers), clock=FakeClock())
    assert producer.enqueue("emails", "send", {"to": 1}) == 42
    assert servers[B].writes == [
        (p.Use("emails"),),  # alone: were `use` to fail, a pipelined put would land elsewhere
        (p.Put(encode_envelope("send", {"to": 1}), 1024, 0, 60),),
    ]
    stats = producer.statistics()
    assert (stats.jobs_put, stats.server_failures, stats.demoted) == (1, 1, ("10.0.0.1:11300",))
    # The next put does not try the dead server first (no connect timeout to wait out).
    servers[A].down = False
    producer.enqueue("emails", "send")
    assert servers[A].connections == 0
    assert producer.statistics().connections_opened == 1


def test_given_on_failure_then_called_for_each_server_that_did_not_store() -> None:
    servers = {A: FakeServer(down=True), B: FakeServer(put_reply=p.Draining()), C: FakeServer()}
    seen: list[ServerFailure] = []
    producer = Producer([A, B, C], connector=connector_for(servers), on_failure=seen.append)
    producer.put("t", b"x")
    assert [(f.server, f.kind) for f in seen] == [
        ("10.0.0.1:11300", ServerUnreachable),
        ("10.0.0.2:11300", ServerDraining),
    ]


def test_given_one_tube_then_use_is_sent_once_per_connection() -> None:
    servers = {A: FakeServer()}
    producer = Producer([A], connector=connector_for(servers))
    producer.put("a", b"1")
    producer.put("a", b"2")
    producer.put("b", b"3")
    assert [type(c).__name__ for write in servers[A].writes for c in write] == [
        "Use",
        "Put",
        "Put",
        "Use",
        "Put",
    ]


@pytest.mark.parametrize(
    ("reply", "kind", "words"),
    [
        (p.Draining(), ServerDraining, r"is draining \(it takes no new jobs"),
        (p.OutOfMemory(), ServerOutOfMemory, r"is out of memory \(OUT_OF_MEMORY"),
        (p.InternalError(), NoServerAvailable, "answered INTERNAL_ERROR"),
    ],
)
def test_given_a_server_that_does_not_store_then_the_next_does(
    reply: p.Reply, kind: type[NoServerAvailable], words: str
) -> None:
    servers = {A: FakeServer(put_reply=reply), B: FakeServer(put_reply=p.Inserted(9))}
    producer = Producer([A, B], connector=connector_for(servers))
    assert producer.put("t", b"x") == 9
    # Alone, it says why, with the error class that means it.
    lone = Producer([A], connector=connector_for(servers))
    with pytest.raises(kind, match=words) as info:
        lone.put("t", b"x")
    assert type(info.value) is kind
    assert info.value.failures == (
        ServerFailure("10.0.0.1:11300", kind, info.value.failures[0].reason),
    )


def test_given_every_server_failing_for_different_reasons_then_no_server_available() -> None:
    servers = {A: FakeServer(put_reply=p.Draining()), B: FakeServer(down=True)}
    producer = Producer([A, B], connector=connector_for(servers))
    with pytest.raises(NoServerAvailable) as info:
        producer.put("t", b"x")
    assert type(info.value) is NoServerAvailable
    assert str(info.value) == (
        "job not stored: 10.0.0.1:11300 is draining (it takes no new jobs until it is "
        "restarted); 10.0.0.2:11300 cannot be reached (connection refused)"
    )
    assert [f.kind for f in info.value.failures] == [ServerDraining, ServerUnreachable]


def test_given_every_server_down_then_unreachable_a_connection_error() -> None:
    servers = {A: FakeServer(down=True), B: FakeServer(down=True)}
    with pytest.raises(ServerUnreachable, match=r"10\.0\.0\.2:11300 cannot be reached"):
        Producer([A, B], connector=connector_for(servers)).put("t", b"x")


def test_given_buried_on_put_then_job_buried_and_never_put_elsewhere() -> None:
    servers = {A: FakeServer(put_reply=p.Buried(17)), B: FakeServer()}
    producer = Producer([A, B], connector=connector_for(servers))
    with pytest.raises(JobBuried, match="stored job 17 in tube 't' but buried it") as info:
        producer.put("t", b"x")
    assert (info.value.id, info.value.server) == (17, "10.0.0.1:11300")
    assert servers[B].connections == 0


def test_given_job_too_big_from_the_server_then_not_put_elsewhere() -> None:
    servers = {A: FakeServer(put_reply=p.JobTooBig()), B: FakeServer()}
    with pytest.raises(JobTooBig, match="answered JOB_TOO_BIG to a body of 3 bytes"):
        Producer([A, B], connector=connector_for(servers)).put("t", b"abc")
    assert servers[B].connections == 0


def test_given_the_servers_own_limit_then_a_larger_body_is_never_sent() -> None:
    servers = {A: FakeServer(max_job_size=2), B: FakeServer()}
    with pytest.raises(JobTooBig, match=r"the server's \(10.0.0.1:11300\) max-job-size is 2"):
        Producer([A, B], connector=connector_for(servers)).put("t", b"abc")
    assert servers[A].writes == []


def test_given_a_kept_connection_gone_stale_then_one_new_connection_and_the_put_goes_on() -> None:
    servers = {A: FakeServer(), B: FakeServer()}
    producer = Producer([A, B], connector=connector_for(servers))
    producer.put("t", b"1")
    servers[A].drop_next = True  # say, beanstalkd restarted meanwhile
    producer.put("t", b"2")
    assert servers[A].connections == 2
    assert servers[A].puts == 2
    assert servers[B].connections == 0
    assert producer.statistics().server_failures == 0


def test_given_a_new_connection_lost_mid_put_then_the_next_server() -> None:
    servers = {A: FakeServer(drop_next=True), B: FakeServer(put_reply=p.Inserted(5))}
    producer = Producer([A, B], connector=connector_for(servers))
    assert producer.put("t", b"x") == 5
    assert producer.statistics().demoted == ("10.0.0.1:11300",)


def test_given_a_reply_a_put_cannot_have_then_producer_error_and_the_connection_closed() -> None:
    servers = {A: FakeServer(put_reply=p.ExpectedCrlf())}
    producer = Producer([A], connector=connector_for(servers))
    with pytest.raises(ProducerError, match="answered put with ExpectedCrlf"):
        producer.put("t", b"x")
    servers[A].put_reply = p.Inserted(3)
    assert producer.put("t", b"x") == 3
    assert servers[A].connections == 2


def test_given_use_out_of_memory_then_the_put_is_not_sent_there() -> None:
    servers = {A: FakeServer(use_reply=p.OutOfMemory()), B: FakeServer(put_reply=p.Inserted(4))}
    assert Producer([A, B], connector=connector_for(servers)).put("t", b"x") == 4
    assert servers[A].puts == 0


def test_given_prefer_then_that_server_first() -> None:
    servers = {A: FakeServer(put_reply=p.Inserted(1)), B: FakeServer(put_reply=p.Inserted(2))}
    producer = Producer([A, B], connector=connector_for(servers))
    assert producer.put("t", b"x", prefer="10.0.0.2:11300") == 2
    assert producer.put("t", b"x") == 1


def test_given_close_then_connections_closed_and_a_later_put_reconnects() -> None:
    servers = {A: FakeServer()}
    with Producer([A], connector=connector_for(servers)) as producer:
        producer.put("t", b"x")
        producer.close()
        producer.put("t", b"x")
    assert servers[A].connections == 2


# --------------------------------------------------------------------------- Trio


@dataclass
class ScriptedServer:
    """Answers `use` with USING and each put with the next of ``puts`` (then INSERTED n)."""

    puts: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    next_id: int = 1

    async def serve(self, stream: trio.abc.Stream) -> None:
        buffer = b""
        while True:
            while b"\r\n" not in buffer:
                data = await stream.receive_some()
                if not data:
                    return
                buffer += data
            line, buffer = buffer.split(b"\r\n", 1)
            words = line.split()
            if words[0] == b"use":
                await stream.send_all(b"USING " + words[1] + b"\r\n")
                continue
            assert words[0] == b"put"
            size = int(words[4])
            while len(buffer) < size + 2:
                buffer += await stream.receive_some()
            self.bodies.append(buffer[:size])
            buffer = buffer[size + 2 :]
            reply = self.puts.pop(0) if self.puts else b"INSERTED %d\r\n" % self.next_id
            self.next_id += 1
            await stream.send_all(reply)


@asynccontextmanager
async def scripted(
    servers: dict[Address, ScriptedServer | None],
) -> AsyncIterator[Callable[[Address], Any]]:
    """A connector to these servers (None: down) over memory streams."""
    async with trio.open_nursery() as nursery:

        async def connect(address: Address) -> Client:
            server = servers[address]
            if server is None:
                raise ConnectionLostError(f"cannot connect to beanstalkd at {address}")
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve, theirs)
            return Client(ours)

        yield connect
        nursery.cancel_scope.cancel()


async def test_given_trio_code_then_the_async_producer_fails_over_the_same_way() -> None:
    a = ScriptedServer(puts=[b"DRAINING\r\n"])
    b = ScriptedServer()
    async with scripted({A: a, B: b, C: None}) as connect:
        producer = AsyncProducer([C, A, B], connector=connect, clock=FakeClock())
        assert await producer.enqueue("emails", "send", {"to": 1}, delay="1m") == 1
        assert b.bodies == [encode_envelope("send", {"to": 1})]
        stats = producer.statistics()
        assert (stats.jobs_put, stats.server_failures) == (1, 2)
        assert stats.demoted == ("10.0.0.1:11300", "10.0.0.3:11300")
        await producer.aclose()


async def test_given_buried_on_put_in_trio_then_job_buried() -> None:
    a = ScriptedServer(puts=[b"BURIED 8\r\n"])
    async with (
        scripted({A: a, B: ScriptedServer()}) as connect,
        AsyncProducer([A, B], connector=connect) as producer,
    ):
        with pytest.raises(JobBuried) as info:
            await producer.put("t", b"x")
        assert info.value.id == 8
        assert await producer.put("t", b"y", prefer=B) == 1


async def test_given_every_server_draining_in_trio_then_server_draining() -> None:
    a = ScriptedServer(puts=[b"DRAINING\r\n"])
    async with scripted({A: a}) as connect:
        with pytest.raises(ServerDraining, match=r"10\.0\.0\.1:11300 is draining"):
            await AsyncProducer([A], connector=connect).put("t", b"x")


# --------------------------------------------------------------------------- job.put


class RecordingServices:
    """A lane's side of a job (async put), recorded."""

    def __init__(self) -> None:
        self.puts: list[tuple[bytes, str, int, int, int]] = []

    async def touch(self) -> None:
        raise AssertionError("not used")

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        await trio.lowlevel.checkpoint()
        self.puts.append((body, tube, priority, delay, ttr))
        return len(self.puts)

    @property
    def http(self) -> Any:
        raise AssertionError("not used")

    def api(self, name: str) -> Any:
        raise AssertionError("not used")


def make_job(services: Any = None) -> Job:
    return Job(
        id=1,
        tube="orders",
        body=b"{}",
        priority=1024,
        ttr=60,
        attempt=1,
        max_attempts=3,
        task="order.placed",
        payload={},
        services=services,
    )


async def test_given_task_and_payload_then_job_put_sends_the_envelope() -> None:
    services = RecordingServices()
    job = make_job(services)
    assert await job.put(task="invoice.send", payload={"order": 7}, tube="invoices") == 1
    assert await job.put({"raw": True}) == 2  # the old forms keep working
    assert await job.put(b"raw", priority=3, delay=4, ttr=5) == 3
    assert services.puts == [
        (encode_envelope("invoice.send", {"order": 7}), "invoices", 1024, 0, 60),
        (b'{"raw":true}', "orders", 1024, 0, 60),
        (b"raw", "orders", 3, 4, 5),
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"body": b"x", "task": "t"}, "not both"),
        ({"payload": {"a": 1}}, "payload= needs task="),
        ({}, "needs a body"),
        ({"task": ""}, "task must be a non-empty string"),
        ({"task": "t", "payload": {1, 2}}, "not JSON"),
    ],
)
async def test_given_a_bad_job_put_then_invalid_and_nothing_sent(
    kwargs: dict[str, Any], match: str
) -> None:
    services = RecordingServices()
    with pytest.raises(InvalidJob, match=match):
        await make_job(services).put(**kwargs)
    with pytest.raises(InvalidJob, match=match):
        make_job(services).put_sync(**kwargs)
    assert services.puts == []


async def test_given_a_sync_handler_in_a_thread_then_put_sync_goes_through_the_lane() -> None:
    services = RecordingServices()
    job = make_job(services)
    put = partial(job.put_sync, task="t", payload=[1], delay=2)
    assert await trio.to_thread.run_sync(put) == 1
    assert services.puts == [(encode_envelope("t", [1]), "orders", 1024, 2, 60)]


async def test_given_put_sync_on_the_event_loop_then_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"await job\.put\(\)"):
        make_job(RecordingServices()).put_sync(b"x")


def test_given_a_job_built_by_hand_then_put_sync_says_there_is_no_connection() -> None:
    with pytest.raises(RuntimeError, match=r"job\.put_sync\(\) is not available"):
        make_job().put_sync(b"x")


def test_given_services_for_records_then_jobs_rebuilt_inside_get_them() -> None:
    record = make_job().record
    services = RecordingServices()
    with services_for_records(services):
        assert Job.from_record(record)._services is services
    assert Job.from_record(record)._services is None


# --------------------------------------------------------------------------- compute workers


def handler_that_puts(job: Job) -> None:
    """A compute-profile handler (sync): runs in a worker process."""
    job.put_sync(task="thumbnail.done", payload={"of": job.id}, tube="done")


class RecordingContext:
    """trio-parallel's worker context, run in this process: what crosses, pickled."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def run_sync(self, func: Callable[..., Any], *args: Any, **options: Any) -> Any:
        self.calls.append((func, *args))
        func, *args = pickle.loads(pickle.dumps((func, *args)))
        return func(*args)


async def test_given_the_daemons_route_then_compute_handlers_put_through_their_process() -> None:
    route = processes.PutRoute((A, B), connect_timeout=1.0, reply_timeout=2.0)
    servers = {A: FakeServer(down=True), B: FakeServer(put_reply=p.Inserted(77))}
    # The producer the worker process would make on first use, with scripted servers.
    processes._producers[route] = Producer(route.servers, connector=connector_for(servers))
    context = RecordingContext()
    compute = processes.Compute(context, route)
    record = JobRecord(
        id=5, tube="images", body=b"{}", priority=1, ttr=60, attempt=1, max_attempts=3
    )
    try:
        await compute.run(run_in_process, handler_that_puts, record, limiter=None)
    finally:
        del processes._producers[route]
    assert context.calls == [
        (processes._run_with_puts, route, run_in_process, handler_that_puts, record)
    ]
    assert servers[B].writes[-1] == (
        p.Put(encode_envelope("thumbnail.done", {"of": 5}), 1024, 0, 60),
    )


async def test_given_no_route_then_compute_runs_as_before_and_put_says_so() -> None:
    context = RecordingContext()
    record = make_job().record
    with pytest.raises(RuntimeError, match=r"job\.put_sync\(\) is not available"):
        await processes.Compute(context).run(
            run_in_process, handler_that_puts, record, limiter=None
        )
    assert context.calls == [(run_in_process, handler_that_puts, record)]


def test_given_a_worker_process_then_touch_and_http_say_they_stay_in_the_daemon() -> None:
    services = processes._WorkerServices(Producer([A], connector=connector_for({A: FakeServer()})))
    with services_for_records(services):
        job = Job.from_record(make_job().record)
    with pytest.raises(RuntimeError, match=r"job\.http\(\) is not available in a compute"):
        _ = job.http
    assert job.put_sync(b"x") == 1
    assert trio.run(partial(job.put, task="t")) == 1  # a handler's own trio.run


# --------------------------------------------------------------------------- the docs' blocks


async def test_readme_handler_examples() -> None:
    # The block of docs/producing.md, run as written.
    done = run_block("docs/producing.md", "from tubeworker import Job, handler")
    place_order: Callable[[Job], Awaitable[None]] = done["place_order"]  # type: ignore[assignment]
    render_thumbnail: Callable[[Job], None] = done["render_thumbnail"]  # type: ignore[assignment]
    lane = RecordingServices()
    order = make_job(lane)
    order.payload = {"order_id": 12}
    await place_order(order)
    assert lane.puts == [
        (encode_envelope("invoice.send", {"order_id": 12}), "invoices", 1024, 0, 60)
    ]
    servers = {A: FakeServer()}
    worker = processes._WorkerServices(Producer([A], connector=connector_for(servers)))
    with services_for_records(worker):
        image = Job.from_record(JobRecord(5, "images", b"", 1024, 60, 1, 3, "t", {"image": 9}))
    render_thumbnail(image)
    assert servers[A].writes[-1] == (
        p.Put(encode_envelope("thumbnail.ready", {"image": 9}), 1024, 0, 60),
    )


async def test_given_tasks_waiting_on_a_server_that_turns_out_down_then_they_fail_over_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A black-holed server: its connect takes the whole connect timeout. Tasks queued
    # behind that connect must not each wait out one of their own.
    connects: list[Address] = []

    async def connect(address: Address) -> Client:
        connects.append(address)
        if address == A:
            await trio.sleep(5)  # the connect timeout, then:
            raise ConnectionLostError(f"beanstalkd at {address} did not answer within 5 s")
        return await fallback(address)

    b = ScriptedServer()
    async with scripted({B: b}) as fallback:
        producer = AsyncProducer([A, B], connector=connect, clock=trio.current_time)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(producer.put, "t", b"%d" % n)
        assert trio.current_time() - start == pytest.approx(5)  # one connect timeout, not ten
        assert connects.count(A) == 1
        assert len(b.bodies) == 10
        await producer.aclose()
