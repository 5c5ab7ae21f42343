"""Alerts to people: every ``BillingAlert`` of ``billing.alerts.v1`` posted to a webhook.

The reconciler's findings, metering's anomaly flags and the ledger's refused grants are
published as alerts; without this they would page no one. Each alert is posted once to the
configured webhook, as a Slack message or a PagerDuty Events v2 ``trigger`` (whose
``dedup_key`` is the alert id, so PagerDuty folds a repeat into the same incident). Delivery
is at least once: an alert is marked forwarded only after the webhook accepted it, and the
post is never made inside a database transaction. A failed post is retried by the consumer
(5 attempts with backoff, then the alerts' dead-letter topic). User ids leave as the same
pseudonyms the logs use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import httpx
from billing_events.v1 import alert_pb2
from billing_platform.logging import mask_user_id

Format = Literal["slack", "pagerduty"]

PAGERDUTY_SEVERITY = {
    alert_pb2.SEVERITY_CRITICAL: "critical",
    alert_pb2.SEVERITY_WARNING: "warning",
    alert_pb2.SEVERITY_INFO: "info",
}


class AlertNotDelivered(Exception):
    """The webhook did not take the alert; the consumer tries again."""


@dataclass(frozen=True)
class AlertTarget:
    url: str
    format: Format
    routing_key: str = ""


def severity_name(alert: alert_pb2.BillingAlert) -> str:
    return PAGERDUTY_SEVERITY.get(alert.severity, "warning")


def details(alert: alert_pb2.BillingAlert) -> dict[str, Any]:
    found: dict[str, Any] = {
        "kind": alert.kind,
        "source": alert.source,
        "reference_ids": list(alert.reference_ids),
        "amount_millicredits": alert.amount_millicredits,
        "correlation_id": alert.meta.correlation_id,
        **dict(alert.details),
    }
    if alert.user_id:
        found["user"] = mask_user_id(alert.user_id)
    return found


def slack_body(alert: alert_pb2.BillingAlert) -> dict[str, Any]:
    facts = ", ".join(f"{k}: {v}" for k, v in details(alert).items() if v not in ("", [], 0))
    text = f"[{severity_name(alert)}] {alert.kind}: {alert.message}"
    return {"text": f"{text}\n{facts}" if facts else text}


def pagerduty_body(alert: alert_pb2.BillingAlert, routing_key: str) -> dict[str, Any]:
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert_key(alert),
        "payload": {
            "summary": f"{alert.kind}: {alert.message}"[:1024],
            "source": alert.source or "billing",
            "severity": severity_name(alert),
            "class": alert.kind,
            "group": "billing",
            "custom_details": details(alert),
        },
    }


def alert_key(alert: alert_pb2.BillingAlert) -> str:
    return alert.alert_id or alert.meta.event_id


class AlertForwarder:
    def __init__(self, http: httpx.AsyncClient, target: AlertTarget) -> None:
        self._http = http
        self._target = target

    def body(self, alert: alert_pb2.BillingAlert) -> dict[str, Any]:
        if self._target.format == "pagerduty":
            return pagerduty_body(alert, self._target.routing_key)
        return slack_body(alert)

    async def forward(self, alert: alert_pb2.BillingAlert) -> None:
        try:
            answer = await self._http.post(self._target.url, json=self.body(alert))
        except httpx.HTTPError as exc:
            raise AlertNotDelivered(f"{type(exc).__name__} posting the alert") from exc
        if answer.status_code >= 300:
            raise AlertNotDelivered(f"the webhook answered HTTP {answer.status_code}")

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._http.aclose()
