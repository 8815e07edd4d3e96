"""Imports point one way (CONVENTIONS.md, "Layout and layers"), read with ast: nothing runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER_FILES = sorted((ROOT / "worker").rglob("*.py"))
HANDLER_FILES = sorted((ROOT / "handlers").rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, anywhere (functions and TYPE_CHECKING blocks too).

    ``from pkg import name`` counts as ``pkg.name`` when that is a module of this repository,
    else as ``pkg``; relative imports are resolved against ``module``.
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
                found.add(sub if _is_module(sub) else base)
    return found


def imports_of(path: Path) -> set[str]:
    return imported_modules(
        path.read_text(encoding="utf-8"),
        _module_name(path),
        is_package=path.name == "__init__.py",
    )


def in_package(names: set[str], package: str) -> set[str]:
    return {n for n in names if n == package or n.startswith(package + ".")}


def touches(names: set[str], forbidden: tuple[str, ...]) -> set[str]:
    return {n for n in names for f in forbidden if n == f or n.startswith(f + ".")}


# --------------------------------------------------------------------------- the reader itself


def test_given_every_import_form_when_read_then_resolved_to_modules() -> None:
    source = """
import os, worker.lane
from typing import TYPE_CHECKING
from tubeworker import Job
from tubeworker.beanstalk import protocol as p
from tubeworker.errors import ConfigError
from . import backoff
from .job import Job
if TYPE_CHECKING:
    from tubeworker.service.daemon import Daemon
def late():
    import tubeworker.handlers.demo
"""
    assert imported_modules(source, "tubeworker.beanstalk.client") == {
        "os",
        "typing",
        "tubeworker.runtime.lane",
        "tubeworker.beanstalk.protocol",
        "worker",
        "tubeworker.errors",
        "tubeworker.backoff",
        "tubeworker.job",
        "tubeworker.service.daemon",
        "tubeworker.handlers.demo",
    }


def test_given_relative_import_in_a_package_init_when_read_then_resolved() -> None:
    assert imported_modules("from .job import Job", "worker", is_package=True) == {"tubeworker.job"}


@pytest.mark.parametrize(
    "source", ["from tubeworker.job import Job", "import tubeworker.job", "from worker import job"]
)
def test_given_handler_reaching_a_submodule_when_checked_then_flagged(source: str) -> None:
    assert in_package(imported_modules(source, "handlers.x"), "worker") == {"tubeworker.job"}


def test_given_repository_when_listed_then_the_modules_under_test_exist() -> None:
    for name in ("protocol", "client", "observe", "policy", "runner", "job", "config"):
        assert (ROOT / "worker" / f"{name}.py").is_file(), name
    assert HANDLER_FILES


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("path", WORKER_FILES, ids=lambda p: p.name)
def test_given_worker_module_when_read_then_it_never_imports_handlers(path: Path) -> None:
    assert not touches(imports_of(path), ("handlers",))


def test_given_protocol_when_read_then_only_worker_errors_from_worker() -> None:
    assert in_package(imports_of(ROOT / "worker" / "protocol.py"), "worker") <= {
        "tubeworker.errors"
    }


def test_given_protocol_when_read_then_no_io_or_trio() -> None:
    # Sans-I/O: nothing in it opens a socket, sleeps or logs.
    names = imports_of(ROOT / "worker" / "protocol.py")
    assert not touches(names, ("trio", "socket", "asyncio", "logging", "structlog"))


def test_given_client_when_read_then_nothing_above_the_transport() -> None:
    forbidden = (
        "tubeworker.runtime.lane",
        "tubeworker.pool",
        "tubeworker.service.daemon",
        "tubeworker.cli",
        "tubeworker.config",
    )
    assert not touches(imports_of(ROOT / "worker" / "client.py"), forbidden)


def test_given_observe_when_read_then_nothing_from_worker() -> None:
    assert not in_package(imports_of(ROOT / "worker" / "observe.py"), "worker")


@pytest.mark.parametrize("name", ["policy", "runner", "job", "config"])
def test_given_lower_module_when_read_then_no_lane_daemon_or_cli(name: str) -> None:
    forbidden = ("tubeworker.runtime.lane", "tubeworker.service.daemon", "tubeworker.cli")
    assert not touches(imports_of(ROOT / "worker" / f"{name}.py"), forbidden)


@pytest.mark.parametrize("path", HANDLER_FILES, ids=lambda p: p.name)
def test_given_handler_module_when_read_then_only_the_worker_root(path: Path) -> None:
    assert in_package(imports_of(path), "worker") <= {"worker"}
