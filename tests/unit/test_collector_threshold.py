"""The garbage collector's threshold grows with the jobs a worker may hold (cli/startup.py)."""

from __future__ import annotations

from tubeworker.cli.startup import collector_threshold
from tubeworker.config import Config, PoolConfig


def _config(*concurrency: int, max_in_flight: int = 0) -> Config:
    pools = tuple(
        PoolConfig(name=f"p{i}", tubes=(f"t{i}",), concurrency=c) for i, c in enumerate(concurrency)
    )
    return Config(pools=pools, max_in_flight=max_in_flight)


def test_a_small_worker_keeps_the_floor() -> None:
    assert collector_threshold(_config(10)) == 50_000
    assert collector_threshold(_config(200, 800)) == 50_000


def test_it_grows_with_the_jobs_all_pools_may_hold() -> None:
    assert collector_threshold(_config(10_000)) == 500_000
    assert collector_threshold(_config(3_000, 2_000)) == 250_000


def test_max_in_flight_caps_the_jobs_held() -> None:
    assert collector_threshold(_config(5_000, 5_000, max_in_flight=2_000)) == 100_000
    # A cap above the pools' sum holds no more than they do.
    assert collector_threshold(_config(2_000, max_in_flight=9_000)) == 100_000
