"""`tubeworker top`'s modules: the model under fed events with an injected clock (top_model:
rates over windows, summaries, drops, state, in flight, backlog), what it reads of /status
and /metrics (top_feed: a URL that answers but is not a control plane told apart from one
that does not answer, through httpx's in-memory transport), and the renderer's exact lines
for a known model (top_view). No server, no terminal."""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import CloseReason, ConnectionClosed

from tests.support.waiting import wait_until
from tubeworker.cli.top import poll_once, top, watch_daemon
from tubeworker.cli.top_feed import (
    ApiTotals,
    MetricsSnapshot,
    NotControlPlane,
    StatusSnapshot,
    TubeFacts,
    describe_error,
    normalize_url,
    parse_metrics,
    parse_status,
    read_status,
)
from tubeworker.cli.top_model import DaemonView, RateWindow, TopModel, backlog_seconds, tube_rows
from tubeworker.cli.top_view import DASH, Screen, format_count, format_seconds, render, summary_line
from tubeworker.observe.events import EventBus

URL = "http://127.0.0.1:9090"


def job(tube: str, handler: str, outcome: str = "deleted", **extra: Any) -> dict[str, Any]:
    return {"type": "job", "job_id": 1, "tube": tube, "handler": handler, "outcome": outcome,
            "cause": "completed", "duration": 0.01, "at": 0.0, **extra}  # fmt: skip


def streaming(at: float = 1000.0) -> DaemonView:
    view = DaemonView(URL)
    view.on_event({"type": "hello", "pid": 4242, "at": 0.0}, at)
    return view


# --------------------------------------------------------------------------- rate windows


def test_given_marks_over_time_then_a_window_counts_only_its_own() -> None:
    window = RateWindow()
    for at in (100.0, 105.0, 109.5, 110.0):
        window.add(at)
    assert window.count(110.0, 10) == 3  # (100, 110]: 100 itself is out
    assert window.count(110.0, 60) == 4
    assert window.count(115.0, 10) == 2


def test_given_marks_close_together_then_they_share_one_and_old_ones_are_forgotten() -> None:
    window = RateWindow()
    window.add(100.0, 3)
    window.add(100.05, 2)  # within a tenth of a second: the same mark
    assert len(window._marks) == 1
    assert window.count(100.05, 10) == 5
    window.add(170.0)
    assert window.count(170.0, 3600) == 1  # only a minute is kept


# --------------------------------------------------------------------------- the model


def test_given_job_events_then_rates_cover_the_window_or_the_stream_so_far() -> None:
    view = streaming(1000.0)
    for second in range(1, 5):  # 4 jobs in the stream's first 4 s
        view.on_event(job("emails", "send"), 1000.0 + second)
    flows = list(view.flows.values())
    assert view.rate(flows, "done", 1004.0, 10) == pytest.approx(1.0)  # 4 jobs / 4 s so far
    assert view.rate(flows, "done", 1000.5, 10) == 0.0  # never over less than a second
    # 30 s later: nothing in the last 10 s; 4 in the last minute, over 34 s of stream.
    assert view.rate(flows, "done", 1034.0, 10) == 0.0
    assert view.rate(flows, "done", 1034.0, 60) == pytest.approx(4 / 34)
    # Past a minute the long window is a full minute.
    view.on_event(job("emails", "send"), 1100.0)
    assert view.rate(flows, "done", 1100.0, 60) == pytest.approx(1 / 60)


def test_given_failures_then_released_and_buried_are_counted_per_minute() -> None:
    view = streaming(1000.0)
    view.on_event(job("emails", "send", "released"), 1010.0)
    view.on_event(job("emails", "send", "released"), 1020.0)
    view.on_event(job("emails", "send", "buried"), 1030.0)
    view.on_event(job("emails", "send", "returned"), 1030.0)  # no outcome: not a failure
    [row, handler_row] = tube_rows(view, 1060.0)
    assert row.released_per_min == pytest.approx(2.0)
    assert row.buried_per_min == pytest.approx(1.0)
    assert row.rate_short == 0.0
    assert row.done == 0
    assert handler_row.name == "send"
    assert view.flows["emails", "send"].seen == {"released": 2, "buried": 1, "returned": 1}


def test_given_no_events_stream_then_there_are_no_rates() -> None:
    view = DaemonView(URL)
    view.on_status(status(pid=1, pools={}), 50.0, 5000.0)
    view.on_metrics(MetricsSnapshot(jobs={("e2e", "sleepy", "deleted"): 3}))
    [row, _] = tube_rows(view, 60.0)
    assert (row.done, row.rate_short, row.rate_long, row.released_per_min) == (3, None, None, None)


