"""A usage record as stored in ``usage_records`` and published as ``UsageRecorded``.

Every served call leaves one record, whatever its billing mode:
- ``charged``: the ledger charged ``charged_millicredits`` (``uncollected`` beyond it);
- ``shadow``: shadow billing computed the charge and deducted nothing; the stored row says
  0 charged, and the published record carries the computed charge in
  ``charged_millicredits`` (its mode tells every consumer that nothing was deducted);
- ``unbilled``: billing is off for this call (switches or rollout); 0 stored and published.
``priced_millicredits`` is always the computed price, so reports can show what unbilled and
shadow calls would have cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from billing_events.kafka import timestamp_now
from billing_events.v1 import common_pb2, usage_pb2
from billing_platform import context

CHARGED = "charged"
SHADOW = "shadow"
UNBILLED = "unbilled"
_MODES = {
    CHARGED: usage_pb2.BILLING_MODE_CHARGED,
    SHADOW: usage_pb2.BILLING_MODE_SHADOW,
    UNBILLED: usage_pb2.BILLING_MODE_UNBILLED,
}


@dataclass(frozen=True)
class UsageRecord:
    usage_id: str
    user_id: str
    model: str
    input_tokens: int
    output_tokens: int
    charged_millicredits: int
    uncollected_millicredits: int
    priced_millicredits: int
    cost_millicredits: int
    rate_card_version: str
    hold_id: str
    idempotency_key: str
    provider_request_id: str | None
    transaction_id: str | None
    response_body: dict[str, Any]
    mode: str = CHARGED

    def event(self, correlation_id: str | None = None) -> usage_pb2.UsageRecorded:
        published = self.priced_millicredits if self.mode == SHADOW else self.charged_millicredits
        return usage_pb2.UsageRecorded(
            meta=common_pb2.EventMeta(
                event_id=context.new_id(),
                occurred_at=timestamp_now(),
                correlation_id=correlation_id or context.current_correlation_id(),
                producer="metering",
            ),
            usage_id=self.usage_id,
            user_id=self.user_id,
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            charged_millicredits=published,
            cost_millicredits=self.cost_millicredits,
            rate_card_version=self.rate_card_version,
            hold_id=self.hold_id,
            mode=_MODES[self.mode],
            idempotency_key=self.idempotency_key,
            provider_request_id=self.provider_request_id or "",
        )


@dataclass(frozen=True)
class ShadowCharge:
    """A call logged by shadow billing, next to its usage record (same usage id).

    ``would_be_mode`` is the mode the call would get with shadow billing switched off
    (``charged`` or ``unbilled``, from charging and rollout).
    """

    would_be_mode: str


@dataclass(frozen=True)
class ModelTotals:
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    charged_millicredits: int
