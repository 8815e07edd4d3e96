"""Every package folder is in pyproject's explicit package list (a new subpackage left out
installs a wheel that cannot import: editable installs do not show it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {"tubeworker.handlers"} | {
        ".".join(["tubeworker", *init.parent.relative_to(ROOT / "worker").parts]).rstrip(".")
        for init in (ROOT / "worker").rglob("__init__.py")
    }
    found.add("tubeworker.control.static")  # data only: listed so that it is packed
    assert found == listed
