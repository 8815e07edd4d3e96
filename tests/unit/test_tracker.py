"""The API tracker: host names to APIs, admission of jobs, listeners, call reporting."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import trio

from tubeworker.flow.breaker import (
    BreakerSettings,
    BreakerState,
    BreakerStatistics,
    CallOutcome,
    Transition,
    TransitionReason,
)
from tubeworker.flow.tracker import CALLER, ApiSettings, ApiTracker, Caller, call_api

# Opens on the second failure in a row, for 10 s, one probe at a time; no jitter.
QUICK = BreakerSettings(consecutive_failures=2, cooldown=10.0, jitter=0.0, probes=1)


@dataclass
class FakeClock:
    now: float = 500.0

    def __call__(self) -> float:
        return self.now


class PaymentDeclined(Exception):
    """What an SDK raises for a 402: the request's fault, not the API's."""


def make_tracker(clock: FakeClock | None = None) -> ApiTracker:
    return ApiTracker(
        {
            "stripe": ApiSettings(hosts=("api.stripe.com", "*.stripe.com"), breaker=QUICK),
            "mailer": ApiSettings(hosts=("*.mail.example.net",), breaker=QUICK),
            "maps": ApiSettings(hosts=("maps.example.net",), breaker=QUICK),
        },
        clock=clock or FakeClock(),
        default=QUICK,
        rng=random.Random(0),
    )


def stats_of(tracker: ApiTracker, api: str) -> BreakerStatistics:
    stats = tracker.statistics().of(api)
    assert stats is not None, f"{api} is not tracked"
    return stats


def trip(tracker: ApiTracker, api: str) -> None:
    tracker.report(api, CallOutcome.FAILURE)
    tracker.report(api, CallOutcome.FAILURE)
    assert tracker.is_open(api)


# --------------------------------------------------------------------------- host names


@pytest.mark.parametrize(
    ("host", "api"),
    [
        ("api.stripe.com", "stripe"),  # exact
        ("API.Stripe.COM.", "stripe"),  # case and a trailing dot do not matter
        ("files.stripe.com", "stripe"),  # wildcard
        ("a.b.stripe.com", "stripe"),  # wildcard, deeper
        ("smtp.mail.example.net", "mailer"),
        ("maps.example.net", "maps"),
        ("stripe.com", "stripe.com"),  # "*.stripe.com" is subdomains only
        ("mail.example.net", "mail.example.net"),
        ("example.net", "example.net"),
        ("unknown.org", "unknown.org"),  # fallback: the host name itself
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_given_declared_hosts_when_a_host_is_looked_up_then_its_api(host: str, api: str) -> None:
    assert make_tracker().api_for_host(host) == api


def test_given_nested_wildcards_then_the_longest_suffix_wins() -> None:
    tracker = ApiTracker(
        {
            "example": ApiSettings(hosts=("*.example.com",)),
            "eu": ApiSettings(hosts=("*.eu.example.com",)),
        },
        clock=FakeClock(),
    )
    assert tracker.api_for_host("x.eu.example.com") == "eu"
    assert tracker.api_for_host("x.us.example.com") == "example"


def test_given_an_exact_host_and_a_wildcard_then_the_exact_one_wins() -> None:
    tracker = ApiTracker(
        {
            "uploads": ApiSettings(hosts=("files.stripe.com",)),
            "stripe": ApiSettings(hosts=("*.stripe.com",)),
        },
        clock=FakeClock(),
    )
    assert tracker.api_for_host("files.stripe.com") == "uploads"
    assert tracker.api_for_host("api.stripe.com") == "stripe"


# --------------------------------------------------------------------------- a declaration alone


def warned_tracker() -> tuple[ApiTracker, list[tuple[str, dict[str, object]]]]:
    said: list[tuple[str, dict[str, object]]] = []
    tracker = ApiTracker(
        {"stripe": ApiSettings(hosts=("api.stripe.com",), breaker=QUICK)},
        clock=FakeClock(),
        default=QUICK,
        warn=lambda event, fields: said.append((event, dict(fields))),
    )
    return tracker, said


def test_given_a_handler_declaring_one_api_then_its_calls_to_unclaimed_hosts_count_for_it() -> None:
    tracker, said = warned_tracker()
    welcome = Caller("send-welcome", ("mailer",))
    assert tracker.api_for_host("mailer.example", welcome) == "mailer"
    assert tracker.api_for_host("127.0.0.1", welcome) == "mailer"
    # A host some [api.NAME] claims stays that API's, whoever calls it.
    assert tracker.api_for_host("api.stripe.com", welcome) == "stripe"
    # No caller (a call outside any handler): the host name, as before.
    assert tracker.api_for_host("mailer.example") == "mailer.example"
    assert said == []


def test_given_the_caller_in_the_tasks_context_then_the_transport_path_attributes_too() -> None:
    tracker, _ = warned_tracker()
    token = CALLER.set(Caller("send-welcome", ("mailer",)))
    try:
        assert tracker.api_for_host("mailer.example") == "mailer"
    finally:
        CALLER.reset(token)
    assert tracker.api_for_host("mailer.example") == "mailer.example"


def test_given_apis_with_hosts_then_only_the_one_without_is_a_candidate() -> None:
    tracker, said = warned_tracker()
    # stripe has hosts: a host it does not claim cannot be stripe's, so it is mailer's.
    caller = Caller("charge", ("mailer", "stripe"))
    assert tracker.api_for_host("mailer.example", caller) == "mailer"
    assert said == []


def test_given_several_candidates_then_the_host_name_and_one_warning_naming_them() -> None:
    tracker, said = warned_tracker()
    caller = Caller("notify", ("mailer", "sms"))
    assert tracker.api_for_host("mailer.example", caller) == "mailer.example"
    assert tracker.api_for_host("mailer.example", caller) == "mailer.example"
    ((event, fields),) = said
    assert "several APIs" in event
    assert fields["apis"] == ["mailer", "sms"]
    assert fields["host"] == "mailer.example"
    assert "hosts" in str(fields["hint"])


def test_given_one_host_used_by_two_handlers_declaring_different_apis_then_said_once() -> None:
    tracker, said = warned_tracker()
    assert tracker.api_for_host("hooks.example", Caller("a", ("mailer",))) == "mailer"
    assert tracker.api_for_host("hooks.example", Caller("b", ("notify",))) == "notify"
    assert tracker.api_for_host("hooks.example", Caller("b", ("notify",))) == "notify"
    ((event, fields),) = said
    assert "two APIs" in event
    assert fields["apis"] == ["mailer", "notify"]


def test_given_a_handler_reporting_an_api_it_does_not_declare_then_said_once() -> None:
    tracker, said = warned_tracker()
    quiet = Caller("cleanup", ())
    call_api(tracker, "smtp", None, caller=quiet).finish(CallOutcome.SUCCESS)
    call_api(tracker, "smtp", None, caller=quiet).finish(CallOutcome.SUCCESS)
    call_api(tracker, "smtp", None, caller=Caller("send", ("smtp",))).finish(CallOutcome.SUCCESS)
    ((event, fields),) = said
    assert "does not declare" in event
    assert (fields["handler"], fields["api"]) == ("cleanup", "smtp")
    assert stats_of(tracker, "smtp").calls == 3


def test_given_a_host_claimed_by_two_apis_then_value_error() -> None:
    with pytest.raises(ValueError, match="belongs to both"):
        ApiTracker(
            {"a": ApiSettings(hosts=("x.io",)), "b": ApiSettings(hosts=("x.io",))},
            clock=FakeClock(),
        )


@pytest.mark.parametrize(
    "pattern", ["", "*", "*.", "Api.Stripe.com", "https://api.stripe.com", "a.*.com", "a b"]
)
def test_given_a_malformed_host_pattern_then_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="host"):
        ApiSettings(hosts=(pattern,))


def test_given_hosts_as_a_bare_string_then_type_error() -> None:
    with pytest.raises(TypeError, match="tuple"):
        ApiSettings(hosts="api.stripe.com")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- admission


def test_given_all_apis_closed_then_a_job_is_admitted_without_probes() -> None:
    tracker = make_tracker()
    assert not tracker.blocked(["stripe", "mailer"])
    assert tracker.blocked_until(["stripe", "mailer"]) is None
    permit = tracker.try_admit(["stripe", "mailer"])
    assert permit is not None
    assert permit.probes == ()


def test_given_one_open_api_then_a_job_needing_it_is_blocked_and_others_are_not() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    trip(tracker, "stripe")
    assert tracker.blocked(["stripe"])
    assert tracker.blocked(["mailer", "stripe"])
    assert not tracker.blocked(["mailer"])
    assert not tracker.blocked([])
    assert tracker.try_admit(["mailer", "stripe"]) is None
    assert tracker.blocked_until(["mailer", "stripe"]) == clock.now + 10.0


def test_given_two_open_apis_then_blocked_until_the_later_one_may_probe() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    trip(tracker, "stripe")
    clock.now += 4.0
    trip(tracker, "mailer")
    assert tracker.blocked_until(["stripe", "mailer"]) == 514.0


def test_given_half_open_then_one_job_becomes_the_probe_and_the_next_waits() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    trip(tracker, "stripe")
    clock.now += 10.0
    assert tracker.state("stripe") is BreakerState.HALF_OPEN
    assert not tracker.is_open("stripe")
    assert tracker.may_probe("stripe")
    probe = tracker.try_admit(["stripe", "mailer"])
    assert probe is not None
    assert probe.probes == ("stripe",)
    # The quota (one) is taken: the next job is blocked, for a moment only.
    assert tracker.blocked(["stripe"])
    assert tracker.try_admit(["stripe"]) is None
    assert tracker.blocked_until(["stripe"]) == clock.now
    # The probe job ends without having called the API: its slot is free again.
    with probe:
        pass
    assert not probe.held
    assert tracker.may_probe("stripe")
    probe.release()  # released once, however many paths reach it
    assert stats_of(tracker, "stripe").probes_in_flight == 0


def test_given_a_half_open_api_out_of_probes_then_no_slot_of_another_api_is_held() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    trip(tracker, "stripe")
    trip(tracker, "mailer")
    clock.now += 10.0
    assert tracker.try_admit(["stripe"]) is not None  # takes stripe's only slot
    assert tracker.try_admit(["mailer", "stripe"]) is None
    assert tracker.may_probe("mailer")  # nothing taken from mailer by the refused job


def test_given_a_probe_that_succeeds_then_the_api_closes_for_everyone() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    trip(tracker, "stripe")
    clock.now += 10.0
    with tracker.try_admit(["stripe"]) or pytest.fail("not admitted"):
        tracker.report("stripe", CallOutcome.SUCCESS)
    assert tracker.state("stripe") is BreakerState.CLOSED
    assert tracker.try_admit(["stripe"]) is not None


def test_given_an_undeclared_api_then_it_gets_the_default_settings() -> None:
    tracker = ApiTracker(
        clock=FakeClock(), default=BreakerSettings(consecutive_failures=1, jitter=0.0)
    )
    tracker.report("sms", CallOutcome.FAILURE)
    assert tracker.is_open("sms")


# --------------------------------------------------------------------------- listeners


def test_given_listeners_then_each_gets_every_transition_until_removed() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    first: list[Transition] = []
    second: list[Transition] = []
    tracker.add_listener(first.append)
    remove_second = tracker.add_listener(second.append)
    trip(tracker, "stripe")
    remove_second()
    remove_second()  # removing twice is harmless
    clock.now += 10.0
    tracker.state("stripe")  # the cool-down ends when someone looks
    tracker.report("stripe", CallOutcome.SUCCESS)
    assert [(t.api, t.reason) for t in first] == [
        ("stripe", TransitionReason.CONSECUTIVE_FAILURES),
        ("stripe", TransitionReason.COOLDOWN_ELAPSED),
        ("stripe", TransitionReason.PROBE_SUCCEEDED),
    ]
    assert second == first[:1]


def test_given_a_transition_then_report_returns_it_too() -> None:
    tracker = make_tracker()
    assert tracker.report("maps", CallOutcome.FAILURE) == ()
    (opened,) = tracker.report("maps", CallOutcome.FAILURE)
    assert opened.to_state is BreakerState.OPEN
    assert opened.next_probe_at == 510.0


# --------------------------------------------------------------------------- call()


def test_given_a_block_that_ends_normally_then_a_success_is_reported() -> None:
    tracker = make_tracker()
    with tracker.call("stripe") as call:
        assert not call.finished
    assert call.finished
    assert stats_of(tracker, "stripe").successes_total == 1


def test_given_a_block_that_raises_then_a_failure_is_reported_and_it_propagates() -> None:
    tracker = make_tracker()
    for _ in range(2):
        with pytest.raises(ConnectionError), tracker.call("stripe"):
            raise ConnectionError("refused")
    assert tracker.is_open("stripe")


def test_given_a_caller_fault_predicate_then_its_exceptions_do_not_count_as_failures() -> None:
    tracker = make_tracker()
    for _ in range(5):
        with (
            pytest.raises(PaymentDeclined),
            tracker.call("stripe", caller_fault=lambda exc: isinstance(exc, PaymentDeclined)),
        ):
            raise PaymentDeclined("card declined")
    stats = stats_of(tracker, "stripe")
    assert (stats.state, stats.calls, stats.failures) == (BreakerState.CLOSED, 5, 0)
    assert stats.caller_faults_total == 5


def test_given_an_explicit_finish_in_the_block_then_the_exit_reports_nothing_more() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    tracker.report("stripe", CallOutcome.FAILURE)
    # An SDK returned an error object rather than raising: the handler reports it.
    with tracker.call("stripe") as call:
        call.finish(CallOutcome.FAILURE, retry_after=60.0)
    stats = stats_of(tracker, "stripe")
    assert (stats.state, stats.next_probe_at, stats.successes_total) == (
        BreakerState.OPEN,
        560.0,
        0,
    )


async def test_given_async_with_then_it_reports_both_ways() -> None:
    tracker = make_tracker()
    async with tracker.call("mailer"):
        await trio.lowlevel.checkpoint()
    with pytest.raises(TimeoutError):
        async with tracker.call("mailer"):
            raise TimeoutError
    stats = stats_of(tracker, "mailer")
    assert (stats.successes_total, stats.failures_total) == (1, 1)


async def test_given_a_cancelled_call_then_nothing_is_reported() -> None:
    tracker = make_tracker()
    with trio.CancelScope() as scope:
        async with tracker.call("mailer") as call:
            scope.cancel()
            await trio.sleep_forever()
    assert call.finished
    stats = stats_of(tracker, "mailer")
    assert (stats.calls, stats.successes_total, stats.failures_total) == (0, 0, 0)


def test_given_a_call_started_before_the_trip_then_its_late_failure_is_ignored() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    slow = tracker.call("stripe")
    clock.now += 1.0
    trip(tracker, "stripe")
    clock.now += 10.0
    assert tracker.state("stripe") is BreakerState.HALF_OPEN
    slow.finish(CallOutcome.FAILURE)  # timed out at last: news from before the outage
    assert tracker.state("stripe") is BreakerState.HALF_OPEN


# --------------------------------------------------------------------------- statistics


def test_given_some_traffic_then_statistics_lists_every_api_sorted() -> None:
    clock = FakeClock()
    tracker = make_tracker(clock)
    tracker.report("stripe", CallOutcome.SUCCESS)
    tracker.report("stripe", CallOutcome.CALLER_FAULT)
    trip(tracker, "maps")
    tracker.report(tracker.api_for_host("status.example.org"), CallOutcome.SUCCESS)
    stats = tracker.statistics()
    assert [s.api for s in stats.apis] == ["mailer", "maps", "status.example.org", "stripe"]
    stripe = stats.of("stripe")
    assert stripe is not None
    assert (stripe.state, stripe.calls, stripe.failures) == (BreakerState.CLOSED, 2, 0)
    maps = stats.of("maps")
    assert maps is not None
    assert (maps.state, maps.trips, maps.opened_at, maps.next_probe_at) == (
        BreakerState.OPEN,
        1,
        500.0,
        510.0,
    )
    assert stats.of("nothing") is None


def test_given_the_last_call_failed_then_the_api_is_failing_until_one_succeeds() -> None:
    tracker = make_tracker()
    assert not tracker.failing(["stripe", "maps"])
    tracker.report("stripe", CallOutcome.FAILURE)
    assert tracker.failing(["maps", "stripe"])
    assert not tracker.failing(["maps"])
    tracker.report("stripe", CallOutcome.CALLER_FAULT)  # a 4xx: the API answered
    assert not tracker.failing(["stripe"])
