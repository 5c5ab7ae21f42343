"""Request and response bodies of the ledger API (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class BalanceOut(Body):
    user_id: str
    balance_millicredits: int
    held_millicredits: int
    available_millicredits: int
    balance_credits: str
    available_credits: str


class LedgerEntryOut(Body):
    id: str
    kind: str
    amount_millicredits: int
    balance_after_millicredits: int
    reference_id: str
    correlation_id: str | None
    created_at: datetime
    model: str | None = None


class LedgerPage(Body):
    entries: list[LedgerEntryOut]
    next_cursor: str | None


class FulfillPurchaseIn(Body):
    purchase_id: str = Field(min_length=1, max_length=100)


class FulfillPurchaseOut(Body):
    purchase_id: str
    granted: bool
    transaction_id: str | None
    balance_after_millicredits: int | None = None


class AdjustmentIn(Body):
    user_id: str = Field(min_length=1, max_length=200)
    amount_millicredits: int
    reason: str = Field(min_length=3, max_length=500)
    reference_id: str = Field(min_length=1, max_length=200)


class AdjustmentOut(Body):
    transaction_id: str
    kind: str
    amount_millicredits: int
    balance_after_millicredits: int


class HoldIn(Body):
    user_id: str = Field(min_length=1, max_length=200)
    amount_millicredits: int = Field(gt=0)
    idempotency_key: str = Field(min_length=1, max_length=200)
    ttl_seconds: int = Field(default=120, ge=1, le=3600)


class CaptureIn(Body):
    amount_millicredits: int = Field(ge=0)
    usage_id: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=100)
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    rate_card_version: str = Field(default="", max_length=100)
