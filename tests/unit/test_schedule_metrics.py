"""The schedules' metrics, read from the clock's statistics at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest

from tubeworker.config_model import ScheduleConfig
from tubeworker.control.metrics import TubeDepths, build_registry
from tubeworker.runtime.state import WorkerState


def test_given_a_schedule_that_fired_then_its_families_have_series() -> None:
    state = WorkerState()
    state.clock.definitions = (ScheduleConfig("a", "t", every=60.0, task="x", misfire="skip"),)
    counts = state.clock.of("a")
    counts.fires, counts.misfires, counts.last_fire = 2, 3, 120.0
    counts.lateness.observe(0.003)
    counts.lateness.observe(1.5)
    text = generate_latest(build_registry(state, TubeDepths())).decode()
    assert 'tubeworker_schedule_fires_total{schedule="a"} 2.0' in text
    assert 'tubeworker_schedule_misfires_total{policy="skip",schedule="a"} 3.0' in text
    assert 'tubeworker_schedule_last_fire_timestamp_seconds{schedule="a"} 120.0' in text
    assert 'tubeworker_schedule_lateness_seconds_bucket{le="1.0",schedule="a"} 1.0' in text
    assert 'tubeworker_schedule_lateness_seconds_count{schedule="a"} 2.0' in text
    assert 'tubeworker_schedule_next_fire_timestamp_seconds{schedule="a"}' in text
