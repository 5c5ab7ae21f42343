"""Request and response bodies of the ledger API (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing_platform.schemas import MAX_AMOUNT_MILLICREDITS, CamelModel, Text
from pydantic import Field

# Tokens of one call: far above any model's context, far inside the bigint columns.
MAX_TOKENS = 100_000_000


class BalanceOut(CamelModel):
    user_id: str
    balance_millicredits: int
    held_millicredits: int
    available_millicredits: int
    balance_credits: str
    available_credits: str


class LedgerEntryOut(CamelModel):
    id: str
    kind: str
    amount_millicredits: int
    balance_after_millicredits: int
    reference_id: str
    correlation_id: str | None
    created_at: datetime
    model: str | None = None


class LedgerPage(CamelModel):
    entries: list[LedgerEntryOut]
    next_cursor: str | None


class FulfillPurchaseIn(CamelModel):
    purchase_id: Text = Field(min_length=1, max_length=100)
    reason: Text = Field(default="admin fulfilment", min_length=3, max_length=500)


class FulfillPurchaseOut(CamelModel):
    purchase_id: str
    granted: bool
    transaction_id: str | None
    balance_after_millicredits: int | None = None


class AdjustmentIn(CamelModel):
    user_id: Text = Field(min_length=1, max_length=200)
    amount_millicredits: int = Field(ge=-MAX_AMOUNT_MILLICREDITS, le=MAX_AMOUNT_MILLICREDITS)
    reason: Text = Field(min_length=3, max_length=500)
    reference_id: Text = Field(min_length=1, max_length=200)


class AdjustmentOut(CamelModel):
    transaction_id: str
    kind: str
    amount_millicredits: int
    balance_after_millicredits: int


class HoldIn(CamelModel):
    user_id: Text = Field(min_length=1, max_length=200)
    amount_millicredits: int = Field(gt=0, le=MAX_AMOUNT_MILLICREDITS)
    idempotency_key: Text = Field(min_length=1, max_length=200)
    ttl_seconds: int = Field(default=120, ge=1, le=3600)


class CaptureIn(CamelModel):
    amount_millicredits: int = Field(ge=0, le=MAX_AMOUNT_MILLICREDITS)
    usage_id: Text = Field(min_length=1, max_length=200)
    model: Text = Field(min_length=1, max_length=100)
    input_tokens: int = Field(ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(ge=0, le=MAX_TOKENS)
    rate_card_version: Text = Field(default="", max_length=100)


class AuditRecordOut(CamelModel):
    id: str
    event_id: str | None
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    action: str
    target: str
    target_user_id: str | None
    reference_id: str | None
    reason: str | None
    correlation_id: str | None
    source: str
    details: dict[str, Any]


class AuditPage(CamelModel):
    records: list[AuditRecordOut]
    next_cursor: str | None
