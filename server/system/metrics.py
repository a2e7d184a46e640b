"""Prometheus metrics, labelled by route and the concrete model version that answered."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "ratchet_requests_total",
    "Chat requests by route, model version and outcome",
    ["route", "model_version", "status"],
)
LATENCY = Histogram(
    "ratchet_request_seconds", "Whole-request latency", ["route", "model_version"], buckets=LATENCY_BUCKETS
)
TIME_TO_FIRST_TOKEN = Histogram(
    "ratchet_time_to_first_token_seconds",
    "Time to the first streamed token",
    ["route", "model_version"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter("ratchet_tokens_total", "Tokens processed", ["model_version", "kind"])
ERRORS = Counter("ratchet_errors_total", "Failed chat requests by reason", ["route", "model_version", "reason"])

RAIL_DECISIONS = Counter(
    "ratchet_rail_decisions_total",
    "Guardrail verdicts by direction, rail and verdict",
    ["direction", "rail", "verdict"],
)
RAIL_SECONDS = Histogram(
    "ratchet_rail_seconds",
    "Time one rail took on one message (streamed answers: summed over the windows)",
    ["direction", "rail"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
RAIL_RELOADS = Counter("ratchet_rail_reloads_total", "Rails config reloads by result (loaded, refused)", ["result"])

MODEL_TRANSITIONS = Counter(
    "ratchet_model_transitions_total",
    "Model version status changes by new status and who made them (nightly, canary, admin)",
    ["to_status", "actor"],
)
ADAPTER_OPERATIONS = Counter(
    "ratchet_adapter_operations_total", "Adapter loads and unloads in vLLM by result", ["operation", "result"]
)
