"""Handlers discovered through entry points in group ``tubeworker.handlers``.

The entry point's name is the task name; its value is ``module:function``. A plugin that
fails to import, or a name registered twice, is recorded with its distribution and the
error; the daemon refuses to start only if a pool needs that handler.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tubeworker.contracts import Contract
from tubeworker.errors import ConfigError
from tubeworker.job import HandlerSpec, Middleware, spec_of

__all__ = [
    "CONFIG_DISTRIBUTION",
    "GROUP",
    "MIDDLEWARE_GROUP",
    "BrokenHandler",
    "RegisteredHandler",
    "Registry",
    "discover",
    "load_middleware",
    "load_targets",
]

GROUP: Final = "tubeworker.handlers"
MIDDLEWARE_GROUP: Final = "tubeworker.middleware"
#: The distribution shown for handlers named in the config's [handlers] table.
CONFIG_DISTRIBUTION: Final = "(config)"


@dataclass(frozen=True, slots=True)
class RegisteredHandler:
    name: str
    spec: HandlerSpec
    distribution: str
    target: str  # module:function


@dataclass(frozen=True, slots=True)
class BrokenHandler:
    name: str
    distribution: str
    target: str
    error: str


class Registry:
    """Task name → handler. Built at start-up, read-only afterwards."""

    def __init__(
        self,
        handlers: Mapping[str, RegisteredHandler],
        broken: Mapping[str, BrokenHandler] | None = None,
    ) -> None:
        self.handlers = dict(handlers)
        self.broken = dict(broken or {})
        #: Middleware instances enabled in the config, outermost first.
        self.middleware: tuple[Middleware, ...] = ()

    @classmethod
    def from_functions(
        cls, functions: Mapping[str, Callable[..., Any]], *, distribution: str = "(local)"
    ) -> Registry:
        """A registry from a mapping, for tests and embedding."""
        return cls(
            {
                name: RegisteredHandler(name, _spec_for(name, f), distribution, _target(f))
                for name, f in functions.items()
            }
        )

    def get(self, name: str) -> HandlerSpec | None:
        registered = self.handlers.get(name)
        return registered.spec if registered else None

    def contracts(self) -> dict[str, Contract]:
        """Task name → the payload contract its handler declares (only those that do)."""
        return {name: h.spec.contract for name, h in self.handlers.items() if h.spec.contract}

    def broken_reason(self, name: str) -> str | None:
        """Why the handler registered as ``name`` failed to load, or None."""
        broken = self.broken.get(name)
        if broken is None:
            return None
        return f"{broken.target} from {broken.distribution}: {broken.error}"

    def require(self, names: Iterable[str], *, source: str = "config") -> None:
        """Raise ConfigError if any of ``names`` is missing or failed to load."""
        for name in names:
            if name in self.handlers:
                continue
            if name in self.broken:
                b = self.broken[name]
                raise ConfigError(
                    f"handler {name!r} ({b.target} from {b.distribution}) cannot be used: "
                    f"{b.error}",
                    key="handler",
                    source=source,
                )
            known = ", ".join(sorted(self.handlers)) or "none"
            raise ConfigError(
                f"no handler named {name!r} is registered (known: {known})",
                key="handler",
                source=source,
            )


def _target(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', repr(func))}"


def _spec_for(name: str, func: Callable[..., Any]) -> HandlerSpec:
    if not callable(func):
        raise TypeError(f"{name}: entry point is not callable: {func!r}")
    spec = spec_of(func)
    if spec.name is not None and spec.name != name:
        raise ValueError(
            f"@handler(name={spec.name!r}) does not match its entry point name {name!r}"
        )
    return spec


def load_targets(
    registry: Registry,
    targets: Iterable[tuple[str, str]],
    *,
    source: str,
    search: Path | None = None,
) -> tuple[ConfigError, ...]:
    """Add handlers named in the config (``[handlers] name = "module:function"``); the
    problems, one ConfigError per entry that cannot be used (nothing is raised).

    An entry that fails to load is recorded in ``registry.broken`` (distribution
    ``(config)``), as a broken entry point is, so ``tubeworker handlers -c`` lists it; a
    name an entry point already has keeps the entry point's handler.

    The rule for finding their modules: ``search`` (the config file's folder) goes first on
    the import path, then the usual path (installed packages, PYTHONPATH). It stays there,
    so compute-profile worker processes (which inherit the path) find the modules too.
    """
    targets = list(targets)
    if targets and search is not None and str(search) not in sys.path:
        sys.path.insert(0, str(search))
    problems: list[ConfigError] = []
    for name, target in targets:
        key = f"handlers.{name}"
        if name in registry.handlers or name in registry.broken:
            problems.append(
                ConfigError(
                    f"handler {name!r} is also registered by an entry point",
                    key=key,
                    source=source,
                )
            )
            continue
        module, _, attribute = target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attribute.split("."):
                obj = getattr(obj, part)
            spec = _spec_for(name, obj)
        except Exception as exc:  # the user's module: report any import-time error
            error = f"{type(exc).__name__}: {exc}"
            registry.broken[name] = BrokenHandler(name, CONFIG_DISTRIBUTION, target, error)
            problems.append(ConfigError(f"cannot load {target}: {error}", key=key, source=source))
            continue
        registry.handlers[name] = RegisteredHandler(name, spec, CONFIG_DISTRIBUTION, target)
    return tuple(problems)


def discover(group: str = GROUP) -> Registry:
    """Load every entry point of ``group``; never raises for a bad plugin."""
    handlers: dict[str, RegisteredHandler] = {}
    broken: dict[str, BrokenHandler] = {}
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=group):
        if (ep.name, ep.value) in seen:  # the same install seen twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        dist = ep.dist.name if ep.dist is not None else "?"
        if ep.name in handlers or ep.name in broken:
            first = handlers.get(ep.name) or broken[ep.name]
            handlers.pop(ep.name, None)
            broken[ep.name] = BrokenHandler(
                ep.name,
                dist,
                ep.value,
                f"registered twice: {first.target} ({first.distribution}) and {ep.value} ({dist})",
            )
            continue
        try:
            spec = _spec_for(ep.name, ep.load())
        except Exception as exc:  # any import-time error of a plugin is reported, not fatal
            broken[ep.name] = BrokenHandler(ep.name, dist, ep.value, f"{type(exc).__name__}: {exc}")
            continue
        handlers[ep.name] = RegisteredHandler(ep.name, spec, dist, ep.value)
    return Registry(handlers, broken)


def load_middleware(
    enabled: Sequence[str],
    options: Mapping[str, Mapping[str, object]],
    *,
    source: str,
    group: str = MIDDLEWARE_GROUP,
) -> tuple[Middleware, ...]:
    """Build the enabled middleware from their entry points, in order; a name that is not
    registered, fails to load, or refuses its options is a ConfigError."""
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}
    built: list[Middleware] = []
    for name in enabled:
        key = f"middleware.{name}"
        entry = found.get(name)
        if entry is None:
            known = ", ".join(sorted(found)) or "none"
            raise ConfigError(
                f"no middleware {name!r} in entry-point group {group!r} (known: {known})",
                key=key,
                source=source,
            )
        try:
            factory = entry.load()
            instance = factory(**dict(options.get(name, {})))
        except Exception as exc:  # a plugin's import or constructor: report, refuse to start
            raise ConfigError(
                f"cannot set up middleware {name!r}: {type(exc).__name__}: {exc}",
                key=key,
                source=source,
            ) from None
        if not isinstance(instance, Middleware):
            raise ConfigError(
                f"{entry.value} did not build a tubeworker.Middleware", key=key, source=source
            )
        built.append(instance)
    return tuple(built)
