"""Line charts drawn as SVG on the server: no script, nothing to download, colours from the stylesheet (one class
per series), and the same figures as a table beside every chart for screen readers and for exact values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

WIDTH, HEIGHT = 480, 200
LEFT, RIGHT, TOP, BOTTOM = 40, 22, 10, 26
SERIES_CLASSES = 8


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: list[float | None]


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above the largest value, so gridlines fall on round numbers."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def _label(value: float, percent: bool) -> str:
    return f"{value:.0%}" if percent else f"{value:g}"


def line_chart(chart_id: str, title: str, days: list[date], series: list[Series], percent: bool = False) -> Markup:
    """`percent` charts run from 0 to 100 %; others from 0 to a round number above the largest value. A None value
    is a day without data: the line breaks there instead of dropping to zero."""
    top = 1.0 if percent else _nice_max(max((v for s in series for v in s.values if v is not None), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(index: int) -> float:
        return LEFT + (plot_w * index / (len(days) - 1) if len(days) > 1 else plot_w / 2)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{chart_id}-t">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
    ]
    for step in range(5):
        value = top * step / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y(value) + 4:.1f}">{_label(value, percent)}</text>')
    label_every = max(1, len(days) // 6)
    for index, day in enumerate(days):
        if index % label_every == 0 or index == len(days) - 1:
            parts.append(f'<text class="day" x="{x(index):.1f}" y="{HEIGHT - 8}">{day:%m-%d}</text>')
    for number, line in enumerate(series):
        css = f"s{number % SERIES_CLASSES}"
        segment: list[str] = []
        segments: list[list[str]] = [segment]
        for index, value in enumerate(line.values):
            if value is None:
                segment = []
                segments.append(segment)
                continue
            segment.append(f"{x(index):.1f},{y(value):.1f}")
            parts.append(f'<circle class="{css}" cx="{x(index):.1f}" cy="{y(value):.1f}" r="2.5"/>')
        parts += [f'<polyline class="{css}" points="{" ".join(points)}"/>' for points in segments if len(points) > 1]
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch s{number % SERIES_CLASSES}"></span>{escape(line.name)}</li>'
        for number, line in enumerate(series)
    )
    caption = f"<figcaption>{escape(title)}</figcaption>"
    return Markup(f'<figure class="chart-figure">{caption}{"".join(parts)}<ul class="legend">{legend}</ul>') + _table(
        title, days, series, percent
    )


def _table(title: str, days: list[date], series: list[Series], percent: bool) -> Markup:
    head = "".join(f"<th scope='col'>{escape(line.name)}</th>" for line in series)
    rows = "".join(
        f"<tr><th scope='row'>{day.isoformat()}</th>"
        + "".join(
            f"<td>{'-' if line.values[index] is None else _label(line.values[index] or 0, percent)}</td>"
            for line in series
        )
        + "</tr>"
        for index, day in enumerate(days)
    )
    return Markup(
        f"<details><summary>The figures</summary><table class='figures'><thead><tr><th scope='col'>"
        f"day</th>{head}</tr></thead><tbody>{rows}</tbody></table></details></figure>"
    )
