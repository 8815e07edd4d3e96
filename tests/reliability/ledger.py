"""A Jepsen-style ledger: what was acknowledged, what ran, what became of each job.

Three sources, all on the same host clock (``time.time()``):

- the producer side: every job id beanstalkd acknowledged (``INSERTED``), with the
  payload's ``n`` (``Ledger.put``);
- the handler side: one ``START`` and one ``END`` line per run, appended by
  ``handlers.record`` to the file named by ``TUBEWORKER_RELIABILITY_LEDGER``;
- the daemon side: its JSON log lines ``job done`` / ``job released`` / ``job buried`` /
  ``job returned`` (with ``job_id``, ``timestamp`` and, for burials, ``reason``), and the
  scenario's own record of faults (``Ledger.fault``: when, what).

The invariant, checked once at the end of every scenario (``Ledger.check``), after the
daemon stopped:

1. every acknowledged job is either **deleted after a completed run** (beanstalkd no longer
   has it and an ``END`` line exists for its ``n``), or **buried with a reason** (state
   ``buried`` and a ``job buried`` log line for its id carrying a ``reason``), or **still
   queued by design** (ready/delayed, only where the scenario says so). A job gone without
   a completed run is *lost*; a job ready, delayed or reserved that should have been done
   is *unfinished*;
2. nothing is left reserved: ``stats-tube`` ``current-jobs-reserved`` is 0;
3. every duplicate run (a job with more than one ``START``) is explained: each earlier
   delivery was in flight at a fault (it started before the fault ended, give or take a
   grace for a reply already on its way, and beanstalkd had not confirmed its outcome
   when the fault began), or ended in a ``job released`` (a retry). A rerun after a
   confirmed delete is never explained;
4. nothing unexpected ran: every ``START`` belongs to an acknowledged job.

Scenarios may mark jobs as lost by design (``forget``: a beanstalkd restart without a
binlog drops them) or as deleted by someone else and never to be run by the daemon
(``taken_elsewhere``). ``Report.summary()`` gives the counts (lost, unfinished,
duplicated, unexplained, unexpected) for assertion messages, with examples.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

import greenstalk

from tests.reliability.handlers import LEDGER_ENV

__all__ = ["Ack", "Delivery", "Fault", "Ledger", "Outcome", "Report", "Run", "log_time"]

OUTCOME_EVENTS: Final = ("job done", "job released", "job buried", "job returned")
GRACE: Final = 0.5  # a RESERVED already on its way when a fault hits starts a bit later
_EXAMPLES: Final = 8


class EventSource(Protocol):
    """What the ledger needs of a daemon (tests.support.process.DaemonProcess fits)."""

    @property
    def pid(self) -> int: ...

    def events(self) -> list[dict[str, Any]]: ...


def log_time(event: Mapping[str, Any]) -> float | None:
    """A daemon log line's ``timestamp`` (ISO 8601, UTC) as ``time.time()`` seconds."""
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Ack:
    n: str
    job_id: int
    at: float


@dataclass(frozen=True)
class Run:
    event: str  # START or END
    n: str
    job_id: int
    pid: int
    at: float


@dataclass(frozen=True)
class Outcome:
    kind: str  # done, released, buried, returned
    job_id: int
    pid: int
    at: float
    reason: str | None


@dataclass
class Fault:
    kind: str
    start: float
    end: float
    note: str = ""

    def overlaps(self, delivery: Delivery, grace: float = GRACE) -> bool:
        """Was the delivery in flight during the fault (started before it ended, outcome
        not confirmed before it began)?"""
        if delivery.start > self.end + grace:
            return False
        # No grace here: an outcome confirmed before the fault began cannot be undone by it.
        settled = delivery.outcome.at if delivery.outcome is not None else None
        return settled is None or settled >= self.start


@dataclass
class Delivery:
    """One run of one job: its START, END (if any) and the daemon's outcome line (if any)."""

    n: str
    job_id: int
    pid: int
    start: float
    end: float | None = None
    outcome: Outcome | None = None


