"""Charts of an ``overhead`` (or ``io``) result, as SVG for the docs: jobs/s against
concurrency, and worker CPU per job against concurrency, one line per system.

    python -m tests.bench.charts tests/bench/results/STAMP-overhead.json --out docs/charts

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

__all__ = ["line_chart", "main", "series_of"]

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


def _nice_top(value: float) -> float:
    """A round number a little above ``value``, for the y axis."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value * 1.05:
            return step * magnitude
    return 10 * magnitude


def line_chart(title: str, y_label: str, series: Mapping[str, Sequence[tuple[int, float]]]) -> str:
    """An SVG line chart: concurrency (log scale) across, ``y_label`` up, a line per
    system, each point labelled with its value."""
    xs = sorted({x for points in series.values() for x, _ in points})
    if not xs:
        raise ValueError("no points to draw")
    top = _nice_top(max(y for points in series.values() for _, y in points))
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
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,.0f}</text>')
    for x in xs:
        parts.append(
            f'<text x="{x_at(x):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{x:,}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">'
        "concurrency (jobs in flight)</text>"
    )
    parts.append(
        f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2})">{escape(y_label)}</text>'
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
        legend_y = TOP + 14 + index * 18
        parts.append(
            f'<line x1="{WIDTH - RIGHT + 12}" y1="{legend_y - 4}" x2="{WIDTH - RIGHT + 32}" '
            f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{WIDTH - RIGHT + 38}" y="{legend_y}">{escape(system)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.charts", description=__doc__)
    parser.add_argument("result", type=Path, help="a result JSON of the overhead scenario")
    parser.add_argument("--out", type=Path, default=Path("docs/charts"))
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text())
    summary = result["summary"]
    handler = result.get("parameters", {}).get("handler", {}).get("name", "noop")
    args.out.mkdir(parents=True, exist_ok=True)
    charts = {
        "jobs-per-second.svg": (
            f"Jobs per second ({handler} handler, medians)",
            "jobs/s",
            series_of(summary, "median"),
        ),
        "cpu-per-job.svg": (
            f"Worker CPU per job ({handler} handler)",
            "µs of CPU per job",
            series_of(summary, "worker_us_per_job"),
        ),
    }
    for name, (title, label, series) in charts.items():
        (args.out / name).write_text(line_chart(title, label, series), encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
