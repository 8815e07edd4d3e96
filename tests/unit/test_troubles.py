"""The dashboard's warnings across daemons: a full binlog, a degraded fleet limit."""

from __future__ import annotations

from typing import Any

from tubeworker.control.troubles import fleet_limits, troubles


def tokens(limit: str, reachable: int, degraded: str | None) -> dict[str, Any]:
    return {
        "limit": limit,
        "tube": f"tubeworker.limit.{limit}.rate",
        "tokens": 50,
        "reachable": reachable,
        "servers": [],
        "degraded": degraded,
    }


DOWN = "server down: 127.0.0.1:11301 (25 tokens); 25 of 50 tokens in reach"


def test_given_healthy_daemons_then_nothing_is_said() -> None:
    statuses = {
        "local": {"binlogs": {"a:1": {"full": False, "held": 0}}, "fleet_tokens": []},
        "http://w2": {"fleet_tokens": [tokens("partner", 50, None)]},
    }
    assert troubles(statuses) == []
    (row,) = fleet_limits(statuses)
    assert (row["limit"], row["tokens"], row["reachable"], row["degraded"]) == (
        "partner",
        50,
        50,
        None,
    )


def test_given_a_full_binlog_and_a_degraded_limit_then_one_entry_each_naming_who_says_it() -> None:
    statuses = {
        "local": {
            "binlogs": {"127.0.0.1:11300": {"full": True, "held": 3}},
            "fleet_tokens": [tokens("partner", 25, DOWN)],
        },
        "http://w2": {
            "binlogs": {"127.0.0.1:11300": {"full": True, "held": 1}},
            "fleet_tokens": [tokens("partner", 50, None)],
        },
        "http://w3": {"fleet_tokens": [tokens("partner", 25, DOWN)]},
    }
    found = troubles(statuses)
    assert [(t["kind"], t["subject"], t["workers"]) for t in found] == [
        ("binlog_full", "127.0.0.1:11300", ["local", "http://w2"]),
        ("fleet_limit_degraded", "partner", ["local", "http://w3"]),
    ]
    assert "free disk space" in found[0]["detail"]
    assert found[1]["detail"] == f"partner: {DOWN}"
    (row,) = fleet_limits(statuses)
    assert row["reachable"] == 25  # the fewest any daemon reaches
    assert row["degraded"] == DOWN
    assert [w["worker"] for w in row["workers"]] == ["local", "http://w2", "http://w3"]


def test_given_statuses_of_an_older_or_garbled_daemon_then_they_are_skipped() -> None:
    statuses: dict[str, Any] = {
        "old": {},
        "odd": {"binlogs": ["not", "a", "map"], "fleet_tokens": {"no": "list"}},
        "bad": {"binlogs": {"x": "full"}, "fleet_tokens": ["x", None]},
    }
    assert troubles(statuses) == []
    assert fleet_limits(statuses) == []
