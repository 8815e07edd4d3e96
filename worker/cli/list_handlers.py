"""``tubeworker handlers``: every handler the daemon would know, from entry points and (with
``-c``) the config's ``[handlers]`` table; one that cannot load is listed as BROKEN.

Exit 0, or with ``-c`` 78 when the config has a problem ``tubeworker run`` would refuse to
start with (a [handlers] entry that cannot load is one). A broken entry point alone keeps
0: the daemon starts without it, unless a pool binds it (then the config has a problem)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from tubeworker.cli.startup import EX_CONFIG, EX_OK, load_all, print_problems
from tubeworker.config import Overrides
from tubeworker.errors import ConfigError
from tubeworker.registry import (
    CONFIG_DISTRIBUTION,
    BrokenHandler,
    RegisteredHandler,
    Registry,
    discover,
)

__all__ = ["list_handlers"]


def list_handlers(args: argparse.Namespace) -> int:
    """Every handler, those that cannot load as BROKEN with their error; with ``-c``, the
    config's problems on stderr and exit 78 when there are any (what ``run`` refuses)."""
    problems: tuple[ConfigError, ...] = ()
    if args.config:
        loaded = load_all(args, overrides=Overrides())
        registry, problems = loaded.registry, loaded.problems
    else:
        registry = discover()
    rows = [_row(registered) for _, registered in sorted(registry.handlers.items())]
    broken = {**registry.broken, **_malformed(problems, registry)}
    rows += [
        (name, b.target, b.distribution, f"BROKEN: {b.error}") for name, b in sorted(broken.items())
    ]
    if not rows:
        print("no handlers registered in entry-point group 'tubeworker.handlers'")
    widths = [max(len(row[i]) for row in rows) for i in range(3)] if rows else []
    for *cells, status in rows:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        print("  ".join([*padded, status]))
    print_problems(problems)
    return EX_CONFIG if problems else EX_OK


def _row(registered: RegisteredHandler) -> tuple[str, str, str, str]:
    spec = registered.spec
    options = [
        "async" if spec.is_async else "sync",
        *([f"apis={','.join(spec.apis)}"] if spec.apis else []),
        *([f"timeout={spec.timeout:g}s"] if spec.timeout else []),
        *([f"max_attempts={spec.max_attempts}"] if spec.max_attempts else []),
        *(["long_running"] if spec.long_running else []),
    ]
    return registered.name, registered.target, registered.distribution, " ".join(options)


def _malformed(problems: Iterable[ConfigError], registry: Registry) -> dict[str, BrokenHandler]:
    """[handlers] entries the config could not even read (not ``module:function``): listed
    as BROKEN too, like the entries that failed to load."""
    found: dict[str, BrokenHandler] = {}
    for problem in problems:
        name = (problem.key or "").removeprefix("handlers.")
        if name != problem.key and name not in registry.handlers and name not in registry.broken:
            found[name] = BrokenHandler(name, CONFIG_DISTRIBUTION, "-", problem.problem)
    return found
