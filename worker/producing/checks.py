"""A put checked before anything is sent: tube, body, priority, delay and ttr in whole
seconds, the envelope, and which servers (see :mod:`tubeworker.producer`)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Any, Final, TypeAlias

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, parse_address
from tubeworker.config import duration_seconds
from tubeworker.contracts import Contract, declared, plain
from tubeworker.envelope import BadEnvelope, BatchRef, envelope_bytes, envelope_id
from tubeworker.errors import ConfigError, LocalProtocolError
from tubeworker.producing.errors import InvalidJob, JobTooBig
from tubeworker.security.keys import KeyRing
from tubeworker.security.secrets import seal
from tubeworker.security.secrets import sealer as installed_sealer

__all__ = [
    "DEFAULT_SERVER",
    "MAX_INT",
    "SERVERS_ENV",
    "PutRequest",
    "Seconds",
    "ServersArg",
    "as_address",
    "check_size",
    "make_envelope",
    "parse_servers",
    "prepare_put",
    "to_seconds",
]

SERVERS_ENV: Final = "TUBEWORKER_SERVERS"
DEFAULT_SERVER: Final = "127.0.0.1:11300"
MAX_INT: Final = p.MAX_INT

#: Seconds for delay and ttr: an int, a float or a ``timedelta`` (rounded up to whole
#: seconds), or a duration string: ``"30"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"``.
Seconds: TypeAlias = int | float | str | timedelta
ServersArg: TypeAlias = str | Address | Iterable[str | Address] | None


@dataclass(frozen=True, slots=True)
class PutRequest:
    """A put that passed every check: what is sent."""

    tube: str
    body: bytes
    priority: int
    delay: int
    ttr: int


def _exact(value: object, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | str | timedelta):
        raise InvalidJob(
            f"{what} must be seconds or a duration like '30s', got {type(value).__name__}"
        )
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidJob(f"{what} must be a finite number of seconds, got {value}")
        return Fraction(value)
    if isinstance(value, timedelta):
        return Fraction(value.days * 86_400 + value.seconds) + Fraction(value.microseconds, 10**6)
    seconds = duration_seconds(value)
    if seconds is not None:
        return seconds
    raise InvalidJob(f"bad {what} {value!r}: expected whole seconds or a duration like 30s, 5m, 1h")


def to_seconds(value: Seconds, what: str, *, minimum: int = 0) -> int:
    """Whole seconds for beanstalkd, rounded up, ``minimum`` to 2**32-1; ``what`` names
    the value in the error (:class:`InvalidJob`)."""
    exact = _exact(value, what)
    seconds = math.ceil(exact)
    if exact < 0 or seconds < minimum:
        raise InvalidJob(f"{what} {value!r} is out of range: {minimum} to {MAX_INT} seconds")
    if seconds > MAX_INT:
        raise InvalidJob(
            f"{what} {value!r} is too long: beanstalkd takes {minimum} to {MAX_INT} seconds"
        )
    return seconds


def _priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"priority must be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_INT:
        raise InvalidJob(f"priority {value} is out of range: 0 (most urgent) to {MAX_INT}")
    return value


def _tube(tube: str) -> str:
    try:
        p.validate_tube_name(tube)  # a str of beanstalkd's characters, 1 to 200 bytes
    except LocalProtocolError as exc:
        raise InvalidJob(str(exc)) from None
    return tube


def check_size(size: int, limit: int | None, server: str | None = None) -> None:
    if limit is not None and size > limit:
        whose = f"the server's ({server})" if server else "the"
        raise JobTooBig(
            f"job too big: the body is {size} bytes; {whose} max-job-size is {limit}",
            size,
            limit,
            server,
        )


def make_envelope(
    task: str,
    payload: Any = None,
    *,
    id: str | None = None,
    contracts: Mapping[str, Contract] | None = None,
    signer: KeyRing | None = None,
    secret: Any = None,
    sealer: KeyRing | None = None,
    batch: BatchRef | None = None,
) -> bytes:
    """The body ``{"task": TASK, "payload": PAYLOAD}`` that tubeworker dispatches on, in the
    form :func:`tubeworker.envelope.encode_envelope` writes, but strict JSON (no NaN or
    Infinity, which other languages' parsers refuse). ``id``: the envelope's idempotency
    key. A task with a known contract (``contracts``, or a handler loaded in this process)
    has its payload validated (:class:`PayloadInvalid`) and its version written as ``v``;
    a model instance is written as its JSON data. ``signer``: keys to sign it with (else
    this process's, if it has signing keys; else unsigned). ``secret``: sealed with
    ``sealer`` (else this process's encryption keys) into ``"secret"``. ``batch``: its
    place in a batch (written by the batch that puts it)."""
    if not isinstance(task, str) or not task:
        raise InvalidJob(f"task must be a non-empty string, got {task!r}")
    data: dict[str, Any] = {"task": task}
    contract = (contracts.get(task) if contracts else None) or declared(task)
    if contract is not None:
        data["payload"] = contract.dump(payload, task=task)
    else:
        data["payload"] = plain(payload)
    if id is not None:
        try:
            data["id"] = envelope_id(id)
        except BadEnvelope as exc:
            raise InvalidJob(str(exc)) from None
    if contract is not None and contract.version != 1:
        data["v"] = contract.version
    if secret is not None:
        data["secret"] = _sealed(secret, task, sealer)
    if batch is not None:
        data["batch"] = batch.to_json()
    try:
        return envelope_bytes(data, signer)  # signed with signer, or this process's keys
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidJob(f"the payload of task {task!r} is not JSON: {exc}") from None


def _sealed(secret: Any, task: str, sealer: KeyRing | None) -> dict[str, str]:
    keys = sealer or installed_sealer()
    if keys is None:
        raise InvalidJob("secret= needs encryption keys (encryption_keys=, or [security])")
    try:
        return seal(secret, task, keys)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"the secret of task {task!r} is not JSON: {exc}") from None


def prepare_put(
    tube: str,
    body: bytes | bytearray | memoryview | str,
    *,
    priority: int = p.DEFAULT_PRIORITY,
    delay: Seconds = 0,
    ttr: Seconds = p.DEFAULT_TTR,
    max_job_size: int | None = None,
) -> PutRequest:
    """Check a put (:class:`InvalidJob` says what is wrong) and return what will be sent.
    A str body is sent as UTF-8."""
    name = _tube(tube)
    if isinstance(body, str):
        data = body.encode("utf-8")
    elif isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
    else:
        raise InvalidJob(f"body must be bytes or str, got {type(body).__name__}")
    check_size(len(data), max_job_size)
    return PutRequest(
        name,
        data,
        _priority(priority),
        to_seconds(delay, "delay"),
        to_seconds(ttr, "ttr", minimum=1),
    )


def parse_servers(
    servers: ServersArg = None, env: Mapping[str, str] | None = None
) -> tuple[Address, ...]:
    """``"host:port"``, ``"a:11300,b:11300"``, a list of them (or of ``Address``); None:
    ``$TUBEWORKER_SERVERS`` (comma-separated), else 127.0.0.1:11300. Raises ConfigError."""
    source = "servers"
    if servers is None:
        text = (os.environ if env is None else env).get(SERVERS_ENV, "")
        servers, source = (text, f"${SERVERS_ENV}") if text.strip() else (DEFAULT_SERVER, "")
    items: list[str | Address]
    if isinstance(servers, Address):
        items = [servers]
    elif isinstance(servers, str):
        items = list(servers.split(","))
    else:
        items = list(servers)
    found: list[Address] = []
    for item in items:
        if isinstance(item, Address):
            found.append(item)
            continue
        if not item.strip():
            continue
        try:
            found.append(parse_address(item.strip()))
        except ValueError as exc:
            raise ConfigError(str(exc), key="servers", source=source or None) from None
    if not found:
        raise ConfigError("no beanstalkd server given", key="servers", source=source or None)
    return tuple(dict.fromkeys(found))


def as_address(server: str | Address | None) -> Address | None:
    return parse_address(server) if isinstance(server, str) else server


# --------------------------------------------------------------------------- replies
