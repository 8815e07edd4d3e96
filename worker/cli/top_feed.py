"""``tubeworker top``, what a daemon says: its control plane's ``/status`` and ``/metrics``
read over HTTP and checked, into frozen records the model takes (:mod:`top_model`).

- :func:`read_status`: a tubeworker ``/status`` answers 200 with a JSON object holding
  ``pid``, ``pools`` and ``counters`` (every version has). Anything else that answers HTTP
  (another server's 404 page, HTML, some other JSON) is :class:`NotControlPlane`, saying
  what it answered; a 5xx is the server's failure, not an answer (a proxy whose daemon is
  gone says 502). Errors that got no answer at all (refused, timed out, reset) stay httpx's:
  :func:`describe_error` puts either in one line.
- :func:`parse_metrics`: job totals per tube, handler and outcome; per tube the ready and
  buried jobs and the daemon's backlog estimate, summed over servers; per API the calls and
  failures since the daemon started.
- ``in_flight_by_tube`` (jobs held now per tube) is ``None`` for a daemon older than it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, HandshakeError

__all__ = [
    "REQUEST_TIMEOUT",
    "ApiTotals",
    "ApiView",
    "HeartbeatView",
    "MetricsSnapshot",
    "NotControlPlane",
    "PoolView",
    "StatusSnapshot",
    "TubeFacts",
    "answered_but_not_control_plane",
    "describe_error",
    "events_url",
    "fetch_metrics",
    "fetch_status",
    "fit",
    "normalize_url",
    "one_line",
    "parse_metrics",
    "parse_status",
    "printable",
    "read_status",
]

REQUEST_TIMEOUT: Final = 3.0
_ERROR_WIDTH: Final = 120
_BODY_SAMPLE: Final = 60  # characters of an unexpected answer's body shown
# Keys every tubeworker /status has had since the control plane's first version.
_STATUS_KEYS: Final = (("pid", int), ("pools", Mapping), ("counters", Mapping))


class NotControlPlane(Exception):
    """The URL answered HTTP, but not as a tubeworker control plane does; the message says
    what it answered."""


@dataclass(frozen=True)
class PoolView:
    name: str
    tubes: tuple[str, ...]  # names (a pattern pool lists the tubes it found)
    slots: int
    jobs: int  # held now
    lanes: int
    lanes_connected: int


@dataclass(frozen=True)
class ApiView:
    """One external API's breaker, from ``/status``: ``window_*`` are its sliding window's
    (the calls it trips on), ``trips`` every opening since the daemon started."""

    name: str
    state: str  # closed, open, half_open
    window_calls: int | None = None
    window_failures: int | None = None
    trips: int | None = None


@dataclass(frozen=True)
class HeartbeatView:
    """One ``[[heartbeat]]``, from ``/status``: seconds since it last ran (fleet-wide)."""

    tube: str
    every: float
    age: float
    held: bool = False  # its tube is paused on purpose
    stale: bool = False  # over 3 x every and not held


@dataclass(frozen=True)
class StatusSnapshot:
    """What ``top`` reads of ``/status``."""

    pid: int
    started: float | None = None  # wall clock
    draining: bool = False
    drain_reason: str | None = None
    quiet: bool = False
    jobs_running: int | None = None
    pools: tuple[PoolView, ...] = ()
    apis: Mapping[str, ApiView] = field(default_factory=dict)
    in_flight_by_tube: Mapping[str, int] | None = None  # None: a daemon older than it
    heartbeats: tuple[HeartbeatView, ...] = ()


@dataclass(frozen=True)
class TubeFacts:
    """A tube's depth in beanstalkd (servers summed) and the daemon's backlog estimate."""

    ready: int | None = None
    buried: int | None = None
    backlog_seconds: float | None = None  # ready ÷ the daemon's recent throughput


@dataclass(frozen=True)
class ApiTotals:
    """An API's calls (caller faults included, as the breaker counts them) and failures
    since the daemon started."""

    calls: int = 0
    failures: int = 0


@dataclass(frozen=True)
class MetricsSnapshot:
    """What ``top`` reads of ``/metrics``."""

    jobs: dict[tuple[str, str, str], int] = field(default_factory=dict)  # tube, handler, outcome
    tubes: dict[str, TubeFacts] = field(default_factory=dict)
    apis: dict[str, ApiTotals] = field(default_factory=dict)


# --------------------------------------------------------------------------- /status


def read_status(response: httpx.Response) -> StatusSnapshot:
    """The snapshot in a ``/status`` answer. Raises :class:`NotControlPlane` for an answer
    a tubeworker control plane would not give, ``httpx.HTTPStatusError`` for a 5xx."""
    if response.is_server_error:
        response.raise_for_status()
    if response.status_code != 200:
        raise NotControlPlane(f"/status answered {_answer(response)}")
    try:
        document = response.json()
    except ValueError:
        raise NotControlPlane(f"/status answered {_answer(response)}, not JSON") from None
    return parse_status(document)


def parse_status(document: object) -> StatusSnapshot:
    """A ``/status`` document read; :class:`NotControlPlane` when it is not tubeworker's."""
    missing = [
        key
        for key, kind in _STATUS_KEYS
        if not isinstance(document, Mapping) or not _is(document.get(key), kind)
    ]
    if not isinstance(document, Mapping) or missing:
        sample = _sample(json.dumps(document))
        raise NotControlPlane(f"/status answered JSON without {', '.join(missing)}: {sample}")
    running = document.get("jobs_running")
    started = _number(document.get("started"))
    return StatusSnapshot(
        pid=document["pid"],
        started=started,
        draining=bool(document.get("draining")),
        drain_reason=_as_str(document.get("drain_reason")),
        quiet=bool(document.get("quiet")),
        jobs_running=running if _is(running, int) else None,
        pools=_pools(document["pools"]),
        apis=_apis(document.get("apis")),
        in_flight_by_tube=_in_flight_by_tube(document.get("in_flight_by_tube")),
        heartbeats=_heartbeats(document.get("heartbeats")),
    )


