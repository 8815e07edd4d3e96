"""tubeworker.producer against real beanstalkd 1.12 servers: what apps do with it (the
README's examples, run as written), what the server says back (JOB_TOO_BIG with a small
``-z``, DRAINING after SIGUSR1), and failover when a server is down (a closed port).
The broker's state is read back with greenstalk, an independent client."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import greenstalk
import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.docs import block, run_block, run_code
from tests.support.waiting import wait_until_sync
from tubeworker.envelope import decode_envelope
from tubeworker.producer import (
    AsyncProducer,
    JobTooBig,
    NoServerAvailable,
    Producer,
    ServerDraining,
    ServerUnreachable,
    enqueue,
    enqueue_async,
)


def broker(server: BeanstalkdProcess, tube: str = "default") -> greenstalk.Client:
    return greenstalk.Client((server.host, server.port), encoding=None, use=tube, watch=tube)


def job_stats(server: BeanstalkdProcess, job_id: int) -> dict[str, Any]:
    with broker(server) as client:
        return dict(client.stats_job(job_id))


def puts_received(server: BeanstalkdProcess) -> int:
    with broker(server) as client:
        return int(client.stats()["cmd-put"])


def drain(server: BeanstalkdProcess) -> None:
    """SIGUSR1 to the server's PID: from now on every put is answered DRAINING."""
    server.enter_drain_mode()
    with broker(server) as client:
        wait_until_sync(lambda: client.stats()["draining"] == "true", what="drain mode")


@pytest.fixture
def second() -> Iterator[BeanstalkdProcess]:
    """Another beanstalkd, stopped by PID afterwards (the beanstalkd fixture is the first)."""
    with BeanstalkdProcess() as server:
        yield server


def closed_port() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there: connection refused


# --------------------------------------------------------------------------- the docs' blocks


def test_readme_sync_example_in_a_web_app(
    beanstalkd: BeanstalkdProcess, second: BeanstalkdProcess
) -> None:
    servers = [beanstalkd.address, second.address]
    # The block of docs/producing.md, run as written (its `servers` is ours).
    done = run_block(
        "docs/producing.md",
        "from tubeworker.producer import NoServerAvailable, Producer",
        servers=servers,
    )
    on_signup, producer = done["on_signup"], done["producer"]
    job_id = on_signup(42)
    assert job_id is not None
    stats = job_stats(beanstalkd, job_id)
    assert (stats["tube"], stats["state"], stats["delay"], stats["ttr"], stats["pri"]) == (
        "emails",
        "delayed",
        30,
        120,
        1024,
    )
    with broker(beanstalkd, "emails") as client:
        assert decode_envelope(client.peek(job_id).body) == ("send-welcome", {"user_id": 42})
    producer.close()


async def test_readme_async_example_in_trio(beanstalkd: BeanstalkdProcess) -> None:
    # The block of docs/producing.md (it ends with trio.run(main): we are in Trio already).
    code = block("docs/producing.md", "import trio").code
    assert code.rstrip().endswith("trio.run(main)")
    main = run_code(code.rstrip().removesuffix("trio.run(main)"), servers=beanstalkd.address)[
        "main"
    ]
    with trio.fail_after(30):
        await main()
    with broker(beanstalkd, "thumbnails") as client:
        payloads = []
        for _ in range(20):
            job = client.reserve(timeout=0)
            payloads.append(decode_envelope(job.body)[1]["image"])
            client.delete(job)
    assert sorted(payloads) == list(range(20))


def test_one_shot_enqueue_for_scripts(beanstalkd: BeanstalkdProcess) -> None:
    job_id = enqueue("reports", "report.build", {"day": "2024-05-01"}, servers=beanstalkd.address)
    with broker(beanstalkd, "reports") as client:
        assert decode_envelope(client.peek(job_id).body) == ("report.build", {"day": "2024-05-01"})
        # Only ours is left: the one-shot closed its own.
        wait_until_sync(lambda: client.stats()["current-connections"] == 1, what="closed")


