"""The model provider as a port, and its implementation on the OpenAI chat completions API.

The client speaks the HTTP API directly (any OpenAI-compatible base URL) instead of through
the ``openai`` SDK: the gateway hands the provider's JSON back as it came and reads only its
usage, so building the SDK's typed models for every answer and chunk was work for nothing
(about a third of metering's CPU per call, measured by ``bench/gateway_overhead.py``).
It never retries: a retried call could be billed to us twice by the provider, and the
gateway's hold would not cover a second answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from billing_platform.http_client import traced_client
from pydantic import SecretStr

# Streams hold a connection each for as long as the model writes (the SDK's own limits).
CONNECTION_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


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
    """One streamed chunk's JSON fields; the final one carries ``usage``."""

    id: str
    fields: dict[str, Any]
    usage: TokenUsage | None


class ModelError(Exception):
    """The provider failed the call or broke the stream; nothing is charged for it."""


class ModelTimeout(ModelError):
    """The provider did not answer in time."""


class ModelClient(Protocol):
    async def complete(self, request: ModelRequest) -> Completion: ...

    def stream(self, request: ModelRequest) -> AsyncGenerator[Chunk, None]: ...


class OpenAIModelClient:
    """``ModelClient`` on ``POST {base_url}/chat/completions`` (plain JSON, or SSE streams)."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        timeout_s: float,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = traced_client(
            transport=transport or httpx.AsyncHTTPTransport(limits=CONNECTION_LIMITS),
            base_url=base_url.rstrip("/") + "/",
            timeout=timeout_s,
            headers={"authorization": f"Bearer {api_key.get_secret_value()}"},
            follow_redirects=True,
        )

    async def start(self) -> None:
        """Nothing to open: connections are made on first use."""

    async def stop(self) -> None:
        await self._client.aclose()

    async def complete(self, request: ModelRequest) -> Completion:
        try:
            answer = await self._client.post("chat/completions", json=_params(request))
        except httpx.HTTPError as exc:
            raise _failure(exc) from exc
        _raise_for_status(answer.status_code)
        return _completion(_object(answer.content))

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Chunk, None]:
        body = {**_params(request), "stream": True, "stream_options": {"include_usage": True}}
        try:
            async with self._client.stream("POST", "chat/completions", json=body) as answer:
                _raise_for_status(answer.status_code)
                async for line in answer.aiter_lines():
                    data = _sse_data(line)
                    if data == "[DONE]":
                        return
                    if data:
                        yield _chunk(_object(data))
        except httpx.HTTPError as exc:
            # Errors of the request and of reading the body alike: the stream is broken.
            raise _failure(exc) from exc


def _params(request: ModelRequest) -> dict[str, Any]:
    return {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        # Bounds every completion token, reasoning included (o-series models refuse the
        # older `max_tokens`), so the hold's output allowance is the true worst case.
        "max_completion_tokens": request.max_output_tokens,
    }


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


def _failure(exc: httpx.HTTPError) -> ModelError:
    if isinstance(exc, httpx.TimeoutException):
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


def _chunk(fields: dict[str, Any]) -> Chunk:
    return Chunk(str(fields.get("id", "")), fields, _usage(fields.get("usage")))
