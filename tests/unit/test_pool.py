"""How a pool's concurrency is split into lanes."""

from __future__ import annotations

import pytest

from tubeworker.runtime.pool import lane_sizes


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
