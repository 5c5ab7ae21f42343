"""Request and response bodies of the checkout API (camelCase JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from checkout.catalog import Package


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class PackageOut(CamelModel):
    code: str
    name: str
    price_cents: int
    currency: str
    credits: int
    bonus_credits: int

    @classmethod
    def of(cls, package: Package) -> PackageOut:
        return cls(
            code=package.code,
            name=package.name,
            price_cents=package.price_cents,
            currency=package.currency,
            credits=package.credits,
            bonus_credits=package.bonus_credits,
        )


class PurchaseRequest(BaseModel):
    """What a client may ask for. Any other field (an amount, a price) is ignored.

    Field names are the JSON names themselves: FastAPI 0.115 with pydantic >= 2.12 warns
    (falsely) on every request body model that uses aliases.
    """

    model_config = ConfigDict(extra="ignore")

    packageCode: str
    returnTo: str | None = None


class PurchaseCreated(CamelModel):
    purchase_id: str
    checkout_url: str
    status: str


class PurchaseOut(CamelModel):
    purchase_id: str
    user_id: str
    package_code: str
    price_cents: int
    currency: str
    credits: int
    bonus_credits: int
    grant_millicredits: int
    status: str
    checkout_url: str | None
    stripe_session_id: str | None
    refunded_millicredits: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> PurchaseOut:
        return cls.model_validate({**row, "purchase_id": row["id"]})
