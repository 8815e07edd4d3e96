"""``@frozen``: a value record, immutable to the type checker, cheap to build at run time.

A ``@dataclass(frozen=True)`` sets every field through ``object.__setattr__``: building
one with 14 fields costs about five times a plain slotted dataclass. The records every job
creates (beanstalkd's replies and commands, a job's plan, budget and outcome) are built
tens of thousands of times a second, so they are declared with this decorator instead:
mypy (``--strict``, run on every change) treats them as frozen and refuses any
assignment to a field, while at run time they are ``@dataclass(slots=True)`` with the
same ``__eq__`` and a field-based ``__hash__`` as a frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

__all__ = ["frozen"]

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[T]) -> type[T]:
    """Like ``@dataclass(frozen=True, slots=True)`` (see the module docstring)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
