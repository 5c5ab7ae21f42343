"""The model provider as a port, and its implementation on the OpenAI chat completions API.

The client speaks the HTTP API directly (any OpenAI-compatible base URL) instead of through
the ``openai`` SDK: the gateway hands the provider's JSON back as it came and reads only its
usage, so building the SDK's typed models for every answer and chunk was work for nothing
(about a third of metering's CPU per call, measured by ``bench/gateway_overhead.py``).
It runs on aiohttp, whose request costs about a fifth of httpx's in client CPU (about 0.1
against 0.5 ms per completion on the 2-core machine), on one connection pool per process.
Each request carries the trace context and correlation id in a client span of its own.
It never retries: a retried call could be billed to us twice by the provider, and the
gateway's hold would not cover a second answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from billing_platform.http_client import client_span, propagation_headers
from pydantic import SecretStr

# Streams hold a connection each for as long as the model writes.
MAX_CONNECTIONS = 1000
# A stream's line longer than this is refused rather than buffered without end.
MAX_SSE_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ModelRequest:
    model: str
    messages: Sequence[ChatMessage]
    max_output_tokens: int


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Completion:
    """A whole answer: the provider's JSON fields as they came, and its usage."""

    id: str
    fields: dict[str, Any]
    usage: TokenUsage


@dataclass(frozen=True)
class Chunk:
    """One streamed chunk's JSON fields; the final one carries ``usage``. ``raw`` is its
    JSON text as the provider sent it (one line), when there is one to pass on unchanged."""

    id: str
    fields: dict[str, Any]
    usage: TokenUsage | None
    raw: str | None = None


# The chunks of a stream that arrived together (one read of the socket): the relay writes
# them to the client at once, rather than one write and one syscall per chunk.
Chunks = list[Chunk]


class ModelError(Exception):
    """The provider failed the call or broke the stream; nothing is charged for it."""


class ModelTimeout(ModelError):
    """The provider did not answer in time."""


class ModelClient(Protocol):
    async def complete(self, request: ModelRequest) -> Completion: ...

    def stream(self, request: ModelRequest) -> AsyncGenerator[Chunks, None]: ...


class OpenAIModelClient:
    """``ModelClient`` on ``POST {base_url}/chat/completions`` (plain JSON, or SSE streams).

    ``timeout_s`` bounds connecting and each wait for the provider's next bytes, not a
    whole stream, which may last as long as the model writes."""

    def __init__(self, base_url: str, api_key: SecretStr, timeout_s: float) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "authorization": f"Bearer {api_key.get_secret_value()}",
            "content-type": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def complete(self, request: ModelRequest) -> Completion:
        async with self._post(_params(request)) as answer:
            raw = await answer.read()
        return _completion(_object(raw))

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Chunks, None]:
        """The chunks in the groups they arrived in, until ``[DONE]`` or the end."""
        body = {**_params(request), "stream": True, "stream_options": {"include_usage": True}}
        async with self._post(body) as answer:
            lines = SseLines()
            async for data in answer.content.iter_any():
                chunks = lines.feed(data)
                if chunks:
                    yield chunks
                if lines.done:
                    return
            if chunks := lines.feed(b"\n"):  # a last line the provider left unterminated
                yield chunks

    @asynccontextmanager
    async def _post(self, body: dict[str, Any]) -> AsyncIterator[aiohttp.ClientResponse]:
        """The provider's answer (2xx); its failures as ModelError, errors of the request and
        of reading the body alike."""
        try:
            answer = await self._send(body)
            async with answer:
                _raise_for_status(answer.status)
                yield answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc) from exc

    async def _send(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """The request, in a client span that ends with the answer's status line."""
        if self._session is None:
            raise ModelError("model call failed: the client is not started")
        with client_span("POST model", self._url) as answered:
            headers = {**self._headers, **propagation_headers()}
            data = json.dumps(body).encode()
            answer = await self._session.post(self._url, data=data, headers=headers)
            answered(answer.status)
            return answer


def _params(request: ModelRequest) -> dict[str, Any]:
    return {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        # Bounds every completion token, reasoning included (o-series models refuse the
        # older `max_tokens`), so the hold's output allowance is the true worst case.
        "max_completion_tokens": request.max_output_tokens,
    }


class SseLines:
    """Server-Sent Events bytes, fed as they come, to chunks (``data:`` lines) until the
    ``[DONE]`` line; comments, blank lines and other fields are passed over."""

    def __init__(self) -> None:
        self._partial = b""
        self.done = False

    def feed(self, data: bytes) -> Chunks:
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_SSE_LINE_BYTES:
            raise ModelError("the model stream sent a line over 1 MiB")
        chunks: Chunks = []
        for line in lines:
            payload = _sse_data(line.decode("utf-8", errors="replace"))
            if payload == "[DONE]":
                self.done = True
                break
            if payload:
                chunks.append(_chunk(_object(payload), payload))
        return chunks


def _sse_data(line: str) -> str:
    """The payload of an SSE ``data:`` line; "" for comments, blank and other fields."""
    return line[5:].strip() if line.startswith("data:") else ""


def _raise_for_status(status: int) -> None:
    if status >= 400:
        raise ModelError(f"model call failed: HTTP {status}")


def _object(raw: bytes | str) -> dict[str, Any]:
    try:
        fields = json.loads(raw)
    except ValueError as exc:
        raise ModelError("the model answered with something other than JSON") from exc
    if not isinstance(fields, dict):
        raise ModelError("the model answered with something other than a JSON object")
    return fields


def _failure(exc: aiohttp.ClientError | TimeoutError) -> ModelError:
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return ModelTimeout(f"model call timed out: {type(exc).__name__}")
    return ModelError(f"model call failed: {type(exc).__name__}")


def _usage(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    try:
        return TokenUsage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
    except (KeyError, TypeError, ValueError):
        return None


def _completion(fields: dict[str, Any]) -> Completion:
    usage = _usage(fields.get("usage"))
    if usage is None:
        raise ModelError("the model answered without usage: it cannot be priced")
    return Completion(str(fields.get("id", "")), fields, usage)


def _chunk(fields: dict[str, Any], raw: str) -> Chunk:
    return Chunk(str(fields.get("id", "")), fields, _usage(fields.get("usage")), raw)
