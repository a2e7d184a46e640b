"""The loop bench's page: one HTML file with charts (matplotlib PNGs beside it, as tuning/report.py draws the
nightly report) of the whole simulation: up-rate per version per day with promotions and rollbacks marked, known-answer
accuracy, sycophancy, answer length and degenerate rate over the days, and where the wall time went."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _short(version: str) -> str:
    return version.replace("ratchet-", "").replace("smollm2-135m-instruct", "base")


def _uprates(days: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    versions = sorted(
        {v for day in days for v in day["extra"]["uprate_by_version"]}, key=lambda v: (v != days[0]["active"], v)
    )
    for version in versions:
        points = [
            (day["index"], day["extra"]["uprate_by_version"][version], day["extra"]["votes_by_version"][version])
            for day in days
            if day["extra"]["uprate_by_version"].get(version) is not None
        ]
        x, rates, votes = zip(*points, strict=True)
        # 95% intervals of each day's rate: how far the draw of that day's votes alone moves it.
        spread = [1.96 * math.sqrt(rate * (1 - rate) / n) for rate, n in zip(rates, votes, strict=True)]
        ax.errorbar(x, rates, yerr=spread, marker="o", capsize=3, label=_short(version))
    active = [(day["index"], day["active_uprate"]) for day in days if day["active_uprate"] is not None]
    ax.plot(*zip(*active, strict=True), color="black", linewidth=3, alpha=0.25, label="active version")
    for day in days:
        if day["promoted"]:
            ax.axvline(day["index"], color="green", linestyle="--", alpha=0.6)
            ax.annotate("promoted", (day["index"], 0.02), color="green", rotation=90, fontsize=8)
        if day["rolled_back"]:
            ax.axvline(day["index"], color="red", linestyle="--", alpha=0.6)
            ax.annotate("rolled back", (day["index"], 0.02), color="red", rotation=90, fontsize=8)
    ax.set_xlabel("day")
    ax.set_ylabel("thumbs-up rate of its answers")
    ax.set_ylim(0, 1)
    ax.set_xticks([day["index"] for day in days])
    ax.legend(fontsize=7)
    ax.set_title("Up-rate per version per day (bars: 95% interval of the day's votes)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _quality(days: list[dict[str, Any]], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [day["index"] for day in days]
    left.plot(x, [day["extra"]["known_answer_accuracy"] for day in days], marker="o", label="known-answer accuracy")
    base = days[0]["extra"]["known_answer_accuracy"]
    left.axhline(0.95 * base, color="grey", linestyle=":", label="0.95 x base")
    left.plot(x, [day["extra"]["sycophancy_rate"] for day in days], marker="s", label="sycophancy rate")
    left.plot(x, [day["extra"]["degenerate_rate"] for day in days], marker="^", label="degenerate rate")
    left.set_ylim(0, 1)
    left.set_xticks(x)
    left.set_xlabel("day")
    left.legend(fontsize=7)
    left.set_title("Active version")
    right.plot(x, [day["extra"]["mean_answer_words"] for day in days], marker="o")
    right.set_xticks(x)
    right.set_xlabel("day")
    right.set_ylabel("words")
    right.set_title("Mean answer length (active version)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _seconds(seconds: dict[str, float], path: Path) -> None:
    shown = {key: value for key, value in seconds.items() if key != "total" and value >= 1}
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(shown) + 1))
    keys = sorted(shown, key=shown.get)  # type: ignore[arg-type]
    ax.barh(keys, [shown[key] / 60 for key in keys])
    ax.set_xlabel("minutes")
    ax.set_title(f"Where the wall time went ({seconds.get('total', 0) / 60:.0f} minutes in all)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(days: list[dict[str, Any]]) -> str:
    rows = []
    for day in days:
        extra = day["extra"]
        canary = extra.get("canary")
        arms = ""
        if canary:
            a = canary["arms"]
            arms = (
                f"{html.escape(_short(canary['version']))}: active {a.get('active', {}).get('up_rate') or 0:.3f} "
                f"({a.get('active', {}).get('votes')}) vs candidate {a.get('candidate', {}).get('up_rate') or 0:.3f} "
                f"({a.get('candidate', {}).get('votes')}) &rarr; <b>{html.escape(str(canary['status']))}</b>"
            )
        uprate = "n/a" if day["active_uprate"] is None else f"{day['active_uprate']:.3f}"
        rows.append(
            f"<tr><td>{day['index']}</td><td>{html.escape(_short(day['active']))}</td><td>{uprate}</td>"
            f"<td>{arms}</td><td>{extra['known_answer_accuracy']:.3f}</td><td>{extra['sycophancy_rate']:.3f}</td>"
            f"<td>{extra['degenerate_rate'] or 0:.3f}</td><td>{extra['mean_answer_words'] or 0:.1f}</td>"
            f"<td>{extra['requests']}</td></tr>"
        )
    head = (
        "<tr><th>day</th><th>active</th><th>up-rate</th><th>canary arms (votes) &rarr; outcome</th>"
        "<th>known-answer acc.</th><th>sycophancy</th><th>degenerate</th><th>mean words</th><th>requests</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _nights(nights: list[dict[str, Any]]) -> str:
    items = []
    for night in nights:
        lines = []
        for method, verdict in night["gates"].items():
            state = "gated" if verdict["passed"] else "rejected by " + ", ".join(verdict["failed"])
            lines.append(f"<li>{html.escape(method)}: {html.escape(verdict['version'])} {html.escape(state)}</li>")
        canary = night.get("canary") or "none started"
        items.append(
            f"<li>night {night['night']}: {html.escape(str(night['message']))}<ul>{''.join(lines)}"
            f"<li>canary: {html.escape(canary)}</li></ul></li>"
        )
    return f"<ul>{''.join(items)}</ul>"


def write_page(out: Path, result: dict[str, Any], printed: str = "") -> Path:
    days = result["days"]
    _uprates(days, out / "uprate.png")
    _quality(days, out / "quality.png")
    _seconds(result["seconds"], out / "seconds.png")
    page = out / "index.html"
    page.write_text(
        "<!doctype html><meta charset=utf-8><title>Ratchet: the loop over simulated nights</title>"
        "<style>body{font-family:sans-serif;max-width:62em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;font-size:.9em}pre{background:#f5f5f5;padding:1em;"
        "overflow-x:auto;font-size:.8em}</style>"
        "<h1>The loop over simulated nights</h1>"
        f"<p>bench/loop.py {html.escape(' '.join(f'--{k}={v}' for k, v in result['args'].items() if k != 'out'))}</p>"
        "<img src=uprate.png alt='up-rate per version per day'>"
        f"{_table(days)}"
        "<h2>Nights</h2>"
        f"{_nights(result['nights'])}"
        "<img src=quality.png alt='accuracy, sycophancy, degenerate rate and length over the days'>"
        "<img src=seconds.png alt='where the wall time went'>"
        + (f"<h2>Printed</h2><pre>{html.escape(printed)}</pre>" if printed else "")
    )
    return page
