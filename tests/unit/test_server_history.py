"""The Servers view's history: a point per server per sample, a gap while it is down."""

from __future__ import annotations

from dataclasses import replace

from tubeworker.beanstalk import protocol as p
from tubeworker.control.poller import ServerSeen
from tubeworker.control.server_history import ServerHistory


def stats(connections: int, cpu: float, ready: int = 3) -> p.ServerStats:
    fields = {name: 0 for name in p.ServerStats.__dataclass_fields__}
    fields.update(version="1.12", hostname="h", id="i", os="linux", platform="x86_64")
    base = p.ServerStats(**fields)  # type: ignore[arg-type]
    return replace(
        base,
        current_connections=connections,
        current_jobs_ready=ready,
        current_jobs_buried=1,
        rusage_utime=cpu,
        rusage_stime=0.0,
    )


def test_given_samples_then_points_gaps_and_cpu_per_second() -> None:
    history = ServerHistory(sample_every=5)
    history.sample({"a": ServerSeen(stats(4, 1.0), up=True)}, now=100.0)
    history.sample({"a": ServerSeen(stats(6, 2.0), up=True)}, now=110.0)
    history.sample({"a": ServerSeen(stats(6, 2.0), up=False, error="refused")}, now=120.0)
    history.sample({"a": ServerSeen(stats(2, 0.1), up=True)}, now=130.0)  # restarted
    described = history.describe("a")
    assert described["at"] == [100.0, 110.0, 120.0, 130.0]
    assert described["connections"] == [4.0, 6.0, None, 2.0]
    assert described["jobs"] == [4.0, 4.0, None, 4.0]
    assert described["cpu"] == [None, 0.1, None, None]  # no rate across a restart
    assert history.describe("b") == {"at": [], "connections": [], "jobs": [], "cpu": []}


def test_given_a_server_gone_from_the_config_then_its_ring_goes() -> None:
    history = ServerHistory(sample_every=5)
    history.sample({"a": ServerSeen(stats(1, 0), up=True)}, now=1.0)
    history.sample({}, now=6.0)
    assert history.rings == {}


def test_given_many_samples_then_the_ring_is_bounded() -> None:
    history = ServerHistory(sample_every=600)  # 30 minutes: 3 points
    for n in range(10):
        history.sample({"a": ServerSeen(stats(n, 0), up=True)}, now=float(n))
    assert history.describe("a")["connections"] == [7.0, 8.0, 9.0]
