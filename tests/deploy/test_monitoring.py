"""The dashboard and the alert rules ask only for metrics something exports."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import REGISTRY

import server.system.metrics  # noqa: F401  registers the app's metrics
from tests.deploy.layout import DEPLOY

MONITORING = DEPLOY / "monitoring"
# From other exporters: vLLM's own server, Prometheus itself, kube-state-metrics, node_exporter.
OTHER_EXPORTERS = re.compile(r"^(vllm:.*|up|kube_.*|node_systemd_unit_state)$")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _app_metric_names() -> set[str]:
    """Series names of the app's metrics, whether or not a labelled child has been observed yet."""
    suffixes = {"counter": ("_total",), "histogram": HISTOGRAM_SUFFIXES, "gauge": ("",)}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("ratchet_")
        for suffix in suffixes.get(family.type, ("",))
    }


def _queried_metrics(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", without_strings)
    without_numbers = re.sub(r"\b\d[\w.+-]*", "", without_labels)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_numbers))
    functions = {"sum", "rate", "increase", "histogram_quantile", "clamp_min", "by", "or", "and", "time", "absent",
                 "count", "le", "status", "reason", "kind", "direction", "verdict", "rail", "result", "instance",
                 "model_version", "alias", "version", "actor"}  # fmt: skip
    return words - functions


def _expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    alerts = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return exprs + [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]


def test_every_metric_queried_is_exported() -> None:
    exported = _app_metric_names()
    for expression in _expressions():
        for metric in _queried_metrics(expression):
            base = metric.removesuffix(next((s for s in HISTOGRAM_SUFFIXES if metric.endswith(s)), ""))
            known = metric in exported or base + "_bucket" in exported
            assert known or OTHER_EXPORTERS.match(metric), f"{metric} in {expression!r}"


def test_alerts_cover_the_failure_modes_the_app_reports() -> None:
    alerts = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    assert {"RatchetVllmDown", "RatchetChatErrorRate", "RatchetCanaryRolledBack", "RatchetNightlyJobFailed"} <= names
    for group in alerts["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]


def test_dashboard_is_importable_with_a_datasource_choice() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
