"""The JSON envelope producers write: ``{"task": NAME, "payload": ...}``, and the optional
keys the features add (one place for all of them; unknown keys are ignored, so an older
worker runs a newer producer's jobs):

=========  ==============================================================  ==============
key        meaning                                                         set by
=========  ==============================================================  ==============
``task``   the handler's name (required)                                   every producer
``payload``  its data (any JSON; absent means null)                        every producer
``id``     the producer's idempotency key, a string (a number is read as   producers,
           its decimal text); schedules set ``schedule:NAME:FIRE_TIME``    schedules
``v``      the payload's version, an integer >= 1 (absent means 1): a      typed
           worker whose handler knows only older versions leaves the job   producers
           for a newer worker (docs/contracts.md)
``secret`` a secret part, sealed (AES-256-GCM, ``{"kid", "nonce",   producers with
           "ct"}``): opened only in the worker, for ``job.secret``         encryption keys
           (docs/security.md)
``kid``,   the signing key's id, and HMAC-SHA256 (64 hex digits) of the   signing
``sig``    body without its last member ``"sig"`` (docs/security.md)     producers
``batch``  the job's place in a batch: ``{"id", "token", "opener", "at"}``  batches
           and the parked callbacks' job ids ``"success"``, ``"complete"``,
           ``"death"`` (docs/workflows.md#batches)
``then``   a chain's next steps, each ``{"tube", "task", "payload", "id",   chains
           "priority", "delay", "ttr"}``: put (first step, carrying the
           rest) when this job succeeds, before it is deleted
           (docs/workflows.md)
=========  ==============================================================  ==============
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from tubeworker.beanstalk.protocol import DEFAULT_PRIORITY, DEFAULT_TTR, validate_tube_name
from tubeworker.errors import LocalProtocolError
from tubeworker.security.keys import KeyRing
from tubeworker.security.signing import current_signer, sign

__all__ = [
    "BATCH_PREFIX",
    "KINDS",
    "BadEnvelope",
    "BatchRef",
    "Envelope",
    "MissingTask",
    "Step",
    "decode_envelope",
    "encode_envelope",
    "envelope_bytes",
    "envelope_id",
    "read_batch_ref",
    "read_envelope",
    "read_steps",
]

MAX_ID = 200  # characters of an envelope's id (it goes into log lines and records)
MAX_VERSION = 1_000_000
MAX_STEPS = 100  # a chain's steps one envelope may carry
BATCH_PREFIX: Final = "tubeworker.batch."
Kind = Literal["success", "complete", "death"]
#: A batch's callbacks, in the order they may fire.
KINDS: Final[tuple[Kind, ...]] = ("death", "complete", "success")
_BATCH_ID = re.compile(r"[0-9a-z][0-9a-z_-]{0,63}")
_MAX_JOB_ID = 2**64 - 1


def batch_tube(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id


def valid_batch_id(batch_id: str) -> bool:
    return _BATCH_ID.fullmatch(batch_id) is not None


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a chain: the job to put when the one before it succeeds."""

    tube: str
    task: str
    payload: Any = None
    id: str | None = None
    priority: int = DEFAULT_PRIORITY
    delay: int = 0
    ttr: int = DEFAULT_TTR

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tube": self.tube, "task": self.task, "payload": self.payload}
        if self.id is not None:
            data["id"] = self.id
        if self.priority != DEFAULT_PRIORITY:
            data["priority"] = self.priority
        if self.delay:
            data["delay"] = self.delay
        if self.ttr != DEFAULT_TTR:
            data["ttr"] = self.ttr
        return data


@dataclass(frozen=True, slots=True)
class BatchRef:
    """A job's place in its batch: the envelope's ``"batch"`` member,
    ``{"id", "token", "opener", "success"?, "complete"?, "death"?}`` (callbacks by job id)."""

    id: str
    token: int
    opener: int
    callbacks: Mapping[Kind, int] = field(default_factory=dict)
    opened: int = 0  # when the batch was opened (wall time, whole seconds; 0: unknown)

    @property
    def tube(self) -> str:
        return batch_tube(self.id)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "token": self.token, "opener": self.opener}
        for kind in KINDS:
            if kind in self.callbacks:
                data[kind] = self.callbacks[kind]
        if self.opened:
            data["at"] = self.opened
        return data

    def with_token(self, token: int) -> BatchRef:
        return BatchRef(self.id, token, self.opener, self.callbacks, self.opened)


def _job_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_JOB_ID:
        raise BadEnvelope(f'envelope "batch" {what} must be a job id, got {value!r}')
    return value


