"""The provider's cost per model (``metering_model_cost_millicredits_total``): every call
recorded adds its cost once, whatever its billing mode, reconciled usage included."""

from __future__ import annotations

from typing import Any

import pytest
from metering import service
from metering.model_client import ChatMessage, ModelError
from metering.records import CHARGED, SHADOW, UNBILLED
from prometheus_client import REGISTRY

COST = "metering_model_cost_millicredits_total"
# gpt-4o on the rate card in force: 1000 prompt tokens x $5/1M + 500 completion tokens x $15/1M.
CALL_COST = 12_500


def cost(model: str = "gpt-4o") -> float:
    return REGISTRY.get_sample_value(COST, {"model": model}) or 0.0


def chat(**overrides: Any) -> service.ChatCall:
    fields: dict[str, Any] = {
        "user_id": "alice",
        "model": "gpt-4o",
        "messages": [ChatMessage("user", "Say hello")],
    }
    fields.update(overrides)
    return service.ChatCall(**fields)


@pytest.mark.parametrize(
    ("flags", "mode"),
    [
        ({}, CHARGED),
        ({"shadowBilling": True}, SHADOW),
        ({"chargingEnabled": False}, UNBILLED),
    ],
)
async def test_every_billing_mode_adds_the_calls_cost(
    parts: Any, flags: dict[str, Any], mode: str
) -> None:
    parts.flags.rows.update(flags)
    before = cost()

    await parts.gateway.chat(chat())

    [record] = parts.store.records.values()
    assert (record.mode, record.cost_millicredits) == (mode, CALL_COST)
    assert cost() == before + CALL_COST


async def test_the_cost_is_the_providers_not_the_price(parts: Any) -> None:
    before = cost()

    await parts.gateway.chat(chat())

    [record] = parts.store.records.values()
    assert record.charged_millicredits == 4 * CALL_COST
    assert cost() - before == record.cost_millicredits == CALL_COST


async def test_reconciled_usage_adds_its_cost(parts: Any) -> None:
    before = cost()

    await parts.gateway.reconcile(service.ReconcileCall("alice", "gpt-4o", 2000, 1000, "r-1"))

    assert cost() == before + 2 * CALL_COST


async def test_a_replayed_call_adds_nothing(parts: Any) -> None:
    await parts.gateway.chat(chat(idempotency_key="k1"))
    before = cost()

    await parts.gateway.chat(chat(idempotency_key="k1"))

    assert cost() == before


async def test_a_failed_model_call_adds_nothing(parts: Any) -> None:
    parts.model.failure = ModelError("boom")
    before = cost()

    with pytest.raises(Exception, match="model call failed"):
        await parts.gateway.chat(chat())

    assert cost() == before
