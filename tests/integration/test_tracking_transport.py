"""The tracking httpx transport against a real local HTTP server, and Retry-After parsing.

The server (tests/support/httpserver.py) is a real HTTP/1.1 server on 127.0.0.1; the
tracker runs on a fake clock so open periods are exact, and the transport's wall clock is
pinned so that HTTP-dates parse to known delays. Timeouts are the client's own (short).
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.support.httpserver import HttpApi, Reply, open_http_api, refused_port
from tubeworker.flow.breaker import (
    BreakerSettings,
    BreakerState,
    BreakerStatistics,
    CallOutcome,
    Transition,
    TransitionReason,
)
from tubeworker.flow.http import (
    RETRY_AFTER_CEILING,
    TrackingTransport,
    outcome_of_status,
    parse_retry_after,
)
from tubeworker.flow.tracker import ApiSettings, ApiTracker

# The moment the transport believes it is, on the wall clock, for HTTP-dates:
# Tue, 14 Nov 2023 22:13:20 GMT.
WALL_NOW = 1_700_000_000.0
# Opens on the third failure in a row, for 30 s; no jitter.
THRESHOLDS = BreakerSettings(consecutive_failures=3, cooldown=30.0, jitter=0.0, probes=1)
# Longer than any exchange with a local server takes; far shorter than the test's bound.
CLIENT_TIMEOUT = httpx.Timeout(0.5)
TEST_BOUND = 10.0


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    api: HttpApi
    tracker: ApiTracker
    client: httpx.AsyncClient
    clock: FakeClock
    transitions: list[Transition] = field(default_factory=list)

    def stats(self, api: str = "local") -> BreakerStatistics:
        stats = self.tracker.statistics().of(api)
        assert stats is not None, f"nothing recorded for {api}"
        return stats


@asynccontextmanager
async def open_setup(*, declare_local: bool = True) -> AsyncIterator[Setup]:
    """The server, a tracker (127.0.0.1 is the API "local" unless told otherwise), a client."""
    clock = FakeClock()
    declared = {"local": ApiSettings(hosts=("127.0.0.1",), breaker=THRESHOLDS)}
    tracker = ApiTracker(
        declared if declare_local else {}, clock=clock, default=THRESHOLDS, rng=random.Random(0)
    )
    transport = TrackingTransport(tracker, wall_clock=lambda: WALL_NOW)
    async with (
        open_http_api() as api,
        httpx.AsyncClient(transport=transport, timeout=CLIENT_TIMEOUT) as client,
    ):
        setup = Setup(api, tracker, client, clock)
        tracker.add_listener(setup.transitions.append)
        yield setup


# --------------------------------------------------------------------------- classification


async def test_given_200_then_a_success_is_recorded_under_the_declared_api() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            response = await s.client.get(f"{s.api.url}/charges")
            assert response.status_code == 200
            assert response.text == "ok"
            stats = s.stats()
            assert (stats.successes_total, stats.calls, stats.failures) == (1, 1, 0)
            assert s.api.requests == ["/charges"]


async def test_given_an_undeclared_host_then_the_call_is_recorded_under_the_host_name() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup(declare_local=False) as s:
            await s.client.get(f"{s.api.url}/")
            assert s.stats("127.0.0.1").successes_total == 1


async def test_given_404s_then_they_are_caller_faults_and_never_open_the_breaker() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            s.api.reply = Reply(404, body=b"no such customer")
            for _ in range(10):
                response = await s.client.get(f"{s.api.url}/customers/x")
                assert response.status_code == 404  # returned, not raised
            stats = s.stats()
            assert (stats.state, stats.calls, stats.failures) == (BreakerState.CLOSED, 10, 0)
            assert stats.caller_faults_total == 10


async def test_given_503s_then_the_breaker_opens_after_the_configured_failures() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            s.api.reply = Reply(503)
            for expected in (BreakerState.CLOSED, BreakerState.CLOSED, BreakerState.OPEN):
                assert (await s.client.get(f"{s.api.url}/")).status_code == 503
                assert s.tracker.state("local") is expected
            assert len(s.api.requests) == 3
            (opened,) = s.transitions
            assert opened.reason is TransitionReason.CONSECUTIVE_FAILURES
            assert opened.next_probe_at == s.clock.now + 30.0
            assert s.tracker.blocked(["local"])


async def test_given_the_api_recovers_when_the_probe_succeeds_then_the_breaker_closes() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            s.api.reply = Reply(503)
            for _ in range(3):
                await s.client.get(f"{s.api.url}/")
            s.clock.now += 30.0
            permit = s.tracker.try_admit(["local"])
            assert permit is not None
            assert permit.probes == ("local",)
            s.api.reply = Reply(200)
            with permit:
                await s.client.get(f"{s.api.url}/")
            assert s.tracker.state("local") is BreakerState.CLOSED
            assert [t.reason for t in s.transitions] == [
                TransitionReason.CONSECUTIVE_FAILURES,
                TransitionReason.COOLDOWN_ELAPSED,
                TransitionReason.PROBE_SUCCEEDED,
            ]


async def test_given_429_with_retry_after_seconds_then_the_open_period_honours_it() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            s.api.reply = Reply(429, headers=(("Retry-After", "120"),))
            for _ in range(3):
                assert (await s.client.get(f"{s.api.url}/")).status_code == 429
            opened = s.transitions[-1]
            assert opened.to_state is BreakerState.OPEN
            assert opened.next_probe_at == s.clock.now + 120.0


async def test_given_429_with_an_http_date_then_the_open_period_lasts_until_that_date() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            until = email.utils.formatdate(WALL_NOW + 600, usegmt=True)
            s.api.reply = Reply(429, headers=(("Retry-After", until),))
            for _ in range(3):
                await s.client.get(f"{s.api.url}/")
            assert s.stats().next_probe_at == s.clock.now + 600.0


async def test_given_a_garbage_retry_after_then_the_cooldown_applies() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            s.api.reply = Reply(503, headers=(("Retry-After", "soon, maybe"),))
            for _ in range(3):
                await s.client.get(f"{s.api.url}/")
            assert s.stats().next_probe_at == s.clock.now + 30.0


async def test_given_a_slow_response_then_the_timeout_is_a_failure_and_re_raised() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            s.api.reply = Reply(200, hang=True)
            with pytest.raises(httpx.ReadTimeout):
                await s.client.get(f"{s.api.url}/slow")
            assert s.stats().failures_total == 1
            assert s.api.requests == ["/slow"]


async def test_given_headers_then_a_stalled_body_then_a_failure_not_a_success() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            s.api.reply = Reply(200, body=b"never sent", stall_body=True)
            with pytest.raises(httpx.ReadTimeout):
                await s.client.get(f"{s.api.url}/")
            stats = s.stats()
            assert (stats.successes_total, stats.failures_total) == (0, 1)


async def test_given_a_refused_connection_then_a_failure_and_the_breaker_opens() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            url = f"http://127.0.0.1:{refused_port()}/"
            for _ in range(3):
                with pytest.raises(httpx.ConnectError):
                    await s.client.get(url)
            stats = s.stats()
            assert (stats.failures_total, stats.state) == (3, BreakerState.OPEN)


async def test_given_a_streamed_response_closed_early_then_its_status_is_reported() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            s.api.reply = Reply(200, body=b"x" * 100_000)
            async with s.client.stream("GET", f"{s.api.url}/big") as response:
                assert response.status_code == 200
                assert s.stats().successes_total == 0  # not yet: the body is unread
            assert s.stats().successes_total == 1


async def test_given_an_unsupported_scheme_then_a_caller_fault() -> None:
    with trio.fail_after(TEST_BOUND):
        async with open_setup() as s:
            with pytest.raises(httpx.UnsupportedProtocol):
                await s.client.get("ftp://127.0.0.1/file")
            assert s.stats().caller_faults_total == 1


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, CallOutcome.SUCCESS),
        (204, CallOutcome.SUCCESS),
        (304, CallOutcome.SUCCESS),
        (400, CallOutcome.CALLER_FAULT),
        (401, CallOutcome.CALLER_FAULT),
        (404, CallOutcome.CALLER_FAULT),
        (422, CallOutcome.CALLER_FAULT),
        (408, CallOutcome.FAILURE),
        (429, CallOutcome.FAILURE),
        (500, CallOutcome.FAILURE),
        (503, CallOutcome.FAILURE),
        (504, CallOutcome.FAILURE),
    ],
)
def test_given_a_status_then_its_outcome(status: int, outcome: CallOutcome) -> None:
    assert outcome_of_status(status) is outcome


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("99999999", RETRY_AFTER_CEILING),  # clamped
        (email.utils.formatdate(WALL_NOW + 90, usegmt=True), 90.0),
        ("Tue, 14 Nov 2023 22:13:19 GMT", 0.0),  # WALL_NOW - 1 s: in the past
        ("Tue, 14 Nov 2023 22:14:20 -0000", 60.0),  # no zone: GMT
        ("Tuesday, 14-Nov-23 22:14:20 GMT", 60.0),  # RFC 850, obsolete but legal
    ],
)
def test_given_a_retry_after_value_then_seconds_to_wait(value: str, seconds: float) -> None:
    assert parse_retry_after(value, WALL_NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "soon", "-5", "1e3", "12s", "Wed, 32 Oct 2015 07:28:00 GMT", "inf", "NaN"]
)
def test_given_garbage_then_no_retry_after(value: str) -> None:
    assert parse_retry_after(value, WALL_NOW) is None


def test_given_a_ceiling_then_the_delay_is_clamped_to_it() -> None:
    assert parse_retry_after("600", WALL_NOW, ceiling=60.0) == 60.0


@given(st.text(max_size=60))
def test_given_any_text_then_none_or_a_delay_within_bounds(value: str) -> None:
    seconds = parse_retry_after(value, WALL_NOW)
    assert seconds is None or (math.isfinite(seconds) and 0.0 <= seconds <= RETRY_AFTER_CEILING)
