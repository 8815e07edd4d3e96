"""The de-duplication round trips (producing/dedup.py), driven by hand: what each write
sends, what each reply leads to."""

from __future__ import annotations

from tubeworker.beanstalk import protocol as p
from tubeworker.producing import dedup

KEY = "order-42"
TUBE = dedup.dedup_tube(KEY)


def _stats(*, ready: int = 0, delayed: int = 0) -> p.TubeStats:
    return p.TubeStats(TUBE, 0, ready, 0, delayed, 0, ready + delayed, 0, 0, 0, 0, 0, 0, 0)


def _run(steps: dedup.Steps, replies: list[p.Reply]) -> tuple[list[p.Command], int | None]:
    sent: list[p.Command] = []
    try:
        commands = next(steps)
        while True:
            sent += commands
            commands = steps.send([replies.pop(0) for _ in commands])
    except StopIteration as done:
        assert replies == []
        return sent, done.value


def test_no_marker_tube_is_no_duplicate_and_uses_nothing() -> None:
    sent, found = _run(dedup.check(KEY), [p.NotFound()])
    assert sent == [p.StatsTube(TUBE)]
    assert found is None


def test_a_delayed_marker_names_the_first_job() -> None:
    replies: list[p.Reply] = [_stats(delayed=1), p.Using(TUBE), p.Found(7, b"1234")]
    sent, found = _run(dedup.check(KEY), replies)
    assert sent == [p.StatsTube(TUBE), p.Use(TUBE), p.PeekDelayed()]
    assert found == 1234


def test_expired_markers_are_deleted_and_the_job_is_no_duplicate() -> None:
    replies: list[p.Reply] = [
        _stats(ready=2), p.Using(TUBE), p.Found(7, b"1"), p.Deleted(), p.Found(8, b"2"),
        p.Deleted(),
    ]  # fmt: skip
    sent, found = _run(dedup.check(KEY), replies)
    assert sent[2:] == [p.PeekReady(), p.Delete(7), p.PeekReady(), p.Delete(8)]
    assert found is None


def test_a_refused_use_asks_nothing_more_and_puts_no_marker_elsewhere() -> None:
    sent, found = _run(dedup.check(KEY), [_stats(delayed=1), p.BadFormat()])
    assert sent == [p.StatsTube(TUBE), p.Use(TUBE)]
    assert found is None
    sent, _ = _run(dedup.mark(KEY, 1234, 600), [p.BadFormat()])
    assert sent == [p.Use(TUBE)]


def test_the_marker_is_put_delayed_with_the_jobs_id() -> None:
    sent, _ = _run(dedup.mark(KEY, 1234, 600), [p.Using(TUBE), p.Inserted(9)])
    assert sent == [p.Use(TUBE), p.Put(b"1234", 0, 600, 1)]