@dataclass
class Report:
    acked: int = 0
    done: list[str] = field(default_factory=list)
    buried: dict[str, str] = field(default_factory=dict)  # n → reason (explained)
    queued: dict[str, str] = field(default_factory=dict)  # n → state (allowed by design)
    lost: dict[str, str] = field(default_factory=dict)  # n → why
    unfinished: dict[str, str] = field(default_factory=dict)  # n → state
    reserved_left: int = 0
    duplicated: dict[str, int] = field(default_factory=dict)  # n → extra runs (explained)
    unexplained: dict[str, str] = field(default_factory=dict)  # n → why
    unexpected: list[str] = field(default_factory=list)
    forbidden: dict[str, str] = field(default_factory=dict)  # ran though it must not
    forgotten: int = 0
    faults: list[tuple[str, float, list[str]]] = field(default_factory=list)
    max_runs: int = 0
    t0: float = 0.0  # the first acknowledgement: times in the summary count from it

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.unfinished
            or self.reserved_left
            or self.unexplained
            or self.unexpected
            or self.forbidden
        )

    def summary(self) -> str:
        dup_runs = sum(self.duplicated.values())
        lines = [
            f"acked {self.acked}: done {len(self.done)}, buried with a reason "
            f"{len(self.buried)}, queued by design {len(self.queued)}, lost by design "
            f"{self.forgotten}",
            f"lost {len(self.lost)}, unfinished {len(self.unfinished)}, left reserved "
            f"{self.reserved_left}, duplicated {len(self.duplicated) + len(self.unexplained)} "
            f"jobs ({dup_runs} extra runs explained by faults, {len(self.unexplained)} jobs "
            f"unexplained), unexpected {len(self.unexpected)}, ran though forbidden "
            f"{len(self.forbidden)}; most runs of one job: {self.max_runs}",
        ]
        for title, items in (
            ("lost", self.lost),
            ("unfinished", self.unfinished),
            ("unexplained duplicate", self.unexplained),
            ("ran though forbidden", self.forbidden),
        ):
            if items:
                shown = list(items.items())[:_EXAMPLES]
                lines.append(f"  {title}: " + "; ".join(f"{n}: {why}" for n, why in shown))
        if self.unexpected:
            lines.append(f"  unexpected runs: {self.unexpected[:_EXAMPLES]}")
        if self.buried:
            shown = list(self.buried.items())[:3]
            lines.append("  buried: " + "; ".join(f"{n}: {why}" for n, why in shown))
        for kind, at, in_flight in self.faults:
            lines.append(
                f"  fault at +{at - self.t0:.2f} s ({kind}): {len(in_flight)} jobs in flight "
                f"{in_flight[:_EXAMPLES]}"
            )
        return "\n".join(lines)

    def figures(self) -> dict[str, int]:
        return {
            "acked": self.acked,
            "done": len(self.done),
            "buried": len(self.buried),
            "queued": len(self.queued),
            "lost": len(self.lost),
            "unfinished": len(self.unfinished),
            "reserved_left": self.reserved_left,
            "duplicated_explained": len(self.duplicated),
            "duplicated_unexplained": len(self.unexplained),
            "unexpected": len(self.unexpected),
            "forbidden": len(self.forbidden),
            "max_runs": self.max_runs,
        }