def test_given_summaries_then_they_are_counted_in_a_row_of_their_own() -> None:
    view = streaming(1000.0)
    view.on_event(job("emails", "send"), 1001.0)
    view.on_event({"type": "jobs_summarised", "outcomes": {"deleted": 40, "buried": 2}}, 1002.0)
    view.on_event({"type": "jobs_summarised", "outcomes": {"deleted": 10}}, 1003.0)
    view.on_event({"type": "jobs_summarised", "outcomes": [1, 2]}, 1003.0)  # malformed: ignored
    rows = tube_rows(view, 1010.0)
    assert [r.name for r in rows] == ["emails", "send", "(summarised)"]
    summarised = rows[-1]
    assert summarised.done == 50  # no /metrics: the events are all there is
    assert summarised.rate_short == pytest.approx(5.0)
    assert summarised.buried_per_min == pytest.approx(12.0)
    everything = [*view.flows.values(), view.summarised]
    assert view.rate(everything, "done", 1010.0, 10) == pytest.approx(5.1)
    # With /metrics the tubes' totals already hold the summarised jobs: no DONE of its own.
    view.on_metrics(MetricsSnapshot(jobs={("emails", "send", "deleted"): 51}))
    assert tube_rows(view, 1010.0)[-1].done is None
    assert tube_rows(view, 1010.0)[0].done == 51


def test_given_events_after_a_scrape_then_totals_move_until_the_next_one() -> None:
    view = streaming(1000.0)
    view.on_event(job("emails", "send"), 1001.0)
    view.on_metrics(MetricsSnapshot(jobs={("emails", "send", "deleted"): 100}))
    assert view.total("emails", "send", "deleted") == 100  # the scrape has that job
    view.on_event(job("emails", "send"), 1002.0)
    view.on_event(job("emails", "send", "buried"), 1002.0)
    assert view.total("emails", "send", "deleted") == 101
    assert view.total("emails", "send", "buried") == 1
    view.on_metrics(MetricsSnapshot(jobs={("emails", "send", "deleted"): 103}))
    assert view.total("emails", "send", "deleted") == 103  # the daemon's count wins
    assert view.total("emails", "send", "buried") == 0


def test_given_drops_then_they_add_up_and_are_noted() -> None:
    view = streaming()
    view.on_status(status(pools={}), 1000.0, 5000.0)
    view.on_event({"type": "dropped", "count": 7}, 1001.0)
    view.on_event({"type": "dropped", "count": 5}, 1002.0)
    view.on_event({"type": "dropped", "count": "junk"}, 1002.0)
    assert view.dropped == 12
    lines = render(TopModel([URL]), 1002.0, stamp="", interval=1)  # an empty model renders
    assert lines[2] == f"{URL}  connecting…"
    model = TopModel([URL])
    model.daemons[URL] = view
    assert (
        "  note: events: 12 missed (this viewer fell behind), 0 summarised (over "
        "events_per_second; not in the tubes' rates)" in render(model, 1002.0, stamp="", interval=1)
    )


def test_given_a_new_stream_then_old_windows_are_forgotten_and_pid_taken() -> None:
    view = streaming(1000.0)
    view.on_event(job("emails", "send"), 1001.0)
    view.on_down("unreachable", "gone", 1002.0, retry_at=1003.0, attempt=1)
    assert view.rate(list(view.flows.values()), "done", 1002.0, 10) is None
    view.on_event({"type": "hello", "pid": 7}, 1010.0)
    assert view.pid == 7
    assert view.rate(list(view.flows.values()), "done", 1011.0, 60) == 0.0
    assert view.flows["emails", "send"].seen == {"deleted": 1}  # counts stay


def test_given_state_events_then_drain_quiet_and_lost_connections_show() -> None:
    view = streaming()
    quiet = []
    for kind in ("quiet", "resume"):
        view.on_event({"type": kind}, 1.0)
        quiet.append(view.quiet)
    assert quiet == [True, False]
    view.on_event({"type": "connection_lost", "pool": "p", "lane": 2, "error": "reset"}, 3.0)
    view.on_event({"type": "drain", "reason": "SIGTERM", "jobs_running": 3}, 4.0)
    view.on_event({"type": "breaker_of_the_future"}, 5.0)  # unknown: ignored
    assert (view.draining, view.drain_reason) == (True, "SIGTERM")
    assert (view.connections_lost, view.last_lost) == (1, "p lane 2: reset")