def read_batch_ref(value: Any) -> BatchRef | None:
    """The envelope's ``"batch"`` member (absent: None), or BadEnvelope saying what is
    wrong."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadEnvelope('envelope "batch" must be an object')
    batch_id = value.get("id")
    if not isinstance(batch_id, str) or not valid_batch_id(batch_id):
        raise BadEnvelope('envelope "batch" has no valid "id" (lowercase letters and digits)')
    callbacks = {kind: _job_id(value[kind], kind) for kind in KINDS if kind in value}
    opened = value.get("at", 0)
    if isinstance(opened, bool) or not isinstance(opened, int) or opened < 0:
        opened = 0
    return BatchRef(
        batch_id,
        _job_id(value.get("token"), '"token"'),
        _job_id(value.get("opener"), '"opener"'),
        callbacks,
        opened,
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    task: str
    payload: Any = None
    id: str | None = None  # the producer's idempotency key
    v: int = 1  # the payload's version
    then: tuple[Step, ...] = ()  # a chain's next steps
    secret: Any = None  # the sealed secret member (security/secrets.py), as given
    batch: BatchRef | None = None  # its place in a batch


class BadEnvelope(ValueError):
    """The body cannot be dispatched; the job is buried with this reason, never retried."""


class MissingTask(BadEnvelope):
    """A JSON object without a ``task``: most likely a raw body sent to an envelope pool."""


def decode_envelope(body: bytes) -> tuple[str, Any]:
    """(task, payload) from a body, or BadEnvelope saying exactly what is wrong."""
    envelope = read_envelope(body)
    return envelope.task, envelope.payload


def read_envelope(body: bytes) -> Envelope:
    """The envelope of a body, or BadEnvelope saying exactly what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEnvelope(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadEnvelope(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadEnvelope("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise BadEnvelope(f"body cannot be decoded as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadEnvelope(f"envelope must be a JSON object, got {type(data).__name__}")
    task = data.get("task")
    if not isinstance(task, str) or not task:
        raise MissingTask('envelope has no "task" string')
    version = data.get("v", 1)
    if version != 1 or type(version) is not int:  # True == 1, and is no version
        version = _version(version)
    steps = read_steps(data.get("then")) if "then" in data else ()
    batch = read_batch_ref(data.get("batch")) if "batch" in data else None
    return Envelope(
        task,
        data.get("payload"),
        envelope_id(data.get("id")),
        version,
        steps,
        data.get("secret"),
        batch,
    )


def _version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise BadEnvelope(f'envelope "v" must be an integer 1..{MAX_VERSION}, got {value!r}')
    return value


def envelope_id(value: Any) -> str | None:
    """An envelope's ``id`` as a string (BadEnvelope when it cannot be one)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise BadEnvelope(f'envelope "id" must be a non-empty string, got {value!r}')
    if len(value) > MAX_ID:
        raise BadEnvelope(f'envelope "id" is longer than {MAX_ID} characters')
    return value


def envelope_bytes(
    data: dict[str, Any], signer: KeyRing | None = None, *, strict: bool = True
) -> bytes:
    """An envelope's body: compact JSON (``strict``: no NaN, which other languages refuse),
    signed with ``signer`` or this process's signing keys when it has some
    (docs/security.md; signed bodies are always strict)."""
    keys = signer or current_signer()
    if keys is not None:
        return sign(data, keys)
    return json.dumps(data, separators=(",", ":"), allow_nan=not strict).encode()


def encode_envelope(task: str, payload: Any = None, *, id: str | None = None, v: int = 1) -> bytes:
    """The body of an envelope (``id`` and ``v`` only when given, so bodies stay as they
    were)."""
    data: dict[str, Any] = {"task": task, "payload": payload}
    if id is not None:
        data["id"] = envelope_id(id)
    if v != 1:
        data["v"] = _version(v)
    return envelope_bytes(data, strict=False)


def read_steps(value: Any) -> tuple[Step, ...]:
    """An envelope's ``"then"`` (absent: none), or BadEnvelope saying what is wrong."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_STEPS:
        raise BadEnvelope(f'envelope "then" must be a list of at most {MAX_STEPS} steps')
    return tuple(_step(item, n) for n, item in enumerate(value))


def _step(item: Any, n: int) -> Step:
    where = f'envelope "then"[{n}]'
    if not isinstance(item, dict):
        raise BadEnvelope(f"{where} must be an object")
    tube, task = item.get("tube"), item.get("task")
    if not isinstance(task, str) or not task:
        raise BadEnvelope(f'{where} has no "task" string')
    if not isinstance(tube, str):
        raise BadEnvelope(f'{where} has no "tube" string')
    try:
        validate_tube_name(tube)
    except LocalProtocolError as exc:
        raise BadEnvelope(f"{where}: {exc}") from None
    numbers = {}
    for name, default, low, high in (
        ("priority", DEFAULT_PRIORITY, 0, 2**32 - 1),
        ("delay", 0, 0, 2**32 - 1),
        ("ttr", DEFAULT_TTR, 1, 2**32 - 1),
    ):
        value = item.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadEnvelope(f'{where} "{name}" must be an integer {low}..{high}')
        numbers[name] = value
    return Step(
        tube,
        task,
        item.get("payload"),
        envelope_id(item.get("id")),
        numbers["priority"],
        numbers["delay"],
        numbers["ttr"],
    )
