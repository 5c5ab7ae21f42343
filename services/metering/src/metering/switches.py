"""The billing switches as metering applies them: read at run time, decided per call.

Checkout owns the switches and publishes them read-only as ``<checkout schema>.feature_flags``
(one row per switch). Metering reads that view through its own pool at most once per
``ttl_s``, so a change is applied within that time and without a restart. A switch without a
row keeps its default (billing on, charging on, shadow off, rollout 100%). When the view
cannot be read, the last values read are kept; with none yet, calls are charged normally
(the fail-safe side for money) and a warning is logged.

The billing mode of a call (``decide``), in order:
1. ``billingEnabled`` (master) or ``chargingEnabled`` off: nothing is charged. With
   ``shadowBilling`` on as well (and the master on), each call is still priced and logged
   as a shadow charge (mode ``shadow``); otherwise it is ``unbilled``. Reason: charging_off.
2. ``shadowBilling`` on: users in ``shadowAllowlist`` are charged; everyone else gets mode
   ``shadow`` (priced and logged, no hold, nothing charged). Every call, charged or not,
   is logged as a shadow charge, so shadow totals are what real billing would charge.
   Rollout does not apply while shadow billing is on.
3. otherwise rollout: a user is charged when ``stable_bucket(user) < rolloutPercentage``,
   else ``unbilled`` (reason: rollout).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from billing_platform.db import HasPool, check_schema_name

from metering import repository
from metering.records import CHARGED, SHADOW, UNBILLED

log = logging.getLogger(__name__)

BILLING_ENABLED = "billingEnabled"
CHARGING_ENABLED = "chargingEnabled"
SHADOW_BILLING = "shadowBilling"
SHADOW_ALLOWLIST = "shadowAllowlist"
ROLLOUT_PERCENTAGE = "rolloutPercentage"

# Why a call is not charged (the label of metering_unbilled_calls_total).
CHARGING_OFF = "charging_off"
ROLLOUT = "rollout"
SHADOW_ONLY = "shadow"


@dataclass(frozen=True)
class SwitchValues:
    billing_enabled: bool = True
    charging_enabled: bool = True
    shadow_billing: bool = False
    shadow_allowlist: frozenset[str] = field(default_factory=frozenset)
    rollout_percentage: int = 100


DEFAULTS = SwitchValues()


@dataclass(frozen=True)
class Decision:
    """How one call is billed: its mode, why it is not charged, and whether it is shadowed."""

    mode: str
    reason: str | None = None
    shadow: bool = False
    would_be_mode: str = CHARGED

    @property
    def charged(self) -> bool:
        return self.mode == CHARGED


def stable_bucket(user_id: str) -> int:
    """The user's rollout bucket, 0..99: the first 8 bytes of sha256(user id, UTF-8) read as
    a big-endian unsigned integer, mod 100. Stable across processes, hosts and restarts
    (unlike ``hash()``), so raising the percentage only ever adds users."""
    digest = hashlib.sha256(user_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def decide(values: SwitchValues, user_id: str) -> Decision:
    if not values.billing_enabled:
        return Decision(UNBILLED, CHARGING_OFF, would_be_mode=UNBILLED)
    if values.shadow_billing:
        return _shadowed(values, user_id)
    if not values.charging_enabled:
        return Decision(UNBILLED, CHARGING_OFF, would_be_mode=UNBILLED)
    if stable_bucket(user_id) >= values.rollout_percentage:
        return Decision(UNBILLED, ROLLOUT, would_be_mode=UNBILLED)
    return Decision(CHARGED)


def _shadowed(values: SwitchValues, user_id: str) -> Decision:
    """Shadow billing: the allowlist is charged, even with charging off (the runbooks'
    phase 0: "log but don't charge", except the internal accounts); the rest is logged."""
    would_be = decide(replace(values, shadow_billing=False), user_id).mode
    if user_id in values.shadow_allowlist:
        return Decision(CHARGED, shadow=True, would_be_mode=would_be)
    reason = SHADOW_ONLY if values.charging_enabled else CHARGING_OFF
    return Decision(SHADOW, reason, shadow=True, would_be_mode=would_be)


def from_rows(rows: Mapping[str, Any]) -> SwitchValues:
    """Values from the view's rows (name -> decoded JSON); a missing or bad row: its default."""
    return SwitchValues(
        billing_enabled=_flag(rows, BILLING_ENABLED, DEFAULTS.billing_enabled),
        charging_enabled=_flag(rows, CHARGING_ENABLED, DEFAULTS.charging_enabled),
        shadow_billing=_flag(rows, SHADOW_BILLING, DEFAULTS.shadow_billing),
        shadow_allowlist=_allowlist(rows.get(SHADOW_ALLOWLIST)),
        rollout_percentage=_percentage(rows.get(ROLLOUT_PERCENTAGE)),
    )


def _flag(rows: Mapping[str, Any], name: str, default: bool) -> bool:
    value = rows.get(name, default)
    if isinstance(value, bool):
        return value
    log.warning("feature flag of the wrong type; using its default", extra={"flag": name})
    return default


def _allowlist(value: Any) -> frozenset[str]:
    if value is None:
        return DEFAULTS.shadow_allowlist
    if isinstance(value, list) and all(isinstance(u, str) for u in value):
        return frozenset(value)
    log.warning("shadowAllowlist is not a list of user ids; treating it as empty")
    return frozenset()


def _percentage(value: Any) -> int:
    if value is None:
        return DEFAULTS.rollout_percentage
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return value
    log.warning("rolloutPercentage is not an integer 0..100; using 100")
    return DEFAULTS.rollout_percentage


class SwitchReader(Protocol):
    async def decide(self, user_id: str) -> Decision: ...


class SwitchSource(Protocol):
    async def load(self) -> dict[str, Any]:
        """Switch name -> decoded JSON value, for every row of the view."""
        ...


class PgSwitchSource:
    """The rows of checkout's ``feature_flags`` view, read through metering's pool."""

    def __init__(self, db: HasPool, checkout_schema: str) -> None:
        self._db = db
        self._schema = check_schema_name(checkout_schema)

    async def load(self) -> dict[str, Any]:
        async with self._db.pool.acquire() as conn:
            rows = await repository.feature_flags(conn, self._schema)
        return {
            name: json.loads(value) if isinstance(value, str) else value for name, value in rows
        }


class Switches:
    """The current values, read from ``source`` at most once per ``ttl_s``."""

    def __init__(
        self,
        source: SwitchSource,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl_s = ttl_s
        self._clock = clock
        self._values: SwitchValues | None = None
        self._expires_at = float("-inf")
        # One read at a time: when the cache expires under load, the DB sees one query.
        self._lock = asyncio.Lock()

    async def decide(self, user_id: str) -> Decision:
        return decide(await self.current(), user_id)

    async def current(self) -> SwitchValues:
        if self._values is not None and self._clock() < self._expires_at:
            return self._values
        async with self._lock:
            if self._values is None or self._clock() >= self._expires_at:
                self._values = await self._load()
                self._expires_at = self._clock() + self._ttl_s
            return self._values

    async def _load(self) -> SwitchValues:
        try:
            return from_rows(await self._source.load())
        except Exception as exc:
            # Tried again after another ttl_s; failing every AI call meanwhile helps nobody.
            # No traceback: an outage would log one per ttl_s.
            error = {"error": f"{type(exc).__name__}: {exc}"}
            if self._values is not None:
                log.warning("feature flags not refreshed; keeping the last values", extra=error)
                return self._values
            log.warning("feature flags unreadable; charging normally", extra=error)
            return DEFAULTS