def test_given_events_from_the_real_bus_then_the_model_reads_them() -> None:
    """The contract with tubeworker.observe.events: the very dicts the daemon sends."""
    now = [100.0]
    bus = EventBus(job_events_per_second=2, clock=lambda: now[0])
    view = DaemonView(URL)
    with bus.subscribe() as subscription:
        bus.publish("hello", pid=1)
        for _ in range(5):
            bus.job(job_id=1, tube="t", handler="h", outcome="deleted", cause="completed")
        now[0] += 1
        bus.job(job_id=2, tube="t", handler="h", outcome="buried", cause="poison")
        bus.publish("drain", reason="SIGTERM", jobs_running=0)
        events = subscription._queue
        for event in list(events):
            view.on_event(event, 100.0)
    assert view.flows["t", "h"].seen == {"deleted": 2, "buried": 1}
    assert view.summarised.seen == {"deleted": 3}
    assert view.draining


def test_given_a_status_then_pools_lanes_uptime_and_in_flight_are_read() -> None:
    view = DaemonView(URL)
    view.on_status(status(), 1000.0, 5000.0)
    assert view.state == "up"
    assert view.pid == 4242
    assert view.up_since == 700.0  # started 300 s before the wall clock's 5000
    assert [(p.name, p.lanes, p.lanes_connected, p.jobs) for p in view.pools] == [
        ("pool0", 2, 1, 3),
        ("pool1", 2, 2, 1),
    ]
    tubes = {"emails", "tenant-a", "tenant-b"}
    # The daemon says it per tube: a pool of several tubes too, 0 for a tube with none.
    assert [view.in_flight(t, tubes) for t in sorted(tubes)] == [3, 0, 1]


def test_given_a_daemon_without_in_flight_by_tube_then_a_pools_count_goes_to_its_only_tube() -> (
    None
):
    view = DaemonView(URL)
    older = {key: value for key, value in STATUS.items() if key != "in_flight_by_tube"}
    view.on_status(parse_status(older), 1000.0, 5000.0)
    assert view.in_flight_by_tube is None
    tubes = {"emails", "tenant-a", "tenant-b"}
    assert view.in_flight("emails", tubes) == 3
    assert view.in_flight("tenant-a", tubes) is None  # its pool works on two tubes
    assert view.in_flight("tenant-a", {"tenant-a"}) == 1
    assert view.in_flight("elsewhere", tubes) is None
    # A pattern never matches tubeworker's own tubes (tubeworker.tubes.matches_any).
    view.on_status(parse_status({**older, "pools": {"p": {"tubes": ["*"], "jobs": 2}}}), 0, 0)
    assert view.in_flight("work", {"work", "tubeworker.buried.work"}) == 2


def test_given_a_status_with_apis_then_their_breaker_windows_are_kept() -> None:
    apis = [{"api": "mailer", "state": "open", "calls": 20, "failures": 12, "trips": 2}, "junk"]
    assert [
        (a.name, a.state, a.window_calls, a.window_failures, a.trips)
        for a in status(apis=apis).apis.values()
    ] == [("mailer", "open", 20, 12, 2)]
    assert status(apis={"m": {"state": "closed"}}).apis["m"].window_calls is None


# --------------------------------------------------------------------------- /metrics

METRICS_TEXT = """\
# HELP tubeworker_jobs_total Jobs that ended, by tube, handler, outcome and cause
# TYPE tubeworker_jobs_total counter
tubeworker_jobs_total{cause="completed",handler="send",outcome="deleted",tube="emails"} 120.0
tubeworker_jobs_total{cause="handler_error",handler="send",outcome="released",tube="emails"} 2.0
tubeworker_jobs_total{cause="timeout",handler="send",outcome="released",tube="emails"} 1.0
tubeworker_jobs_total{cause="completed",handler="audit",outcome="deleted",tube="emails"} 7.0
tubeworker_jobs_total{cause="completed",handler="resize",outcome="deleted",tube="tenant-a"} 5.0
tubeworker_jobs_total{cause="poison",handler="resize",outcome="buried",tube="tenant-b"} 2.0
# HELP tubeworker_tube_jobs Jobs in a tube by state (stats-tube)
# TYPE tubeworker_tube_jobs gauge
tubeworker_tube_jobs{server="a:11300",state="ready",tube="emails"} 30.0
tubeworker_tube_jobs{server="b:11300",state="ready",tube="emails"} 10.0
tubeworker_tube_jobs{server="a:11300",state="buried",tube="emails"} 99.0
tubeworker_tube_jobs{server="b:11300",state="buried",tube="emails"} 1.0
tubeworker_tube_jobs{server="a:11300",state="delayed",tube="emails"} 7.0
tubeworker_tube_jobs{server="a:11300",state="ready",tube="tenant-a"} 0.0
tubeworker_tube_jobs{server="a:11300",state="buried",tube="tenant-a"} 0.0
tubeworker_tube_jobs{server="a:11300",state="ready",tube="tenant-b"} 3.0
tubeworker_tube_jobs{server="a:11300",state="buried",tube="tenant-b"} 2.0
# HELP tubeworker_tube_backlog_seconds Ready jobs divided by this process's recent throughput
# TYPE tubeworker_tube_backlog_seconds gauge
tubeworker_tube_backlog_seconds{server="a:11300",tube="emails"} 56.25
tubeworker_tube_backlog_seconds{server="b:11300",tube="emails"} 18.75
tubeworker_tube_backlog_seconds{server="a:11300",tube="tenant-a"} 0.0
tubeworker_tube_backlog_seconds{server="a:11300",tube="tenant-b"} +Inf
# HELP tubeworker_jobs_in_flight Handlers running now
# TYPE tubeworker_jobs_in_flight gauge
tubeworker_jobs_in_flight 4.0
# HELP tubeworker_api_calls Calls reported per API, by result
# TYPE tubeworker_api_calls counter
tubeworker_api_calls_total{api="mailer",result="success"} 1480.0
tubeworker_api_calls_total{api="mailer",result="failure"} 37.0
tubeworker_api_calls_total{api="mailer",result="caller_fault"} 3.0
"""

