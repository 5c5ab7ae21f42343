"""Prices of model calls in millicredits, and the worst-case estimate a hold reserves.

Units: US$1 = 1,000 credits = 1,000,000 millicredits, so tokens x USD-per-1M-tokens is
exactly millicredits. All rate arithmetic is Decimal, and every price is rounded up once,
at the end, to a whole millicredit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext

from metering.rate_card import ModelRate

# Framing tokens: a few per message (role, separators), a few more per request (priming).
# Real tokenizers spend 3-4 and 3; these leave room for providers that spend more.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 16
BYTES_PER_TOKEN = 3


@dataclass(frozen=True)
class Price:
    charged_millicredits: int
    cost_millicredits: int


def price(rate: ModelRate, input_tokens: int, output_tokens: int) -> Price:
    """``ceil(markup * cost)`` charged, ``ceil(cost)`` cost (COGS), in millicredits."""
    # 60 digits keep every product exact for any token count a request can carry.
    with localcontext(prec=60):
        cost = input_tokens * rate.input_usd_per_1m + output_tokens * rate.output_usd_per_1m
        return Price(_ceil(cost * rate.markup), _ceil(cost))


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def estimate_prompt_tokens(contents: Iterable[str]) -> int:
    """An upper bound of the prompt's tokens, from its text alone (no tokenizer).

    Rule: ``sum(ceil(utf8_bytes(content) / 3) + 4 for each message) + 16``. English runs
    about four characters per token, so a third of the bytes over-counts it; text outside
    ASCII takes 2-4 bytes per character and is counted higher still. Should a tokenizer
    ever beat the bound, the ledger collects the difference at capture while the user's
    balance allows it.
    """
    per_message = (
        -(-len(text.encode()) // BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE for text in contents
    )
    return sum(per_message) + TOKENS_PER_REQUEST


def hold_amount(rate: ModelRate, contents: Iterable[str], max_output_tokens: int) -> int:
    """The worst case of a call: the estimated prompt plus every allowed output token."""
    return price(rate, estimate_prompt_tokens(contents), max_output_tokens).charged_millicredits
