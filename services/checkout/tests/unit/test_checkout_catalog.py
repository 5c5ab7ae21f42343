"""The server-side package catalog."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from checkout.catalog import PACKAGES, Package, find_package, package_codes


def test_five_tiers_in_price_order() -> None:
    assert package_codes() == ["starter", "growth", "professional", "business", "enterprise"]
    prices = [p.price_cents for p in PACKAGES]
    assert prices == sorted(prices)


@pytest.mark.parametrize(
    ("code", "price_cents"), [("starter", 999), ("professional", 4999), ("enterprise", 9999)]
)
def test_prices_from_the_contract(code: str, price_cents: int) -> None:
    package = find_package(code)
    assert package is not None
    assert package.price_cents == price_cents
    assert package.currency == "usd"


def test_base_credits_are_a_thousand_per_dollar() -> None:
    for package in PACKAGES:
        assert package.credits == package.price_cents * 10


def test_bonus_is_progressive() -> None:
    bonus_share = [p.bonus_credits / p.credits for p in PACKAGES]
    assert bonus_share[0] == 0
    assert all(a < b for a, b in itertools.pairwise(bonus_share))


def test_grant_is_credits_plus_bonus_in_millicredits() -> None:
    growth = find_package("growth")
    assert growth is not None
    assert growth.grant_millicredits == (24_990 + 1_250) * 1000
    starter = find_package("starter")
    assert starter is not None
    assert starter.grant_millicredits == 9_990_000


def test_unknown_code_is_none() -> None:
    assert find_package("free-money") is None


def test_packages_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PACKAGES[0].price_cents = 1  # type: ignore[misc]
    assert isinstance(PACKAGES, tuple)
    assert all(isinstance(p, Package) for p in PACKAGES)