METRICS_SNAPSHOT = parse_metrics(METRICS_TEXT)

STATUS: dict[str, Any] = {
    "pid": 4242,
    "started": 4700.0,
    "draining": False,
    "drain_reason": None,
    "quiet": False,
    "jobs_running": 4,
    "in_flight_by_tube": {"emails": 3, "tenant-b": 1},
    "counters": {"deleted": 132},
    "pools": {
        "pool0": {
            "tubes": ["emails"],
            "slots": 10,
            "jobs": 3,
            "lanes": [{"connected": True}, {"connected": False}],
        },
        "pool1": {  # a pattern pool lists the tubes it found
            "tubes": ["tenant-a", "tenant-b"],
            "slots": 4,
            "jobs": 1,
            "lanes": [{"connected": True}, {"connected": True}],
        },
    },
}


def status(**fields: Any) -> StatusSnapshot:
    """A /status as the daemon sends it (STATUS), with ``fields`` changed."""
    return parse_status({**STATUS, **fields})


def test_given_metrics_text_then_totals_by_outcome_and_depths_summed_over_servers() -> None:
    snapshot = METRICS_SNAPSHOT
    assert snapshot.jobs == {
        ("emails", "send", "deleted"): 120,
        ("emails", "send", "released"): 3,  # causes summed
        ("emails", "audit", "deleted"): 7,
        ("tenant-a", "resize", "deleted"): 5,
        ("tenant-b", "resize", "buried"): 2,
    }
    assert snapshot.tubes["emails"] == TubeFacts(ready=40, buried=100, backlog_seconds=75.0)
    assert snapshot.tubes["tenant-a"] == TubeFacts(ready=0, buried=0, backlog_seconds=0.0)
    backlog = snapshot.tubes["tenant-b"].backlog_seconds
    assert backlog is not None
    assert math.isinf(backlog)
    # Calls count caller faults (as the breaker does); failures are the API's.
    assert snapshot.apis == {"mailer": ApiTotals(calls=1520, failures=37)}


def test_given_text_that_is_not_prometheus_then_parsing_fails_with_value_error() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the parser's own message)
        parse_metrics("this is { not metrics\n")


# --------------------------------------------------------------------------- the renderer


def known_model() -> TopModel:
    """One daemon up (two pools, three tubes, events for 10 s), one unreachable."""
    down = "http://10.0.0.2:9090"
    model = TopModel([URL, down])
    view = model.daemons[URL]
    view.on_status(status(), 1000.0, 5000.0)
    view.on_event({"type": "hello", "pid": 4242}, 1000.0)
    for second in range(1, 11):
        view.on_event(job("emails", "send"), 1000.0 + second)
    view.on_event(job("emails", "send", "released"), 1005.0)
    view.on_event(job("tenant-a", "resize"), 1008.0)
    view.on_event({"type": "jobs_summarised", "outcomes": {"deleted": 30}}, 1009.0)
    view.on_event({"type": "dropped", "count": 4}, 1009.0)
    view.on_metrics(METRICS_SNAPSHOT)  # scraped after those events: they are in its totals
    model.on_down(down, "unreachable", "ConnectError: Connection refused", 1008.0,
                  retry_at=1012.0, attempt=3)  # fmt: skip
    return model


