"""Every kustomize overlay renders and validates against the Kubernetes schemas; the policies the issue asks for
are in what it renders."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.layout import DEPLOY, OVERLAYS, tool

KUBERNETES_VERSION = "1.33.0"
# Prometheus Operator CRDs: kubernetes-validate ships only the built-in kinds' schemas, so these two are checked
# by the tests below (shape, and the rules equal to deploy/monitoring/alerts.yaml) instead.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


@cache
def rendered(overlay: Path) -> tuple[dict, ...]:
    result = subprocess.run([tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(overlay: Path, kind: str, name: str) -> dict:
    return next(doc for doc in rendered(overlay) if doc["kind"] == kind and doc["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay: Path) -> None:
    docs = rendered(overlay)
    assert {doc["kind"] for doc in docs} >= {"Deployment", "CronJob", "NetworkPolicy", "HorizontalPodAutoscaler"}
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_nightly_cronjob_never_overlaps_and_is_not_retried_blindly(overlay: Path) -> None:
    cronjob = find(overlay, "CronJob", "ratchet-nightly")["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert cronjob["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert cronjob["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["tune", "nightly"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_only_the_app_job_router_and_monitoring_reach_vllm(overlay: Path) -> None:
    docs = rendered(overlay)
    policies = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies), "no default deny"
    vllm_rules = [
        rule
        for policy in policies
        if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "vllm"
        for rule in policy["spec"]["ingress"]
    ]
    peers = [peer for rule in vllm_rules for peer in rule["from"]]
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in peers if "podSelector" in p} == {
        "ratchet-app",
        "ratchet-nightly",
        "vllm-router",
    }
    assert [p["namespaceSelector"] for p in peers if "namespaceSelector" in p] == [
        {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    ]
    vllm = find(overlay, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    assert {"--enable-lora", "--enable-prompt-embeds"} <= set(vllm["args"])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_app_scales_keeps_a_pod_through_disruptions_and_reads_secrets_from_a_secret(overlay: Path) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered(overlay)}
    assert {("HorizontalPodAutoscaler", "ratchet-app"), ("PodDisruptionBudget", "ratchet-app")} <= kinds
    app = find(overlay, "Deployment", "ratchet-app")["spec"]["template"]["spec"]
    env = {item["name"]: item for item in app["containers"][0]["env"]}
    assert env["RATCHET_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "ratchet-secrets"
    assert app["initContainers"][0]["args"] == ["db", "upgrade"]
    assert app["securityContext"]["runAsNonRoot"] is True


def test_gpu_prod_puts_vllm_and_the_job_on_gpu_nodes_behind_the_router() -> None:
    overlay = next(path for path in OVERLAYS if path.name == "gpu-prod")
    vllm = find(overlay, "Deployment", "vllm")["spec"]["template"]["spec"]
    job = find(overlay, "CronJob", "ratchet-nightly")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for spec in (vllm, job):
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    config = next(doc for doc in rendered(overlay) if doc["kind"] == "ConfigMap")["data"]
    assert config["RATCHET_VLLM_URL"] == "http://vllm-router:8000"
    router = find(overlay, "Deployment", "vllm-router")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--service-discovery" in router


def test_tensor_parallel_profile_asks_for_two_gpus_per_replica() -> None:
    overlay = next(path for path in OVERLAYS if path.name == "gpu-prod-8b")
    vllm = find(overlay, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]
    assert "--tensor-parallel-size=2" in vllm["args"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 2


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_prometheus_operator_objects_carry_the_alert_rules_and_scrape_the_app_and_vllm(overlay: Path) -> None:
    rule = find(overlay, "PrometheusRule", "ratchet")
    alerts = yaml.safe_load((DEPLOY / "monitoring" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    monitor = find(overlay, "ServiceMonitor", "ratchet")["spec"]
    scraped = [
        doc["metadata"]["name"]
        for doc in rendered(overlay)
        if doc["kind"] == "Service"
        and all(
            doc["metadata"]["labels"].get(term["key"]) in term["values"]
            for term in monitor["selector"]["matchExpressions"]
        )
    ]
    assert sorted(scraped) == ["ratchet-app", "vllm"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
