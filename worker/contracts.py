"""Payload contracts: the type a handler declares for its payload, and its version.

``@handler(payload=SendWelcome, version=2, upcast={1: v1_to_v2})`` gives the handler a
:class:`Contract`. At run, dispatch calls :meth:`Contract.accept` on the envelope's payload
and ``v``: an older payload is brought up to date by the upcasters (each turns version N
into N + 1), then validated; what fails is :class:`PayloadInvalid` (the job is buried,
cause ``schema``), and a newer version than the contract's is :class:`TooNew` (the job is
left for a newer worker). At put, :meth:`Contract.dump` validates the payload and turns it
into JSON data, so a malformed payload is refused before anything is sent.

The types are pydantic's (v2): a ``BaseModel``, a dataclass, a ``TypedDict``, or any type
its ``TypeAdapter`` validates. pydantic is imported only by processes with a contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, is_dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tubeworker.producing.errors import PayloadInvalid

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = [
    "MAX_REASON",
    "Contract",
    "PayloadInvalid",
    "TooNew",
    "declare",
    "declared",
    "invalid",
    "key_path_value",
    "make_contract",
    "plain",
    "schema_document",
]

MAX_PROBLEMS = 10  # field errors named in one reason; the rest are counted
MAX_REASON = 1000  # characters of a reason (it goes into the log line and the burial record)

Upcaster = Callable[[Any], Any]


def invalid(task: str | None, problems: list[str], *, total: int | None = None) -> PayloadInvalid:
    """The error for a payload's failing fields: the first few named, the rest counted,
    the whole message size-capped (it goes into the log line and the burial record)."""
    shown = "; ".join(problems[:MAX_PROBLEMS])
    more = (total or len(problems)) - min(len(problems), MAX_PROBLEMS)
    if more > 0:
        shown += f"; and {more} more"
    what = f"payload of task {task!r}" if task else "payload"
    message = f"{what} is invalid: {shown}"
    if len(message) > MAX_REASON:
        message = message[: MAX_REASON - 1] + "…"
    return PayloadInvalid(message, task, tuple(problems))


class TooNew(Exception):
    """The job's payload version is newer than this worker's handler knows."""

    def __init__(self, task: str | None, version: int, known: int) -> None:
        self.task = task
        self.version = version
        self.known = known
        super().__init__(
            f"payload version {version} of task {task!r} is newer than this worker knows "
            f"(up to {known}): left for a newer worker"
        )


@dataclass(frozen=True, slots=True, eq=False)
class Contract:
    """A handler's payload type and version (see the module docstring)."""

    model: Any  # the declared type; None: any payload (only the version is checked)
    version: int = 1
    upcast: Mapping[int, Upcaster] = field(default_factory=lambda: MappingProxyType({}))
    _adapter: list[TypeAdapter[Any]] = field(default_factory=list, repr=False)

    @property
    def adapter(self) -> TypeAdapter[Any]:
        """pydantic's validator for the model, built on first use."""
        if not self._adapter:
            from pydantic import TypeAdapter

            self._adapter.append(TypeAdapter(self.model))
        return self._adapter[0]

    def accept(self, payload: Any, version: int = 1, *, task: str | None = None) -> Any:
        """The payload a handler gets: upcast from ``version``, then validated.
        Raises :class:`TooNew` or :class:`PayloadInvalid`."""
        if version > self.version:
            raise TooNew(task, version, self.version)
        while version < self.version:
            step = self.upcast.get(version)
            if step is None:
                raise invalid(
                    task,
                    [
                        f"v: version {version} is no longer accepted (this handler takes "
                        f"{self.version} and has no upcaster from {version})"
                    ],
                )
            try:
                payload = step(payload)
            except Exception as exc:  # the user's upcaster: its failure names it
                name = getattr(step, "__qualname__", repr(step))
                raise invalid(
                    task, [f"v: upcaster {name} from version {version} raised {exc!r}"]
                ) from None
            version += 1
        if self.model is None:
            return payload
        return self._validate(payload, task)

    def dump(self, payload: Any, *, task: str | None = None) -> Any:
        """The JSON data of a payload about to be put (a model instance or plain data),
        validated against the model. Raises :class:`PayloadInvalid`."""
        if self.model is None:
            return payload
        value = self._validate(payload, task)
        return self.adapter.dump_python(value, mode="json")

    def json_schema(self) -> dict[str, Any]:
        """The payload's JSON Schema (an empty schema when no type is declared)."""
        if self.model is None:
            return {}
        schema: dict[str, Any] = self.adapter.json_schema()
        return schema

    def _validate(self, payload: Any, task: str | None) -> Any:
        from pydantic import ValidationError

        adapter = self.adapter
        if not _is_plain(payload):
            # A model instance (or other object) at put: check it through its JSON data, so
            # what is validated is exactly what a worker will read.
            payload = plain(payload)
        try:
            return adapter.validate_python(payload)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            problems = [f"{_path(error['loc'])}: {_message(error['msg'])}" for error in errors]
            raise invalid(task, problems, total=exc.error_count()) from None


