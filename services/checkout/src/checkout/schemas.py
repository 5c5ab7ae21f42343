"""Request and response bodies of the checkout API (camelCase JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing_platform.schemas import CamelModel as BaseCamelModel
from billing_platform.schemas import Text
from pydantic import BaseModel, ConfigDict, Field

from checkout.catalog import Package
from checkout.switches import SwitchValues


class CamelModel(BaseCamelModel):
    # A client may send fields we do not take (e.g. an amount): they are ignored, not refused.
    model_config = ConfigDict(extra="ignore")


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
    # The Stripe receipt of the purchase's charge, once a charge event has named it.
    receipt_url: str | None = None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> PurchaseOut:
        return cls.model_validate({**row, "purchase_id": row["id"]})


class PurchasePage(CamelModel):
    """A page of a user's purchases, newest first; ``next_cursor`` fetches the next one."""

    purchases: list[PurchaseOut]
    next_cursor: str | None


class FeaturesOut(CamelModel):
    """The public switch values: nothing here identifies a user."""

    billing_enabled: bool
    purchases_enabled: bool
    charging_enabled: bool
    shadow_billing: bool
    rollout_percentage: int
    # The switches the deployment forces (its settings win; the admin API cannot change them).
    forced: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, values: SwitchValues, forced: list[str] | None = None) -> FeaturesOut:
        return cls(
            billing_enabled=values.billing_enabled,
            purchases_enabled=values.purchases_enabled,
            charging_enabled=values.charging_enabled,
            shadow_billing=values.shadow_billing,
            rollout_percentage=values.rollout_percentage,
            forced=forced or [],
        )


class AdminFeaturesOut(FeaturesOut):
    shadow_allowlist: list[str]
    # Switch name -> when its row last changed (None: no row yet, the default applies).
    updated_at: dict[str, datetime | None]

    @classmethod
    def of_rows(
        cls, values: SwitchValues, updated_at: dict[str, datetime | None], forced: list[str]
    ) -> AdminFeaturesOut:
        public = FeaturesOut.of(values, forced).model_dump()
        return cls(**public, shadow_allowlist=list(values.shadow_allowlist), updated_at=updated_at)


class FeaturesPatch(BaseModel):
    """Switches to change (any subset) and why; any other field is refused.

    Strict types: a value must already be what the table stores and metering reads (no
    "false" string or 0 for a boolean, no 50.0 or true for the percentage). Field names
    are the JSON names (see PurchaseRequest).
    """

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    billingEnabled: bool | None = None
    purchasesEnabled: bool | None = None
    chargingEnabled: bool | None = None
    shadowBilling: bool | None = None
    rolloutPercentage: int | None = None
    shadowAllowlist: list[Text] | None = None
    reason: Text = Field(min_length=3, max_length=500)

    def changes(self) -> dict[str, Any]:
        """Switch name -> value, for the switches the body names (null included)."""
        return {name: getattr(self, name) for name in self.model_fields_set - {"reason"}}
