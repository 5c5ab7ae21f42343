"""The model client against devllm in process (no port), and its error mapping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from devllm.app import create_app as devllm_app
from metering.model_client import (
    ChatMessage,
    ModelError,
    ModelRequest,
    ModelTimeout,
    OpenAIModelClient,
)
from pydantic import SecretStr


def devllm_client() -> OpenAIModelClient:
    transport = httpx.ASGITransport(app=devllm_app())
    return OpenAIModelClient("http://devllm.test/v1", SecretStr("sk-dev"), 5.0, transport=transport)


def ask(text: str, max_tokens: int = 16, model: str = "gpt-4o") -> ModelRequest:
    return ModelRequest(model, (ChatMessage("user", text),), max_tokens)


async def test_a_completion_carries_the_provider_fields_and_usage() -> None:
    completion = await devllm_client().complete(ask("Say hello [[tokens=5]]"))

    assert completion.id.startswith("chatcmpl-")
    assert completion.fields["model"] == "gpt-4o"
    assert completion.fields["choices"][0]["message"]["role"] == "assistant"
    assert completion.usage.output_tokens == 5
    assert completion.usage.input_tokens > 0


async def test_max_tokens_bounds_the_completion() -> None:
    completion = await devllm_client().complete(ask("long please [[tokens=500]]", 7))

    assert completion.usage.output_tokens == 7


async def test_a_stream_ends_with_a_usage_chunk() -> None:
    chunks = [c async for c in devllm_client().stream(ask("stream [[tokens=4]]"))]

    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens == 4
    assert chunks[-1].fields["choices"] == []
    assert {c.id for c in chunks} == {chunks[0].id}


async def test_a_provider_error_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="HTTP 500"):
        await devllm_client().complete(ask("[[fail]]"))


async def test_a_provider_error_on_a_stream_is_a_model_error() -> None:
    chunks = devllm_client().stream(ask("[[fail]]"))

    with pytest.raises(ModelError, match="HTTP 500"):
        await anext(chunks)


async def test_an_unknown_model_at_the_provider_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="HTTP 404"):
        await devllm_client().complete(ask("hi", model="gpt-9"))


def _scripted(handler: httpx.MockTransport) -> OpenAIModelClient:
    return OpenAIModelClient("http://model.test/v1", SecretStr("sk"), 5.0, transport=handler)


async def test_a_timeout_is_a_model_timeout() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ModelTimeout):
        await _scripted(httpx.MockTransport(slow)).complete(ask("hi"))


async def test_an_answer_without_usage_cannot_be_priced() -> None:
    def no_usage(request: httpx.Request) -> httpx.Response:
        body = {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x"},
                    "finish_reason": "stop",
                }
            ],
        }
        return httpx.Response(200, json=body)

    with pytest.raises(ModelError, match="without usage"):
        await _scripted(httpx.MockTransport(no_usage)).complete(ask("hi"))


async def test_the_request_bounds_output_and_asks_for_stream_usage() -> None:
    seen: list[dict[str, object]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(500, json={"error": {"message": "no"}})

    with pytest.raises(ModelError):
        [c async for c in _scripted(httpx.MockTransport(record)).stream(ask("hi", 33))]

    assert seen[0]["max_completion_tokens"] == 33
    assert seen[0]["stream"] is True
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert seen[0]["messages"] == [{"role": "user", "content": "hi"}]


async def test_a_stream_cut_off_midway_is_a_model_error() -> None:
    def cut(request: httpx.Request) -> httpx.Response:
        first = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "x"}}]}
        return httpx.Response(200, stream=_Broken(f"data: {json.dumps(first)}\n\n".encode()))

    chunks = _scripted(httpx.MockTransport(cut)).stream(ask("hi"))
    assert (await anext(chunks)).fields["choices"][0]["delta"] == {"content": "x"}
    with pytest.raises(ModelError, match="ReadError"):
        await anext(chunks)


async def test_an_answer_that_is_not_json_is_a_model_error() -> None:
    def html(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>proxy page</html>")

    with pytest.raises(ModelError, match="other than JSON"):
        await _scripted(httpx.MockTransport(html)).complete(ask("hi"))


async def test_the_api_key_goes_in_the_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500, json={"error": {"message": "no"}})

    with pytest.raises(ModelError):
        await _scripted(httpx.MockTransport(record)).complete(ask("hi"))
    assert seen[0].headers["authorization"] == "Bearer sk"
    assert seen[0].url == httpx.URL("http://model.test/v1/chat/completions")


class _Broken(httpx.AsyncByteStream):
    """A body that yields its first bytes, then fails as a dropped connection does."""

    def __init__(self, first: bytes) -> None:
        self._first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._first
        raise httpx.ReadError("connection dropped")
