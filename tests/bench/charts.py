"""Charts of a benchmark result, as SVG for the docs. Of an ``overhead`` (or ``io``)
result: jobs/s against concurrency, and worker CPU per job against concurrency, one line
per system. Of a ``memory`` result (told apart by its ``"scenario"``): KiB of RSS per job
in flight against jobs in flight, with the goal as a dashed line.

    python -m tests.bench.charts tests/bench/results/STAMP-overhead.json --out docs/charts
    python -m tests.bench.charts tests/bench/results/STAMP-memory.json --out docs/charts

Plain SVG written here (no plotting library: two line charts do not need one), so the
files are small, diff well, and render on GitHub and in any browser.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["line_chart", "main", "memory_series", "series_of"]

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 50
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def series_of(
    summary: Sequence[Mapping[str, Any]], field: str
) -> dict[str, list[tuple[int, float]]]:
    """``field`` of each system at each concurrency, from a result's ``summary``; a point
    where most runs hit the time cap (a peer that could not finish) is left out."""
    found: dict[str, list[tuple[int, float]]] = {}
    for row in summary:
        value = row.get(field)
        if value is None or 2 * int(row.get("capped_runs", 0)) > int(row.get("runs", 1)):
            continue
        found.setdefault(str(row["system"]), []).append((int(row["concurrency"]), float(value)))
    return {system: sorted(points) for system, points in found.items()}


def memory_series(
    summary: Sequence[Mapping[str, Any]], field: str = "kib_per_job"
) -> dict[str, list[tuple[int, float]]]:
    """``field`` at each number of jobs in flight, from a ``memory`` result's ``summary``:
    one line, tubeworker's."""
    points = [
        (int(row["jobs"]), float(row[field])) for row in summary if row.get(field) is not None
    ]
    return {"tubeworker": sorted(points)} if points else {}


def _tick(value: float, top: float) -> str:
    """A y-axis label: a whole number, unless the axis is small (a step under 10) and the
    value has a fraction (2.5, 7.5 on an axis up to 10)."""
    if top / 4 >= 10 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:g}"


def _nice_top(value: float) -> float:
    """A round number a little above ``value``, for the y axis."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value * 1.05:
            return step * magnitude
    return 10 * magnitude


def line_chart(
    title: str,
    y_label: str,
    series: Mapping[str, Sequence[tuple[int, float]]],
    *,
    x_label: str = "concurrency (jobs in flight)",
    goal: tuple[str, float] | None = None,
    point_format: str | None = None,
) -> str:
    """An SVG line chart: ``x_label`` (log scale) across, ``y_label`` up, a line per
    system. ``goal``: a dashed level line with its label (e.g. ``("goal ≤ 8 KiB", 8)``);
    ``point_format``: each point labelled with its value in that format (e.g. ``"{:.2f}"``)."""
    xs = sorted({x for points in series.values() for x, _ in points})
    if not xs:
        raise ValueError("no points to draw")
    highest = max(y for points in series.values() for _, y in points)
    top = _nice_top(max(highest, goal[1]) if goal else highest)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    low, high = math.log10(xs[0]), math.log10(xs[-1])

    def x_at(x: int) -> float:
        share = 0.5 if high == low else (math.log10(x) - low) / (high - low)
        return LEFT + share * plot_w

    def y_at(y: float) -> float:
        return TOP + plot_h - y / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for n in range(5):
        value = top * n / 4
        y = y_at(value)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick(value, top)}</text>'
        )
    for x in xs:
        parts.append(
            f'<text x="{x_at(x):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{x:,}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2})">{escape(y_label)}</text>'
    )
    if goal is not None:
        label, level = goal
        y = y_at(level)
        parts.append(
            f'<line data-goal="{level:g}" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" '
            f'y2="{y:.1f}" stroke="#888" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        parts.append(
            f'<text x="{LEFT + plot_w + 6}" y="{y + 4:.1f}" fill="#555">{escape(label)}</text>'
        )
    for index, (system, points) in enumerate(sorted(series.items())):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{x_at(x):.1f},{y_at(y):.1f}" for x, y in points)
        parts.append(
            f'<polyline data-system="{escape(system)}" points="{path}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        for x, y in points:
            parts.append(f'<circle cx="{x_at(x):.1f}" cy="{y_at(y):.1f}" r="3" fill="{colour}"/>')
            if point_format is not None:
                # Above the point, or below it when the goal line runs just above it.
                near_goal = goal is not None and 0 <= y_at(y) - y_at(goal[1]) < 20
                label_y = y_at(y) + (18 if near_goal else -8)
                # Kept inside the plot at both ends (clear of the axis's labels).
                anchor = "start" if x == xs[0] else "end" if x == xs[-1] else "middle"
                parts.append(
                    f'<text x="{x_at(x):.1f}" y="{label_y:.1f}" text-anchor="{anchor}" '
                    f'fill="{colour}">{escape(point_format.format(y))}</text>'
                )
        legend_y = TOP + 14 + index * 18
        parts.append(
            f'<line x1="{WIDTH - RIGHT + 12}" y1="{legend_y - 4}" x2="{WIDTH - RIGHT + 32}" '
            f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{WIDTH - RIGHT + 38}" y="{legend_y}">{escape(system)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


Chart = tuple[str, str, dict[str, list[tuple[int, float]]], dict[str, Any]]


def _memory_charts(result: Mapping[str, Any]) -> dict[str, Chart]:
    parameters = result.get("parameters", {})
    seconds = parameters.get("handler", {}).get("seconds")
    held = f", jobs held {seconds:g} s" if isinstance(seconds, int | float) else ""
    goal = parameters.get("goal_kib_per_job")
    options: dict[str, Any] = {"x_label": "jobs in flight", "point_format": "{:.2f}"}
    if isinstance(goal, int | float):
        options["goal"] = (f"goal ≤ {goal:g} KiB", float(goal))
    return {
        "rss-per-job.svg": (
            f"RSS per job in flight (demo.sleep{held})",
            "KiB of RSS per job in flight",
            memory_series(result["summary"]),
            options,
        ),
    }


def _overhead_charts(result: Mapping[str, Any]) -> dict[str, Chart]:
    summary = result["summary"]
    handler = result.get("parameters", {}).get("handler", {}).get("name", "noop")
    return {
        "jobs-per-second.svg": (
            f"Jobs per second ({handler} handler, medians)",
            "jobs/s",
            series_of(summary, "median"),
            {},
        ),
        "cpu-per-job.svg": (
            f"Worker CPU per job ({handler} handler)",
            "µs of CPU per job",
            series_of(summary, "worker_us_per_job"),
            {},
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.charts", description=__doc__)
    parser.add_argument(
        "result", type=Path, help="a result JSON of the overhead (or io) or memory scenario"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/charts"))
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text())
    if result.get("scenario") == "memory":
        charts = _memory_charts(result)
    else:
        charts = _overhead_charts(result)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (title, label, series, options) in charts.items():
        svg = line_chart(title, label, series, **options)
        (args.out / name).write_text(svg, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
