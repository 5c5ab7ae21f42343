"""Topic names from the contract, optionally prefixed by a namespace.

The namespace lets several environments, or isolated test runs, share one broker without
seeing each other's messages.
"""

from __future__ import annotations

from dataclasses import dataclass

STRIPE_EVENTS = "stripe.events.v1"
STRIPE_EVENTS_DLQ = "stripe.events.dlq.v1"
USAGE = "billing.usage.v1"
LEDGER = "billing.ledger.v1"
ALERTS = "billing.alerts.v1"
# Not named in the contract's table, but its rule (poison records go to a DLQ after 5
# attempts) applies to every consumed topic; named like ``stripe.events.dlq.v1``.
USAGE_DLQ = "billing.usage.dlq.v1"
LEDGER_DLQ = "billing.ledger.dlq.v1"
# Every admin action, from every service and the ops CLI; the ledger keeps them in audit_log.
AUDIT = "billing.audit.v1"
AUDIT_DLQ = "billing.audit.dlq.v1"
# Alerts the webhook would not take after 5 attempts (the reconciler forwards alerts).
ALERTS_DLQ = "billing.alerts.dlq.v1"

# name -> partitions. Keys are user ids (or Stripe object ids), so per-key order holds.
CONTRACT_TOPICS: dict[str, int] = {
    STRIPE_EVENTS: 6,
    STRIPE_EVENTS_DLQ: 1,
    USAGE: 6,
    LEDGER: 6,
    ALERTS: 1,
    USAGE_DLQ: 1,
    LEDGER_DLQ: 1,
    AUDIT: 3,
    AUDIT_DLQ: 1,
    ALERTS_DLQ: 1,
}


@dataclass(frozen=True)
class Topics:
    namespace: str = ""

    def name(self, base: str) -> str:
        return f"{self.namespace}.{base}" if self.namespace else base

    @property
    def stripe_events(self) -> str:
        return self.name(STRIPE_EVENTS)

    @property
    def stripe_events_dlq(self) -> str:
        return self.name(STRIPE_EVENTS_DLQ)

    @property
    def usage(self) -> str:
        return self.name(USAGE)

    @property
    def ledger(self) -> str:
        return self.name(LEDGER)

    @property
    def alerts(self) -> str:
        return self.name(ALERTS)

    @property
    def audit(self) -> str:
        return self.name(AUDIT)

    def all(self) -> dict[str, int]:
        return {self.name(base): parts for base, parts in CONTRACT_TOPICS.items()}
