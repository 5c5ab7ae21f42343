"""Request and response bodies of the ledger API (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime

from billing_platform.schemas import CamelModel
from pydantic import Field


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
    purchase_id: str = Field(min_length=1, max_length=100)


class FulfillPurchaseOut(CamelModel):
    purchase_id: str
    granted: bool
    transaction_id: str | None
    balance_after_millicredits: int | None = None


class AdjustmentIn(CamelModel):
    user_id: str = Field(min_length=1, max_length=200)
    amount_millicredits: int
    reason: str = Field(min_length=3, max_length=500)
    reference_id: str = Field(min_length=1, max_length=200)


class AdjustmentOut(CamelModel):
    transaction_id: str
    kind: str
    amount_millicredits: int
    balance_after_millicredits: int


class HoldIn(CamelModel):
    user_id: str = Field(min_length=1, max_length=200)
    amount_millicredits: int = Field(gt=0)
    idempotency_key: str = Field(min_length=1, max_length=200)
    ttl_seconds: int = Field(default=120, ge=1, le=3600)


class CaptureIn(CamelModel):
    amount_millicredits: int = Field(ge=0)
    usage_id: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=100)
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    rate_card_version: str = Field(default="", max_length=100)
