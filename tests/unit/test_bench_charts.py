"""The benchmark's charts (tests/bench/charts.py): valid SVG, a line per system through
each of its points, in order, higher values higher up; of a memory result, RSS per job in
flight with its goal."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.bench.charts import line_chart, main, memory_series, series_of

SVG = "{http://www.w3.org/2000/svg}"
SUMMARY = [
    {"system": "tubeworker", "concurrency": 200, "median": 12000.0, "worker_us_per_job": 78.0},
    {"system": "tubeworker", "concurrency": 1000, "median": 11000.0, "worker_us_per_job": 82.0},
    {"system": "aiostalk", "concurrency": 1000, "median": 9000.0, "worker_us_per_job": 90.0},
    {"system": "aiostalk", "concurrency": 200, "median": 11500.0, "worker_us_per_job": 86.0},
]
MEMORY: dict[str, Any] = {
    "scenario": "memory",
    "parameters": {"handler": {"name": "demo.sleep", "seconds": 10.0}, "goal_kib_per_job": 8.0},
    "summary": [
        {"jobs": 10000, "idle_rss_kib": 54000, "peak_rss_kib": 129000, "kib_per_job": 7.5},
        {"jobs": 1000, "idle_rss_kib": 48000, "peak_rss_kib": 55680, "kib_per_job": 7.68},
        {"jobs": 2500, "idle_rss_kib": 49000, "peak_rss_kib": 68000, "kib_per_job": 7.6},
    ],
}


def lines(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    found = {}
    for line in root.iter(f"{SVG}polyline"):
        pairs = [p.split(",") for p in line.attrib["points"].split()]
        found[line.attrib["data-system"]] = [(float(x), float(y)) for x, y in pairs]
    return found


def test_given_a_summary_then_each_system_is_one_line_through_its_points_in_order() -> None:
    series = series_of(SUMMARY, "median")
    assert series["aiostalk"] == [(200, 11500.0), (1000, 9000.0)]
    drawn = lines(line_chart("Jobs per second", "jobs/s", series))
    assert set(drawn) == {"tubeworker", "aiostalk"}
    for points in drawn.values():
        assert len(points) == 2
        assert points[0][0] < points[1][0]  # left to right by concurrency
    # A higher value is drawn higher (a smaller y in SVG).
    assert drawn["tubeworker"][1][1] < drawn["aiostalk"][1][1]


def test_given_nothing_to_draw_then_it_says_so() -> None:
    with pytest.raises(ValueError, match="no points"):
        line_chart("t", "y", {})


def test_given_a_result_file_then_both_charts_are_written(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    result.write_text(json.dumps({"summary": SUMMARY, "parameters": {"handler": {"name": "noop"}}}))
    assert main([str(result), "--out", str(tmp_path / "charts")]) == 0
    for name in ("jobs-per-second.svg", "cpu-per-job.svg"):
        text = (tmp_path / "charts" / name).read_text()
        assert set(lines(text)) == {"tubeworker", "aiostalk"}


def test_given_a_memory_summary_then_its_series_is_kib_per_job_by_jobs_in_flight() -> None:
    assert memory_series(MEMORY["summary"]) == {
        "tubeworker": [(1000, 7.68), (2500, 7.6), (10000, 7.5)]
    }
    assert memory_series(MEMORY["summary"], "peak_rss_kib")["tubeworker"][0] == (1000, 55680.0)
    assert memory_series([]) == {}


def test_given_a_memory_result_then_only_the_rss_chart_is_written(tmp_path: Path) -> None:
    result = tmp_path / "m.json"
    result.write_text(json.dumps(MEMORY))
    assert main([str(result), "--out", str(tmp_path / "charts")]) == 0
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == ["rss-per-job.svg"]
    svg = (tmp_path / "charts" / "rss-per-job.svg").read_text(encoding="utf-8")
    drawn = lines(svg)
    assert set(drawn) == {"tubeworker"}
    points = drawn["tubeworker"]
    assert len(points) == 3
    assert points[0][0] < points[1][0] < points[2][0]  # 1,000, 2,500, 10,000: in order
    assert points[0][1] < points[1][1] < points[2][1]  # 7.68 > 7.6 > 7.5: lower and lower
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"7.68", "7.60", "7.50"} <= set(texts)  # each point labelled with its value
    assert {"1,000", "2,500", "10,000", "jobs in flight", "goal ≤ 8 KiB"} <= set(texts)
    # The goal is a level line above every point (all under 8 KiB).
    (goal,) = [line for line in root.iter(f"{SVG}line") if "data-goal" in line.attrib]
    assert goal.attrib["data-goal"] == "8"
    assert goal.attrib["y1"] == goal.attrib["y2"]
    assert all(float(goal.attrib["y1"]) < y for _, y in points)
