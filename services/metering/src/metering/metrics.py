"""Prometheus metrics of the metering service (the overhead histogram lives in ``overhead``)."""

from __future__ import annotations

from prometheus_client import Counter

from metering.model_client import TokenUsage

OPENAI_CALLS = Counter(
    "openai_calls_total",
    "Model calls by outcome (ok|error|timeout|broken_stream)",
    ["model", "outcome"],
)
OPENAI_TOKENS_IN = Counter(
    "openai_tokens_in_total", "Prompt tokens reported by the model", ["model"]
)
OPENAI_TOKENS_OUT = Counter(
    "openai_tokens_out_total", "Completion tokens reported by the model", ["model"]
)
CREDITS_DEDUCTED = Counter(
    "billing_credits_deducted_total", "Credits charged for usage (millicredits / 1000)", ["model"]
)
INSUFFICIENT_CREDITS = Counter(
    "billing_insufficient_credits_total", "Requests refused with 402 insufficient_credits"
)
DEFERRED_CAPTURES = Counter(
    "metering_deferred_captures_total",
    "Usage recorded while the ledger's capture failed; the ledger settles it from the topic",
)

CAP_TRIPS = Counter(
    "billing_cap_trips_total",
    "Charged calls refused by a guardrail (request|daily|hourly caps, or a paused user)",
    ["cap"],
)
ANOMALY_FLAGS = Counter(
    "billing_anomaly_flags_total", "Charged calls over 5x the user's recent average, flagged"
)
UNBILLED_CALLS = Counter(
    "metering_unbilled_calls_total",
    "Calls served without a charge, by why (charging_off|rollout|shadow)",
    ["reason"],
)
SHADOW_CHARGES = Counter(
    "metering_shadow_charges_millicredits_total",
    "What shadow billing computed for the calls it logged (charged or not)",
    ["model"],
)
MODEL_COST = Counter(
    "metering_model_cost_millicredits_total",
    "What the provider bills for the calls recorded (cost, not price), every billing mode",
    ["model"],
)


def model_answered(model: str, usage: TokenUsage) -> None:
    OPENAI_CALLS.labels(model, "ok").inc()
    OPENAI_TOKENS_IN.labels(model).inc(usage.input_tokens)
    OPENAI_TOKENS_OUT.labels(model).inc(usage.output_tokens)


def charged(model: str, millicredits: int) -> None:
    # A counter takes floats; money itself stays integer everywhere else.
    CREDITS_DEDUCTED.labels(model).inc(millicredits / 1000)
