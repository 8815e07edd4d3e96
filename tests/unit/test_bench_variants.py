"""The daemon scenarios' variants (tests/bench/variants.py) give the daemon a config it
accepts: each variant's generated config is read by tubeworker's own loader (no daemon,
no server; ``tubeworker-tls``'s ``[tls]`` comes with its stunnel, so only the rest is read
here). ``tubeworker-features`` declares flow control, limits, a schedule and a
heartbeat, none of which reaches the bench's jobs, and its clock fires rarely."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.bench import variants
from tests.bench.daemon import NOOP, _tubeworker_config
from tubeworker.config import Config, load_config
from tubeworker.flow.apis import tube_apis
from tubeworker.schedule import clock_schedules, next_fire

TUBE = "bench.tubeworker-features.c200.r1"
HANDLER = f"bench.{NOOP.name}"


def config_of(system: str, tmp_path: Path) -> Config:
    """The config the overhead scenario writes for ``system``, loaded as the daemon does."""
    route = variants.Route("127.0.0.1:11300")
    text = _tubeworker_config(
        route.address,
        TUBE,
        200,
        NOOP,
        job_lines=True,
        bound=system not in variants.ENVELOPE_POOLS,
    )
    text += variants.config_of(system, tmp_path, route)
    path = tmp_path / f"{system}.toml"
    path.write_text(text)
    return load_config(path, env={})


@pytest.mark.parametrize("system", variants.VARIANTS)
def test_given_a_variant_then_the_daemon_reads_its_config(system: str, tmp_path: Path) -> None:
    config = config_of(system, tmp_path)
    assert [pool.tubes for pool in config.pools] == [(TUBE,)]
    assert config.logging.job_lines


def test_given_the_features_variant_then_it_declares_each_feature_for_other_jobs(
    tmp_path: Path,
) -> None:
    config = config_of(variants.TUBEWORKER_FEATURES, tmp_path)
    assert len(config.apis) == 1
    assert len(config.limits) == 3  # the API's and two [[limit]] tables
    assert len(config.schedules) == 1
    assert len(config.heartbeats) == 1
    # Per-API tracking with a breaker and a limit, and a tube bound to it: not the bench's.
    apis = tube_apis(config)
    assert set(apis) == {"partner-webhooks"}
    assert all(api.hosts and api.limit is not None for api in config.apis)
    # No limit applies to the bench's jobs; every one is local (a fleet limit's tokens
    # would be released in beanstalkd, which the runs' check counts).
    assert not [limit for limit in config.limits if limit.applies(TUBE, HANDLER, frozenset())]
    assert not any(limit.fleet for limit in config.limits)
    # The clock puts nothing into the bench's tube, and signatures are off.
    assert TUBE not in {s.tube for s in config.schedules} | {h.tube for h in config.heartbeats}
    assert config.security.signing_keys_file is None
    assert not config.security.require_signature


def test_given_the_features_variant_then_its_clock_fires_25_times_a_day(tmp_path: Path) -> None:
    config = config_of(variants.TUBEWORKER_FEATURES, tmp_path)
    day = datetime(2026, 12, 4, tzinfo=UTC).timestamp()
    fires = []
    for schedule in clock_schedules(config.schedules, config.heartbeats):
        fire = next_fire(schedule, day - 1)
        while fire < day + 86_400:
            fires.append(fire)
            fire = next_fire(schedule, fire)
    # The heartbeat on every hour, the nightly report at 02:30 UTC: a few-second run
    # rarely spans one.
    assert len(fires) == 25
    assert all(datetime.fromtimestamp(f, UTC).minute in (0, 30) for f in fires)
