"""The run report: a static HTML page with one PNG chart per training stage, written into the run directory."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt

# Bookkeeping the trainers log every step; not worth a chart.
NOT_PLOTTED = {"step", "epoch", "learning_rate", "grad_norm", "num_tokens", "total_flos", "train_runtime"}
MAX_PANELS = 6


def _series(history: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None or "train_runtime" in entry:
            continue
        for key, value in entry.items():
            if key in NOT_PLOTTED or not isinstance(value, int | float):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))
    return series


def _preferred(keys: list[str]) -> list[str]:
    # The figures the issue asks for first (loss, rewards, KL), then whatever else the trainer logged.
    first = [key for key in ("loss", "reward", "kl") if key in keys]
    first += [key for key in keys if key.startswith("rewards/") and not key.endswith("/std")]
    return (first + [key for key in keys if key not in first])[:MAX_PANELS]


def stage_chart(name: str, history: list[dict[str, Any]], path: Path) -> bool:
    series = _series(history)
    keys = _preferred(sorted(series))
    if not keys:
        return False
    columns = min(3, len(keys))
    rows = (len(keys) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys, strict=False):
        steps, values = series[key]
        axis.plot(steps, values, marker="o", markersize=3)
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(keys) :]:
        axis.set_visible(False)
    figure.suptitle(name)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def _table(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_shown(value))}</td></tr>" for key, value in data.items()
    )
    return f"<table>{rows}</table>"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _gate_tables(gates: dict[str, Any]) -> list[str]:
    """Per candidate: its verdict against the active version, then one row per gate."""
    sections = []
    for method, verdict in gates.items():
        rows = "".join(
            "<tr>"
            + f"<th>{html.escape(result['name'])}</th><td>{result['value']:.4g}</td>"
            + f"<td>{'&ge;' if result['bound'] == 'min' else '&le;'} {result['threshold']:.4g}</td>"
            + f"<td>{'pass' if result['passed'] else '<b>FAIL</b>'}</td><td>{html.escape(result['detail'])}</td>"
            + "</tr>"
            for result in verdict["results"]
        )
        outcome = "gated" if verdict["passed"] else "rejected"
        sections.append(
            f"<h3>{html.escape(method)}: {html.escape(verdict['version'])} <b>{outcome}</b> against "
            f"{html.escape(verdict['active'])}</h3><table><tr><th>gate</th><th>value</th><th>threshold</th>"
            f"<th>verdict</th><th>detail</th></tr>{rows}</table>"
        )
    return sections


def write_report(run_dir: Path, record: dict[str, Any], histories: dict[str, list[dict[str, Any]]]) -> Path:
    """`record` is the run record (run.json); `histories` maps a stage to its trainer log history."""
    charts = []
    for stage, history in histories.items():
        image = run_dir / f"chart-{stage}.png"
        if stage_chart(stage, history, image):
            charts.append(
                f'<h3>{html.escape(stage)}</h3><img src="{image.name}" alt="{html.escape(stage)} over steps">'
            )
    held_out = record.get("held_out", {})
    sections = [
        f"<h1>Tuning run {html.escape(record['run_id'])}</h1>",
        f"<p>Status <b>{html.escape(record['status'])}</b>. {html.escape(record.get('message', ''))}</p>",
        "<h2>Data</h2>",
        _table(
            {
                "since": record.get("data_since"),
                "until": record.get("data_until"),
                "dataset hash": record.get("dataset_hash"),
            }
        ),
        "<h3>Rows per source and filter</h3>",
        _table(record.get("counts", {})),
        "<h2>Reward model on held-out data</h2>",
        "<p>Pairs and answers to questions no stage trained on; the previous reward model is scored on the same rows."
        "</p>",
        _table({name: figures for name, figures in held_out.items()}),
        "<h2>Outputs</h2>",
        _table({"reward model": record.get("reward_model_path"), **record.get("adapters", {})}),
        "<h3>Methods skipped for lack of data</h3>",
        _table(record.get("skipped_methods", {})),
        "<h2>Offline gates</h2>",
        "<p>Each candidate against the version serving when the run started, both sampled at the served defaults; "
        "a candidate that fails any gate is rejected.</p>",
        *_gate_tables(record.get("gates", {})),
        "<h2>Stages</h2>",
        _table({stage: f"{seconds:.1f} s" for stage, seconds in record.get("durations_s", {}).items()}),
        *charts,
        "<h2>Reproducibility</h2>",
        _table({"seed": record.get("config", {}).get("seed"), **record.get("versions", {})}),
        "<h3>Config</h3>",
        _table(record.get("config", {})),
    ]
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse;margin:.5em 0}"
        "th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-size:90%}th{background:#f4f4f4}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Tuning run {html.escape(record['run_id'])}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )
    path = run_dir / "report.html"
    path.write_text(page)
    return path