class Ledger:
    """The history of one scenario. ``path`` is the handlers' run log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acks: dict[str, Ack] = {}
        self.faults: list[Fault] = []
        self.forgotten: dict[str, str] = {}
        self.elsewhere: dict[str, str] = {}

    @property
    def env(self) -> dict[str, str]:
        """Environment for the daemon: where its handlers append."""
        return {LEDGER_ENV: str(self.path)}

    # ---- the producer side

    def put(
        self,
        client: greenstalk.Client[Any],
        n: str,
        payload: Mapping[str, Any] | None = None,
        *,
        task: str = "rel.record",
        priority: int = 1024,
        delay: int = 0,
        ttr: int = 60,
    ) -> int:
        """Put one envelope ``{"task": task, "payload": {"n": n, ...}}``; record the ack."""
        if " " in n or n in self.acks:
            raise ValueError(f"n must be unique and without spaces: {n!r}")
        body = json.dumps({"task": task, "payload": {"n": n, **(payload or {})}})
        job_id = client.put(body, priority=priority, delay=delay, ttr=ttr)
        self.acks[n] = Ack(n, job_id, time.time())
        return job_id

    def put_many(
        self,
        address: tuple[str, int],
        tube: str,
        jobs: Iterable[tuple[str, Mapping[str, Any]]],
        **options: Any,
    ) -> list[int]:
        with greenstalk.Client(address, use=tube) as client:
            return [self.put(client, n, payload, **options) for n, payload in jobs]

    # ---- the history

    def fault(self, kind: str, start: float | None = None, end: float | None = None) -> Fault:
        """Record a fault (an instant, or a window [start, end]); times are time.time()."""
        start = time.time() if start is None else start
        fault = Fault(kind, start, start if end is None else end)
        self.faults.append(fault)
        return fault

    def forget(self, ns: Iterable[str], reason: str) -> None:
        """These jobs are gone by design (e.g. beanstalkd restarted without a binlog)."""
        for n in ns:
            self.forgotten[n] = reason

    def taken_elsewhere(self, n: str, reason: str) -> None:
        """Another client deleted this job; the daemon must not run it."""
        self.elsewhere[n] = reason

    def runs(self) -> list[Run]:
        if not self.path.exists():
            return []
        runs = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                event, n, job_id, pid, at = parts
                runs.append(Run(event, n, int(job_id), int(pid), float(at)))
        return runs

    def starts(self) -> Counter[str]:
        return Counter(r.n for r in self.runs() if r.event == "START")

    def ends(self) -> Counter[str]:
        return Counter(r.n for r in self.runs() if r.event == "END")

    def running(self, pid: int | None = None) -> set[str]:
        """Jobs whose handler started and has not ended, by the run log now (in one process
        if ``pid`` is given; a run in a killed process never ends, so ask per process)."""
        runs = [r for r in self.runs() if pid is None or r.pid == pid]
        count: Counter[tuple[str, int]] = Counter()
        for run in runs:
            count[(run.n, run.pid)] += 1 if run.event == "START" else -1
        return {n for (n, _), k in count.items() if k > 0}

    def deliveries(self, daemons: Sequence[EventSource]) -> list[Delivery]:
        """Every run, matched with its END and with the daemon's outcome line."""
        outcomes = _outcomes(daemons)
        runs = self.runs()
        ends: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        for run in runs:
            if run.event == "END":
                ends[(run.n, run.job_id, run.pid)].append(run.at)
        starts = sorted((r for r in runs if r.event == "START"), key=lambda r: r.at)
        deliveries: list[Delivery] = []
        by_key: dict[tuple[int, int], list[Delivery]] = defaultdict(list)
        for run in starts:
            delivery = Delivery(run.n, run.job_id, run.pid, run.at)
            pending = ends[(run.n, run.job_id, run.pid)]
            later = [at for at in pending if at >= run.at]
            if later:
                delivery.end = min(later)
                pending.remove(delivery.end)
            deliveries.append(delivery)
            by_key[(run.pid, run.job_id)].append(delivery)
        for key, same in by_key.items():  # same process, same id: ids can be reused
            for i, delivery in enumerate(same):
                until = same[i + 1].start if i + 1 < len(same) else float("inf")
                delivery.outcome = next(
                    (o for o in outcomes.get(key, []) if delivery.start - 0.01 <= o.at < until),
                    None,
                )
        return deliveries

    # ---- the invariant

    def check(
        self,
        address: tuple[str, int],
        tube: str,
        daemons: Sequence[EventSource],
        *,
        queued_by_design: Iterable[str] = (),
        settle: float = 3.0,
    ) -> Report:
        """Classify every acknowledged job; call after the daemon(s) stopped."""
        report = Report(
            acked=len(self.acks),
            forgotten=len(self.forgotten),
            t0=min((a.at for a in self.acks.values()), default=time.time()),
        )
        allowed = set(queued_by_design)
        deliveries = self.deliveries(daemons)
        by_n: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in deliveries:
            by_n[delivery.n].append(delivery)
        report.max_runs = max((len(d) for d in by_n.values()), default=0)
        burials = _burials(daemons)
        report.reserved_left = _reserved_after(address, tube, settle)
        states = _states(address, [a.job_id for a in self.acks.values()])
        for n, ack in self.acks.items():
            if n in self.forgotten:
                continue
            runs = by_n.get(n, [])
            if n in self.elsewhere:
                if runs:
                    report.forbidden[n] = f"{self.elsewhere[n]}, yet it ran {len(runs)} times"
                continue
            _classify(report, ack, states[ack.job_id], runs, burials, allowed)
            if len(runs) > 1:
                self._explain(report, n, runs)
        report.unexpected = sorted(n for n in by_n if n not in self.acks)
        for fault in self.faults:
            in_flight = sorted({d.n for d in deliveries if fault.overlaps(d)} - set(self.forgotten))
            report.faults.append((fault.kind, fault.start, in_flight))
        return report

    def _explain(self, report: Report, n: str, runs: list[Delivery]) -> None:
        for delivery in runs[:-1]:
            outcome = delivery.outcome
            if outcome is not None and outcome.kind == "released":
                continue  # a retry: a new delivery by design
            if outcome is not None and outcome.kind in ("done", "buried"):
                report.unexplained[n] = (
                    f"ran again after beanstalkd confirmed its {outcome.kind} "
                    f"(job {delivery.job_id}, pid {delivery.pid})"
                )
                return
            if not any(f.overlaps(delivery) for f in self.faults):
                if outcome is None:
                    what = "with no outcome line"
                else:
                    what = f"'{outcome.kind}" + (f" ({outcome.reason})'" if outcome.reason else "'")
                report.unexplained[n] = (
                    f"{len(runs)} runs; the run at +{delivery.start - report.t0:.2f} s "
                    f"(job {delivery.job_id}, pid {delivery.pid}) ended {what} "
                    "and no fault was under way"
                )
                return
        report.duplicated[n] = len(runs) - 1


