"""The dashboard's pure parts: the tube board (rows, history, rates, pages, events), the
fleet's reading of daemons' status, and the ASGI helpers. No server, no sockets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio

from tubeworker.config import load_config
from tubeworker.control.asgi import authorized, json_response
from tubeworker.control.board import EVENT_ROWS, TubeBoard
from tubeworker.control.fleet import LOCAL, Fleet, daemon_url
from tubeworker.control.history import HISTORY_SECONDS, RATE_WINDOW, TUBE_HISTORY_SECONDS
from tubeworker.control.poller import TubeDepth, TubeDepths
from tubeworker.errors import ConfigError
from tubeworker.observe.events import EventBus

SERVER = "127.0.0.1:11300"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def board_with(tubes: dict[str, TubeDepth], clock: Clock | None = None) -> TubeBoard:
    depths = TubeDepths()
    depths.tubes = {(SERVER, name): depth for name, depth in tubes.items()}
    depths.watch_every_tube(3600)  # a page is open
    depths.last_round_every_tube = True
    return TubeBoard(depths, EventBus(), sample_every=5.0, clock=clock or Clock())


def row(board: TubeBoard, tube: str) -> dict[str, Any]:
    return board.row((SERVER, tube), board.depths.tubes[(SERVER, tube)])


# --------------------------------------------------------------------------- rows and rates


def test_given_deletes_over_time_then_done_per_minute_and_backlog_follow() -> None:
    clock = Clock()
    depth = TubeDepth(ready=120, deletes=0)
    board = board_with({"emails": depth}, clock)
    board.on_round()  # the first point
    clock.now += 30
    depth.deletes = 60  # 60 deletes in 30 s: 120 a minute
    board.on_round()
    got = row(board, "emails")
    assert got["done_per_min"] == 120.0
    assert got["backlog_seconds"] == 60.0  # 120 ready at 2 a second


def test_given_ready_jobs_that_do_not_move_then_the_backlog_is_unknown_not_zero() -> None:
    clock = Clock()
    board = board_with({"stuck": TubeDepth(ready=5), "empty": TubeDepth()}, clock)
    board.on_round()
    clock.now += 10
    board.on_round()
    assert row(board, "stuck")["backlog_seconds"] is None  # the page shows ∞
    assert row(board, "empty")["backlog_seconds"] == 0.0


def test_given_ready_jobs_no_connection_watches_then_the_row_says_no_worker() -> None:
    board = board_with(
        {
            "orphan": TubeDepth(ready=32, watching=0),
            "served": TubeDepth(ready=5, watching=2),
            "idle": TubeDepth(ready=0, watching=0),
        }
    )
    board.on_round()
    assert row(board, "orphan")["unwatched"] is True
    assert row(board, "orphan")["backlog_seconds"] is None  # and not moving, as before
    assert row(board, "served")["unwatched"] is False
    assert row(board, "idle")["unwatched"] is False
    assert board.totals()["unwatched"] == 1


def test_given_tubeworkers_own_tubes_then_they_are_shown_only_when_asked_and_never_summed() -> None:
    board = board_with(
        {
            "emails": TubeDepth(ready=3, buried=1),
            "tubeworker.buried.emails": TubeDepth(ready=1),  # the burial's record
            "tubeworker.limit.api.rate": TubeDepth(ready=50),  # tokens
        }
    )
    board.outcomes = lambda: {"emails": (1, 1), "tubeworker.limit.api.rate": (0, 9)}
    board.on_round()
    totals = board.totals()
    assert (totals["tubes"], totals["ready"], totals["buried"]) == (1, 3, 1)
    assert totals["failure_rate"] == 0.5  # emails' only
    page = board.page()
    assert [r["tube"] for r in page["rows"]] == ["emails"]
    assert (page["total"], page["internal_tubes"]) == (1, 2)
    shown = board.page(internal=True)
    assert [r["tube"] for r in shown["rows"]] == [
        "emails",
        "tubeworker.buried.emails",
        "tubeworker.limit.api.rate",
    ]
    assert [r["internal"] for r in shown["rows"]] == [False, True, True]
    assert board.page(sort="ready", desc=True)["rows"][0]["tube"] == "emails"
    assert [p["ready"] for p in board.history.totals] == [3]  # the charts: never summed either


def test_given_a_tube_freed_and_made_again_then_its_history_starts_again() -> None:
    clock = Clock()
    depth = TubeDepth(deletes=500)
    board = board_with({"t": depth}, clock)
    board.on_round()
    clock.now += 10
    depth.deletes = 3  # cmd-delete restarted with the tube
    board.on_round()
    assert list(board.history.tubes[(SERVER, "t")].columns[3]) == [3]  # deletes


def test_given_the_daemons_outcomes_then_the_failure_rate_is_over_the_window() -> None:
    clock = Clock()
    board = board_with({"t": TubeDepth()}, clock)
    totals: dict[str, tuple[int, int]] = {}  # the fleet's counts start at 0, and only grow
    board.outcomes = lambda: totals
    board.on_round()
    clock.now += 10
    totals = {"t": (30, 10)}  # a tube's first outcomes are in the window, not its baseline
    board.on_round()
    assert row(board, "t")["failure_rate"] == 0.25
    assert board.totals()["failure_rate"] == 0.25
    assert board.failure_rate("unknown") is None
    for _ in range(RATE_WINDOW // 5 + 2):  # then only successes, for longer than the window
        clock.now += 5
        totals = {"t": (totals["t"][0] + 1, 10)}
        board.on_round()
    assert row(board, "t")["failure_rate"] == 0.0


def test_given_history_points_then_they_are_sampled_at_most_every_sample_every() -> None:
    clock = Clock()
    depth = TubeDepth(ready=1)
    board = board_with({"t": depth}, clock)
    for _ in range(10):  # a round every second for ten seconds
        board.on_round()
        depth.ready += 1
        clock.now += 1
    assert board.history.spark((SERVER, "t")) == [1, 6]
    assert len(board.history.totals) == 2


def test_given_no_page_open_then_history_is_kept_for_the_first_page() -> None:
    # Given a board fed for two minutes while nobody looks (and nobody listens)
    clock = Clock()
    depth = TubeDepth(ready=10, buried=0)
    board = board_with({"t": depth}, clock)
    board.viewed = lambda: False
    totals = {"t": (0, 0)}
    board.outcomes = lambda: totals
    for second in range(0, 120, 1):
        if second == 60:
            depth.buried, totals = 3, {"t": (9, 3)}  # a burst of burials, a minute in
        board.on_round()
        clock.now += 1
    # Then the first page gets the whole history: the burst where it happened, and the
    # failure rate of the window (known once outcomes were counted)
    points = list(board.history.totals)
    assert len(points) == 24  # every 5 s
    assert [p["buried"] for p in points] == [0] * 12 + [3] * 12
    assert [p["failure_rate"] for p in points[:12]] == [None] * 12  # unknown, not 0
    assert points[-1]["failure_rate"] == 0.25
    assert board.totals()["failure_rate"] == points[-1]["failure_rate"]
    history = board.history.describe()
    assert history["full"] is False
    assert history["since"] == board.history.started_at  # said: collecting since then


def test_given_hours_of_rounds_then_the_history_is_bounded_and_says_what_it_covers() -> None:
    clock = Clock()
    wall = Clock()
    depth = TubeDepth(ready=1)
    depths = TubeDepths()
    depths.tubes = {(SERVER, "t"): depth}
    depths.last_round_every_tube = True
    board = TubeBoard(depths, EventBus(), sample_every=5.0, clock=clock, wall=wall)
    for _ in range(2 * HISTORY_SECONDS // 5):
        board.on_round()
        depth.ready += 1
        clock.now += 5
        wall.now += 5
    assert len(board.history.totals) == HISTORY_SECONDS // 5 == board.history.points
    assert (
        len(board.history.tubes[(SERVER, "t")])
        == TUBE_HISTORY_SECONDS // 5
        == board.history.tube_points
    )
    history = board.history.describe()
    assert history["full"] is True
    assert history["since"] == board.history.totals[0]["at"] == wall.now - HISTORY_SECONDS
    assert len(board.history.trend((SERVER, "t"))) == board.history.tube_points
    assert len(board.history.spark((SERVER, "t"))) == 60


def test_given_deletes_long_ago_then_done_per_minute_counts_the_rate_window_only() -> None:
    clock = Clock()
    depth = TubeDepth(ready=5, deletes=0)
    board = board_with({"t": depth}, clock)
    board.on_round()
    clock.now += 60
    depth.deletes = 600  # 600 deletes in the first minute
    board.on_round()
    for _ in range(RATE_WINDOW // 5 + 1):  # then none, for longer than the window
        clock.now += 5
        board.on_round()
    assert row(board, "t")["done_per_min"] == 0.0
    assert row(board, "t")["backlog_seconds"] is None


# --------------------------------------------------------------------------- pages


def test_given_a_thousand_tubes_then_a_page_is_filtered_sorted_and_bounded() -> None:
    board = board_with({f"tube-{n:04}": TubeDepth(ready=n % 7, buried=n % 3) for n in range(1000)})
    page = board.page(per_page=50, page=3)
    assert (page["total"], page["pages"], page["page"]) == (1000, 20, 3)
    assert [r["tube"] for r in page["rows"]][:2] == ["tube-0100", "tube-0101"]
    assert board.page(q="TUBE-09")["total"] == 100  # case-insensitive substring
    top = board.page(sort="ready", desc=True, per_page=10)["rows"]
    assert {r["ready"] for r in top} == {6}
    assert board.page(page=99)["page"] == 20  # clamped
    assert board.page(per_page=10_000)["per_page"] == 500


def test_given_unknown_values_then_they_sort_after_the_known_ones() -> None:
    clock = Clock()
    moving, stuck = TubeDepth(ready=10), TubeDepth(ready=10)
    board = board_with({"moving": moving, "stuck": stuck}, clock)
    board.on_round()
    clock.now += 10
    moving.deletes = 10
    board.on_round()
    rows = board.page(sort="backlog")["rows"]
    assert [r["tube"] for r in rows] == ["moving", "stuck"]
    assert board.page(sort="no-such-column")["rows"][0]["tube"] == "moving"  # by name


# --------------------------------------------------------------------------- events


async def test_given_a_listener_then_each_round_sends_only_the_rows_that_changed() -> None:
    depth_a, depth_b = TubeDepth(ready=1), TubeDepth(ready=2)
    board = board_with({"a": depth_a, "b": depth_b})
    with board.events.subscribe() as listener:
        board.on_round()
        first = (await listener.next_batch())[-1]
        depth_b.ready = 3
        board.on_round()
        second = (await listener.next_batch())[-1]
        del board.depths.tubes[(SERVER, "a")]
        board.on_round()
        third = (await listener.next_batch())[-1]
    assert first["type"] == "tubes"
    assert {r["tube"] for r in first["rows"]} == {"a", "b"}
    assert [(r["tube"], r["ready"]) for r in second["rows"]] == [("b", 3)]
    assert second["totals"]["ready"] == 4
    assert third["rows"] == []
    assert third["removed"] == [f"{SERVER}|a"]


async def test_given_more_changes_than_an_event_carries_then_it_says_how_many_more() -> None:
    board = board_with({f"t{n}": TubeDepth(ready=n) for n in range(EVENT_ROWS + 25)})
    with board.events.subscribe() as listener:
        board.on_round()
        event = (await listener.next_batch())[-1]
    assert len(event["rows"]) == EVENT_ROWS
    assert event["more"] == 25


async def test_given_no_listener_then_no_event_is_built_and_the_next_listener_gets_all() -> None:
    board = board_with({"a": TubeDepth(ready=1)})
    board.on_round()  # nobody listens: nothing kept as "already sent"
    with board.events.subscribe() as listener:
        board.on_round()
        event = (await listener.next_batch())[-1]
    assert [r["tube"] for r in event["rows"]] == ["a"]


async def test_given_a_listener_but_no_dashboard_page_then_no_tubes_event() -> None:
    board = board_with({"a": TubeDepth(ready=1)})
    board.viewed = lambda: False  # only `tubeworker top` listens
    with board.events.subscribe() as listener:
        board.on_round()
        board.events.publish("marker")
        events = await listener.next_batch()
    assert [e["type"] for e in events] == ["marker"]


def test_given_the_board_then_its_documents_are_valid_json_for_a_browser() -> None:
    board = board_with({"stuck": TubeDepth(ready=3)})
    board.on_round()
    status, _, body, _ = json_response(200, {"page": board.page(), "totals": board.totals()})
    assert status == 200
    assert b"Infinity" not in body
    assert b"NaN" not in body
    with pytest.raises(ValueError, match="Out of range float"):
        json_response(200, {"x": math.inf})


# --------------------------------------------------------------------------- fleet


def status(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": "web-1",
        "pid": 42,
        "started": 1.0,
        "draining": False,
        "quiet": False,
        "jobs_running": 3,
        "counters": {"deleted": 100},
        "pools": {"emails": {"tubes": ["emails"], "slots": 50, "jobs": 3}},
        "apis": {"stripe": {"state": "closed", "calls": 10, "failures": 0}},
        "flow_pauses": {},
        "tube_outcomes": {"emails": {"deleted": 90, "released": 5, "buried": 5}},
    }
    return {**base, **over}


async def test_given_the_local_daemon_then_the_fleet_summarises_it() -> None:
    clock = Clock()
    current = status()
    fleet = Fleet(local_status=lambda: current, clock=clock)
    await fleet.refresh(None)  # type: ignore[arg-type]  # no remote daemon: no HTTP
    clock.now += 30
    current = status(counters={"deleted": 160}, quiet=True)
    await fleet.refresh(None)  # type: ignore[arg-type]
    (worker,) = fleet.summaries()
    assert worker["id"] == LOCAL
    assert (worker["host"], worker["pid"], worker["concurrency"], worker["in_flight"]) == (
        "web-1",
        42,
        50,
        3,
    )
    assert worker["done_per_min"] == 120.0
    assert worker["quiet"] is True
    assert fleet.outcomes() == {"emails": (90, 10)}


async def test_given_several_daemons_then_apis_show_the_worst_state_and_pauses_their_api() -> None:
    fleet = Fleet(["10.0.0.2:9090", "http://10.0.0.3:9090/"], local_status=status)
    fleet.workers["http://10.0.0.2:9090"].record(
        status(
            apis={"stripe": {"state": "open", "next_probe_in": 4.0}},
            flow_pauses={"stripe": ["payments"]},
        ),
        1.0,
    )
    await fleet._refresh_one(None, fleet.workers[LOCAL])  # type: ignore[arg-type]
    (api,) = fleet.apis()
    assert api["api"] == "stripe"
    assert api["state"] == "open"
    assert {w["worker"] for w in api["workers"]} == {LOCAL, "http://10.0.0.2:9090"}
    assert fleet.flow_pauses() == {"payments": ["stripe"]}
    assert list(fleet.workers) == [LOCAL, "http://10.0.0.2:9090", "http://10.0.0.3:9090"]
    assert fleet.unread  # 10.0.0.3 was never asked


async def test_given_a_remote_daemon_then_outcomes_count_from_its_first_read() -> None:
    fleet = Fleet(["10.0.0.2:9090"])
    worker = fleet.workers["http://10.0.0.2:9090"]
    outcomes = {"emails": {"deleted": 90, "buried": 10}}  # before the dashboard: not counted
    fleet._count(worker.record(status(tube_outcomes=outcomes), 1.0))
    assert fleet.outcomes() == {}
    outcomes = {"emails": {"deleted": 95, "buried": 12}, "sms": {"released": 1}}
    fleet._count(worker.record(status(tube_outcomes=outcomes), 2.0))
    assert fleet.outcomes() == {"emails": (5, 2), "sms": (0, 1)}
    restarted = status(started=2.5, tube_outcomes={"emails": {"deleted": 3}})
    fleet._count(worker.record(restarted, 3.0))  # all its counts are since the last read
    assert fleet.outcomes() == {"emails": (8, 2), "sms": (0, 1)}


def handler_status(deleted: int, buried: int, runs: int, seconds: float, slow: int) -> Any:
    """A /status "handlers" section: ``runs`` runs, ``slow`` of them over 300 s."""
    fast = runs - slow
    buckets = [["0.1", fast], ["300.0", fast], ["+Inf", runs]]
    return {
        "send": {
            "tubes": ["emails"],
            "outcomes": {"deleted": deleted, "buried": buried},
            "run_seconds": {"count": runs, "sum": seconds, "buckets": buckets},
        }
    }


def test_given_two_daemons_then_a_handler_is_summed_over_the_last_minute() -> None:
    clock = Clock()
    fleet = Fleet(["10.0.0.2:9090", "10.0.0.3:9090"], clock=clock)
    one, two = fleet.workers.values()
    one.record(status(handlers=handler_status(100, 0, 100, 5.0, 0)), clock.now)
    two.record(status(handlers=handler_status(50, 5, 55, 2.0, 0)), clock.now)
    assert fleet.handlers()[0]["done_per_min"] is None  # one read each: no rate yet
    clock.now += 30
    one.record(status(handlers=handler_status(130, 0, 130, 6.5, 0)), clock.now)  # 30 in 30 s
    two.record(status(handlers=handler_status(60, 10, 70, 3.0, 0)), clock.now)
    (send,) = fleet.handlers()
    assert (send["handler"], send["tubes"], send["workers"]) == ("send", ["emails"], 2)
    assert (send["done"], send["failed"]) == (190, 10)  # totals since each daemon started
    assert send["done_per_min"] == 80.0  # 60 + 20
    assert send["buried_per_min"] == 10.0
    assert send["runs"] == 45
    assert send["run_mean"] == round(2.5 / 45, 6)
    assert (send["run_p95"], send["run_p95_above"]) == (0.1, False)
    clock.now += 30
    one.record(status(handlers=handler_status(131, 0, 140, 3006.5, 10)), clock.now)
    (send,) = fleet.handlers()
    assert (send["run_p95"], send["run_p95_above"]) == (300.0, True)  # over the last bound


def test_given_daemon_addresses_then_they_become_urls() -> None:
    assert daemon_url("127.0.0.1:9090") == "http://127.0.0.1:9090"
    assert daemon_url("https://w.example:9090/") == "https://w.example:9090"


# --------------------------------------------------------------------------- tokens


def test_given_a_token_then_only_the_exact_bearer_header_is_authorized() -> None:
    def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"headers": list(headers)}

    assert authorized(scope((b"authorization", b"Bearer s3cret")), "s3cret")
    assert authorized(scope((b"Authorization", b"Bearer s3cret")), "s3cret")
    assert not authorized(scope((b"authorization", b"Bearer s3cre")), "s3cret")
    assert not authorized(scope((b"authorization", b"s3cret")), "s3cret")
    assert not authorized(scope(), "s3cret")
    assert not authorized(scope((b"authorization", b"Bearer ")), None)  # no token: never


def test_given_depths_then_waking_the_poller_needs_no_running_loop() -> None:
    depths = TubeDepths()
    depths.poke()
    depths.watch_every_tube(10)
    assert depths.every_tube
    assert isinstance(depths._wake, trio.Event)


# --------------------------------------------------------------------------- config


def test_given_control_daemons_then_they_are_read_and_bad_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(
        '[[pool]]\ntubes = ["a"]\n[control]\ndaemons = ["10.0.0.2:9090", "http://[::1]:9091"]\n'
    )
    assert load_config(str(path), env={}).control.daemons == ("10.0.0.2:9090", "http://[::1]:9091")
    path.write_text('[[pool]]\ntubes = ["a"]\n[control]\ndaemons = ["http://h:9090/status"]\n')
    with pytest.raises(ConfigError, match="daemons"):
        load_config(str(path), env={})
