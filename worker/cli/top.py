"""``tubeworker top [URL ...]``: a live view of one or several daemons, through their control
planes (``tubeworker run --control HOST:PORT``).

Three modules and this one:

- :mod:`top_feed`: what a daemon says. ``/status`` and ``/metrics`` fetched, checked and
  read into frozen records; a URL that answers, but not as a control plane, is told apart
  from one that does not answer.
- :mod:`top_model`: the model. Events, status and metrics in (with the time passed by the
  caller); per daemon, per tube and per handler figures out, with where each comes from.
- :mod:`top_view`: the renderer (lines with fixed column widths, and a key saying what the
  columns count) and the screen.
- here: the I/O that joins them. Per daemon, a trio-websocket client of ``/events`` and a
  poll of ``GET /status`` and ``GET /metrics`` (httpx) every interval; a daemon that cannot
  be reached, goes away, or turns out not to be a control plane is shown so, with the error,
  and retried with backoff. On a terminal the screen is redrawn in place (the alternate
  screen, restored at exit); otherwise one summary line is printed per interval. ``--once``
  prints one snapshot and exits 0 when every daemon was read, 76 (EX_PROTOCOL) when a URL
  is not a control plane, else 69 (EX_UNAVAILABLE) when one could not be reached.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final, TextIO

import httpx
import trio
from trio_websocket import open_websocket_url

from tubeworker.backoff import exponential_delay
from tubeworker.cli.top_feed import (
    REQUEST_TIMEOUT,
    answered_but_not_control_plane,
    describe_error,
    events_url,
    fetch_metrics,
    fetch_status,
    normalize_url,
)
from tubeworker.cli.top_model import State, TopModel
from tubeworker.cli.top_view import Screen, render, summary_line

__all__ = ["poll_daemon", "poll_once", "run_live", "run_once", "top", "watch_daemon"]

DEFAULT_URL: Final = "http://127.0.0.1:9090"
EX_OK: Final = 0
EX_USAGE: Final = 64
EX_UNAVAILABLE: Final = 69  # --once: some daemon could not be reached
EX_PROTOCOL: Final = 76  # --once: some URL answered, not as a control plane

_MIN_DRAW: Final = 0.2  # at most five redraws a second
_MIN_POLL: Final = 0.5
_STABLE_SESSION: Final = 5.0  # a session this long resets the backoff
_RETRY_BASE: Final = 0.5
_RETRY_CAP: Final = 10.0


def _failure(exc: BaseException) -> tuple[State, str]:
    """Why a daemon was not read: unreachable, or not a control plane (it answered, but
    not as one), and the error in one line."""
    state: State = "not_control_plane" if answered_but_not_control_plane(exc) else "unreachable"
    return state, describe_error(exc)


async def poll_daemon(model: TopModel, http: httpx.AsyncClient, url: str) -> None:
    """``/status`` (its failure is the daemon's), then ``/metrics`` (its failure is noted)."""
    status = await fetch_status(http, url)
    model.on_status(url, status, time.monotonic(), time.time())
    try:
        snapshot = await fetch_metrics(http, url)
    except (httpx.HTTPError, ValueError) as exc:
        model.on_metrics(url, None, describe_error(exc))
    else:
        model.on_metrics(url, snapshot, None)


async def poll_once(model: TopModel, http: httpx.AsyncClient, url: str) -> None:
    try:
        await poll_daemon(model, http, url)
    except Exception as exc:  # any failure is this daemon's state, shown, never raised
        model.on_down(url, *_failure(exc), time.monotonic())


async def _poll_forever(model: TopModel, http: httpx.AsyncClient, url: str, every: float) -> None:
    while True:
        await trio.sleep(every)
        await poll_daemon(model, http, url)


async def _session(model: TopModel, http: httpx.AsyncClient, url: str, every: float) -> None:
    """Until the daemon goes away: the events stream read, ``/status`` polled."""
    await poll_daemon(model, http, url)
    async with (
        open_websocket_url(
            events_url(url), connect_timeout=REQUEST_TIMEOUT, disconnect_timeout=1.0
        ) as ws,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_poll_forever, model, http, url, every)
        while True:
            message = await ws.get_message()
            try:
                event = json.loads(message)
            except ValueError:
                continue
            model.on_event(url, event, time.monotonic())


async def watch_daemon(
    model: TopModel,
    http: httpx.AsyncClient,
    url: str,
    every: float,
    *,
    rng: random.Random | None = None,
) -> None:
    """Forever: a session with the daemon, and between sessions a backoff (0.5 s doubling
    to 10 s, jittered), the daemon shown as unreachable (or not a control plane) with the
    error meanwhile."""
    rng = rng or random.Random()
    failures = 0
    while True:
        began = time.monotonic()
        state: State = "unreachable"
        try:
            await _session(model, http, url, every)
            error = "the daemon closed the events stream"
        except Exception as exc:  # any failure is this daemon's state, shown, never raised
            state, error = _failure(exc)
        now = time.monotonic()
        failures = 1 if now - began >= _STABLE_SESSION else failures + 1
        delay = exponential_delay(failures, base=_RETRY_BASE, cap=_RETRY_CAP)
        delay *= rng.uniform(0.5, 1.0)
        model.on_down(url, state, error, now, retry_at=now + delay, attempt=failures)
        await trio.sleep(delay)


def _stamp(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


async def _draw_forever(model: TopModel, screen: Screen, interval: float) -> None:
    every = max(interval, _MIN_DRAW)
    if not screen.tty:  # one line per interval, the first after the first poll
        await trio.sleep(every)
    while True:
        now, stamp = time.monotonic(), _stamp(time.time())
        if screen.tty:
            screen.draw(render(model, now, stamp=stamp, interval=interval))
        else:
            screen.line(summary_line(model, now, stamp=stamp))
        await trio.sleep(every)


async def _until_signal(cancel: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            cancel()
            return


async def run_live(urls: Sequence[str], interval: float, screen: Screen) -> int:
    model = TopModel(urls)
    poll_every = max(interval, _MIN_POLL)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as http:
        with screen:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_signal, nursery.cancel_scope.cancel)
                for url in urls:
                    nursery.start_soon(watch_daemon, model, http, url, poll_every)
                nursery.start_soon(_draw_forever, model, screen, interval)
    return EX_OK


async def run_once(urls: Sequence[str], interval: float, out: TextIO) -> int:
    model = TopModel(urls)
    async with (
        httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as http,
        trio.open_nursery() as nursery,
    ):
        for url in urls:
            nursery.start_soon(poll_once, model, http, url)
    lines = render(model, time.monotonic(), stamp=_stamp(time.time()), interval=interval)
    out.write("\n".join(lines) + "\n")
    out.flush()
    states = {view.state for view in model.daemons.values()}
    if "not_control_plane" in states:
        return EX_PROTOCOL
    return EX_UNAVAILABLE if states - {"up"} else EX_OK


def _only(group: BaseExceptionGroup[BaseException], kind: type[BaseException]) -> bool:
    return group.split(kind)[1] is None


def _quiet_broken_pipe() -> None:
    # Python flushes stdout at exit: point it at /dev/null so that raises nothing more.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def top(args: argparse.Namespace) -> int:
    try:
        urls = [normalize_url(url) for url in (args.urls or [DEFAULT_URL])]
    except ValueError as exc:
        print(f"tubeworker top: {exc}", file=sys.stderr)
        return EX_USAGE
    interval = float(args.interval)
    if not (math.isfinite(interval) and interval > 0):
        print("tubeworker top: --interval must be a positive number of seconds", file=sys.stderr)
        return EX_USAGE
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # "—" on a terminal that cannot show it
    try:
        if args.once:
            return trio.run(run_once, urls, interval, sys.stdout)
        return trio.run(run_live, urls, interval, Screen(sys.stdout, tty=sys.stdout.isatty()))
    except KeyboardInterrupt:  # before the signal receiver was installed
        return EX_OK
    except BrokenPipeError:  # `tubeworker top | head`
        _quiet_broken_pipe()
        return EX_OK
    except BaseExceptionGroup as group:
        if _only(group, KeyboardInterrupt):
            return EX_OK
        if _only(group, BrokenPipeError):
            _quiet_broken_pipe()
            return EX_OK
        raise
