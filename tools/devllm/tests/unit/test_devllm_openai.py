"""devllm driven through the official OpenAI SDK over an in-process ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from devllm.app import create_app

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Summarise the ledger design in one paragraph, please."},
]


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://devllm") as http:
        yield openai.AsyncOpenAI(
            base_url="http://devllm/v1", api_key="x", http_client=http, max_retries=0
        )


async def test_completion_reports_usage_filling_max_tokens(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20
    )

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens == 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.role == "assistant"
    assert len((completion.choices[0].message.content or "").split()) == 20
    assert completion.choices[0].finish_reason == "length"


async def test_max_completion_tokens_is_honoured(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_completion_tokens=7
    )

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7


async def test_tokens_directive_sets_completion_length(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "hello [[tokens=5]]"}]

    completion = await client.chat.completions.create(
        model="gpt-4o", messages=messages, max_tokens=20
    )

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


async def test_tokens_directive_is_capped_by_max_tokens(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "hello [[tokens=50]]"}]

    completion = await client.chat.completions.create(
        model="gpt-4o", messages=messages, max_tokens=8
    )

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8


async def test_fail_directive_raises_internal_server_error(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "please [[fail]]"}]

    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="gpt-4o", messages=messages)

    assert info.value.status_code == 500


async def test_unknown_model_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-99", messages=MESSAGES)

    assert info.value.status_code == 404
    assert "gpt-99" in str(info.value)


async def test_models_are_listed(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]

    assert "gpt-4o-mini" in models


async def test_stream_ends_with_usage_equal_to_the_non_streamed_usage(
    client: openai.AsyncOpenAI,
) -> None:
    plain = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=12
    )
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )

    chunks = [chunk async for chunk in stream]

    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 12


async def test_stream_without_include_usage_has_no_usage_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=3, stream=True
    )

    chunks = [chunk async for chunk in stream]

    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_prompt_tokens_are_deterministic_and_grow_with_the_prompt(
    client: openai.AsyncOpenAI,
) -> None:
    async def prompt_tokens(messages: list[Any]) -> int:
        completion = await client.chat.completions.create(
            model="gpt-4o", messages=messages, max_tokens=1
        )
        assert completion.usage is not None
        return completion.usage.prompt_tokens

    first, second = await prompt_tokens(MESSAGES), await prompt_tokens(MESSAGES)
    longer = await prompt_tokens([*MESSAGES, {"role": "user", "content": "x" * 400}])

    assert first == second
    assert longer > first


async def test_prompt_tokens_directive_sets_the_reported_prompt(
    client: openai.AsyncOpenAI,
) -> None:
    answer = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "count me as 1234 [[prompt_tokens=1234]]"}],
        max_tokens=5,
    )
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1234, 5)