def _classify(
    report: Report,
    ack: Ack,
    state: str,
    runs: list[Delivery],
    burials: dict[int, list[tuple[float, str]]],
    allowed: set[str],
) -> None:
    n = ack.n
    completed = [d for d in runs if d.end is not None]
    if state == "deleted":
        if completed:
            report.done.append(n)
        else:
            report.lost[n] = (
                f"job {ack.job_id} deleted without a completed run ({len(runs)} started)"
            )
    elif state == "buried":
        reasons = [r for at, r in burials.get(ack.job_id, []) if at >= ack.at - 0.01 and r]
        if reasons:
            report.buried[n] = reasons[-1]
        else:
            report.unfinished[n] = f"job {ack.job_id} buried with no 'job buried' reason logged"
    elif state in ("ready", "delayed") and n in allowed:
        report.queued[n] = state
    else:
        report.unfinished[n] = f"job {ack.job_id} is {state} ({len(completed)} completed runs)"


def _outcomes(daemons: Sequence[EventSource]) -> dict[tuple[int, int], list[Outcome]]:
    found: dict[tuple[int, int], list[Outcome]] = defaultdict(list)
    for daemon in daemons:
        for event in daemon.events():
            name = event.get("event")
            at = log_time(event)
            job_id = event.get("job_id")
            if name in OUTCOME_EVENTS and isinstance(job_id, int) and at is not None:
                kind = str(name).removeprefix("job ")
                reason = event.get("reason")
                found[(daemon.pid, job_id)].append(
                    Outcome(kind, job_id, daemon.pid, at, str(reason) if reason else None)
                )
    for outcomes in found.values():
        outcomes.sort(key=lambda o: o.at)
    return found


def _burials(daemons: Sequence[EventSource]) -> dict[int, list[tuple[float, str]]]:
    found: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for daemon in daemons:
        for event in daemon.events():
            at = log_time(event)
            if event.get("event") == "job buried" and isinstance(event.get("job_id"), int):
                found[event["job_id"]].append((at or 0.0, str(event.get("reason") or "")))
    return found


def _states(address: tuple[str, int], ids: Iterable[int]) -> dict[int, str]:
    """id → beanstalkd's state for it, or "deleted" when it no longer has it."""
    states: dict[int, str] = {}
    with greenstalk.Client(address) as client:
        for job_id in ids:
            try:
                states[job_id] = str(client.stats_job(job_id)["state"])
            except greenstalk.NotFoundError:
                states[job_id] = "deleted"
    return states


def _reserved_after(address: tuple[str, int], tube: str, settle: float) -> int:
    """current-jobs-reserved of the tube, waiting up to ``settle`` s for closes to land."""
    deadline = time.monotonic() + settle
    while True:
        with greenstalk.Client(address) as client:
            try:
                reserved = int(client.stats_tube(tube)["current-jobs-reserved"])
            except greenstalk.NotFoundError:
                reserved = 0  # no jobs and no watchers: the tube is gone
        if reserved == 0 or time.monotonic() > deadline:
            return reserved
        time.sleep(0.05)
