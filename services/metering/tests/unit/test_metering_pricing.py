"""Prices in millicredits (Decimal rates, one ceiling) and the hold's worst-case estimate."""

from __future__ import annotations

import random
import string
from decimal import Decimal

from billing_platform.money import credits_text
from devllm.app import Message, prompt_tokens
from metering import pricing
from metering.rate_card import ModelRate, load_rate_cards

GPT_4O = ModelRate("gpt-4o", Decimal("5.00"), Decimal("15.00"), Decimal("4"))
MINI = ModelRate("gpt-4o-mini", Decimal("0.15"), Decimal("0.60"), Decimal("4"))


def test_golden_case_gpt_4o_1000_in_500_out_is_50_credits() -> None:
    price = pricing.price(GPT_4O, 1000, 500)

    assert price.charged_millicredits == 50_000
    assert credits_text(price.charged_millicredits) == "50.000"


def test_cost_is_the_same_sum_without_markup() -> None:
    assert pricing.price(GPT_4O, 1000, 500).cost_millicredits == 12_500


def test_a_fraction_of_a_millicredit_rounds_up() -> None:
    # 1 token x 0.15 = 0.15 millicredits cost, x4 = 0.6: both round up to 1.
    one_token = pricing.price(MINI, 1, 0)

    assert (one_token.charged_millicredits, one_token.cost_millicredits) == (1, 1)


def test_markup_applies_before_the_one_rounding() -> None:
    # 3 x 0.15 + 1 x 0.60 = 1.05: cost ceil(1.05) = 2, charge ceil(4.2) = 5 (not 4 x 2).
    price = pricing.price(MINI, 3, 1)

    assert (price.charged_millicredits, price.cost_millicredits) == (5, 2)


def test_exact_multiples_do_not_round_up() -> None:
    assert pricing.price(MINI, 100, 0).charged_millicredits == 60


def test_per_model_markup_applies() -> None:
    cheap = ModelRate("m", Decimal("5.00"), Decimal("15.00"), Decimal("2.5"))

    assert pricing.price(cheap, 1000, 500).charged_millicredits == 31_250


def test_large_counts_stay_exact() -> None:
    price = pricing.price(GPT_4O, 987_654_321, 123_456_789)

    assert price.cost_millicredits == 987_654_321 * 5 + 123_456_789 * 15
    assert price.charged_millicredits == 4 * price.cost_millicredits


def test_zero_tokens_cost_nothing() -> None:
    assert pricing.price(GPT_4O, 0, 0) == pricing.Price(0, 0)


def test_estimate_rule() -> None:
    # ceil(11 / 3) + 4 = 8 and ceil(0 / 3) + 4 = 4, plus 16 for the request.
    assert pricing.estimate_prompt_tokens(["hello world", ""]) == 28


def test_estimate_counts_bytes_so_non_ascii_text_is_counted_higher() -> None:
    assert pricing.estimate_prompt_tokens(["日本語"]) == 3 + 4 + 16  # nine bytes


def test_hold_covers_the_estimated_prompt_and_every_output_token() -> None:
    amount = pricing.hold_amount(GPT_4O, ["x" * 300], 1024)

    assert amount == pricing.price(GPT_4O, 100 + 4 + 16, 1024).charged_millicredits


def _random_text(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n" + "éü漢字🙂"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))


def test_the_estimate_is_never_below_devllm_prompt_tokens() -> None:
    rng = random.Random(20261121)  # noqa: S311 - reproducible test data
    for _ in range(500):
        texts = [_random_text(rng) for _ in range(rng.randint(1, 8))]
        actual = prompt_tokens([Message(role="user", content=t) for t in texts])

        assert pricing.estimate_prompt_tokens(texts) >= actual


def test_the_hold_is_never_below_the_actual_charge_for_devllm_calls() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    for rate in load_rate_cards()[-1].rates:
        for _ in range(100):
            texts = [_random_text(rng) for _ in range(rng.randint(1, 4))]
            max_tokens = rng.randint(1, 4096)
            actual_in = prompt_tokens([Message(role="user", content=t) for t in texts])
            actual_out = rng.randint(0, max_tokens)  # devllm never exceeds max_tokens
            actual = pricing.price(rate, actual_in, actual_out).charged_millicredits

            assert pricing.hold_amount(rate, texts, max_tokens) >= actual
