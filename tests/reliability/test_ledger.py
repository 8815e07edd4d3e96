"""The ledger's checker catches what it claims to, on a scripted history (no daemon):
a job deleted without a run is lost, a job left ready is unfinished, a rerun outside any
fault is unexplained while one across a fault is explained, a run of an unknown job is
unexpected, a burial needs a logged reason.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import greenstalk

from tests.reliability.ledger import Ledger
from tests.support.beanstalkd import BeanstalkdProcess

TUBE = "rel-ledger"


class ScriptedDaemon:
    """Stands in for DaemonProcess: a pid and its log lines."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.lines: list[dict[str, Any]] = []

    def log(self, event: str, job_id: int, at: float, **fields: object) -> None:
        stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
        self.lines.append({"event": event, "job_id": job_id, "timestamp": stamp, **fields})

    def events(self) -> list[dict[str, Any]]:
        return self.lines


def run(ledger: Ledger, event: str, n: str, job_id: int, pid: int, at: float) -> None:
    with open(ledger.path, "a") as f:
        f.write(f"{event} {n} {job_id} {pid} {at:.6f}\n")


def test_the_checker_classifies_a_scripted_history(
    beanstalkd: BeanstalkdProcess, ledger: Ledger
) -> None:
    address = (beanstalkd.host, beanstalkd.port)
    names = ["done", "lost", "left", "rerun", "faulted", "buried", "silent"]
    ids = dict(zip(names, ledger.put_many(address, TUBE, ((n, {}) for n in names)), strict=True))
    t = max(a.at for a in ledger.acks.values()) + 1
    daemon = ScriptedDaemon(pid=os.getpid())
    pid = daemon.pid

    run(ledger, "START", "done", ids["done"], pid, t)
    run(ledger, "END", "done", ids["done"], pid, t + 0.1)
    daemon.log("job done", ids["done"], t + 0.2)
    for n, first in (("faulted", t), ("rerun", t + 2)):  # returned, then done on a rerun
        run(ledger, "START", n, ids[n], pid, first)
        daemon.log("job returned", ids[n], first + 0.5, reason="connection lost")
        run(ledger, "START", n, ids[n], pid, first + 1)
        run(ledger, "END", n, ids[n], pid, first + 1.1)
        daemon.log("job done", ids[n], first + 1.2)
    run(ledger, "START", "ghost", 999, pid, t)  # never acknowledged
    daemon.log("job buried", ids["buried"], t, reason="poison")
    ledger.fault("scripted fault", t + 0.4)  # 'faulted' was in flight, 'rerun' not yet

    with greenstalk.Client(address, use=TUBE, watch=TUBE) as client:
        for n in ("done", "lost", "rerun", "faulted"):
            client.delete(ids[n])
        for n in ("buried", "silent"):
            job = client.reserve_job(ids[n])
            client.bury(job)

    report = ledger.check(address, TUBE, [daemon])
    assert sorted(report.done) == ["done", "faulted", "rerun"]
    assert set(report.lost) == {"lost"}
    assert set(report.unfinished) == {"left", "silent"}  # ready; buried with no reason
    assert report.buried == {"buried": "poison"}
    assert report.duplicated == {"faulted": 1}  # in flight at the fault: explained
    assert set(report.unexplained) == {"rerun"}
    assert "'returned (connection lost)'" in report.unexplained["rerun"]
    assert report.unexpected == ["ghost"]
    assert report.faults[0][2] == ["faulted", "ghost"]  # "done" was confirmed before it
    assert not report.ok
    summary = report.summary()
    assert "lost 1, unfinished 2" in summary
    assert "unexpected 1" in summary
    assert json.dumps(report.figures())
