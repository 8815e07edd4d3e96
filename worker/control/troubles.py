"""What the dashboard warns about across the daemons it reads: a beanstalkd out of binlog
room (failing jobs held in the workers, docs/beanstalkd.md#b3) and a fleet-wide limit with
tokens out of reach (a server down: the fleet runs on the share it still reaches).

Pure functions of the daemons' ``/status`` documents (worker id → status), so the page's
banner, the APIs view's fleet-limits table and their tests read the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["fleet_limits", "troubles"]

Status = Mapping[str, Any]


def _entries(status: Status, key: str) -> list[Mapping[str, Any]]:
    found = status.get(key)
    return [e for e in found if isinstance(e, Mapping)] if isinstance(found, list) else []


def fleet_limits(statuses: Mapping[str, Status]) -> list[dict[str, Any]]:
    """Per fleet limit's token tube: its tokens, the fewest any daemon reaches, and why
    (each daemon that says it is degraded)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for worker, status in statuses.items():
        for tokens in _entries(status, "fleet_tokens"):
            key = (str(tokens.get("limit", "")), str(tokens.get("tube", "")))
            row = found.setdefault(
                key,
                {"limit": key[0], "tube": key[1], "tokens": tokens.get("tokens"), "workers": []},
            )
            row["workers"].append(
                {
                    "worker": worker,
                    "reachable": tokens.get("reachable"),
                    "degraded": tokens.get("degraded"),
                }
            )
    out = []
    for key in sorted(found):
        row = found[key]
        reach = [w["reachable"] for w in row["workers"] if isinstance(w["reachable"], int)]
        reasons = [str(w["degraded"]) for w in row["workers"] if w["degraded"]]
        out.append(
            {
                **row,
                "reachable": min(reach) if reach else None,
                "degraded": reasons[0] if reasons else None,
            }
        )
    return out


def troubles(statuses: Mapping[str, Status]) -> list[dict[str, Any]]:
    """What needs an operator now, one entry per server or limit (whichever daemons say
    it), worst first: ``{"kind", "subject", "detail", "workers"}``."""
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def add(kind: str, key: str, subject: str, detail: str, worker: str) -> None:
        entry = found.setdefault(
            (kind, key), {"kind": kind, "subject": subject, "detail": detail, "workers": []}
        )
        entry["workers"].append(worker)

    for worker, status in statuses.items():
        binlogs = status.get("binlogs")
        for server, health in binlogs.items() if isinstance(binlogs, Mapping) else ():
            if isinstance(health, Mapping) and health.get("full"):
                add(
                    "binlog_full",
                    str(server),
                    str(server),
                    f"beanstalkd {server} has no binlog room: failing jobs are held in the "
                    "workers until it has; free disk space on its host",
                    worker,
                )
    for row in fleet_limits(statuses):
        for each in row["workers"]:
            if each["degraded"]:
                detail = f"{row['limit']}: {each['degraded']}"
                add("fleet_limit_degraded", row["tube"], row["limit"], detail, each["worker"])
    order = {"binlog_full": 0, "fleet_limit_degraded": 1}
    return sorted(found.values(), key=lambda e: (order[e["kind"]], e["subject"]))
