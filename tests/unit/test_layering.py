"""Imports point one way, read with ast (nothing runs): one ordered table of layers.

Every import counts: module level, inside functions, under TYPE_CHECKING. A module may
import its own layer and the layers below it, never one above; within the package no two
modules import each other, directly or around a loop. ``worker/`` installs as
``tubeworker`` and ``handlers/`` as ``tubeworker.handlers``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"tubeworker": ROOT / "worker", "tubeworker.handlers": ROOT / "handlers"}

# Lowest first: (layer, the module prefixes in it).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("observe", ("tubeworker.observe",)),
    (
        "foundation",
        (
            "tubeworker.errors",
            "tubeworker.backoff",
            "tubeworker.tubes",
            "tubeworker.frozen",
            # Keys and signatures (stdlib only): the envelope signs with them.
            "tubeworker.security",
            # Payload fields masked in bodies shown to people (pure).
            "tubeworker.redact",
        ),
    ),
    ("beanstalk", ("tubeworker.beanstalk",)),
    (
        "model",
        (
            "tubeworker.job_puts",
            "tubeworker.job_workflows",
            "tubeworker.job",
            "tubeworker.envelope",
            # Payload types and versions a handler declares (checked at put and at run).
            "tubeworker.contracts",
            # Handlers' consume-side idempotency (a store of keys done).
            "tubeworker.idempotency",
            # Chains: the next step's envelope, put when a job succeeds (pure).
            "tubeworker.chains",
            # Batches: how they are kept in beanstalkd, and what is sent (no I/O).
            "tubeworker.batches",
            "tubeworker.registry",
            "tubeworker.config_model",
            "tubeworker.config_reader",
            "tubeworker.config_sections",
            "tubeworker.config_schedules",
            "tubeworker.config_security",
            "tubeworker.config",
            "tubeworker.burials",
            "tubeworker.returns",
            # Apps' way to put jobs; job.put() and the runtime put through it.
            "tubeworker.producing",
            "tubeworker.producer",
            # Schedules' calendar, misfire policy and tick records (pure).
            "tubeworker.schedule",
            # The built-in heartbeat task (its records are the schedule module's).
            "tubeworker.heartbeat",
        ),
    ),
    (
        "admin",
        (
            "tubeworker.admin_ops",
            "tubeworker.schedule_ops",
            "tubeworker.browse_ops",
            "tubeworker.batch_ops",
            "tubeworker.audit",
        ),
    ),
    ("flow", ("tubeworker.flow",)),
    ("runtime", ("tubeworker.runtime",)),
    # The test kit runs handlers through the runtime's own functions (tubeworker.testing).
    ("testing", ("tubeworker.testing",)),
    ("service", ("tubeworker.service",)),
    ("control", ("tubeworker.control",)),
    ("cli", ("tubeworker.cli", "tubeworker.__main__")),
]
# The public API (tubeworker/__init__) sits beside the model: handler authors' import.
PUBLIC = "tubeworker"
# The job model, Retry-After reading for handlers that call HTTP APIs (pure), and the
# error a put of an invalid payload raises.
PUBLIC_MAY_IMPORT = {
    "tubeworker.job",
    "tubeworker.backoff",
    "tubeworker.producing.errors",
    "tubeworker.idempotency",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, anywhere (functions and TYPE_CHECKING blocks too).

    ``from pkg import name`` counts as ``pkg.name`` when that is a module of ours, else as
    ``pkg``; relative imports are resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return found


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    return imported_modules(
        path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py"
    )


def ours(names: Iterable[str]) -> set[str]:
    return {n for n in names if n == PUBLIC or n.startswith(PUBLIC + ".")}


def layer_of(module: str) -> int:
    for index, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


DAEMON_MODULES = sorted(
    m
    for m in MODULES
    if m != PUBLIC and not m.startswith(("tubeworker.handlers", "tubeworker.integrations"))
)
HANDLER_MODULES = sorted(
    m for m in MODULES if m.startswith(("tubeworker.handlers", "tubeworker.integrations."))
)


# --------------------------------------------------------------------------- the reader itself


def test_given_every_import_form_when_read_then_resolved_to_modules() -> None:
    source = """
