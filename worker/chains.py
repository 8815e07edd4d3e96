"""Chains: a job that, when it succeeds, puts the next step.

A chain travels in the envelope: its first job carries ``"then"``, the steps after it, each
a JSON object ``{"tube", "task", "payload", "id", "priority", "delay", "ttr"}`` (only
``tube`` and ``task`` required). When a job with steps succeeds, the daemon puts the first
step, carrying the rest as its own ``"then"``, and only then deletes the job: put before
delete, so a crash in between leaves the step twice (same ``id``), never lost. A step that
cannot be put fails the job like an exception would (retried with backoff, the step put on
the next success), so no step is lost to an outage either.

``producer.chain([Step(...), ...])`` writes the first job; a handler adds steps with
``job.then(...)`` (they come before the rest of the chain). Each step's ``id`` is
``chain:<chain id>:<index>`` unless given, so its handler (or ``idempotent``) can tell a
repeat.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tubeworker.beanstalk.protocol import validate_tube_name
from tubeworker.contracts import declared, plain
from tubeworker.envelope import MAX_STEPS, BatchRef, Step, envelope_bytes
from tubeworker.security.keys import KeyRing

__all__ = ["NextPut", "Step", "chain_bodies", "next_put", "step_body"]


@dataclass(frozen=True, slots=True)
class NextPut:
    """The put that continues a chain: the first step's envelope, with the rest in it."""

    tube: str
    body: bytes
    priority: int
    delay: int
    ttr: int
    id: str | None


def step_body(
    step: Step,
    rest: Sequence[Step] = (),
    signer: KeyRing | None = None,
    batch: BatchRef | None = None,
) -> bytes:
    """The envelope of ``step`` (its payload checked if its task is typed), carrying the
    steps after it and its place in a batch."""
    data: dict[str, Any] = {"task": step.task}
    contract = declared(step.task)
    data["payload"] = (
        contract.dump(step.payload, task=step.task) if contract else plain(step.payload)
    )
    if step.id is not None:
        data["id"] = step.id
    if contract is not None and contract.version != 1:
        data["v"] = contract.version
    if rest:
        data["then"] = [each.to_json() for each in rest]
    if batch is not None:
        data["batch"] = batch.to_json()
    return envelope_bytes(data, signer)


def next_put(
    steps: Sequence[Step], signer: KeyRing | None = None, batch: BatchRef | None = None
) -> NextPut | None:
    """What a job that succeeded puts next: its first step, carrying the others (and the
    job's batch token: a chain in a batch counts as one job until its last step ends)."""
    if not steps:
        return None
    first, rest = steps[0], steps[1:]
    body = step_body(first, rest, signer, batch)
    return NextPut(first.tube, body, first.priority, first.delay, first.ttr, first.id)


def chain_bodies(
    steps: Sequence[Step], chain_id: str | None = None, signer: KeyRing | None = None
) -> NextPut:
    """The first job of a new chain (each step without an id gets ``chain:<id>:<n>``).
    Raises ValueError for an empty chain, PayloadInvalid for a typed step's bad payload."""
    if not steps:
        raise ValueError("a chain needs at least one step")
    if len(steps) > MAX_STEPS + 1:
        raise ValueError(f"a chain has at most {MAX_STEPS + 1} steps")
    chain = chain_id or uuid.uuid4().hex
    named = [
        step if step.id is not None else _with_id(step, f"chain:{chain}:{n}")
        for n, step in enumerate(steps)
    ]
    for step in named:
        validate_tube_name(step.tube)
    put = next_put(named, signer)
    assert put is not None
    return put


def _with_id(step: Step, key: str) -> Step:
    return Step(step.tube, step.task, step.payload, key, step.priority, step.delay, step.ttr)
