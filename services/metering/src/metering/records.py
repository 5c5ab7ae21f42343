"""A usage record as stored in ``usage_records`` and published as ``UsageRecorded``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from billing_events.kafka import timestamp_now
from billing_events.v1 import common_pb2, usage_pb2
from billing_platform import context

CHARGED = "charged"
_MODES = {CHARGED: usage_pb2.BILLING_MODE_CHARGED}


@dataclass(frozen=True)
class UsageRecord:
    usage_id: str
    user_id: str
    model: str
    input_tokens: int
    output_tokens: int
    charged_millicredits: int
    uncollected_millicredits: int
    cost_millicredits: int
    rate_card_version: str
    hold_id: str
    idempotency_key: str
    provider_request_id: str | None
    transaction_id: str | None
    response_body: dict[str, Any]
    mode: str = CHARGED

    def event(self, correlation_id: str | None = None) -> usage_pb2.UsageRecorded:
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
            charged_millicredits=self.charged_millicredits,
            cost_millicredits=self.cost_millicredits,
            rate_card_version=self.rate_card_version,
            hold_id=self.hold_id,
            mode=_MODES[self.mode],
            idempotency_key=self.idempotency_key,
            provider_request_id=self.provider_request_id or "",
        )


@dataclass(frozen=True)
class ModelTotals:
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    charged_millicredits: int