def make_contract(
    model: Any, version: int, upcast: Mapping[int, Upcaster] | None
) -> Contract | None:
    """The contract ``@handler`` declares, or None when it declares none. Raises
    ValueError/TypeError for declarations that cannot work, at import time."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, got {version!r}")
    steps = dict(upcast or {})
    for start, step in steps.items():
        if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start < version:
            raise ValueError(
                f"upcast keys are the versions they upgrade from (1..{version - 1}), got {start!r}"
            )
        if not callable(step):
            raise TypeError(f"upcast[{start}] must be a function, got {step!r}")
    if model is None and version == 1:
        return None
    contract = Contract(model, version, MappingProxyType(steps))
    if model is not None:
        contract.adapter  # a type pydantic cannot validate fails here, at import  # noqa: B018
    return contract


# Task name → contract of the handlers this process loaded (the daemon, `tubeworker put`,
# `check`): puts of those tasks from this process are checked (job.put, producers).
_declared: dict[str, Contract] = {}


def declare(contracts: Mapping[str, Contract]) -> None:
    """Make these tasks' contracts known to every put of this process."""
    _declared.update(contracts)


def declared(task: str) -> Contract | None:
    return _declared.get(task) if _declared else None


def schema_document(contracts: Mapping[str, Contract] | None = None) -> dict[str, Any]:
    """task → ``{"version": N, "schema": JSON Schema}``, sorted by task: what ``tubeworker
    schemas`` prints and ``/schemas`` serves (default: the contracts this process knows)."""
    known = _declared if contracts is None else contracts
    return {
        task: {"version": contract.version, "schema": contract.json_schema()}
        for task, contract in sorted(known.items())
    }


def plain(value: Any) -> Any:
    """JSON data of a pydantic model or dataclass instance; anything else as it is (so
    that what is not JSON is still refused as such)."""
    if _is_plain(value) or not (hasattr(type(value), "__pydantic_fields__") or is_dataclass(value)):
        return value
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, dict | list | str | int | float | bool)


def _path(loc: tuple[int | str, ...]) -> str:
    """``payload.items[2].sku`` from pydantic's location tuple."""
    path = "payload"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _message(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def key_path_value(payload: Any, path: str) -> str | None:
    """The value at ``path`` (``payload.order_id``; dots for nesting) of a job's payload,
    as text; None when it has no such field."""
    parts = path.split(".")
    if parts and parts[0] == "payload":
        parts = parts[1:]
    value = payload
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif hasattr(value, "__pydantic_fields__") or hasattr(value, "__dataclass_fields__"):
            if not hasattr(value, part):
                return None
            value = getattr(value, part)
        else:
            return None
    return None if value is None else str(value)
