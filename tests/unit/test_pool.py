"""How a pool's concurrency is split into lanes, and whether its jobs need an API."""

from __future__ import annotations

import pytest

from tubeworker import Job
from tubeworker.config import Config, PoolConfig
from tubeworker.registry import Registry
from tubeworker.runtime.pool import Pool, lane_sizes
from tubeworker.runtime.services import Services
from tubeworker.runtime.slots import InFlight
from tubeworker.runtime.state import WorkerState


@pytest.mark.parametrize(
    ("concurrency", "per_connection", "servers", "sizes"),
    [
        (200, 50, 1, [50, 50, 50, 50]),
        (30, 7, 1, [6, 6, 6, 6, 6]),
        (10, 50, 1, [10]),
        (4, 50, 2, [2, 2]),  # at least one lane per server
        (1, 50, 3, [1]),  # but never an empty lane
        (5, 1, 1, [1, 1, 1, 1, 1]),  # one job per connection
    ],
)
def test_lane_sizes(concurrency: int, per_connection: int, servers: int, sizes: list[int]) -> None:
    assert lane_sizes(concurrency, per_connection, servers) == sizes


def _pool(tube_apis: dict[str, frozenset[str]]) -> Pool:
    pool = PoolConfig(name="p", tubes=("orders",), concurrency=5, handler="h")
    config = Config(pools=(pool,))
    services = Services(
        config=config,
        registry=Registry.from_functions({"h": noop}),
        state=WorkerState(),
        in_flight=InFlight(None),
        tube_apis=tube_apis,
    )
    return Pool(pool, services)


async def noop(job: Job) -> None:
    pass


def test_an_api_declared_for_other_tubes_costs_this_pools_jobs_nothing() -> None:
    # Declared for another tube: this pool's lanes never ask the tracker (not gated).
    pool = _pool({"webhooks": frozenset({"partner"})})
    assert not pool.gated
    assert pool.watchable() == (frozenset({"orders"}), None)
    # A tube of its own that needs the API (a pattern matched it): now they ask.
    pool.set_tubes(frozenset({"orders", "webhooks"}))
    assert pool.gated
    assert pool.apis_of("webhooks") == frozenset({"partner"})
    assert pool.apis_of("orders") == frozenset()


def test_a_tube_of_the_pool_with_an_api_gates_it_from_the_start() -> None:
    assert _pool({"orders": frozenset({"partner"})}).gated
