"""Request and response bodies of the reconciler (camelCase JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from billing_platform.schemas import CamelModel
from pydantic import ConfigDict, Field


class ReconcileRequest(CamelModel):
    model_config = ConfigDict(extra="forbid")

    date: str | None = Field(
        default=None,
        max_length=10,
        description="UTC day to reconcile, YYYY-MM-DD; yesterday when left out",
        examples=["2025-01-31"],
    )


class PeriodOut(CamelModel):
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")


class CheckOut(CamelModel):
    name: str
    findings: int


class FindingOut(CamelModel):
    check: str
    kind: str
    user_id: str | None
    references: list[str]
    expected_millicredits: int | None
    actual_millicredits: int | None
    detail: str


class JournalChainOut(CamelModel):
    last_entry_id: int
    chain_hash: str


class RunOut(CamelModel):
    run_id: str
    period: PeriodOut
    status: Literal["clean", "findings"]
    started_at: datetime
    finished_at: datetime
    duration_ms: int
    checks: list[CheckOut]
    findings: list[FindingOut]
    # Checkout Sessions the Stripe API listed for the period (null: the API did not answer).
    stripe_api_sessions_seen: int | None
    # The journal hash chain's head after the run (null: the journal has no settled entry).
    journal_chain: JournalChainOut | None
