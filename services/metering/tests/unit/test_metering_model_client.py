"""The model client against devllm and against scripted providers, each served on a port
of 127.0.0.1 in the test's own event loop, and its error mapping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from billing_platform import context, tracing
from devllm.app import create_app as devllm_app
from metering.model_client import (
    MAX_SSE_LINE_BYTES,
    ChatMessage,
    ModelError,
    ModelRequest,
    ModelTimeout,
    OpenAIModelClient,
    SseLines,
)
from opentelemetry import trace
from pydantic import SecretStr

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def started(base_url: str, timeout_s: float = 5.0) -> AsyncIterator[OpenAIModelClient]:
    client = OpenAIModelClient(base_url, SecretStr("sk"), timeout_s)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


@pytest.fixture
async def devllm() -> AsyncIterator[OpenAIModelClient]:
    config = uvicorn.Config(devllm_app(), host="127.0.0.1", port=0, log_config=None, ws="none")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with started(f"http://127.0.0.1:{port}/v1") as client:
            yield client
    finally:
        server.should_exit = True
        await serving


@asynccontextmanager
async def scripted(handler: Handler, timeout_s: float = 5.0) -> AsyncIterator[OpenAIModelClient]:
    """A provider answering ``POST /v1/chat/completions`` with ``handler``."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with started(str(server.make_url("/v1")), timeout_s) as client:
            yield client
    finally:
        await server.close()


def ask(text: str, max_tokens: int = 16, model: str = "gpt-4o") -> ModelRequest:
    return ModelRequest(model, (ChatMessage("user", text),), max_tokens)


async def test_a_completion_carries_the_provider_fields_and_usage(
    devllm: OpenAIModelClient,
) -> None:
    completion = await devllm.complete(ask("Say hello [[tokens=5]]"))

    assert completion.id.startswith("chatcmpl-")
    assert completion.fields["model"] == "gpt-4o"
    assert completion.fields["choices"][0]["message"]["role"] == "assistant"
    assert completion.usage.output_tokens == 5
    assert completion.usage.input_tokens > 0


async def test_max_tokens_bounds_the_completion(devllm: OpenAIModelClient) -> None:
    completion = await devllm.complete(ask("long please [[tokens=500]]", 7))

    assert completion.usage.output_tokens == 7


async def test_a_stream_ends_with_a_usage_chunk(devllm: OpenAIModelClient) -> None:
    chunks = [c async for batch in devllm.stream(ask("stream [[tokens=4]]")) for c in batch]

    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens == 4
    assert chunks[-1].fields["choices"] == []
    assert {c.id for c in chunks} == {chunks[0].id}


async def test_calls_reuse_the_pooled_connection(devllm: OpenAIModelClient) -> None:
    for _ in range(3):
        await devllm.complete(ask("again [[tokens=2]]"))
        assert [c async for c in devllm.stream(ask("and [[tokens=2]]"))]


async def test_a_provider_error_is_a_model_error(devllm: OpenAIModelClient) -> None:
    with pytest.raises(ModelError, match="HTTP 500"):
        await devllm.complete(ask("[[fail]]"))


async def test_a_provider_error_on_a_stream_is_a_model_error(devllm: OpenAIModelClient) -> None:
    chunks = devllm.stream(ask("[[fail]]"))

    with pytest.raises(ModelError, match="HTTP 500"):
        await anext(chunks)


async def test_an_unknown_model_at_the_provider_is_a_model_error(
    devllm: OpenAIModelClient,
) -> None:
    with pytest.raises(ModelError, match="HTTP 404"):
        await devllm.complete(ask("hi", model="gpt-9"))


async def test_a_client_that_was_not_started_fails_the_call() -> None:
    client = OpenAIModelClient("http://127.0.0.1:9/v1", SecretStr("sk"), 1.0)

    with pytest.raises(ModelError, match="not started"):
        await client.complete(ask("hi"))


async def test_a_provider_that_does_not_answer_in_time_is_a_model_timeout() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    async with scripted(slow, timeout_s=0.2) as client:
        with pytest.raises(ModelTimeout, match="timed out"):
            await client.complete(ask("hi"))


async def test_an_unreachable_provider_is_a_model_error() -> None:
    async with started("http://127.0.0.1:9/v1", 1.0) as client:
        with pytest.raises(ModelError, match="model call failed"):
            await client.complete(ask("hi"))


