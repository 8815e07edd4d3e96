"""The benchmark's charts (tests/bench/charts.py): valid SVG, a line per system through
each of its points, in order, higher values higher up."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.bench.charts import line_chart, main, series_of

SVG = "{http://www.w3.org/2000/svg}"
SUMMARY = [
    {"system": "tubeworker", "concurrency": 200, "median": 12000.0, "worker_us_per_job": 78.0},
    {"system": "tubeworker", "concurrency": 1000, "median": 11000.0, "worker_us_per_job": 82.0},
    {"system": "aiostalk", "concurrency": 1000, "median": 9000.0, "worker_us_per_job": 90.0},
    {"system": "aiostalk", "concurrency": 200, "median": 11500.0, "worker_us_per_job": 86.0},
]


def lines(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    found = {}
    for line in root.iter(f"{SVG}polyline"):
        points = [tuple(map(float, p.split(","))) for p in line.attrib["points"].split()]
        found[line.attrib["data-system"]] = points
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
