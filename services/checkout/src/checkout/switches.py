"""The billing switches: their values, what they mean together, and a short-lived cache.

Each switch is a row of ``feature_switches`` (migration 0002), read by metering through the
``feature_flags`` view; the settings only seed rows that do not exist yet. Readers here go
through ``Switches.current()``, which reads the rows at most once per ``ttl_s``: a change
made on another replica is seen within that time, one made here at once (``invalidate``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from billing_platform.errors import ApiError

from checkout.settings import Settings

log = logging.getLogger(__name__)

BILLING_ENABLED = "billingEnabled"
PURCHASES_ENABLED = "purchasesEnabled"
CHARGING_ENABLED = "chargingEnabled"
SHADOW_BILLING = "shadowBilling"
SHADOW_ALLOWLIST = "shadowAllowlist"
ROLLOUT_PERCENTAGE = "rolloutPercentage"

# Switch name (API, table and view) -> attribute of SwitchValues.
ATTRIBUTES = {
    BILLING_ENABLED: "billing_enabled",
    PURCHASES_ENABLED: "purchases_enabled",
    CHARGING_ENABLED: "charging_enabled",
    SHADOW_BILLING: "shadow_billing",
    SHADOW_ALLOWLIST: "shadow_allowlist",
    ROLLOUT_PERCENTAGE: "rollout_percentage",
}
NAMES = tuple(ATTRIBUTES)

MAX_ALLOWLIST_ENTRIES = 1000
MAX_USER_ID_LENGTH = 200


@dataclass(frozen=True)
class SwitchValues:
    billing_enabled: bool
    purchases_enabled: bool
    charging_enabled: bool
    shadow_billing: bool
    shadow_allowlist: tuple[str, ...]
    rollout_percentage: int


def defaults_from(settings: Settings) -> SwitchValues:
    return SwitchValues(
        billing_enabled=settings.billing_enabled,
        purchases_enabled=settings.purchases_enabled,
        charging_enabled=settings.charging_enabled,
        shadow_billing=settings.shadow_billing,
        shadow_allowlist=tuple(settings.shadow_allowlist),
        rollout_percentage=settings.rollout_percentage,
    )


# Switch name -> the deployment variable that forces it (checkout.settings).
FORCING_VARIABLES = {
    PURCHASES_ENABLED: "BILLING_PURCHASE_ENABLED",
    CHARGING_ENABLED: "BILLING_CHARGING_ENABLED",
    SHADOW_BILLING: "SHADOW_BILLING_ENABLED",
    SHADOW_ALLOWLIST: "BILLING_ALLOWLIST",
    ROLLOUT_PERCENTAGE: "BILLING_ROLLOUT_PERCENTAGE",
}


def forced_from(settings: Settings) -> dict[str, Any]:
    """Switch name -> stored value, for each switch the deployment forces."""
    forced = {
        PURCHASES_ENABLED: settings.forced_purchases_enabled,
        CHARGING_ENABLED: settings.forced_charging_enabled,
        SHADOW_BILLING: settings.forced_shadow_billing,
        SHADOW_ALLOWLIST: settings.forced_shadow_allowlist,
        ROLLOUT_PERCENTAGE: settings.forced_rollout_percentage,
    }
    return {name: checked_value(name, v) for name, v in forced.items() if v is not None}


def switch_forced(names: list[str]) -> ApiError:
    variables = ", ".join(FORCING_VARIABLES[n] for n in names)
    return ApiError(
        409,
        "switch_forced",
        f"set by the deployment ({variables}); change it there",
        switches=names,
    )


def purchases_allowed(values: SwitchValues) -> bool:
    return values.billing_enabled and values.purchases_enabled


def charging_allowed(values: SwitchValues) -> bool:
    return values.billing_enabled and values.charging_enabled


def as_stored(values: SwitchValues) -> dict[str, Any]:
    """Switch name -> its JSON value, as the table holds it."""
    stored = {name: getattr(values, attr) for name, attr in ATTRIBUTES.items()}
    stored[SHADOW_ALLOWLIST] = list(values.shadow_allowlist)
    return stored


def from_stored(stored: Mapping[str, Any], defaults: SwitchValues) -> SwitchValues:
    """The stored values; a switch without a row keeps its default."""
    found = {attr: stored[name] for name, attr in ATTRIBUTES.items() if name in stored}
    if "shadow_allowlist" in found:
        found["shadow_allowlist"] = tuple(found["shadow_allowlist"])
    return replace(defaults, **found)


def invalid_switch(name: str, message: str) -> ApiError:
    return ApiError(422, "invalid_switch", f"{name} {message}", switch=name)


def checked_value(name: str, value: Any) -> Any:
    """The value to store for a switch change (types are checked by the request schema)."""
    if value is None:
        raise invalid_switch(name, "must not be null")
    if name == ROLLOUT_PERCENTAGE and not 0 <= value <= 100:
        raise invalid_switch(name, "must be an integer from 0 to 100")
    if name == SHADOW_ALLOWLIST:
        return checked_allowlist(value)
    return value


def checked_allowlist(user_ids: list[str]) -> list[str]:
    """Trimmed user ids, each once, in the order given."""
    trimmed = [u.strip() for u in user_ids]
    if any(not u or len(u) > MAX_USER_ID_LENGTH for u in trimmed):
        raise invalid_switch(
            SHADOW_ALLOWLIST, f"entries must be user ids of 1 to {MAX_USER_ID_LENGTH} characters"
        )
    unique = list(dict.fromkeys(trimmed))
    if len(unique) > MAX_ALLOWLIST_ENTRIES:
        raise invalid_switch(SHADOW_ALLOWLIST, f"holds at most {MAX_ALLOWLIST_ENTRIES} user ids")
    return unique


class SwitchSource(Protocol):
    async def load(self) -> dict[str, Any]:
        """Switch name -> stored JSON value, for every switch that has a row."""
        ...


class Switches:
    """The current switch values, read from ``source`` at most once per ``ttl_s``."""

    def __init__(
        self,
        source: SwitchSource,
        defaults: SwitchValues,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._defaults = defaults
        self._ttl_s = ttl_s
        self._clock = clock
        self._values: SwitchValues | None = None
        self._expires_at = float("-inf")
        # Bumped by invalidate(), so a read that began before a change cannot be kept as fresh.
        self._generation = 0
        # One read at a time: when the cache expires under load, the DB sees one query.
        self._lock = asyncio.Lock()

    async def current(self) -> SwitchValues:
        cached = self._fresh()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._fresh()
            return cached if cached is not None else await self._refresh()

    def invalidate(self) -> None:
        """The next read goes to the source."""
        self._generation += 1
        self._expires_at = float("-inf")

    def _fresh(self) -> SwitchValues | None:
        return self._values if self._clock() < self._expires_at else None

    async def _refresh(self) -> SwitchValues:
        generation = self._generation
        values = await self._load()
        self._values = values
        if generation == self._generation:
            self._expires_at = self._clock() + self._ttl_s
        return values

    async def _load(self) -> SwitchValues:
        try:
            return from_stored(await self._source.load(), self._defaults)
        except Exception as exc:
            # During a database blip the last known values beat failing every request;
            # they are retried after another ttl_s.
            if self._values is None:
                raise ApiError(
                    503, "switches_unavailable", "feature switches cannot be read"
                ) from exc
            log.warning("feature switches not refreshed; keeping the last values", exc_info=True)
            return self._values