# What render() draws for known_model() (the table's columns have fixed widths).
KNOWN_SCREEN = """\
tubeworker top  2 daemons  every 1s  12:00:00

http://127.0.0.1:9090  pid 4242  running  jobs 4  lanes 3/4  up 5m10s  10s 4.1/s  1m 4.1/s
  pool pool0            tubes emails                         lanes 1/2  jobs 3/10
  pool pool1            tubes tenant-a, tenant-b             lanes 2/2  jobs 1/4
  TUBE / HANDLER               DONE   10s/s    1m/s  REL/m  BUR/m  FLIGHT   READY  BURIED  BACKLOG  API
  emails                        127     1.0     1.0    6.0    0.0       3      40     100      40s  —
    audit                         7     0.0     0.0    0.0    0.0                                   —
    send                        120     1.0     1.0    6.0    0.0                                   —
  tenant-a                        5     0.1     0.1    0.0    0.0       0       0       0       0s  —
    resize                        5     0.1     0.1    0.0    0.0                                   —
  tenant-b                        0     0.0     0.0    0.0    0.0       1       3       2        ∞  —
    resize                        0     0.0     0.0    0.0    0.0                                   —
  (summarised)                          3.0     3.0    0.0    0.0                                   —
  note: events: 4 missed (this viewer fell behind), 30 summarised (over events_per_second; not in the tubes' rates)

http://10.0.0.2:9090  unreachable: ConnectError: Connection refused  (retry in 2s, attempt 3)

key: DONE jobs deleted since the daemon started · 10s/s, 1m/s jobs done a second over 10 s, 1 min ·
     REL/m, BUR/m released, buried a minute over 1 min · FLIGHT jobs held now · READY, BURIED jobs
     in beanstalkd now, servers summed · BACKLOG READY ÷ 1m/s, the time the ready jobs take at that
     rate (without events: the daemon's own estimate)
"""  # noqa: E501 (the screen as drawn)


def test_given_a_known_model_then_the_screen_is_these_exact_lines() -> None:
    lines = render(known_model(), 1010.0, stamp="12:00:00", interval=1)
    assert lines == KNOWN_SCREEN.splitlines()


def test_given_a_known_model_then_the_plain_line_sums_each_daemon() -> None:
    line = summary_line(known_model(), 1010.0, stamp="12:00:00")
    assert line == (
        "12:00:00  http://127.0.0.1:9090 pid 4242 running jobs 4 lanes 3/4 done 132 released 3"
        " buried 2 10s 4.1/s 1m 4.1/s | http://10.0.0.2:9090  unreachable: ConnectError: "
        "Connection refused  (retry in 2s, attempt 3)"
    )


def test_given_a_known_model_then_each_tubes_backlog_is_its_ready_jobs_at_its_own_rate() -> None:
    """The daemon's estimate (1m15s for emails: 40 ready ÷ a moving average of its
    throughput) would contradict the 1.0/s on the same row: the row's figure is used."""
    rows = {row.name: row for row in tube_rows(known_model().daemons[URL], 1010.0)}
    emails = rows["emails"]
    assert (emails.ready, emails.rate_long) == (40, pytest.approx(1.0))
    assert emails.backlog == pytest.approx(40.0)
    assert (rows["tenant-a"].backlog, rows["tenant-b"].backlog) == (0.0, math.inf)


@pytest.mark.parametrize(
    ("ready", "rate", "estimate", "backlog"),
    [
        (40, 2.0, 75.0, 20.0),  # at the row's rate
        (40, 0.0, 75.0, math.inf),  # not moving
        (0, 0.0, 75.0, 0.0),  # nothing to do
        (40, None, 75.0, 75.0),  # no events stream (--once): the daemon's estimate
        (None, 2.0, None, None),  # depth unknown
    ],
)
def test_backlog_is_ready_over_the_rate(
    ready: int | None, rate: float | None, estimate: float | None, backlog: float | None
) -> None:
    assert backlog_seconds(ready, rate, estimate) == backlog


