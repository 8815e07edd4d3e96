"""Batch limits: free slots, bytes of bodies, and the cap a failing link halves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tubeworker.runtime.batching import LIVELOCK_STREAK, BatchLimits


def test_given_no_body_seen_then_every_free_slot_is_asked_for() -> None:
    assert BatchLimits(50, 256 * 1024).wanted(held=10) == 40


def test_given_large_bodies_then_a_batch_fits_batch_bytes() -> None:
    limits = BatchLimits(50, 256 * 1024)
    limits.saw_body(40_000)
    assert limits.wanted(held=0) == 6  # 262144 // 40000
    limits.saw_body(10_000_000)
    assert limits.wanted(held=0) == 1  # never less than one


def test_given_losses_before_any_confirmation_then_the_cap_halves_and_grows_back() -> None:
    limits = BatchLimits(50, 2**20)
    alarms = [limits.connection_lost(owed=3, confirmed=0) for _ in range(LIVELOCK_STREAK)]
    assert alarms == [False] * (LIVELOCK_STREAK - 1) + [True]
    assert limits.cap == 25
    assert limits.wanted(held=0) == 25
    for _ in range(25):
        limits.confirmed()
    assert limits.cap == 50
    assert limits.fruitless == 0


def test_given_a_loss_after_confirmations_then_no_alarm() -> None:
    limits = BatchLimits(50, 2**20)
    for _ in range(LIVELOCK_STREAK + 2):
        assert not limits.connection_lost(owed=3, confirmed=1)
        assert not limits.connection_lost(owed=0, confirmed=0)
    assert limits.cap == 50


@given(st.integers(1, 1000), st.integers(0, 1000), st.lists(st.integers(0, 10**7), max_size=20))
def test_wanted_is_never_more_than_free_and_never_negative(
    slots: int, held: int, bodies: list[int]
) -> None:
    limits = BatchLimits(slots, 256 * 1024)
    for size in bodies:
        limits.saw_body(size)
    wanted = limits.wanted(held=min(held, slots))
    assert 0 <= wanted <= slots - min(held, slots)


def test_given_a_dry_tube_then_the_next_batch_asks_one_more_than_it_got() -> None:
    limits = BatchLimits(50, 2**20)
    assert limits.wanted(held=0) == 50  # nothing known yet: every free slot
    limits.reserved(asked=50, got=0)
    assert limits.wanted(held=0) == 1  # an idle tube: one reserve, not fifty
    limits.reserved(asked=1, got=1)
    assert limits.wanted(held=1) == 2  # jobs come: twice as many
    limits.reserved(asked=2, got=2)
    limits.reserved(asked=4, got=4)
    limits.reserved(asked=8, got=3)
    assert limits.wanted(held=0) == 4  # it ran dry after three


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=30))
def test_the_probe_stays_between_one_and_the_slots(batches: list[tuple[int, int]]) -> None:
    limits = BatchLimits(50, 2**20)
    for asked, got in batches:
        limits.reserved(asked, min(got, asked))
        assert 1 <= limits.wanted(held=0) <= 50