async def test_one_shot_enqueue_async(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        job_id = await enqueue_async("reports", "x", [1, 2], servers=[beanstalkd.address])
    with broker(beanstalkd, "reports") as client:
        assert decode_envelope(client.peek(job_id).body) == ("x", [1, 2])


# --------------------------------------------------------------------------- the envelope


PAYLOADS: list[Any] = [
    None,
    0,
    -1.5,
    "",
    "naïve ☃ \u0000 \r\n",
    [],
    {"nested": {"list": [1, "two", None, True], "empty": {}}},
    {"big": "x" * 60_000},
]


def test_every_payload_round_trips_through_the_envelope_parser(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with Producer(beanstalkd.address) as producer:
        ids = [producer.enqueue("round-trip", "echo", payload) for payload in PAYLOADS]
    with broker(beanstalkd, "round-trip") as client:
        got = {job.id: decode_envelope(job.body) for job in (client.reserve(0) for _ in ids)}
    assert [got[i] for i in ids] == [("echo", payload) for payload in PAYLOADS]


# --------------------------------------------------------------------------- JOB_TOO_BIG


async def test_a_body_over_the_servers_max_job_size_is_refused_before_sending() -> None:
    with BeanstalkdProcess(max_job_size=100) as small, trio.fail_after(30):
        producer = Producer(small.address)
        assert producer.put("t", b"x" * 100)  # exactly the limit: stored
        with pytest.raises(JobTooBig, match=r"101 bytes; the server's .* max-job-size is 100"):
            producer.put("t", b"x" * 101)
        with pytest.raises(JobTooBig) as info:
            producer.enqueue("t", "task", {"blob": "y" * 200})
        assert (info.value.limit, info.value.server) == (100, small.address)
        async with AsyncProducer(small.address) as async_producer:
            with pytest.raises(JobTooBig, match="max-job-size is 100"):
                await async_producer.put("t", b"x" * 101)
        producer.close()
        assert puts_received(small) == 1  # only the one that fit was ever sent


def test_an_explicit_max_job_size_is_checked_without_connecting() -> None:
    producer = Producer(closed_port(), max_job_size=10)
    with pytest.raises(JobTooBig, match="the max-job-size is 10"):
        producer.put("t", b"x" * 11)
    assert producer.statistics().connections_opened == 0


# --------------------------------------------------------------------------- DRAINING


def test_a_draining_server_raises_server_draining(beanstalkd: BeanstalkdProcess) -> None:
    with Producer(beanstalkd.address) as producer:
        producer.put("t", b"before")
        drain(beanstalkd)
        with pytest.raises(ServerDraining, match="is draining") as info:
            producer.put("t", b"after")
    assert isinstance(info.value, greenstalk.DrainingError)  # greenstalk's class, too
    with broker(beanstalkd, "t") as client:
        assert client.stats_tube("t")["current-jobs-ready"] == 1


def test_a_draining_server_fails_over_to_the_next(
    beanstalkd: BeanstalkdProcess, second: BeanstalkdProcess
) -> None:
    drain(beanstalkd)
    with Producer([beanstalkd.address, second.address]) as producer:
        job_id = producer.enqueue("t", "task", {"n": 1})
        assert producer.statistics().demoted == (beanstalkd.address,)
    assert job_stats(second, job_id)["tube"] == "t"


async def test_a_draining_server_fails_over_in_trio_too(
    beanstalkd: BeanstalkdProcess, second: BeanstalkdProcess
) -> None:
    drain(beanstalkd)
    with trio.fail_after(30):
        async with AsyncProducer([beanstalkd.address, second.address]) as producer:
            job_id = await producer.enqueue("t", "task")
        async with AsyncProducer(beanstalkd.address) as alone:
            with pytest.raises(ServerDraining, match="is draining"):
                await alone.put("t", b"x")
    assert job_stats(second, job_id)["state"] == "ready"


# --------------------------------------------------------------------------- failover


def test_the_first_server_down_then_the_job_goes_to_the_next(
    beanstalkd: BeanstalkdProcess,
) -> None:
    dead = closed_port()
    with Producer([dead, beanstalkd.address]) as producer:
        first = producer.enqueue("t", "task", {"n": 1})
        second_id = producer.enqueue("t", "task", {"n": 2})
        stats = producer.statistics()
    # The dead server was tried once, then left for last: one failure, not two.
    assert (stats.jobs_put, stats.server_failures, stats.connections_opened) == (2, 1, 1)
    assert stats.demoted == (dead,)
    assert {job_stats(beanstalkd, i)["state"] for i in (first, second_id)} == {"ready"}


async def test_the_first_server_down_in_trio_then_the_next(beanstalkd: BeanstalkdProcess) -> None:
    with trio.fail_after(30):
        async with AsyncProducer([closed_port(), beanstalkd.address]) as producer:
            job_id = await producer.enqueue("t", "task")
            assert producer.statistics().server_failures == 1
    assert job_stats(beanstalkd, job_id)["tube"] == "t"


async def test_every_server_down_then_unreachable_naming_each() -> None:
    dead = [closed_port(), closed_port()]
    with pytest.raises(ServerUnreachable) as info:
        Producer(dead).enqueue("t", "task")
    message = str(info.value)
    assert all(f"{address} cannot be reached (connection refused)" in message for address in dead)
    assert isinstance(info.value, NoServerAvailable)
    assert isinstance(info.value, ConnectionError)
    with trio.fail_after(30), pytest.raises(ServerUnreachable, match="connection refused"):
        await AsyncProducer(dead).enqueue("t", "task")


def test_a_restarted_server_is_reconnected_to(beanstalkd: BeanstalkdProcess) -> None:
    with Producer(beanstalkd.address) as producer:
        producer.put("t", b"1")
        beanstalkd.restart()  # SIGKILL and start on the same port: the kept connection is dead
        job_id = producer.put("t", b"2")
        stats = producer.statistics()
    assert (stats.connections_opened, stats.server_failures) == (2, 0)
    assert job_stats(beanstalkd, job_id)["tube"] == "t"


def test_after_a_fork_the_child_opens_its_own_connection(beanstalkd: BeanstalkdProcess) -> None:
    producer = Producer(beanstalkd.address)
    producer.put("t", b"parent")
    with warnings.catch_warnings():  # Python 3.12 warns about forking a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: put on a connection of its own, exit with what it saw
        code = 1
        try:
            producer.put("t", b"child")
            code = 0 if producer.statistics().connections_opened == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)  # the child is ours: reaped here
    assert os.waitstatus_to_exitcode(status) == 0
    producer.put("t", b"parent again")  # the parent's connection is still good
    assert producer.statistics().connections_opened == 1
    producer.close()
    with broker(beanstalkd, "t") as client:
        bodies = sorted(client.reserve(0).body for _ in range(3))
    assert bodies == [b"child", b"parent", b"parent again"]


def test_readme_errors_example(beanstalkd: BeanstalkdProcess) -> None:
    done = run_block("docs/producing.md", "from tubeworker.producer import (")
    queue_report, Producer = done["queue_report"], done["Producer"]
    dead = closed_port()
    with Producer([dead, beanstalkd.address]) as both, Producer(dead) as down:
        assert queue_report(both, "2024-05-01") == "queued"
        assert queue_report(down, "2024-05-01") == f"{dead} cannot be reached (connection refused)"
    with Producer(beanstalkd.address) as producer:
        assert queue_report(producer, {"any": "JSON"}) == "queued"  # type: ignore[arg-type]
        assert queue_report(producer, {1, 2}).startswith(  # type: ignore[arg-type]
            "not sent: the payload of task 'report.build' is not JSON"
        )
        drain(beanstalkd)
        assert queue_report(producer, "2024-05-02") == "the queue is closing: try again in a minute"