def _heartbeats(value: object) -> tuple[HeartbeatView, ...]:
    """``/status`` ``heartbeats`` (absent from daemons older than them: none)."""
    if not isinstance(value, list):
        return ()
    views = []
    for item in value:
        if not isinstance(item, Mapping):
            continue
        every, age = _number(item.get("every")), _number(item.get("age"))
        if every is None or age is None:
            continue
        views.append(
            HeartbeatView(
                tube=str(item.get("tube", "?")),
                every=float(every),
                age=float(age),
                held=bool(item.get("held")),
                stale=bool(item.get("stale")),
            )
        )
    return tuple(views)


def _is(value: object, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _answer(response: httpx.Response) -> str:
    """``404 Not Found (text/html): <html>…``: what a URL answered, in one short line."""
    text = f"{response.status_code} {response.reason_phrase}".strip()
    if response.is_redirect:
        text += f" to {response.headers.get('location', '?')}"
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type:
        text += f" ({content_type})"
    body = _sample(response.text)
    return one_line(f"{text}: {body}" if body else text, _ERROR_WIDTH)


def _sample(text: str) -> str:
    return one_line(text, _BODY_SAMPLE)


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _pools(pools: Mapping[Any, Any]) -> tuple[PoolView, ...]:
    views = []
    for name, pool in sorted(pools.items()):
        if not isinstance(pool, Mapping):
            continue
        lanes = [lane for lane in pool.get("lanes") or [] if isinstance(lane, Mapping)]
        views.append(
            PoolView(
                name=str(name),
                tubes=tuple(str(t) for t in pool.get("tubes") or []),
                slots=_as_int(pool.get("slots")),
                jobs=_as_int(pool.get("jobs")),
                lanes=len(lanes),
                lanes_connected=sum(1 for lane in lanes if lane.get("connected")),
            )
        )
    return tuple(views)


def _apis(apis: object) -> dict[str, ApiView]:
    """``/status`` ``apis``: a mapping of name to {state, calls, failures, trips} (a list
    of {api, ...} is read too)."""
    items: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(apis, Mapping):
        items = [(str(k), v) for k, v in apis.items() if isinstance(v, Mapping)]
    elif isinstance(apis, list):
        items = [(str(a.get("api", "?")), a) for a in apis if isinstance(a, Mapping)]
    views = {}
    for name, data in items:
        calls, failures, trips = (_number(data.get(k)) for k in ("calls", "failures", "trips"))
        views[name] = ApiView(
            name=name,
            state=str(data.get("state", "?")),
            window_calls=None if calls is None else int(calls),
            window_failures=None if failures is None else int(failures),
            trips=None if trips is None else int(trips),
        )
    return dict(sorted(views.items()))


def _in_flight_by_tube(value: object) -> dict[str, int] | None:
    if not isinstance(value, Mapping):
        return None
    return {str(tube): count for tube, count in value.items() if _is(count, int)}


# --------------------------------------------------------------------------- /metrics


def parse_metrics(text: str) -> MetricsSnapshot:
    """Job totals per tube, handler and outcome (causes summed); per tube the ready and
    buried jobs and the backlog seconds (servers summed); per API the calls and failures.
    Raises ValueError on text that is not Prometheus'."""
    jobs: dict[tuple[str, str, str], int] = {}
    depth: dict[str, dict[str, float]] = {"ready": {}, "buried": {}, "backlog": {}}
    calls: dict[str, int] = {}
    failures: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, name = sample.labels, sample.name
            tube, api = labels.get("tube", ""), labels.get("api", "")
            if name == "tubeworker_jobs_total":
                key = (tube, labels.get("handler", ""), labels.get("outcome", ""))
                jobs[key] = jobs.get(key, 0) + int(sample.value)
            elif name == "tubeworker_tube_jobs" and labels.get("state") in ("ready", "buried"):
                _add(depth[labels["state"]], tube, sample.value)
            elif name == "tubeworker_tube_backlog_seconds":
                _add(depth["backlog"], tube, sample.value)
            elif name == "tubeworker_api_calls_total":
                calls[api] = calls.get(api, 0) + int(sample.value)
                if labels.get("result") == "failure":
                    failures[api] = failures.get(api, 0) + int(sample.value)
    tubes: set[str] = set()
    for sums in depth.values():
        tubes.update(sums)
    return MetricsSnapshot(
        jobs=jobs,
        tubes={tube: _tube_facts(depth, tube) for tube in sorted(tubes)},
        apis={api: ApiTotals(n, failures.get(api, 0)) for api, n in sorted(calls.items())},
    )


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def _tube_facts(depth: Mapping[str, Mapping[str, float]], tube: str) -> TubeFacts:
    ready, buried = depth["ready"].get(tube), depth["buried"].get(tube)
    return TubeFacts(
        ready=None if ready is None else int(ready),
        buried=None if buried is None else int(buried),
        backlog_seconds=depth["backlog"].get(tube),
    )


# --------------------------------------------------------------------------- HTTP


async def fetch_status(http: httpx.AsyncClient, url: str) -> StatusSnapshot:
    return read_status(await http.get(url + "/status"))


async def fetch_metrics(http: httpx.AsyncClient, url: str) -> MetricsSnapshot:
    response = await http.get(url + "/metrics")
    response.raise_for_status()
    return parse_metrics(response.text)


def normalize_url(url: str) -> str:
    """``host:port`` → ``http://host:port``; no trailing slash. ValueError if not http(s)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    scheme = url.partition("://")[0].lower()
    if scheme not in ("http", "https") or not url.partition("://")[2]:
        raise ValueError(f"not a control-plane URL (http://HOST:PORT): {url}")
    return url


def events_url(url: str) -> str:
    return "ws" + url.removeprefix("http") + "/events"


# --------------------------------------------------------------------------- errors


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis last when it was longer."""
    return text if len(text) <= width else text[: width - 1] + "…"


def printable(text: str) -> str:
    """``text`` safe on a terminal: control characters (escape sequences among them) as "?"."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def one_line(text: str, width: int) -> str:
    """What a server or an error said, on one line, printable, cut to ``width``."""
    return fit(printable(" ".join(text.split())), width)


def answered_but_not_control_plane(exc: BaseException) -> bool:
    """The URL answered, not as a control plane (else it did not answer: unreachable)."""
    return isinstance(_leaf(exc), NotControlPlane)


def describe_error(exc: BaseException) -> str:
    """One line for an error: what it was, never a traceback."""
    return one_line(_describe_leaf(_leaf(exc)), _ERROR_WIDTH)


def _leaf(exc: BaseException) -> BaseException:
    """The first error in a group that is not a cancellation (the group's cause)."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = (leaves or list(exc.exceptions))[0]
    return exc


def _describe_leaf(exc: BaseException) -> str:
    if isinstance(exc, NotControlPlane):
        return str(exc)
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "events stream closed"
        return f"events stream closed ({reason.name}, code {reason.code})"
    if isinstance(exc, HandshakeError):
        return f"events stream: {type(exc).__name__} {exc}".strip()
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.request.url.path} answered {exc.response.status_code}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {REQUEST_TIMEOUT:g}s ({type(exc).__name__})"
    if isinstance(exc, httpx.HTTPError):
        os_error = _root_os_error(exc)
        detail = os.strerror(os_error.errno) if os_error and os_error.errno else str(exc)
        return f"{type(exc).__name__}: {detail or 'failed'}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _root_os_error(exc: BaseException, depth: int = 0) -> OSError | None:
    """The OSError with an errno under an exception (its causes, the groups among them):
    "Connection refused" rather than "all attempts to connect failed"."""
    if depth > 10:
        return None
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return exc
    below: list[BaseException] = []
    if isinstance(exc, BaseExceptionGroup):
        below += exc.exceptions
    below += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    for inner in below:
        found = _root_os_error(inner, depth + 1)
        if found is not None:
            return found
    return None
