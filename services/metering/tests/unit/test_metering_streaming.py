"""Streamed chats: charged from the final usage chunk, released when the stream breaks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from billing_platform.errors import ApiError
from metering import service
from metering.model_client import ChatMessage, Chunk, ModelError
from metering.streaming import chunk_events


def streamed_chat(**overrides: Any) -> service.ChatCall:
    fields: dict[str, Any] = {
        "user_id": "alice",
        "model": "gpt-4o",
        "messages": [ChatMessage("user", "Tell me a story")],
        "stream": True,
    }
    fields.update(overrides)
    return service.ChatCall(**fields)


async def opened(parts: Any, **overrides: Any) -> service.StreamAnswer:
    answer = await parts.gateway.chat(streamed_chat(**overrides))
    assert isinstance(answer, service.StreamAnswer)
    return answer


async def read_all(answer: service.StreamAnswer) -> list[str]:
    try:
        return [event async for event in answer.events]
    finally:
        await answer.close()


def data_of(event: str) -> Any:
    line = next(line for line in event.splitlines() if line.startswith("data: "))
    return json.loads(line.removeprefix("data: "))


async def test_chunks_are_forwarded_then_billing_then_done(parts: Any) -> None:
    events = await read_all(await opened(parts))

    assert [data_of(e)["choices"][0]["delta"]["content"] for e in events[:3]] == [
        "w0 ",
        "w1 ",
        "w2 ",
    ]
    assert data_of(events[3])["usage"] == {"prompt_tokens": 1000}  # the model's own chunk
    final = events[4]
    assert final.startswith("event: billing\ndata: ")
    assert final.endswith("\n\ndata: [DONE]\n\n")
    assert data_of(final) == {
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
    assert all(e.endswith("\n\n") for e in events)


async def test_chunks_that_arrived_together_leave_in_one_write(parts: Any) -> None:
    parts.model.group = 2

    events = await read_all(await opened(parts))

    assert len(events) == 3
    datas = [[json.loads(line[6:]) for line in e.splitlines() if line] for e in events[:2]]
    assert [[d["choices"][0]["delta"]["content"] for d in datas[0]], datas[1][1]["usage"]] == [
        ["w0 ", "w1 "],
        {"prompt_tokens": 1000},
    ]
    assert events[2].startswith("event: billing\n")


def test_a_chunk_goes_out_as_the_provider_wrote_it() -> None:
    raw = '{"id": "c1",  "choices": []}'
    chunks = [Chunk("c1", json.loads(raw), None, raw), Chunk("c1", {"id": "c1"}, None)]

    assert chunk_events(chunks) == f'data: {raw}\n\ndata: {{"id":"c1"}}\n\n'


async def test_the_charge_comes_from_the_final_usage_chunk(parts: Any) -> None:
    await read_all(await opened(parts))

    assert parts.ledger.kinds() == ["hold", "capture"]
    [capture] = parts.ledger.captured()
    assert (capture.input_tokens, capture.output_tokens) == (1000, 500)
    assert capture.amount_millicredits == 50_000
    [record] = parts.store.records.values()
    assert record.provider_request_id == "chatcmpl-s1"
    assert len(parts.store.published) == 1


async def test_the_hold_is_made_before_the_first_chunk_is_sent(parts: Any) -> None:
    answer = await opened(parts)

    assert parts.ledger.kinds() == ["hold"]
    first = await anext(answer.events)
    assert data_of(first)["choices"][0]["delta"]["content"] == "w0 "
    await answer.close()


async def test_a_broken_stream_releases_the_hold_and_charges_nothing(parts: Any) -> None:
    parts.model.break_after = 1

    events = await read_all(await opened(parts))

    assert len(events) == 2
    assert events[-1].startswith("event: error\n")
    assert data_of(events[-1])["error"] == "model_error"
    assert "[DONE]" not in events[-1]
    assert parts.ledger.kinds() == ["hold", "release"]
    assert parts.store.records == {}


async def test_a_stream_without_a_usage_chunk_charges_nothing(parts: Any) -> None:
    parts.model.send_usage = False

    events = await read_all(await opened(parts))

    assert data_of(events[-1])["error"] == "model_error"
    assert parts.ledger.kinds() == ["hold", "release"]
    assert parts.ledger.balance("alice").balance_millicredits == 10_000_000


async def test_a_model_failing_before_its_first_chunk_is_a_502(parts: Any) -> None:
    parts.model.failure = ModelError("model call failed: APIConnectionError")

    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(streamed_chat())

    assert (raised.value.status, raised.value.code) == (502, "model_error")
    assert parts.ledger.kinds() == ["hold", "release"]


async def test_a_client_leaving_early_is_charged_for_what_the_model_produced(parts: Any) -> None:
    parts.model.words = 50
    answer = await opened(parts)
    await anext(answer.events)

    await answer.close()  # the response ends after one event

    assert parts.model.streamed == list(range(50))  # the rest was read, unseen
    assert parts.ledger.kinds() == ["hold", "capture"]
    assert parts.ledger.captured()[0].amount_millicredits == 50_000
    assert len(parts.store.records) == 1


async def test_a_stream_never_sent_is_still_settled(parts: Any) -> None:
    await (await opened(parts)).close()

    assert parts.ledger.kinds() == ["hold", "capture"]


async def test_closing_twice_settles_once(parts: Any) -> None:
    answer = await opened(parts)
    await read_all(answer)

    await answer.close()

    assert parts.ledger.kinds() == ["hold", "capture"]


async def test_a_replayed_stream_key_answers_the_stored_billing_as_json(parts: Any) -> None:
    await read_all(await opened(parts, idempotency_key="s1"))

    again = await parts.gateway.chat(streamed_chat(idempotency_key="s1"))

    assert isinstance(again, service.Answer)
    assert again.replayed
    assert again.body["id"] == "chatcmpl-s1"
    assert again.body["usage"]["chargedMillicredits"] == 50_000
    assert parts.ledger.kinds() == ["hold", "capture"]
