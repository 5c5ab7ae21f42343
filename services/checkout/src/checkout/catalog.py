"""The package catalog: server-side, immutable data. Clients name a code, never an amount.

1,000 credits = US$1, so a package's base credits are ``price_cents * 10``; bigger tiers
add progressively more bonus credits. A purchase snapshots its package's terms when it is
created, so changing this table never changes what an earlier purchase grants.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

MILLICREDITS_PER_CREDIT = 1000


@dataclass(frozen=True)
class Package:
    code: str
    name: str
    price_cents: int
    currency: str
    credits: int
    bonus_credits: int

    @property
    def grant_millicredits(self) -> int:
        """What a paid purchase of this package grants."""
        return (self.credits + self.bonus_credits) * MILLICREDITS_PER_CREDIT


PACKAGES: tuple[Package, ...] = (
    Package("starter", "Starter", 999, "usd", 9_990, 0),
    Package("growth", "Growth", 2499, "usd", 24_990, 1_250),
    Package("professional", "Professional", 4999, "usd", 49_990, 5_000),
    Package("business", "Business", 7499, "usd", 74_990, 11_250),
    Package("enterprise", "Enterprise", 9999, "usd", 99_990, 20_000),
)

_BY_CODE = MappingProxyType({p.code: p for p in PACKAGES})


def find_package(code: str) -> Package | None:
    return _BY_CODE.get(code)


def package_codes() -> list[str]:
    return [p.code for p in PACKAGES]
