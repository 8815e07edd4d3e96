"""The limits' pure core: token buckets, concurrency, keys, which jobs a limit applies to,
and the limits read from config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tubeworker.config import LimitConfig, load_config
from tubeworker.errors import ConfigError
from tubeworker.flow.limits import Lease, Limits, TokenBucket, Wait, key_of
from tubeworker.flow.tokens import token_tubes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_given_a_full_bucket_then_burst_jobs_go_at_once_and_the_next_waits_one_interval() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=3, clock=clock)
    for _ in range(3):
        assert bucket.wait() == 0
        bucket.take()
    assert bucket.wait() == pytest.approx(0.1)
    clock.now = 0.1
    assert bucket.wait() == 0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=200),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300),
    window=st.floats(min_value=0.1, max_value=5),
)
def test_property_a_rate_limit_admits_at_most_rate_times_window_plus_burst(
    rate: float, burst: int, gaps: list[float], window: float
) -> None:
    clock = Clock()
    limit = LimitConfig("api", rate=rate, burst=burst)
    limits = Limits([limit], clock=clock)
    admitted: list[float] = []
    for gap in gaps:  # a job asks after each gap: admitted, or it goes away
        clock.now += gap
        got = limits.try_acquire([limit])
        if isinstance(got, Lease):
            admitted.append(clock.now)
            got.release()
        else:
            assert got.seconds is not None
            assert 0 < got.seconds <= 1 / rate + 1e-9
    for i, start in enumerate(admitted):
        inside = [t for t in admitted[i:] if t < start + window]
        assert len(inside) <= rate * window + burst + 1e-6


def test_given_max_concurrent_then_the_next_job_waits_until_one_ends() -> None:
    clock = Clock()
    limit = LimitConfig("api", max_concurrent=2)
    limits = Limits([limit], clock=clock)
    released: list[int] = []
    limits.on_release = lambda: released.append(1)
    first, second = limits.try_acquire([limit]), limits.try_acquire([limit])
    assert isinstance(first, Lease)
    assert isinstance(second, Lease)
    assert limits.try_acquire([limit]) == Wait("api", None)
    first.release()
    first.release()  # given back exactly once
    assert released == [1]
    assert isinstance(limits.try_acquire([limit]), Lease)
    assert limits.statistics()[0].running == 2


def test_given_several_limits_then_a_job_takes_room_in_all_or_none() -> None:
    clock = Clock()
    wide, narrow = LimitConfig("wide", max_concurrent=5), LimitConfig("narrow", max_concurrent=1)
    limits = Limits([wide, narrow], clock=clock)
    assert isinstance(limits.try_acquire([wide, narrow]), Lease)
    assert limits.try_acquire([wide, narrow]) == Wait("narrow", None)
    running = {s.name: s.running for s in limits.statistics()}
    assert running == {"wide": 1, "narrow": 1}  # the refused job took nothing


def test_given_a_key_then_each_value_has_its_own_limit() -> None:
    clock = Clock()
    limit = LimitConfig("customer", key="customer", rate=1, burst=1)
    limits = Limits([limit], clock=clock)
    assert isinstance(limits.try_acquire([limit], {"customer": "acme"}), Lease)
    assert isinstance(limits.try_acquire([limit], {"customer": "globex"}), Lease)
    assert isinstance(limits.try_acquire([limit], {"customer": "acme"}), Wait)
    assert limits.statistics()[0].keys == 2


def test_given_jobs_waiting_then_the_expected_wait_counts_them() -> None:
    clock = Clock()
    limit = LimitConfig("api", rate=10, burst=1)
    limits = Limits([limit], clock=clock)
    assert isinstance(limits.try_acquire([limit]), Lease)
    assert limits.expected_wait([limit]) == pytest.approx(0.1)
    limits.queue([limit], None, +5)
    assert limits.expected_wait([limit]) == pytest.approx(0.6)
    limits.queue([limit], None, -5)
    assert limits.statistics()[0].waiting == 0


def test_given_fleet_limits_then_the_process_leaves_them_to_tokens() -> None:
    limit = LimitConfig("api", rate=5, fleet=True)
    limits = Limits([limit], clock=Clock())
    for _ in range(20):
        assert isinstance(limits.try_acquire([limit]), Lease)


def test_which_jobs_a_limit_applies_to() -> None:
    limit = LimitConfig("l", tubes=("emails",), handlers=("send",), rate=1)
    assert limit.applies("emails", "send", frozenset())
    assert not limit.applies("emails", "other", frozenset())
    assert not limit.applies("sms", "send", frozenset())
    by_api = LimitConfig("stripe", apis=("stripe",), rate=1)
    assert by_api.applies("any", None, frozenset({"stripe", "mailer"}))
    assert not by_api.applies("any", None, frozenset({"mailer"}))
    limits = Limits([limit, by_api], clock=Clock())
    assert limits.applied("emails", "send", frozenset({"stripe"})) == (limit, by_api)


def test_key_of_reads_nested_fields_and_missing_ones_share_a_key() -> None:
    assert key_of({"customer": {"id": 42}}, "customer.id") == "42"
    assert key_of({"customer": "acme"}, "customer") == "acme"
    assert key_of({"other": 1}, "customer") == ""
    assert key_of("not a mapping", "customer") == ""


def test_a_limit_with_no_cap_or_a_keyed_fleet_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="neither"):
        LimitConfig("l")
    with pytest.raises(ValueError, match="key"):
        LimitConfig("l", rate=1, key="customer", fleet=True)


def test_token_tubes_of_a_fleet_limit() -> None:
    running, rate = token_tubes(LimitConfig("stripe", rate=50, burst=10, max_concurrent=8))
    assert (rate.tube, rate.count, rate.cooldown, rate.held) == (
        "tubeworker.limit.stripe.rate",
        50,
        1,
        False,
    )
    assert (running.tube, running.count, running.cooldown, running.held) == (
        "tubeworker.limit.stripe.running",
        8,
        0,
        True,
    )
    (slow,) = token_tubes(LimitConfig("slow", rate=0.2))  # one job per 5 s
    assert (slow.count, slow.cooldown) == (1, 5)


def _config(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "w.toml"
    path.write_text("\n".join(["[[pool]]", 'tubes = ["a"]', *lines]) + "\n")
    return path


def test_limits_are_read_from_api_tables_and_limit_tables(tmp_path: Path) -> None:
    config = load_config(
        _config(
            tmp_path,
            "[api.stripe]",
            "rate = 50",
            "burst = 10",
            "max_concurrent = 8",
            "fleet = true",
            "[api.mailer]",
            "cooldown = 5",
            "[[limit]]",
            'name = "per-customer"',
            'tubes = ["a"]',
            'key = "customer.id"',
            "rate = 2.5",
            'defer_after = "30s"',
        )
    )
    stripe, customer = config.limits
    assert stripe == LimitConfig(
        "stripe", apis=("stripe",), rate=50.0, burst=10, max_concurrent=8, fleet=True
    )
    assert customer == LimitConfig(
        "per-customer", tubes=("a",), key="customer.id", rate=2.5, defer_after=30.0
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["[[limit]]", 'name = "x"'], "needs a rate"),
        (["[[limit]]", 'name = "x"', "rate = 0"], "above 0"),
        (["[[limit]]", 'name = "x"', "burst = 3", "max_concurrent = 1"], "needs a rate"),
        (["[[limit]]", 'name = "x"', "rate = 1", 'key = "c"', "fleet = true"], "cannot have a key"),
        (["[[limit]]", 'name = "bad name"', "rate = 1"], "letters, digits"),
        (["[[limit]]", 'name = "x"', "rate = 1", "speed = 2"], "unknown key"),
        (["[api.x]", "rate = 1", "[[limit]]", 'name = "x"', "rate = 2"], "two limits"),
        (["[api.x]", "fleet = true"], "set rate or max_concurrent"),
    ],
)
def test_bad_limits_are_one_clear_config_error(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, *lines))