async def test_an_answer_without_usage_cannot_be_priced() -> None:
    async def no_usage(request: web.Request) -> web.Response:
        message = {"role": "assistant", "content": "x"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = {"id": "c1", "object": "chat.completion", "created": 0, "choices": [choice]}
        return web.json_response(body)

    async with scripted(no_usage) as client:
        with pytest.raises(ModelError, match="without usage"):
            await client.complete(ask("hi"))


async def test_the_request_bounds_output_and_asks_for_stream_usage() -> None:
    seen: list[dict[str, object]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"error": {"message": "no"}}, status=500)

    async with scripted(record) as client:
        with pytest.raises(ModelError):
            [c async for c in client.stream(ask("hi", 33))]

    assert seen[0]["max_completion_tokens"] == 33
    assert seen[0]["stream"] is True
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert seen[0]["messages"] == [{"role": "user", "content": "hi"}]


async def test_a_stream_cut_off_midway_is_a_model_error() -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await answer.prepare(request)
        first = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "x"}}]}
        await answer.write(f"data: {json.dumps(first)}\n\n".encode())
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()  # as a dropped connection does, mid-body
        return answer

    async with scripted(cut) as client:
        chunks = client.stream(ask("hi"))
        assert (await anext(chunks))[0].fields["choices"][0]["delta"] == {"content": "x"}
        with pytest.raises(ModelError, match="model call failed"):
            await anext(chunks)


async def test_an_answer_that_is_not_json_is_a_model_error() -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy page</html>", content_type="text/html")

    async with scripted(html) as client:
        with pytest.raises(ModelError, match="other than JSON"):
            await client.complete(ask("hi"))


async def test_the_key_trace_and_correlation_go_in_the_headers() -> None:
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"error": {"message": "no"}}, status=500)

    tracing.configure_tracing("test")
    context.correlation_id_var.set("corr-model")
    async with scripted(record) as client:
        with trace.get_tracer("test").start_as_current_span("parent"):
            parent_trace = tracing.current_trace_id()
            with pytest.raises(ModelError):
                await client.complete(ask("hi"))

    assert seen[0].headers["authorization"] == "Bearer sk"
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].headers["x-correlation-id"] == "corr-model"
    assert seen[0].headers["traceparent"].split("-")[1] == parent_trace
    assert seen[0].path == "/v1/chat/completions"


async def test_chunks_that_arrive_together_come_as_one_group() -> None:
    async def burst(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await answer.prepare(request)
        first = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "a"}}]}
        await answer.write(f"data: {json.dumps(first)}\n\n".encode())
        await asyncio.sleep(0.05)
        rest = [{"id": "c1", "choices": [{"index": 0, "delta": {"content": w}}]} for w in "bcd"]
        usage = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
        events = [f"data: {json.dumps(c)}\n\n" for c in [*rest, usage]]
        await answer.write(("".join(events) + "data: [DONE]\n\n").encode())
        return answer

    async with scripted(burst) as client:
        groups = [[c.fields["choices"] for c in g] async for g in client.stream(ask("hi"))]

    deltas = [[g[0]["delta"]["content"] if g else "usage" for g in group] for group in groups]
    assert deltas == [["a"], ["b", "c", "d", "usage"]]


def test_sse_lines_split_anywhere_keep_the_provider_text() -> None:
    text = 'data: {"id":"c1","choices":[]}\r\n\r\n: keep-alive\n\ndata:{"id": "c1"}\n\n'
    lines = SseLines()

    chunks = [c for n in range(len(text)) for c in lines.feed(text[n].encode())]

    assert [c.raw for c in chunks] == ['{"id":"c1","choices":[]}', '{"id": "c1"}']
    assert [c.id for c in chunks] == ["c1", "c1"]
    assert not lines.done


def test_sse_lines_stop_at_done() -> None:
    lines = SseLines()

    chunks = lines.feed(b'data: {"id":"a"}\n\ndata: [DONE]\n\ndata: {"id":"b"}\n\n')

    assert [c.id for c in chunks] == ["a"]
    assert lines.done


def test_sse_lines_refuse_a_chunk_that_is_not_json() -> None:
    with pytest.raises(ModelError, match="other than JSON"):
        SseLines().feed(b"data: <html>\n")


def test_sse_lines_refuse_a_line_without_end() -> None:
    lines = SseLines()
    lines.feed(b"data: " + b"x" * (MAX_SSE_LINE_BYTES - 100))

    with pytest.raises(ModelError, match="over 1 MiB"):
        lines.feed(b"x" * 200)
