"""The producers' failover on its own (pure, no connection): the order servers are tried
in, what a server that did not store a job changes, and the error when none did. The
blocking and the Trio producer both walk it (tests/unit/test_producer.py drives them)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tubeworker.beanstalk.client import Address, parse_address
from tubeworker.producing.errors import (
    NoServerAvailable,
    ServerDraining,
    ServerFailure,
    ServerOutOfMemory,
    ServerUnreachable,
)
from tubeworker.producing.failover import ProducerCore, Unstored

A, B, C = (parse_address(f"127.0.0.1:{port}") for port in (11301, 11302, 11303))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def core(clock: Clock, told: list[ServerFailure] | None = None) -> ProducerCore:
    return ProducerCore(
        [A, B, C],
        connect_timeout=1,
        reply_timeout=1,
        max_job_size=None,
        demote_for=5,
        clock=clock,
        on_failure=None if told is None else told.append,
    )


def unstored(server: Address, kind: type[NoServerAvailable] = ServerUnreachable) -> Unstored:
    return Unstored(ServerFailure(str(server), kind, "cannot be reached (connection refused)"))


def test_given_no_failure_then_servers_are_tried_as_configured_and_the_preferred_first() -> None:
    producer = core(Clock())
    assert producer._failover(None).servers == [A, B, C]
    assert producer._failover(str(C)).servers == [C, A, B]


def test_given_a_server_that_just_failed_then_it_is_tried_last_until_demote_for_passed() -> None:
    clock, told = Clock(), []
    producer = core(clock, told)
    first = producer._failover(None)
    first.unstored(A, unstored(A))
    assert first.stored(B, 7) == 7
    assert [f.server for f in told] == [str(A)]  # on_failure heard of it
    assert producer._failover(None).servers == [B, C, A]
    assert producer._failover(str(A)).servers == [B, C, A]  # even when it is preferred
    clock.now += 5
    assert producer._failover(None).servers == [A, B, C]
    stats = producer._snapshot()
    assert (stats.jobs_put, stats.server_failures) == (1, 1)


@pytest.mark.parametrize(
    ("kinds", "error"),
    [
        ((ServerUnreachable,) * 3, ServerUnreachable),
        ((ServerDraining,) * 3, ServerDraining),
        ((ServerOutOfMemory,) * 3, ServerOutOfMemory),
        ((ServerDraining, ServerUnreachable, ServerDraining), NoServerAvailable),
    ],
)
def test_given_every_server_failed_then_the_error_says_why_for_each(
    kinds: tuple[type[NoServerAvailable], ...], error: type[NoServerAvailable]
) -> None:
    failover = core(Clock())._failover(None)
    for server, kind in zip(failover.servers, kinds, strict=True):
        failover.unstored(server, unstored(server, kind))
    raised = failover.none_stored()
    assert type(raised) is error
    assert [f.server for f in raised.failures] == [str(A), str(B), str(C)]
    assert str(raised).startswith(f"job not stored: {A} cannot be reached")


@given(st.lists(st.sampled_from(["fail", "store"]), min_size=1, max_size=12))
def test_every_put_tries_each_server_at_most_once_and_either_stores_or_says_all(
    script: list[str],
) -> None:
    # Put after put, each server answering as scripted: a put tries each server at most
    # once, and ends stored on one, or with every server's failure in the order tried.
    clock, answers = Clock(), iter(script * 3)
    producer = core(clock)
    for _ in range(len(script)):
        failover = producer._failover(None)
        tried: list[Address] = []
        stored = False
        for server in failover.servers:
            tried.append(server)
            if next(answers, "store") == "store":
                failover.stored(server, 1)
                stored = True
                break
            failover.unstored(server, unstored(server))
        assert len(tried) == len(set(tried)) <= 3
        if not stored:
            assert [f.server for f in failover.none_stored().failures] == [str(s) for s in tried]
            assert len(tried) == 3
        clock.now += 1
