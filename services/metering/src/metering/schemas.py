"""Request and response bodies of the metering API (camelCase JSON).

Request field names are the JSON names themselves (``max_tokens`` is OpenAI's spelling,
the rest camelCase): FastAPI 0.115 with pydantic >= 2.12 warns on aliased request bodies.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from metering.rate_card import RateCard

MAX_KEY_LENGTH = 200


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    returnTo: str | None = None
    idempotencyKey: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH)


class ReconcileRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    userId: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=200)
    inputTokens: int = Field(ge=0, le=100_000_000)
    outputTokens: int = Field(ge=0, le=100_000_000)
    idempotencyKey: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)


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
