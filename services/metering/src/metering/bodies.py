"""JSON bodies of the gateway's answers (camelCase, money as integers plus credit text)."""

from __future__ import annotations

from typing import Any

from billing_platform.errors import ApiError
from billing_platform.money import credits_text

from metering import return_to
from metering.ledger_client import Balance
from metering.model_client import Completion, TokenUsage


def settled(
    head: dict[str, Any], tokens: TokenUsage, charged_millicredits: int, after: Balance | None
) -> dict[str, Any]:
    """A served call's answer: ``head`` (the model's answer and the billing mode), then its
    usage and the balance after it. The settlement's SQL (``settled_body``, migration 0005)
    ends a charged answer's stored body the same way."""
    return {**head, "usage": usage(tokens, charged_millicredits), "balance": balance(after)}


def usage(tokens: TokenUsage, charged_millicredits: int) -> dict[str, int]:
    return {
        "inputTokens": tokens.input_tokens,
        "outputTokens": tokens.output_tokens,
        "chargedMillicredits": charged_millicredits,
    }


def balance(of: Balance | None) -> dict[str, Any] | None:
    """None for a call the ledger never saw (unbilled or shadow): no balance was read."""
    if of is None:
        return None
    return {
        "balanceMillicredits": of.balance_millicredits,
        "heldMillicredits": of.held_millicredits,
        "availableMillicredits": of.available_millicredits,
        "balanceCredits": credits_text(of.balance_millicredits),
        "availableCredits": credits_text(of.available_millicredits),
    }


def completion(answer: Completion) -> dict[str, Any]:
    """The provider's answer as the SDK returned it, with the first message lifted out."""
    fields = answer.fields
    keep = ("id", "object", "created", "model", "choices", "system_fingerprint")
    body = {k: fields[k] for k in keep if k in fields}
    choices = fields.get("choices") or [{}]
    message = choices[0].get("message") or {}
    body["message"] = {"role": message.get("role", "assistant"), "content": message.get("content")}
    return body


def insufficient_credits(required: int, current: int, back: str) -> ApiError:
    """The contract's 402: both figures in millicredits and credits, and the way to top up."""
    return ApiError(
        402,
        "insufficient_credits",
        f"this request needs up to {credits_text(required)} credits;"
        f" {credits_text(current)} are available",
        requiredCredits=credits_text(required),
        currentCredits=credits_text(current),
        requiredMillicredits=required,
        currentMillicredits=current,
        returnTo=return_to.credits_link(back),
    )
