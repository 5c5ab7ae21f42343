"""A small OpenAI-compatible chat server for local runs and tests.

It answers ``/v1/chat/completions`` (plain and streamed) and ``/v1/models`` with the same
shapes the real API uses, including the ``usage`` block, so the gateway is exercised through
the official SDK. Token counts are deterministic: about one token per four characters of
prompt, and the completion fills ``max_tokens`` unless a directive says otherwise.

Directives in the last user message steer tests: ``[[fail]]`` answers 500,
``[[sleep=S]]`` waits S seconds first, ``[[tokens=N]]`` makes the completion N tokens long,
``[[prompt_tokens=N]]`` reports N prompt tokens (as a provider with another tokenizer would).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini")
DEFAULT_COMPLETION_TOKENS = 64
_DIRECTIVE = re.compile(r"\[\[(fail|sleep=[0-9.]+|tokens=\d+|prompt_tokens=\d+)\]\]")


class Message(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


def _text(message: Message) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = message.content or []
    return " ".join(str(p.get("text", "")) for p in parts)


def prompt_tokens(messages: list[Message]) -> int:
    # Roughly what tiktoken gives for English, plus the per-message framing tokens.
    return sum(4 + math.ceil(len(_text(m)) / 4) for m in messages) + 3


def _directives(messages: list[Message]) -> dict[str, str]:
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer(_text(messages[-1])):
        name, _, value = match.group(1).partition("=")
        found[name] = value
    return found


def _completion_tokens(req: ChatRequest, directives: dict[str, str]) -> int:
    limit = req.max_completion_tokens or req.max_tokens
    wanted = int(directives.get("tokens", limit or DEFAULT_COMPLETION_TOKENS))
    return min(wanted, limit) if limit else wanted


def _words(count: int) -> list[str]:
    return [f"tok{i % 97}" for i in range(count)]


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": None}}, status)


def create_app() -> FastAPI:
    app = FastAPI(title="devllm")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "devllm"} for m in MODELS]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> JSONResponse | StreamingResponse:
        if req.model not in MODELS:
            return _error(404, f"The model `{req.model}` does not exist", "invalid_request_error")
        directives = _directives(req.messages)
        if "sleep" in directives:
            await asyncio.sleep(float(directives["sleep"]))
        if "fail" in directives:
            return _error(500, "The server had an error processing your request.", "server_error")
        prompt = int(directives.get("prompt_tokens", prompt_tokens(req.messages)))
        usage = _usage(prompt, _completion_tokens(req, directives))
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _stream(cid, req.model, usage, include), media_type="text/event-stream"
            )
        return JSONResponse(_completion(cid, req.model, usage), headers={"x-request-id": cid})

    return app


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(cid: str, model: str, usage: dict[str, int]) -> dict[str, Any]:
    text = " ".join(_words(usage["completion_tokens"]))
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "length" if usage["completion_tokens"] else "stop",
        "logprobs": None,
    }
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
        "system_fingerprint": "devllm",
    }


async def _stream(
    cid: str, model: str, usage: dict[str, int], include_usage: bool
) -> AsyncIterator[bytes]:
    base = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "devllm",
    }
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield _sse({**base, "choices": [first]})
    for word in _words(usage["completion_tokens"]):
        delta = {"index": 0, "delta": {"content": word + " "}, "finish_reason": None}
        yield _sse({**base, "choices": [delta]})
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    if include_usage:
        yield _sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
