"""Rate cards: the shipped card, choosing the one in force, and refusing bad data."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from billing_platform.errors import ApiError
from metering.rate_card import RateCardBook, load_rate_cards, parse_rate_card

SHIPPED = {
    "gpt-4o": ("5.00", "15.00"),
    "gpt-4o-mini": ("0.15", "0.60"),
    "gpt-4.1": ("2.00", "8.00"),
    "gpt-4.1-mini": ("0.40", "1.60"),
    "o3-mini": ("1.10", "4.40"),
}


def card_json(version: str, effective: str, **overrides: Any) -> str:
    card: dict[str, Any] = {
        "version": version,
        "effectiveFrom": effective,
        "defaultMarkup": "4",
        "models": [{"model": "gpt-4o", "inputUsdPer1M": "5.00", "outputUsdPer1M": "15.00"}],
    }
    card.update(overrides)
    return json.dumps(card)


def test_the_shipped_card_prices_the_five_models_at_markup_4() -> None:
    [card] = load_rate_cards()

    assert card.version == "2026-11-01"
    assert card.effective_from == date(2026, 11, 1)
    assert card.default_markup == Decimal("4")
    prices = {r.model: (str(r.input_usd_per_1m), str(r.output_usd_per_1m)) for r in card.rates}
    assert prices == SHIPPED
    assert {r.markup for r in card.rates} == {Decimal("4")}


def test_a_model_may_carry_its_own_markup() -> None:
    models = [
        {"model": "a", "inputUsdPer1M": "1", "outputUsdPer1M": "2", "markup": "2.5"},
        {"model": "b", "inputUsdPer1M": "1", "outputUsdPer1M": "2"},
    ]
    card = parse_rate_card(card_json("v", "2026-01-01", models=models))

    assert card.rate_for("a").markup == Decimal("2.5")
    assert card.rate_for("b").markup == Decimal("4")


def test_an_unknown_model_is_422_naming_the_known_ones() -> None:
    [card] = load_rate_cards()

    with pytest.raises(ApiError) as raised:
        card.rate_for("gpt-5-ultra")

    assert raised.value.status == 422
    assert raised.value.body() == {
        "error": "unknown_model",
        "message": "unknown model: gpt-5-ultra",
        "knownModels": list(SHIPPED),
    }


def test_the_newest_card_in_effect_is_current() -> None:
    cards = [
        parse_rate_card(card_json("old", "2026-01-01")),
        parse_rate_card(card_json("new", "2026-11-01")),
        parse_rate_card(card_json("future", "2027-01-01")),
    ]

    assert RateCardBook(cards, today=lambda: date(2026, 11, 21)).current().version == "new"
    assert RateCardBook(cards, today=lambda: date(2026, 6, 1)).current().version == "old"
    assert RateCardBook(cards, today=lambda: date(2027, 1, 1)).current().version == "future"


def test_a_pinned_version_wins_even_before_its_date() -> None:
    cards = [
        parse_rate_card(card_json("now", "2026-01-01")),
        parse_rate_card(card_json("later", "2027-01-01")),
    ]

    book = RateCardBook(cards, pinned_version="later", today=lambda: date(2026, 11, 21))

    assert book.current().version == "later"


def test_a_pin_to_a_card_not_shipped_fails_at_construction() -> None:
    with pytest.raises(LookupError, match="not shipped"):
        RateCardBook(load_rate_cards(), pinned_version="1999-01-01")


def test_no_card_in_effect_fails_at_construction() -> None:
    cards = [parse_rate_card(card_json("future", "2030-01-01"))]

    with pytest.raises(LookupError, match="no rate card"):
        RateCardBook(cards, today=lambda: date(2026, 11, 21))


@pytest.mark.parametrize(
    "models",
    [
        [{"model": "m", "inputUsdPer1M": 5.0, "outputUsdPer1M": "15"}],  # a float
        [{"model": "m", "inputUsdPer1M": "0", "outputUsdPer1M": "15"}],  # free
        [{"model": "m", "inputUsdPer1M": "-1", "outputUsdPer1M": "15"}],
        [{"model": "m", "inputUsdPer1M": "1"}],
        [
            {"model": "m", "inputUsdPer1M": "1", "outputUsdPer1M": "2"},
            {"model": "m", "inputUsdPer1M": "1", "outputUsdPer1M": "2"},
        ],
        [],
    ],
)
def test_bad_cards_are_refused(models: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="bad|validation error"):
        parse_rate_card(card_json("bad", "2026-01-01", models=models))
