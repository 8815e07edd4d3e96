"""Tube names as tubeworker reads them: glob patterns, and the tubes of its own.

One definition of each rule, used by the daemon (which tubes a pattern pool works on),
the metrics and the admin commands (which tubes they sum and show):

- A tube named with any of ``* ? [ ]`` in a pool's ``tubes`` is a glob pattern
  (``fnmatch``, case-sensitive, as tube names are); new matching tubes are discovered.
- Tubes whose names start with ``tubeworker.`` are tubeworker's own records (burial
  reasons, fleet-limit tokens): a pattern never matches them, no command counts them
  as work, and they are shown only when asked for (``--all``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Final

__all__ = ["INTERNAL_PREFIX", "as_name", "is_internal", "is_pattern", "matches_any"]

INTERNAL_PREFIX: Final = "tubeworker."
_GLOB_CHARS: Final = frozenset("*?[]")
_GLOB_SYNTAX: Final = re.compile(r"[*?\[\]!]")  # "!" negates inside [...]


def is_pattern(tube: str) -> bool:
    """True for a glob pattern (``tenant-*``), False for a plain tube name."""
    return not _GLOB_CHARS.isdisjoint(tube)


def as_name(pattern: str) -> str:
    """``pattern`` with its glob syntax replaced by a letter: a legal tube name when the
    pattern is a legal one (so a pattern is validated by beanstalkd's name rules)."""
    return _GLOB_SYNTAX.sub("x", pattern)


def is_internal(tube: str) -> bool:
    """True for a tube of tubeworker's own (records, tokens), never work for a pool."""
    return tube.startswith(INTERNAL_PREFIX)


def matches_any(tube: str, patterns: Iterable[str]) -> bool:
    """Whether ``tube`` is one of ``patterns`` (names or globs); a tube of tubeworker's own
    matches only where it is named exactly."""
    for pattern in patterns:
        if pattern == tube:
            return True
        if is_pattern(pattern) and not is_internal(tube) and fnmatchcase(tube, pattern):
            return True
    return False
