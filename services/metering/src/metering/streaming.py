"""A streamed chat: the model's chunks relayed as Server-Sent Events, then settled once.

The call is charged from the stream's final usage chunk. A stream that breaks before it
charges nothing (the hold is released). A client that leaves early is not a reason to
charge nothing: the model produced (and bills) the answer, so the rest of the stream is
read unseen and the call settled from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio

from metering import metrics
from metering.model_client import Chunk, ModelError, TokenUsage

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"

# Charges the usage (the provider's request id given) and returns the answer's body.
Settle = Callable[[TokenUsage, str], Awaitable[dict[str, Any]]]
# Releases the hold: nothing is charged.
Abandon = Callable[[], Awaitable[None]]


def data_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def named_event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\n{data_event(payload)}"


class StreamRelay:
    def __init__(
        self,
        model: str,
        first: Chunk,
        rest: AsyncGenerator[Chunk, None],
        settle: Settle,
        abandon: Abandon,
    ) -> None:
        self._model = model
        self._first = first
        self._rest = rest
        self._settle = settle
        self._abandon = abandon
        self._usage: TokenUsage | None = None
        self._provider_request_id = ""
        self._broken = False
        self._final: str | None = None

    async def events(self) -> AsyncGenerator[str, None]:
        """Each model chunk as it comes, then ``event: billing`` and ``[DONE]`` (or an error)."""
        try:
            chunk: Chunk | None = self._first
            while chunk is not None:
                yield data_event(self._seen(chunk).fields)
                chunk = await self._next_chunk()
        except ModelError as exc:
            self._broken = True
            log.warning("model stream broke", extra={"model": self._model, "error": str(exc)})
        yield await self._end()

    async def close(self) -> None:
        """Runs once the response is over, however it ended: settles what is not settled."""
        if self._final is not None:
            return
        with anyio.CancelScope(shield=True):
            if not self._broken:
                await self._drain()
            await self._end()

    def _seen(self, chunk: Chunk) -> Chunk:
        self._provider_request_id = self._provider_request_id or chunk.id
        if chunk.usage is not None:
            self._usage = chunk.usage
        return chunk

    async def _next_chunk(self) -> Chunk | None:
        # Shielded: a client going away cancels the request at its next step instead, so
        # the model stream itself stays readable and the call can still be settled.
        chunk: Chunk | None = None
        with anyio.CancelScope(shield=True):
            chunk = await anext(self._rest, None)
        return chunk

    async def _drain(self) -> None:
        self._seen(self._first)
        try:
            while (chunk := await self._next_chunk()) is not None:
                self._seen(chunk)
        except ModelError as exc:
            self._broken = True
            log.warning("model stream broke while draining", extra={"error": str(exc)})

    async def _end(self) -> str:
        """Settle (or, without usage, release) exactly once; the stream's last events."""
        with anyio.CancelScope(shield=True):
            if self._final is None:
                self._final = await self._outcome()
        return self._final or ""

    async def _outcome(self) -> str:
        if self._usage is None:
            metrics.OPENAI_CALLS.labels(self._model, "broken_stream").inc()
            await self._abandon()
            message = "the model stream ended before its usage; nothing was charged"
            return named_event("error", {"error": "model_error", "message": message})
        metrics.model_answered(self._model, self._usage)
        settled = await self._settle(self._usage, self._provider_request_id)
        billing = {
            "usage": settled["usage"],
            "balance": settled["balance"],
            "billingMode": settled["billingMode"],
        }
        return named_event("billing", billing) + DONE
