"""Tube names: patterns, and the tubes of tubeworker's own."""

from __future__ import annotations

import pytest

from tubeworker.tubes import is_internal, is_pattern, matches_any


@pytest.mark.parametrize(
    ("tube", "pattern"),
    [("tenant-*", True), ("job?", True), ("t[12]", True), ("emails", False), ("a.b", False)],
)
def test_a_glob_character_makes_a_pattern(tube: str, pattern: bool) -> None:
    assert is_pattern(tube) is pattern


def test_internal_tubes_are_those_under_the_prefix() -> None:
    assert is_internal("tubeworker.buried.emails")
    assert is_internal("tubeworker.limit.api.rate")
    assert not is_internal("tubeworker")
    assert not is_internal("emails")


def test_a_pattern_never_matches_an_internal_tube_but_its_name_does() -> None:
    assert matches_any("tenant-7", ["tenant-*"])
    assert not matches_any("tubeworker.buried.tenant-7", ["*"])
    assert not matches_any("tubeworker.buried.x", ["tubeworker.*"])
    assert matches_any("tubeworker.buried.x", ["tubeworker.buried.x"])
    assert not matches_any("emails", [])
    assert matches_any("Emails", ["Emails"])
    assert not matches_any("emails", ["Emails"])  # tube names are case-sensitive
