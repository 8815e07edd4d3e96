"""``tubeworker top``, the view: the model (:mod:`top_model`) as lines of text with fixed
column widths (:func:`render`, :func:`summary_line`), and the :class:`Screen` they go to.
The renderer is pure: the caller passes the time and the clock's stamp.

Below the daemons a key says what each column counts and over which window.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from collections.abc import Sequence
from typing import Final, TextIO

from tubeworker.cli.top_feed import PoolView, fit, printable
from tubeworker.cli.top_model import (
    LONG,
    SHORT,
    SUMMARISED,
    DaemonView,
    Row,
    TopModel,
    tube_rows,
)

__all__ = [
    "DASH",
    "INFINITY",
    "Screen",
    "format_count",
    "format_rate",
    "format_seconds",
    "render",
    "render_daemon",
    "summary_line",
]

DASH: Final = "—"
INFINITY: Final = "∞"

# (header, width, align)
_COLUMNS: Final = (
    ("TUBE / HANDLER", 24, "<"),
    ("DONE", 8, ">"),
    ("10s/s", 7, ">"),
    ("1m/s", 7, ">"),
    ("REL/m", 6, ">"),
    ("BUR/m", 6, ">"),
    ("FLIGHT", 7, ">"),
    ("READY", 7, ">"),
    ("BURIED", 7, ">"),
    ("BACKLOG", 8, ">"),
    ("API", 6, "<"),
)
_INDENT: Final = "  "
_KEY_WIDTH: Final = 100
_TUBES_KEY: Final = (
    "DONE jobs deleted since the daemon started · 10s/s, 1m/s jobs done a second over 10 s,"
    " 1 min · REL/m, BUR/m released, buried a minute over 1 min · FLIGHT jobs held now ·"
    " READY, BURIED jobs in beanstalkd now, servers summed · BACKLOG READY ÷ 1m/s, the time"
    " the ready jobs take at that rate (without events: the daemon's own estimate)"
)
_APIS_KEY: Final = (
    "TOTAL CALLS, FAILED, TRIPS since the daemon started · IN BREAKER WINDOW the calls"
    " the breaker judges now (its sliding window)"
)
_DOWN_WORDS: Final = {
    "unreachable": "unreachable",
    "not_control_plane": "not a tubeworker control plane",
}


def format_rate(rate: float | None) -> str:
    if rate is None:
        return DASH
    return f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"


def format_count(count: int | None, width: int = 8) -> str:
    if count is None:
        return DASH
    text = str(count)
    if len(text) <= width:
        return text
    for divisor, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        scaled = count / divisor
        if scaled >= 1000:
            continue
        for text in (f"{scaled:.1f}{suffix}", f"{scaled:.0f}{suffix}"):
            if len(text) <= width:
                return text
    return "many"


def format_seconds(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return DASH
    if math.isinf(seconds):
        return INFINITY
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


# --------------------------------------------------------------------------- the table


def _line(cells: Sequence[str]) -> str:
    text = _INDENT
    for index, ((_, width, align), cell) in enumerate(zip(_COLUMNS, cells, strict=True)):
        cell = fit(cell, width)
        if index:  # two spaces before a left-aligned column, so it never touches a number
            text += "  " if align == "<" else " "
        text += cell.ljust(width) if align == "<" else cell.rjust(width)
    return text.rstrip()


def _row_line(row: Row) -> str:
    name = "  " * row.level + row.name
    tube_cells = (
        (
            format_count(row.in_flight, 7),
            format_count(row.ready, 7),
            format_count(row.buried, 7),
            format_seconds(row.backlog),
        )
        if row.tube_level
        else ("", "", "", "")
    )
    return _line(
        (
            name,
            "" if row.done is None and row.name == SUMMARISED else format_count(row.done),
            format_rate(row.rate_short),
            format_rate(row.rate_long),
            format_rate(row.released_per_min),
            format_rate(row.buried_per_min),
            *tube_cells,
            row.api or DASH,
        )
    )


def _state_word(view: DaemonView) -> str:
    if view.draining:
        return "draining"
    return "quiet" if view.quiet else "running"


def _lanes(view: DaemonView) -> str:
    lanes = sum(p.lanes for p in view.pools)
    connected = sum(p.lanes_connected for p in view.pools)
    return f"{connected}/{lanes}"


def _done_rate(view: DaemonView, now: float, window: float) -> str:
    flows = [*view.flows.values(), view.summarised]
    return format_rate(view.rate(flows, "done", now, window))


def _down(view: DaemonView, now: float) -> str:
    if view.state == "connecting":
        return f"{view.url}  connecting…"
    text = f"{view.url}  {_DOWN_WORDS[view.state]}: {view.error}"
    if view.retry_at is not None:
        text += f"  (retry in {format_seconds(math.ceil(max(0.0, view.retry_at - now)))}"
        text += f", attempt {view.attempt})" if view.attempt else ")"
    if view.last_seen is not None:
        text += f"  last seen {format_seconds(now - view.last_seen)} ago"
    return text


def _header(view: DaemonView, now: float) -> str:
    if view.state != "up":
        return _down(view, now)
    parts = [
        view.url,
        f"pid {view.pid if view.pid is not None else DASH}",
        _state_word(view),
        f"jobs {format_count(view.jobs_running)}",
        f"lanes {_lanes(view)}",
        f"up {format_seconds(None if view.up_since is None else now - view.up_since)}",
        f"10s {_done_rate(view, now, SHORT)}/s",
        f"1m {_done_rate(view, now, LONG)}/s",
    ]
    return "  ".join(parts)


def _pool_line(pool: PoolView) -> str:
    tubes = ", ".join(pool.tubes) or DASH
    return (
        f"{_INDENT}pool {fit(pool.name, 16):<16} tubes {fit(tubes, 30):<30}"
        f" lanes {pool.lanes_connected}/{pool.lanes}  jobs {pool.jobs}/{pool.slots}"
    )


def _notes(view: DaemonView) -> list[str]:
    notes = []
    if view.draining and view.drain_reason:
        notes.append(f"draining: {view.drain_reason}")
    if view.stream_since is None:
        notes.append("events: not connected, so no rates")
    if view.dropped or view.summarised.seen:
        notes.append(
            f"events: {view.dropped} missed (this viewer fell behind), "
            f"{sum(view.summarised.seen.values())} summarised (over events_per_second; "
            "not in the tubes' rates)"
        )
    if view.connections_lost:
        notes.append(f"beanstalkd connections lost: {view.connections_lost} ({view.last_lost})")
    if view.metrics_error:
        notes.append(f"metrics: {view.metrics_error}")
    return [f"{_INDENT}note: {note}" for note in notes]


def _api_lines(view: DaemonView) -> list[str]:
    if not view.apis:
        return []
    lines = [
        f"{_INDENT}{'API':<24} {'STATE':<10} {'TOTAL CALLS':>11} {'FAILED':>8} {'TRIPS':>6}"
        "  IN BREAKER WINDOW"
    ]
    for api in view.apis.values():
        totals = view.api_totals(api.name)
        window = DASH
        if api.window_calls is not None and api.window_failures is not None:
            window = f"{api.window_failures} of {api.window_calls} failed"
        lines.append(
            f"{_INDENT}{fit(api.name, 24):<24} {fit(api.state, 10):<10}"
            f" {format_count(None if totals is None else totals.calls, 11):>11}"
            f" {format_count(None if totals is None else totals.failures):>8}"
            f" {format_count(api.trips, 6):>6}  {window}"
        )
    return lines


def _heartbeat_lines(view: DaemonView) -> list[str]:
    lines = []
    for beat in view.heartbeats:
        state = "held" if beat.held else "STALE" if beat.stale else "ok"
        lines.append(
            f"{_INDENT}heartbeat {fit(beat.tube, 24):<24} {state:<5}"
            f" last ran {format_seconds(beat.age)} ago (every {format_seconds(beat.every)})"
        )
    return lines


def render_daemon(view: DaemonView, now: float) -> list[str]:
    lines = [_header(view, now)]
    if view.state != "up":
        return lines
    lines += [_pool_line(pool) for pool in view.pools]
    lines.append(_line([header for header, _, _ in _COLUMNS]))
    lines += [_row_line(row) for row in tube_rows(view, now)]
    lines += _api_lines(view)
    lines += _heartbeat_lines(view)
    lines += _notes(view)
    return lines


def _key(model: TopModel) -> list[str]:
    """What the columns mean, when a table is shown."""
    up = [view for view in model.daemons.values() if view.state == "up"]
    if not up:
        return []
    text = _TUBES_KEY + (" · " + _APIS_KEY if any(view.apis for view in up) else "")
    return ["", *textwrap.wrap(text, _KEY_WIDTH, initial_indent="key: ", subsequent_indent="     ")]


def render(model: TopModel, now: float, *, stamp: str, interval: float) -> list[str]:
    """The whole screen, as lines (no trailing spaces, no escape sequences: whatever a
    daemon's documents hold is shown, never obeyed by the terminal)."""
    count = len(model.daemons)
    every = f"{interval:g}s"
    title = f"tubeworker top  {count} daemon{'s' if count != 1 else ''}  every {every}  {stamp}"
    lines = [title.rstrip()]
    for view in model.daemons.values():
        lines.append("")
        lines += render_daemon(view, now)
    return [printable(line) for line in lines + _key(model)]


def _daemon_summary(view: DaemonView, now: float) -> str:
    if view.state != "up":
        return _header(view, now)
    totals = {
        outcome: sum(view.total(t, h, outcome) for t, h in view.known_keys())
        for outcome in ("deleted", "released", "buried")
    }
    if view.metrics is None:
        totals = {o: n + view.summarised.seen.get(o, 0) for o, n in totals.items()}
    return (
        f"{view.url} pid {view.pid if view.pid is not None else DASH} {_state_word(view)}"
        f" jobs {format_count(view.jobs_running)} lanes {_lanes(view)}"
        f" done {totals['deleted']} released {totals['released']} buried {totals['buried']}"
        f" 10s {_done_rate(view, now, SHORT)}/s"
        f" 1m {_done_rate(view, now, LONG)}/s"
    )


def summary_line(model: TopModel, now: float, *, stamp: str) -> str:
    """One line for every daemon, for logs and pipes."""
    daemons = " | ".join(_daemon_summary(v, now) for v in model.daemons.values())
    return printable(f"{stamp}  {daemons}")


# --------------------------------------------------------------------------- the screen


class Screen:
    """Where the view goes: redrawn in place on a terminal, one line per interval otherwise."""

    _ENTER: Final = "\x1b[?1049h\x1b[?25l"  # the alternate screen, cursor hidden
    _LEAVE: Final = "\x1b[?25h\x1b[?1049l"
    _HOME: Final = "\x1b[H"
    _CLEAR_LINE: Final = "\x1b[K"
    _CLEAR_BELOW: Final = "\x1b[J"

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty

    def __enter__(self) -> Screen:
        if self.tty:
            self.out.write(self._ENTER)
            self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tty:
            self.out.write(self._LEAVE)
            self.out.flush()

    def draw(self, lines: list[str]) -> None:
        size = shutil.get_terminal_size()
        # One column short of the edge: a character in the last column would be erased by
        # the clear-to-end-of-line that follows it on many terminals.
        width, height = max(size.columns - 1, 1), max(size.lines, 1)
        if len(lines) > height:
            lines = [*lines[: height - 1], f"… {len(lines) - height + 1} more lines"]
        body = "\r\n".join(f"{line[:width]}{self._CLEAR_LINE}" for line in lines)
        self.out.write(self._HOME + body + self._CLEAR_BELOW)
        self.out.flush()

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
