"""A batch's shape in beanstalkd (docs/workflows.md#batches): names, records, counts.

Everything of batch ``ID`` lives on one server:

- tube ``tubeworker.batch.ID`` holds its **manifest** (the first job buried there: the
  callbacks, when it was opened), its **opener** (a token held while the batch is open)
  and one **token** per job in it. A token is *pending* while it waits (delayed, priority
  0, "parked": 2^32 - 1 s), *buried* when its job was buried, *deleted* when its job
  succeeded. A token whose maker died before confirming it stays ready at a non-urgent
  priority: not counted (its job, if any, is a duplicate the maker's retry puts again).
- each **callback** waits in its own tube as a parked delayed job until it fires:
  ``kick-job``, which only one client can ever do to a delayed job.
- a **timer** in ``tubeworker.batches`` (delayed by the retention) lets a daemon forget the
  batch once it is complete and old.

Pure: no I/O (ops.py says what to send; handles.py and the daemon send it).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from tubeworker.beanstalk import protocol as p
from tubeworker.envelope import (
    BATCH_PREFIX,
    KINDS,
    BatchRef,
    Kind,
    batch_tube,
    read_batch_ref,
    valid_batch_id,
)

__all__ = [
    "BATCH_PREFIX",
    "KINDS",
    "PARKED",
    "RETENTION",
    "TENTATIVE",
    "TIMERS_TUBE",
    "BatchRef",
    "Counts",
    "Kind",
    "Manifest",
    "batch_tube",
    "new_batch_id",
    "read_batch_ref",
    "read_timer",
    "timer_body",
    "valid_batch_id",
]

TIMERS_TUBE: Final = "tubeworker.batches"
#: The delay of what waits until someone acts on it (tokens, callbacks): 136 years.
PARKED: Final = 2**32 - 1
#: A token's priority until its job is safely put: ready at this priority means "its
#: maker died while adding it", which counts for nothing (never urgent: < 1024 is).
TENTATIVE: Final = 2**31
TOKEN_TTR: Final = 120  # seconds a maker may take between putting a token and confirming it
RETENTION: Final = 7 * 24 * 3600  # seconds a batch is kept after it was opened (at least)
MAX_CALLBACK_ID: Final = 200

_OPENER_BODY: Final = b'{"tubeworker":"batch opener"}'
_TOKEN_BODY: Final = b'{"tubeworker":"batch token"}'


def new_batch_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Counts:
    """A batch's tokens by state, from ``stats-tube`` of its tube (the manifest, buried
    there, taken off). ``pending`` includes the opener while the batch is open."""

    pending: int
    buried: int
    abandoned: int  # tokens whose maker died before confirming them (not counted)
    done: int  # tokens deleted since the server started (its jobs succeeded)
    exists: bool = True

    @classmethod
    def of(cls, stats: p.Reply) -> Counts:
        if not isinstance(stats, p.TubeStats):  # NOT_FOUND: nothing left at all
            return cls(0, 0, 0, 0, exists=False)
        urgent = stats.current_jobs_urgent
        buried = max(0, stats.current_jobs_buried - 1)
        return cls(
            pending=stats.current_jobs_delayed + stats.current_jobs_reserved + urgent,
            buried=buried,
            abandoned=stats.current_jobs_ready - urgent,
            done=stats.cmd_delete,
        )

    def due(self) -> tuple[Kind, ...]:
        """The callbacks this state calls for (``death`` is decided by the burial)."""
        if self.pending > 0:
            return ()
        return ("complete",) if self.buried else ("complete", "success")


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a batch was opened with, kept buried in its tube (read by the commands and by
    the daemon that forgets it)."""

    id: str
    created: float
    opener: int
    callbacks: Mapping[Kind, tuple[int, str, str]]  # kind → (job id, tube, task)
    retention: int = RETENTION
    description: str = ""
    timer: int = 0

    def body(self) -> bytes:
        data = {
            "tubeworker": "batch manifest",
            "id": self.id,
            "created": round(self.created, 3),
            "opener": self.opener,
            "timer": self.timer,
            "retention": self.retention,
            "description": self.description,
            "callbacks": {
                kind: {"job": job, "tube": tube, "task": task}
                for kind, (job, tube, task) in self.callbacks.items()
            },
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def read(cls, body: bytes) -> Manifest | None:
        """The manifest in ``body``, or None when it is not one."""
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or data.get("tubeworker") != "batch manifest":
                return None
            callbacks: dict[Kind, tuple[int, str, str]] = {}
            for kind in KINDS:
                entry = data["callbacks"].get(kind)
                if entry is not None:
                    callbacks[kind] = (int(entry["job"]), str(entry["tube"]), str(entry["task"]))
            return cls(
                id=str(data["id"]),
                created=float(data["created"]),
                opener=int(data["opener"]),
                callbacks=callbacks,
                retention=int(data.get("retention", RETENTION)),
                description=str(data.get("description", "")),
                timer=int(data.get("timer", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def timer_body(batch_id: str, retention: int) -> bytes:
    return json.dumps(
        {"tubeworker": "batch timer", "id": batch_id, "retention": retention}
    ).encode()


def read_timer(body: bytes) -> tuple[str, int] | None:
    """(batch id, retention) of a timer's body, or None when it is not one."""
    try:
        data = json.loads(body)
        batch_id, retention = data["id"], int(data["retention"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(batch_id, str) or not valid_batch_id(batch_id):
        return None
    return batch_id, max(60, retention)
