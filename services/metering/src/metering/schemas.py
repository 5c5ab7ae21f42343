"""Request and response bodies of the metering API (camelCase JSON).

Request field names are the JSON names themselves (``max_tokens`` is OpenAI's spelling,
the rest camelCase): FastAPI 0.115 with pydantic >= 2.12 warns on aliased request bodies.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from billing_platform.schemas import CamelModel, Text
from pydantic import BaseModel, ConfigDict, Field

from metering.guard_store import CapsView, ReviewFlag
from metering.guardrails import Caps, Pause
from metering.rate_card import RateCard

MAX_KEY_LENGTH = 200


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Text = Field(min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    returnTo: str | None = None
    idempotencyKey: Text | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH)


class ReconcileRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    userId: Text = Field(min_length=1, max_length=200)
    model: Text = Field(min_length=1, max_length=200)
    inputTokens: int = Field(ge=0, le=100_000_000)
    outputTokens: int = Field(ge=0, le=100_000_000)
    idempotencyKey: Text = Field(min_length=1, max_length=MAX_KEY_LENGTH)


class ModelRateOut(BaseModel):
    model: str
    inputUsdPer1M: str
    outputUsdPer1M: str
    markup: str


class RateCardOut(BaseModel):
    version: str
    effectiveFrom: str
    defaultMarkup: str
    models: list[ModelRateOut]

    @classmethod
    def of(cls, card: RateCard) -> RateCardOut:
        return cls(
            version=card.version,
            effectiveFrom=card.effective_from.isoformat(),
            defaultMarkup=str(card.default_markup),
            models=[
                ModelRateOut(
                    model=r.model,
                    inputUsdPer1M=str(r.input_usd_per_1m),
                    outputUsdPer1M=str(r.output_usd_per_1m),
                    markup=str(r.markup),
                )
                for r in card.rates
            ],
        )


class ModelUsageOut(CamelModel):
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    charged_millicredits: int


class UsageSummaryOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    models: list[ModelUsageOut]
    totalChargedMillicredits: int


# --- guardrails (admin) ----------------------------------------------------------------

MAX_CAP_MILLICREDITS = 10**12
MAX_USER_ID_LENGTH = 200


class CapsRequest(BaseModel):
    """New overrides for a user; an absent or null cap falls back to the default."""

    model_config = ConfigDict(extra="forbid")

    perRequestMillicredits: int | None = Field(default=None, ge=0, le=MAX_CAP_MILLICREDITS)
    perDayMillicredits: int | None = Field(default=None, ge=0, le=MAX_CAP_MILLICREDITS)
    perHourMillicredits: int | None = Field(default=None, ge=0, le=MAX_CAP_MILLICREDITS)
    reason: Text = Field(min_length=1, max_length=500)

    def caps(self) -> tuple[int | None, int | None, int | None]:
        return self.perRequestMillicredits, self.perDayMillicredits, self.perHourMillicredits


class ReasonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(min_length=1, max_length=500)


class CapValues(CamelModel):
    per_request_millicredits: int
    per_day_millicredits: int
    per_hour_millicredits: int

    @classmethod
    def of(cls, caps: Caps) -> CapValues:
        return cls(
            per_request_millicredits=caps.per_request,
            per_day_millicredits=caps.per_day,
            per_hour_millicredits=caps.per_hour,
        )


class Overridden(CamelModel):
    per_request_millicredits: bool
    per_day_millicredits: bool
    per_hour_millicredits: bool


class CapsOut(CamelModel):
    """The caps in force for a user, the defaults, and which ones an admin overrode."""

    user_id: str
    per_request_millicredits: int
    per_day_millicredits: int
    per_hour_millicredits: int
    overridden: Overridden
    defaults: CapValues
    updated_by: str | None
    reason: str | None
    updated_at: datetime | None

    @classmethod
    def of(cls, user_id: str, view: CapsView) -> CapsOut:
        o, caps = view.override, view.effective
        return cls(
            user_id=user_id,
            per_request_millicredits=caps.per_request,
            per_day_millicredits=caps.per_day,
            per_hour_millicredits=caps.per_hour,
            overridden=Overridden(
                per_request_millicredits=o is not None and o.per_request is not None,
                per_day_millicredits=o is not None and o.per_day is not None,
                per_hour_millicredits=o is not None and o.per_hour is not None,
            ),
            defaults=CapValues.of(view.defaults),
            updated_by=o.updated_by if o else None,
            reason=o.reason if o else None,
            updated_at=o.updated_at if o else None,
        )


class PauseOut(CamelModel):
    user_id: str
    paused: bool
    paused_at: datetime | None = None
    reason: str | None = None
    resumed_at: datetime | None = None
    resumed_by: str | None = None
    resume_reason: str | None = None

    @classmethod
    def of(cls, user_id: str, pause: Pause | None) -> PauseOut:
        if pause is None:
            return cls(user_id=user_id, paused=False)
        return cls(
            user_id=user_id,
            paused=pause.active,
            paused_at=pause.paused_at,
            reason=pause.reason,
            resumed_at=pause.resumed_at,
            resumed_by=pause.resumed_by,
            resume_reason=pause.resume_reason,
        )


class PausedUsersOut(CamelModel):
    users: list[PauseOut]


class ReviewFlagOut(CamelModel):
    id: int
    user_id: str
    usage_id: str
    model: str
    charge_millicredits: int
    average_millicredits: int
    recent_calls: int
    created_at: datetime


class ReviewFlagsOut(CamelModel):
    flags: list[ReviewFlagOut]

    @classmethod
    def of(cls, flags: list[ReviewFlag]) -> ReviewFlagsOut:
        return cls(flags=[ReviewFlagOut(**vars(f)) for f in flags])
