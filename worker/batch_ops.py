"""Batches as the commands and the dashboard show them (``tubeworker batches``, ``tubeworker
batch ID``, the Batches view): read from each server, never changing anything.

A batch lives on one server (docs/workflows.md#batches); a server's batches are its tubes
``tubeworker.batch.ID``, each read with ops.read_status. At most ``limit`` are read per
server (newest first is not knowable from tube names: they come in the server's order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tubeworker.batches.drive import drive
from tubeworker.batches.model import BATCH_PREFIX, KINDS, valid_batch_id
from tubeworker.batches.ops import Status, read_status
from tubeworker.beanstalk.client import Address, Client

__all__ = ["BatchRow", "batch_row", "list_batches"]

MAX_LISTED = 500  # batches read per server by one listing


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One batch as a person reads it."""

    server: str
    id: str
    state: str  # open | running | complete | succeeded | unknown
    pending: int
    succeeded: int
    buried: int
    abandoned: int
    created: float | None
    description: str
    callbacks: dict[str, dict[str, Any]]  # kind → {"job", "tube", "task", "fired"}

    @property
    def age(self) -> float | None:
        return None if self.created is None else max(0.0, time.time() - self.created)

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "id": self.id,
            "state": self.state,
            "pending": self.pending,
            "succeeded": self.succeeded,
            "buried": self.buried,
            "abandoned": self.abandoned,
            "created": self.created,
            "age": None if self.age is None else round(self.age, 1),
            "description": self.description,
            "callbacks": self.callbacks,
        }


def row_of(server: str, status: Status) -> BatchRow:
    counts, manifest = status.counts, status.manifest
    pending = counts.pending - (1 if status.open else 0)  # the opener is no job
    if manifest is None:
        state = "unknown"  # its maker died while opening it: forgotten after its retention
    elif status.open:
        state = "open"
    elif pending > 0:
        state = "running"
    else:
        state = "complete" if counts.buried else "succeeded"
    callbacks: dict[str, dict[str, Any]] = {}
    if manifest is not None:
        for kind in KINDS:
            if kind in manifest.callbacks:
                job, tube, task = manifest.callbacks[kind]
                fired = status.fired.get(kind, False)
                callbacks[kind] = {"job": job, "tube": tube, "task": task, "fired": fired}
    return BatchRow(
        server=server,
        id=status.id,
        state=state,
        pending=max(0, pending),
        succeeded=max(0, counts.done - (0 if status.open else 1)),  # not the opener's
        buried=counts.buried,
        abandoned=counts.abandoned,
        created=None if manifest is None else manifest.created,
        description="" if manifest is None else manifest.description,
        callbacks=callbacks,
    )


async def batch_row(client: Client, address: Address, batch_id: str) -> BatchRow | None:
    """The batch ``batch_id`` on the client's server, or None when it has no such batch."""
    if not valid_batch_id(batch_id):
        return None
    status = await drive(client, read_status(batch_id))
    return None if status is None else row_of(str(address), status)


async def list_batches(
    client: Client, address: Address, *, limit: int = MAX_LISTED
) -> list[BatchRow]:
    """The batches kept on the client's server (at most ``limit``), oldest first."""
    ids = [t[len(BATCH_PREFIX) :] for t in await client.list_tubes() if t.startswith(BATCH_PREFIX)]
    rows = []
    for batch_id in ids[:limit]:
        row = await batch_row(client, address, batch_id)
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda row: row.created or 0.0)
    return rows