def test_given_apis_drain_and_lost_connections_then_they_are_rendered() -> None:
    model = known_model()
    view = model.daemons[URL]
    apis = {
        "mailer": {"state": "half_open", "calls": 20, "failures": 12, "trips": 2},
        "sms": {"state": "closed"},
    }
    view.on_status(status(apis=apis), 1010.0, 5010.0)
    view.on_event({"type": "drain", "reason": "SIGTERM"}, 1010.0)
    view.on_event({"type": "connection_lost", "pool": "pool0", "lane": 1, "error": "EOF"}, 1010.0)
    lines = render(model, 1010.0, stamp="", interval=0.5)
    assert lines[0] == "tubeworker top  2 daemons  every 0.5s"
    assert lines[2].startswith("http://127.0.0.1:9090  pid 4242  draining  jobs 4")
    # Totals since the daemon started (/metrics), as the header says; the breaker's window
    # (/status) apart, in words.
    assert lines[14:22] == [
        "  API                      STATE      TOTAL CALLS   FAILED  TRIPS  IN BREAKER WINDOW",
        "  mailer                   half_open         1520       37      2  12 of 20 failed",
        "  sms                      closed               —        —      —  —",
        "  note: draining: SIGTERM",
        "  note: events: 4 missed (this viewer fell behind), 30 summarised "
        "(over events_per_second; not in the tubes' rates)",
        "  note: beanstalkd connections lost: 1 (pool0 lane 1: EOF)",
        "",
        "http://10.0.0.2:9090  unreachable: ConnectError: Connection refused  (retry in 2s, "
        "attempt 3)",
    ]
    assert "IN BREAKER WINDOW the calls the breaker judges now (its sliding window)" in " ".join(
        " ".join(line.split()) for line in lines[-4:]
    )


def test_given_tubes_of_tubeworkers_own_then_they_get_no_row() -> None:
    view = streaming()
    view.on_status(status(pools={"p": {"tubes": ["work", "tubeworker.limit.x.running"]}}), 0, 0)
    view.on_event(job("tubeworker.buried.work", "h"), 1001.0)
    view.on_metrics(
        parse_metrics(
            'tubeworker_tube_jobs{server="a",state="ready",tube="tubeworker.buried.work"} 5\n'
            'tubeworker_jobs_total{tube="tubeworker.x",handler="h",outcome="deleted"} 1\n'
        )
    )
    assert [row.name for row in tube_rows(view, 1001.0)] == ["work"]


def test_given_text_from_a_daemon_with_control_characters_then_the_terminal_never_gets_them() -> (
    None
):
    model = TopModel([URL])
    view = model.daemons[URL]
    view.on_status(status(pools={"p\x1b[2J": {"tubes": ["t"]}}), 0.0, 0.0)
    view.on_event({"type": "drain", "reason": "bye\x1b]0;title\x07"}, 0.0)
    lines = render(model, 0.0, stamp="", interval=1)
    assert "  pool p?[2J" in "\n".join(lines)
    assert "  note: draining: bye?]0;title?" in lines
    assert all(line.isprintable() for line in lines)
    assert summary_line(model, 0.0, stamp="").isprintable()


def test_given_a_daemon_that_was_seen_then_went_away_then_it_says_when() -> None:
    view = DaemonView(URL)
    view.on_status(status(), 1000.0, 5000.0)
    view.on_down("unreachable", "events stream closed", 1090.0, retry_at=None, attempt=0)
    model = TopModel([URL])
    model.daemons[URL] = view
    assert render(model, 1100.0, stamp="", interval=1)[2] == (
        f"{URL}  unreachable: events stream closed  last seen 1m40s ago"
    )


def test_given_an_idle_tube_then_it_has_a_row_and_no_handler_rows() -> None:
    view = streaming()
    view.on_status(status(pools={"p": {"tubes": ["quiet-tube"], "lanes": []}}), 0.0, 0.0)
    rows = tube_rows(view, 1000.0)
    assert [(r.name, r.done, r.in_flight) for r in rows] == [("quiet-tube", 0, 0)]


def test_given_a_long_tube_name_then_columns_stay_in_place() -> None:
    view = streaming()
    view.on_event(job("a-tube-name-much-longer-than-the-column", ""), 1001.0)
    model = TopModel([URL])
    model.daemons[URL] = view
    view.on_status(status(pools={}), 1001.0, 0.0)
    lines = render(model, 1001.0, stamp="", interval=1)
    header, tube, handler = lines[3:6]
    assert tube.startswith("  a-tube-name-much-longer…        1     1.0")
    assert handler.startswith("    (no handler)                  1     1.0")
    assert header.index("DONE") + 4 == tube.index("1     1.0") + 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, DASH), (0.4, "0s"), (59.4, "59s"), (75, "1m15s"), (7260, "2h01m"),
     (90000, "1d01h"), (math.inf, "∞"), (math.nan, DASH)],
)  # fmt: skip
def test_durations(seconds: float | None, text: str) -> None:
    assert format_seconds(seconds) == text


def test_counts_that_do_not_fit_are_shortened() -> None:
    assert format_count(12345678) == "12345678"
    assert format_count(123456789) == "123.5M"
    assert format_count(1234, width=4) == "1234"
    assert format_count(12345, width=4) == "12k"
    assert format_count(10**40) == "many"
    assert format_count(None) == DASH


