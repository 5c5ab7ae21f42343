"""The model provider as a port, and its implementation on the official ``openai`` SDK.

The SDK never retries (``max_retries=0``): a retried call could be billed to us twice by the
provider, and the gateway's hold would not cover a second answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
import openai
from billing_platform.http_client import traced_client
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from pydantic import SecretStr


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
    """A whole answer: the provider's fields as the SDK returned them, and its usage."""

    id: str
    fields: dict[str, Any]
    usage: TokenUsage


@dataclass(frozen=True)
class Chunk:
    """One streamed chunk as the SDK returned it; the final one carries ``usage``."""

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
    """``ModelClient`` on ``openai.AsyncOpenAI`` (any OpenAI-compatible base URL)."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        timeout_s: float,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key.get_secret_value(),
            timeout=timeout_s,
            max_retries=0,
            # Traced like every outbound call, with the SDK's own pool size: streams hold a
            # connection each for as long as the model writes.
            http_client=traced_client(
                transport=transport
                or httpx.AsyncHTTPTransport(limits=openai.DEFAULT_CONNECTION_LIMITS),
                timeout=timeout_s,
                follow_redirects=True,
            ),
        )

    async def start(self) -> None:
        """Nothing to open: connections are made on first use."""

    async def stop(self) -> None:
        await self._client.close()

    async def complete(self, request: ModelRequest) -> Completion:
        try:
            answer = await self._client.chat.completions.create(**_params(request))
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise _failure(exc) from exc
        return _completion(answer)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Chunk, None]:
        try:
            chunks = await self._client.chat.completions.create(
                **_params(request), stream=True, stream_options={"include_usage": True}
            )
            async with chunks:
                async for chunk in chunks:
                    yield _chunk(chunk)
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            # The SDK wraps errors of the request, not of reading the body: both end here.
            raise _failure(exc) from exc


def _params(request: ModelRequest) -> dict[str, Any]:
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    return {
        "model": request.model,
        "messages": cast(list[ChatCompletionMessageParam], messages),
        # Bounds every completion token, reasoning included (o-series models refuse the
        # older `max_tokens`), so the hold's output allowance is the true worst case.
        "max_completion_tokens": request.max_output_tokens,
    }


def _failure(exc: Exception) -> ModelError:
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return ModelTimeout(f"model call timed out: {type(exc).__name__}")
    status = getattr(exc, "status_code", None)
    return ModelError(f"model call failed: {type(exc).__name__}{f' {status}' if status else ''}")


def _usage(usage: Any) -> TokenUsage | None:
    if usage is None:
        return None
    return TokenUsage(int(usage.prompt_tokens), int(usage.completion_tokens))


def _completion(answer: ChatCompletion) -> Completion:
    usage = _usage(answer.usage)
    if usage is None:
        raise ModelError("the model answered without usage: it cannot be priced")
    return Completion(answer.id, answer.to_dict(mode="json"), usage)


def _chunk(chunk: ChatCompletionChunk) -> Chunk:
    return Chunk(chunk.id, chunk.to_dict(mode="json"), _usage(chunk.usage))
