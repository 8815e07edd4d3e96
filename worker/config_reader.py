"""Reading one TOML table of a config: typed getters that record every problem (at most
one per key) and hand back the default in its place, so one pass finds them all."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from tubeworker.beanstalk.client import Address, parse_address
from tubeworker.beanstalk.protocol import MAX_INT, validate_tube_name
from tubeworker.config_model import duration_seconds
from tubeworker.errors import ConfigError, LocalProtocolError
from tubeworker.tubes import as_name

__all__ = ["Problems", "Reader", "tube_patterns"]

_T = TypeVar("_T")
_ASCII_DIGITS: Final = re.compile(r"[0-9]+\Z")  # str.isdigit() also accepts "²"


class Problems:
    """Every problem found in one pass, at most one per key: a bad value is read as its
    default so that the rest can be checked, and must not lead to a second, made-up
    complaint about the same key."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self._keys: set[tuple[str | None, str | None]] = set()

    def add(self, error: ConfigError) -> None:
        where = (error.source, error.key)
        if where not in self._keys:
            self._keys.add(where)
            self.errors.append(error)


class Reader:
    """Reads one TOML table, remembering where each key came from for error messages.

    A getter that finds a bad value records the problem and returns the default, so that
    one pass finds every problem.
    """

    def __init__(
        self, table: Mapping[str, Any], path: str, origins: Mapping[str, str], problems: Problems
    ):
        self.table = table
        self.path = path  # dotted, e.g. "pool[0].retry"
        self.origins = origins
        self.problems = problems
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, problem: str) -> ConfigError:
        key = self.key(name)
        return ConfigError(problem, key=key, source=self.origins.get(key, self.origins[""]))

    def report(self, name: str, problem: str) -> None:
        self.problems.add(self.fail(name, problem))

    def bad(self, name: str, problem: str, default: _T) -> _T:
        """Record the problem; the default stands in for the value meanwhile."""
        self.report(name, problem)
        return default

    def reader(self, table: Mapping[str, Any], path: str) -> Reader:
        """A reader of another table, reporting to the same place."""
        return Reader(table, path, self.origins, self.problems)

    def get(self, name: str) -> Any:
        self.used.add(name)
        return self.table.get(name)

    def check_unknown(self, known: tuple[str, ...]) -> None:
        for name in self.table:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.report(name, f"unknown key{hint}; known keys: {', '.join(known)}")

    def integer(self, name: str, default: int, *, low: int = 0, high: int = MAX_INT) -> int:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, str) and _ASCII_DIGITS.match(value.strip()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            return self.bad(name, f"must be a whole number, got {value!r}", default)
        if not low <= value <= high:
            return self.bad(name, f"must be between {low} and {high}, got {value}", default)
        return value

    def fraction(self, name: str, default: float) -> float:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
            return self.bad(name, f"must be a fraction in (0, 1], got {value!r}", default)
        return float(value)

    def seconds(self, name: str, default: float, *, low: float = 0, high: float = MAX_INT) -> float:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            exact = duration_seconds(value)
            if exact is None:
                problem = f"must be seconds or a duration like '30s', '5m', got {value!r}"
                return self.bad(name, problem, default)
            value = float(exact)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return self.bad(name, f"must be a number of seconds, got {value!r}", default)
        if not low <= value <= high:
            problem = f"must be between {low} and {high} seconds, got {value}"
            return self.bad(name, problem, default)
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        if not isinstance(value, bool):
            return self.bad(name, f"must be true or false, got {value!r}", default)
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, str) or value.lower() not in choices:
            return self.bad(name, f"must be one of {', '.join(choices)}, got {value!r}", default)
        return value.lower()

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            return self.bad(name, f"must be a non-empty string, got {value!r}", None)
        return value

    def strings(self, name: str) -> tuple[str, ...] | None:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return self.bad(name, f"must be a list of strings, got {value!r}", None)
        return tuple(value)

    def table_at(self, name: str) -> Reader:
        value = self.get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.report(name, f"must be a table, got {value!r}")
            value = {}
        return self.reader(value, self.key(name))

    def servers(self, name: str) -> tuple[Address, ...] | None:
        texts = self.strings(name)
        if texts is None:
            return None
        if not texts:
            return self.bad(name, "needs at least one server", None)
        try:
            return tuple(parse_address(t) for t in texts)
        except ValueError as exc:
            return self.bad(name, str(exc), None)


def tube_patterns(reader: Reader, name: str) -> tuple[str, ...]:
    tubes = reader.strings(name)
    if not tubes:
        return reader.bad(name, "needs at least one tube name or pattern", ())
    for tube in tubes:
        # A pattern must be a legal name once its glob characters are taken out.
        literal = as_name(tube)
        try:
            validate_tube_name(literal, "tube")
        except LocalProtocolError as exc:
            problem = f"{tube!r} is not a valid tube name or pattern: {exc}"
            return reader.bad(name, problem, ())
    return tubes
