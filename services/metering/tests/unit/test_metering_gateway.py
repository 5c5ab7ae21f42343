"""The chat and reconcile use cases against fake ledger, model and store ports."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from billing_events.v1 import usage_pb2
from billing_platform.errors import ApiError
from billing_platform.money import credits_text
from metering import pricing, service
from metering.model_client import (
    ChatMessage,
    ModelError,
    ModelRequest,
    ModelTimeout,
    TokenUsage,
)
from metering.rate_card import load_rate_cards
from prometheus_client import REGISTRY

GPT_4O = load_rate_cards()[-1].rate_for("gpt-4o")
PROMPT = "Say hello"


def chat(**overrides: Any) -> service.ChatCall:
    fields: dict[str, Any] = {
        "user_id": "alice",
        "model": "gpt-4o",
        "messages": [ChatMessage("user", PROMPT)],
    }
    fields.update(overrides)
    return service.ChatCall(**fields)


def reconcile(**overrides: Any) -> service.ReconcileCall:
    fields: dict[str, Any] = {
        "user_id": "alice",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 500,
        "idempotency_key": "r-1",
    }
    fields.update(overrides)
    return service.ReconcileCall(**fields)


async def answered(gateway: service.Gateway, call: service.ChatCall) -> service.Answer:
    answer = await gateway.chat(call)
    assert isinstance(answer, service.Answer)
    return answer


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


WORST_CASE = pricing.hold_amount(GPT_4O, [PROMPT], 1024)


# --- a charged call ----------------------------------------------------------------------


async def test_a_chat_holds_the_worst_case_then_captures_the_actual_price(parts: Any) -> None:
    answer = await answered(parts.gateway, chat())

    assert answer.status == 200
    assert parts.ledger.kinds() == ["hold", "capture"]
    user, amount, key, ttl = parts.ledger.calls[0][1]
    assert (user, amount, ttl) == ("alice", WORST_CASE, 120)
    assert key.startswith("chat:alice:")
    [capture] = parts.ledger.captured()
    assert capture.amount_millicredits == 50_000  # 1,000 in + 500 out on gpt-4o
    assert (capture.model, capture.input_tokens, capture.output_tokens) == ("gpt-4o", 1000, 500)
    assert capture.rate_card_version == "2026-11-01"
    assert parts.model.requests[0].max_output_tokens == 1024


async def test_the_answer_is_the_completion_with_usage_and_balance(parts: Any) -> None:
    body = (await answered(parts.gateway, chat())).body

    assert body["id"] == "chatcmpl-fake1"
    assert body["model"] == "gpt-4o"
    assert body["choices"][0]["message"]["content"] == "hello there"
    assert body["message"] == {"role": "assistant", "content": "hello there"}
    assert body["usage"] == {
        "inputTokens": 1000,
        "outputTokens": 500,
        "chargedMillicredits": 50_000,
    }
    assert body["balance"] == {
        "balanceMillicredits": 9_950_000,
        "heldMillicredits": 0,
        "availableMillicredits": 9_950_000,
        "balanceCredits": "9950.000",
        "availableCredits": "9950.000",
    }


async def test_the_usage_record_is_stored_and_published(parts: Any) -> None:
    body = (await answered(parts.gateway, chat())).body

    [record] = parts.store.records.values()
    [capture] = parts.ledger.captured()
    assert record.usage_id == capture.usage_id
    assert (record.charged_millicredits, record.cost_millicredits) == (50_000, 12_500)
    assert record.hold_id == "hold-1"
    assert record.transaction_id == "txn-1"
    assert record.response_body == body
    [event] = parts.store.published
    assert event.mode == usage_pb2.BILLING_MODE_CHARGED
    assert (event.usage_id, event.user_id, event.model) == (capture.usage_id, "alice", "gpt-4o")
    assert (event.input_tokens, event.output_tokens) == (1000, 500)
    assert (event.charged_millicredits, event.cost_millicredits) == (50_000, 12_500)
    assert event.rate_card_version == "2026-11-01"
    assert event.hold_id == "hold-1"
    assert event.idempotency_key == record.idempotency_key
    assert event.provider_request_id == "chatcmpl-fake1"
    assert event.meta.producer == "metering"


async def test_metrics_count_the_call_tokens_and_credits(parts: Any) -> None:
    calls = counter("openai_calls_total", model="gpt-4o", outcome="ok")
    tokens_in = counter("openai_tokens_in_total", model="gpt-4o")
    tokens_out = counter("openai_tokens_out_total", model="gpt-4o")
    credits = counter("billing_credits_deducted_total", model="gpt-4o")

    await parts.gateway.chat(chat())

    assert counter("openai_calls_total", model="gpt-4o", outcome="ok") == calls + 1
    assert counter("openai_tokens_in_total", model="gpt-4o") == tokens_in + 1000
    assert counter("openai_tokens_out_total", model="gpt-4o") == tokens_out + 500
    assert counter("billing_credits_deducted_total", model="gpt-4o") == credits + 50


async def test_max_tokens_sizes_the_hold_and_bounds_the_model(parts: Any) -> None:
    await parts.gateway.chat(chat(max_tokens=200))

    assert parts.ledger.calls[0][1][1] == pricing.hold_amount(GPT_4O, [PROMPT], 200)
    assert parts.model.requests[0].max_output_tokens == 200


async def test_a_call_beating_the_estimate_charges_what_is_available(
    make_parts: Callable[..., Any],
) -> None:
    parts = make_parts({"alice": WORST_CASE + 1000})
    parts.model.usage = TokenUsage(100_000, 1024)

    body = (await answered(parts.gateway, chat())).body

    priced = pricing.price(GPT_4O, 100_000, 1024).charged_millicredits
    [record] = parts.store.records.values()
    assert record.charged_millicredits == WORST_CASE + 1000
    assert record.uncollected_millicredits == priced - (WORST_CASE + 1000)
    assert body["usage"]["chargedMillicredits"] == WORST_CASE + 1000


# --- refused before the model ------------------------------------------------------------


async def test_an_unknown_model_is_422_before_any_hold(parts: Any) -> None:
    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat(model="gpt-9"))

    assert (raised.value.status, raised.value.code) == (422, "unknown_model")
    assert raised.value.extra["knownModels"][0] == "gpt-4o"
    assert parts.ledger.calls == []
    assert parts.model.requests == []


async def test_max_tokens_above_the_cap_is_422(parts: Any) -> None:
    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat(max_tokens=4097))

    assert (raised.value.status, raised.value.code) == (422, "max_tokens_too_large")
    assert raised.value.extra == {"maxTokens": 4096}
    assert parts.ledger.calls == []


async def test_a_foreign_return_to_is_422(parts: Any) -> None:
    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat(return_to="https://evil.example/"))

    assert raised.value.code == "invalid_return_to"


async def test_a_user_who_cannot_pay_gets_the_contract_402(
    make_parts: Callable[..., Any],
) -> None:
    parts = make_parts({"alice": 12_500})
    before = counter("billing_insufficient_credits_total")

    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat(return_to="/chat?tab=2"))

    assert raised.value.status == 402
    assert raised.value.body() == {
        "error": "insufficient_credits",
        "message": f"this request needs up to {credits_text(WORST_CASE)} credits;"
        " 12.500 are available",
        "requiredCredits": credits_text(WORST_CASE),
        "currentCredits": "12.500",
        "requiredMillicredits": WORST_CASE,
        "currentMillicredits": 12_500,
        "returnTo": "/credits?returnTo=%2Fchat%3Ftab%3D2",
    }
    assert parts.model.requests == []
    assert counter("billing_insufficient_credits_total") == before + 1


async def test_the_402_returns_to_root_by_default(make_parts: Callable[..., Any]) -> None:
    parts = make_parts({"alice": 0})

    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat())

    assert raised.value.extra["returnTo"] == "/credits?returnTo=%2F"


async def test_a_ledger_outage_at_the_hold_is_503_and_frees_the_key(parts: Any) -> None:
    parts.ledger.fail_holds = True

    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat(idempotency_key="k1"))

    assert (raised.value.status, raised.value.code) == (503, "ledger_unavailable")
    assert parts.model.requests == []
    assert parts.store.claims[("alice", "chat:alice:k1")].state == "released"


# --- the model fails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (ModelError("model call failed: InternalServerError 500"), 502, "model_error"),
        (ModelTimeout("model call timed out"), 504, "model_timeout"),
    ],
)
async def test_a_model_failure_releases_the_hold_and_charges_nothing(
    parts: Any, failure: ModelError, status: int, code: str
) -> None:
    parts.model.failure = failure

    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat())

    assert (raised.value.status, raised.value.code) == (status, code)
    assert parts.ledger.kinds() == ["hold", "release"]
    assert parts.ledger.holds["hold-1"].status == "released"
    assert parts.ledger.balance("alice").available_millicredits == 10_000_000
    assert parts.store.records == {}


async def test_a_retry_after_a_model_failure_gets_a_hold_of_its_own(parts: Any) -> None:
    parts.model.failure = ModelError("boom")
    with pytest.raises(ApiError):
        await parts.gateway.chat(chat(idempotency_key="k1"))
    parts.model.failure = None

    answer = await answered(parts.gateway, chat(idempotency_key="k1"))

    assert answer.status == 200
    assert not answer.replayed
    hold_keys = [args[2] for kind, args in parts.ledger.calls if kind == "hold"]
    assert hold_keys == ["chat:alice:k1", "chat:alice:k1:2"]
    assert parts.ledger.balance("alice").balance_millicredits == 10_000_000 - 50_000


async def test_a_retry_records_the_usage_id_its_first_attempt_claimed(parts: Any) -> None:
    parts.model.failure = ModelError("boom")
    with pytest.raises(ApiError):
        await parts.gateway.chat(chat(idempotency_key="k1"))
    first = parts.store.claims[("alice", "chat:alice:k1")].usage_id
    parts.model.failure = None

    await answered(parts.gateway, chat(idempotency_key="k1"))
    await answered(parts.gateway, chat())

    records = list(parts.store.records.values())
    assert records[0].usage_id == first
    assert [uuid.UUID(r.usage_id).version for r in records] == [7, 7]
    # In creation order: the millisecond first (two ids of one millisecond may go either way).
    assert uuid.UUID(records[1].usage_id).int >> 80 >= uuid.UUID(first).int >> 80


# --- idempotency -------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_replays_and_charges_once(parts: Any) -> None:
    first = await answered(parts.gateway, chat(idempotency_key="k1"))

    again = await answered(parts.gateway, chat(idempotency_key="k1"))

    assert again.replayed
    assert again.body == first.body
    assert parts.ledger.kinds() == ["hold", "capture"]
    assert len(parts.model.requests) == 1
    assert len(parts.store.published) == 1
    assert parts.ledger.balance("alice").balance_millicredits == 10_000_000 - 50_000
    assert parts.ledger.calls[0][1][2] == "chat:alice:k1"


async def test_a_key_reused_with_another_body_is_409(parts: Any) -> None:
    await parts.gateway.chat(chat(idempotency_key="k1"))

    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat(idempotency_key="k1", max_tokens=10))

    assert (raised.value.status, raised.value.code) == (409, "idempotency_key_reused")


async def test_a_key_in_progress_is_409(parts: Any) -> None:
    request = ModelRequest("gpt-4o", (ChatMessage("user", PROMPT),), 1024)
    hashed = service.chat_hash(request, False)
    await parts.store.claim("alice", "chat:alice:k1", hashed, (str(uuid.uuid4()), None))

    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(chat(idempotency_key="k1"))

    assert (raised.value.status, raised.value.code) == (409, "idempotency_key_in_progress")
    assert parts.ledger.calls == []


async def test_keys_are_per_user(make_parts: Callable[..., Any]) -> None:
    parts = make_parts({"alice": 10_000_000, "bob": 10_000_000})

    await parts.gateway.chat(chat(idempotency_key="k1"))
    bob = await answered(parts.gateway, chat(user_id="bob", idempotency_key="k1"))

    assert not bob.replayed
    assert parts.ledger.balance("bob").balance_millicredits == 10_000_000 - 50_000


# --- reconcile ---------------------------------------------------------------------------


async def test_reconcile_holds_exactly_the_price_and_captures_it(parts: Any) -> None:
    answer = await parts.gateway.reconcile(reconcile())

    assert parts.ledger.kinds() == ["hold", "capture"]
    assert parts.ledger.calls[0][1] == ("alice", 50_000, "reconcile:r-1", 120)
    assert answer.status == 200
    assert answer.body == {
        "usageId": parts.ledger.captured()[0].usage_id,
        "userId": "alice",
        "model": "gpt-4o",
        "rateCardVersion": "2026-11-01",
        "usage": {"inputTokens": 1000, "outputTokens": 500, "chargedMillicredits": 50_000},
        "balance": {
            "balanceMillicredits": 9_950_000,
            "heldMillicredits": 0,
            "availableMillicredits": 9_950_000,
            "balanceCredits": "9950.000",
            "availableCredits": "9950.000",
        },
        "billingMode": "charged",
    }
    [event] = parts.store.published
    assert event.idempotency_key == "reconcile:r-1"
    assert event.provider_request_id == ""


async def test_reconcile_with_the_same_key_answers_the_first_body_and_charges_once(
    parts: Any,
) -> None:
    first = await parts.gateway.reconcile(reconcile())

    again = await parts.gateway.reconcile(reconcile())

    assert again.replayed
    assert again.body == first.body
    assert parts.ledger.kinds() == ["hold", "capture"]
    assert parts.ledger.balance("alice").balance_millicredits == 9_950_000


async def test_reconcile_with_the_same_key_and_other_usage_is_409(parts: Any) -> None:
    await parts.gateway.reconcile(reconcile())

    with pytest.raises(ApiError) as raised:
        await parts.gateway.reconcile(reconcile(output_tokens=501))

    assert raised.value.code == "idempotency_key_reused"


async def test_reconcile_for_a_user_who_cannot_pay_is_402(make_parts: Callable[..., Any]) -> None:
    parts = make_parts({"alice": 49_999})

    with pytest.raises(ApiError) as raised:
        await parts.gateway.reconcile(reconcile())

    assert raised.value.status == 402
    assert raised.value.extra["requiredMillicredits"] == 50_000
    assert raised.value.extra["currentCredits"] == "49.999"
    assert raised.value.extra["returnTo"] == "/credits?returnTo=%2F"
    assert parts.store.claims[("alice", "reconcile:r-1")].state == "released"


async def test_reconcile_of_no_tokens_is_422(parts: Any) -> None:
    with pytest.raises(ApiError) as raised:
        await parts.gateway.reconcile(reconcile(input_tokens=0, output_tokens=0))

    assert raised.value.code == "empty_usage"


# --- usage totals ------------------------------------------------------------------------


async def test_usage_totals_sum_per_model(make_parts: Callable[..., Any]) -> None:
    parts = make_parts({"alice": 10_000_000, "bob": 10_000_000})
    await parts.gateway.chat(chat())
    await parts.gateway.chat(chat())
    await parts.gateway.reconcile(reconcile(model="gpt-4o-mini", input_tokens=100))
    await parts.gateway.chat(chat(user_id="bob"))

    report = await service.usage_report(parts.store, "alice", date(2026, 11, 1), date(2026, 11, 21))

    mini = pricing.price(load_rate_cards()[-1].rate_for("gpt-4o-mini"), 100, 500)
    assert report == {
        "from": "2026-11-01",
        "to": "2026-11-21",
        "models": [
            {
                "model": "gpt-4o",
                "calls": 2,
                "inputTokens": 2000,
                "outputTokens": 1000,
                "chargedMillicredits": 100_000,
            },
            {
                "model": "gpt-4o-mini",
                "calls": 1,
                "inputTokens": 100,
                "outputTokens": 500,
                "chargedMillicredits": mini.charged_millicredits,
            },
        ],
        "totalChargedMillicredits": 100_000 + mini.charged_millicredits,
    }


async def test_usage_totals_cover_whole_utc_days(parts: Any) -> None:
    await service.usage_report(parts.store, "alice", date(2026, 11, 1), date(2026, 11, 21))

    start, end = parts.store.window
    assert (start.isoformat(), end.isoformat()) == (
        "2026-11-01T00:00:00+00:00",
        "2026-11-22T00:00:00+00:00",
    )


def test_the_default_window_is_the_last_30_days() -> None:
    today = date(2026, 11, 21)

    assert service.usage_window(None, None, today) == (date(2026, 10, 23), today)
    assert service.usage_window(date(2026, 1, 1), None, today) == (date(2026, 1, 1), today)
    with pytest.raises(ApiError, match="from must not be after to"):
        service.usage_window(date(2026, 11, 2), date(2026, 11, 1), today)