def test_given_a_terminal_then_the_screen_is_redrawn_in_place_and_fits_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "10")
    monkeypatch.setenv("LINES", "3")
    out = io.StringIO()
    with Screen(out, tty=True) as screen:
        screen.draw(["a line longer than ten", "two"])
        screen.draw(["1", "2", "3", "4", "5"])
    assert out.getvalue() == (
        "\x1b[?1049h\x1b[?25l"  # the alternate screen, no cursor
        "\x1b[Ha line lo\x1b[K\r\ntwo\x1b[K\x1b[J"  # home; lines end before the last column
        "\x1b[H1\x1b[K\r\n2\x1b[K\r\n… 3 more \x1b[K\x1b[J"  # and fit the height
        "\x1b[?25h\x1b[?1049l"  # the terminal as it was
    )


def test_given_no_terminal_then_lines_are_plain() -> None:
    out = io.StringIO()
    with Screen(out, tty=False) as screen:
        screen.line("one summary")
    assert out.getvalue() == "one summary\n"


# --------------------------------------------------------------------------- not a control plane


def answer(status_code: int, body: bytes, content_type: str, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", f"{URL}/status")
    headers["content-type"] = content_type
    return httpx.Response(status_code, content=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("response", "said"),
    [
        (
            answer(404, b"<html>\n<title>404</title></html>", "text/html; charset=utf-8"),
            "/status answered 404 Not Found (text/html): <html> <title>404</title></html>",
        ),
        (
            answer(200, b"<!doctype html><p>welcome</p>", "text/html"),
            "/status answered 200 OK (text/html): <!doctype html><p>welcome</p>, not JSON",
        ),
        (
            answer(200, b'{"status": "ok"}', "application/json"),
            '/status answered JSON without pid, pools, counters: {"status": "ok"}',
        ),
        (
            answer(200, b'[{"pid": 1}]', "application/json"),
            '/status answered JSON without pid, pools, counters: [{"pid": 1}]',
        ),
        (
            answer(200, json.dumps({**STATUS, "pools": []}).encode(), "application/json"),
            "/status answered JSON without pools: {",  # and the start of the document
        ),
        (
            answer(301, b"", "text/plain", location="https://h/status"),
            "/status answered 301 Moved Permanently to https://h/status (text/plain)",
        ),
        (
            answer(404, b"\x1b[2J\x1b]0;owned\x07gone", "text/plain"),
            "/status answered 404 Not Found (text/plain): ?[2J?]0;owned?gone",  # not a terminal's
        ),
    ],
)
def test_given_an_answer_that_is_not_a_tubeworker_status_then_it_says_what_it_was(
    response: httpx.Response, said: str
) -> None:
    with pytest.raises(NotControlPlane) as raised:
        read_status(response)
    assert str(raised.value).startswith(said)
    assert len(str(raised.value)) < 140


def test_given_a_tubeworker_status_or_a_server_error_then_neither_is_not_a_control_plane() -> None:
    assert read_status(answer(200, json.dumps(STATUS).encode(), "application/json")).pid == 4242
    with pytest.raises(httpx.HTTPStatusError):  # a proxy whose daemon is gone: unreachable
        read_status(answer(502, b"bad gateway", "text/plain"))


def fake_server(reply: httpx.Response | Exception) -> httpx.AsyncClient:
    """A client whose every request gets ``reply`` (an answer, or an error: no answer)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(reply, Exception):
            raise reply
        if request.url.path != "/status":
            return httpx.Response(404)
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


@pytest.mark.parametrize(
    ("reply", "state", "header"),
    [
        (
            answer(404, b"<h1>Not Found</h1>", "text/html"),
            "not_control_plane",
            f"{URL}  not a tubeworker control plane: /status answered 404 Not Found (text/html):"
            " <h1>Not Found</h1>",
        ),
        (
            answer(200, b'{"healthy": true}', "application/json"),
            "not_control_plane",
            f"{URL}  not a tubeworker control plane: /status answered JSON without pid, pools,"
            ' counters: {"healthy": true}',
        ),
        (
            httpx.ConnectError("refused"),
            "unreachable",
            f"{URL}  unreachable: ConnectError: refused",
        ),
        (
            httpx.ReadTimeout("timed out"),
            "unreachable",
            f"{URL}  unreachable: no answer within 3s (ReadTimeout)",
        ),
        (
            answer(503, b"", "text/plain"),
            "unreachable",
            f"{URL}  unreachable: /status answered 503",
        ),
    ],
)
async def test_given_a_url_that_answers_otherwise_or_not_at_all_then_top_says_which(
    reply: httpx.Response | Exception, state: str, header: str
) -> None:
    model = TopModel([URL])
    with trio.fail_after(5):
        async with fake_server(reply) as http:
            await poll_once(model, http, URL)
    assert model.daemons[URL].state == state
    assert render(model, 0.0, stamp="", interval=1)[2:] == [header]  # no table, no key
    assert summary_line(model, 0.0, stamp="s") == f"s  {header}"


async def test_given_a_url_that_is_not_a_control_plane_then_the_live_view_says_so_and_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    model = TopModel([URL])
    view = model.daemons[URL]
    reply = answer(200, b'{"status": "ok"}', "application/json")
    async with fake_server(reply) as http, trio.open_nursery() as nursery:
        nursery.start_soon(partial(watch_daemon, model, http, URL, 1.0, rng=random.Random(7)))
        await wait_until(lambda: view.attempt == 3, timeout=60, what="a third attempt")
        nursery.cancel_scope.cancel()
    assert (view.state, view.pid) == ("not_control_plane", None)  # never "running"
    assert render(model, 0.0, stamp="", interval=1)[2].startswith(
        f"{URL}  not a tubeworker control plane: /status answered JSON without pid, pools,"
        ' counters: {"status": "ok"}  (retry in '
    )


async def test_given_a_control_plane_then_poll_once_reads_status_and_metrics() -> None:
    pages = {"/status": json.dumps(STATUS).encode(), "/metrics": METRICS_TEXT.encode()}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=pages[request.url.path])

    model = TopModel([URL])
    with trio.fail_after(5):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
            await poll_once(model, http, URL)
    view = model.daemons[URL]
    assert (view.state, view.metrics) == ("up", METRICS_SNAPSHOT)


# --------------------------------------------------------------------------- errors, URLs


def test_errors_are_one_line_and_groups_are_unwrapped() -> None:
    request = httpx.Request("GET", "http://x/status")
    status_error = httpx.HTTPStatusError(
        "no", request=request, response=httpx.Response(404, request=request)
    )
    assert describe_error(status_error) == "/status answered 404"
    refused = httpx.ConnectError("all attempts failed")
    refused.__cause__ = ExceptionGroup("all", [ConnectionRefusedError(111, "Error connecting")])
    group = ExceptionGroup("x", [refused])
    assert describe_error(group) == "ConnectError: Connection refused"
    closed = ConnectionClosed(CloseReason(1006, None))
    assert describe_error(closed) == "events stream closed (ABNORMAL_CLOSURE, code 1006)"
    assert describe_error(ValueError("a\nb")) == "ValueError: a b"
    assert len(describe_error(RuntimeError("x" * 500))) == 120


def test_urls_get_a_scheme_and_lose_a_trailing_slash() -> None:
    assert normalize_url("127.0.0.1:9090/") == "http://127.0.0.1:9090"
    assert normalize_url("https://h:1") == "https://h:1"
    with pytest.raises(ValueError, match="control-plane URL"):
        normalize_url("ws://h:1")


async def test_given_nothing_listening_then_the_daemon_is_unreachable_not_an_error() -> None:
    from tests.support.beanstalkd import free_port

    url = f"http://127.0.0.1:{free_port()}"
    model = TopModel([url])
    with trio.fail_after(5):
        async with httpx.AsyncClient(timeout=2) as http:
            await poll_once(model, http, url)
    view = model.daemons[url]
    assert view.state == "unreachable"
    assert view.error == "ConnectError: Connection refused"


@pytest.mark.parametrize(("urls", "interval"), [(["ws://x"], 1.0), ([], 0.0), ([], math.inf)])
def test_given_bad_arguments_then_usage_error(urls: list[str], interval: float) -> None:
    args = argparse.Namespace(urls=urls, interval=interval, once=True)
    assert top(args) == 64


def test_given_heartbeats_in_the_status_then_each_is_a_line_saying_ok_held_or_stale() -> None:
    model = known_model()
    beats = [
        {"tube": "emails", "every": 60, "age": 12.4, "held": False, "stale": False},
        {"tube": "partner", "every": 60, "age": 400, "held": True, "stale": False},
        {"tube": "reports", "every": 30, "age": 95, "held": False, "stale": True},
        {"tube": "junk"},  # unreadable: left out
        "junk",
    ]
    model.daemons[URL].on_status(status(heartbeats=beats), 1010.0, 5010.0)
    lines = render(model, 1010.0, stamp="", interval=1)
    assert [line for line in lines if line.lstrip().startswith("heartbeat ")] == [
        "  heartbeat emails                   ok    last ran 12s ago (every 1m00s)",
        "  heartbeat partner                  held  last ran 6m40s ago (every 1m00s)",
        "  heartbeat reports                  STALE last ran 1m35s ago (every 30s)",
    ]
    # a daemon older than heartbeats sends none
    assert status().heartbeats == ()