import os, tubeworker.runtime.lane
from typing import TYPE_CHECKING
from tubeworker.beanstalk import protocol as p, client
from tubeworker.errors import ConfigError
from . import backoff
if TYPE_CHECKING:
    from tubeworker.service.daemon import run_daemon
def late():
    import tubeworker.handlers.demo
"""
    assert imported_modules(source, "tubeworker.config") == {
        "os",
        "typing",
        "tubeworker.runtime.lane",
        "tubeworker.beanstalk.protocol",
        "tubeworker.beanstalk.client",
        "tubeworker.errors",
        "tubeworker.backoff",
        "tubeworker.service.daemon",
        "tubeworker.handlers.demo",
    }


def test_given_relative_import_in_a_package_init_when_read_then_resolved() -> None:
    found = imported_modules("from .job import Job", "tubeworker", is_package=True)
    assert found == {"tubeworker.job"}


def test_given_the_table_then_every_module_of_the_daemon_has_exactly_one_layer() -> None:
    for module in DAEMON_MODULES:
        layer_of(module)
    assert HANDLER_MODULES  # the built-in handlers are read too


def test_given_the_reader_then_an_upward_import_is_caught() -> None:
    source = "def f():\n    from tubeworker.cli.run import run\n"
    names = ours(imported_modules(source, "tubeworker.runtime.lane"))
    assert any(layer_of(n) > layer_of("tubeworker.runtime.lane") for n in names)


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("module", DAEMON_MODULES)
def test_given_a_module_then_it_imports_only_its_layer_and_below(module: str) -> None:
    mine = layer_of(module)
    above = {
        n
        for n in ours(imports_of(module))
        if n != PUBLIC and not n.startswith("tubeworker.handlers") and layer_of(n) > mine
    }
    assert not above, f"{module} ({LAYERS[mine][0]}) imports a higher layer: {sorted(above)}"


@pytest.mark.parametrize("module", DAEMON_MODULES)
def test_given_a_module_then_it_never_imports_the_builtin_handlers(module: str) -> None:
    # Handlers reach the daemon through entry points, never the other way round.
    assert not {n for n in imports_of(module) if n.startswith("tubeworker.handlers")}
    assert not {n for n in imports_of(module) if n in ("worker", "handlers")}


def test_given_the_public_api_then_it_exposes_only_the_job_model_and_pure_helpers() -> None:
    assert ours(imports_of(PUBLIC)) <= PUBLIC_MAY_IMPORT


@pytest.mark.parametrize("module", HANDLER_MODULES)
def test_given_a_builtin_handler_then_it_imports_only_the_public_api(module: str) -> None:
    assert ours(imports_of(module)) - {module} <= {PUBLIC}


def test_given_observe_then_it_imports_nothing_of_ours() -> None:
    for module in (m for m in MODULES if m.startswith("tubeworker.observe")):
        assert not ours(imports_of(module)), module


SANS_IO = (
    "tubeworker.beanstalk.protocol",
    "tubeworker.beanstalk.replies",
    "tubeworker.beanstalk.commands",
    "tubeworker.beanstalk.connection",
)


@pytest.mark.parametrize("module", SANS_IO)
def test_given_the_protocol_then_it_is_sans_io(module: str) -> None:
    names = imports_of(module)
    assert ours(names) <= {"tubeworker.errors", "tubeworker.frozen", *SANS_IO}
    assert not {n for n in names if n.split(".")[0] in ("trio", "socket", "asyncio", "structlog")}


def test_given_dispatch_then_it_is_pure() -> None:
    names = imports_of("tubeworker.runtime.dispatch")
    assert not {n for n in names if n.split(".")[0] in ("trio", "socket", "asyncio")}


def test_given_the_package_then_no_module_imports_in_a_loop() -> None:
    graph = {m: ours(imports_of(m)) & set(MODULES) for m in MODULES}
    # A package's __init__ is not a loop with its own modules' "from package import x".
    for module in graph:
        graph[module] = {n for n in graph[module] if not module.startswith(n + ".")}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                loop = [*path[path.index(target) :], target] if target in path else path
                raise AssertionError(f"import loop: {' -> '.join(loop)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
