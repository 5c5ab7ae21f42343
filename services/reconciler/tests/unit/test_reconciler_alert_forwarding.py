"""Alerts on their way to people: the Slack and PagerDuty bodies, and the post."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from billing_events.v1 import alert_pb2, common_pb2
from billing_platform.logging import mask_user_id
from reconciler.alerts import (
    AlertForwarder,
    AlertNotDelivered,
    AlertTarget,
    Format,
    pagerduty_body,
    slack_body,
)


def alert(**overrides: Any) -> alert_pb2.BillingAlert:
    fields: dict[str, Any] = {
        "meta": common_pb2.EventMeta(event_id="evt-1", correlation_id="corr-1"),
        "alert_id": "alert-1",
        "kind": "balance_mismatch",
        "severity": alert_pb2.SEVERITY_CRITICAL,
        "user_id": "alice@example.com",
        "message": "wallet sum differs from the balance by 5 credits",
        "reference_ids": ["txn-1"],
        "amount_millicredits": 5_000,
        "details": {"check": "balances"},
        "source": "reconciler",
        **overrides,
    }
    return alert_pb2.BillingAlert(**fields)


def test_pagerduty_gets_a_trigger_deduplicated_by_the_alert_id() -> None:
    body = pagerduty_body(alert(), "routing-key-1")

    assert (body["routing_key"], body["event_action"], body["dedup_key"]) == (
        "routing-key-1",
        "trigger",
        "alert-1",
    )
    payload = body["payload"]
    assert (payload["severity"], payload["source"], payload["class"]) == (
        "critical",
        "reconciler",
        "balance_mismatch",
    )
    assert (
        payload["summary"] == "balance_mismatch: wallet sum differs from the balance by 5 credits"
    )
    assert payload["custom_details"]["user"] == mask_user_id("alice@example.com")
    assert payload["custom_details"]["check"] == "balances"
    assert "alice@example.com" not in json.dumps(body)


def test_an_alert_without_its_own_id_is_deduplicated_by_its_event_id() -> None:
    assert pagerduty_body(alert(alert_id=""), "k")["dedup_key"] == "evt-1"


def test_severities_map_to_pagerdutys() -> None:
    warning = alert(severity=alert_pb2.SEVERITY_WARNING)
    unset = alert(severity=alert_pb2.SEVERITY_UNSPECIFIED)

    assert pagerduty_body(warning, "k")["payload"]["severity"] == "warning"
    assert pagerduty_body(unset, "k")["payload"]["severity"] == "warning"


def test_slack_gets_one_message_with_the_facts_and_no_user_id() -> None:
    text = slack_body(alert())["text"]

    assert text.startswith("[critical] balance_mismatch: wallet sum differs")
    assert "amount_millicredits: 5000" in text
    assert mask_user_id("alice@example.com") in text
    assert "alice@example.com" not in text


def _forwarder(status: int, seen: list[dict[str, Any]], fmt: Format = "slack") -> AlertForwarder:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(status)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return AlertForwarder(http, AlertTarget("https://hooks.example/alerts", fmt, "k"))


async def test_an_accepted_post_delivers_the_alert() -> None:
    seen: list[dict[str, Any]] = []

    await _forwarder(202, seen, "pagerduty").forward(alert())

    assert [s["dedup_key"] for s in seen] == ["alert-1"]


async def test_a_refused_post_is_not_delivered_so_the_consumer_retries() -> None:
    with pytest.raises(AlertNotDelivered, match="HTTP 500"):
        await _forwarder(500, []).forward(alert())


async def test_an_unreachable_webhook_is_not_delivered_either() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(fail))
    forwarder = AlertForwarder(http, AlertTarget("https://hooks.example/alerts", "slack"))

    with pytest.raises(AlertNotDelivered, match="ConnectError"):
        await forwarder.forward(alert())
