"""A streamed chat: the model's chunks relayed as Server-Sent Events, then settled once.

Chunks that arrived together from the model leave together, in one write: the first as soon
as it is in, none held back waiting for more.

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
from metering.model_client import Chunks, ModelError, TokenUsage

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"

# Charges the usage (the provider's request id given) and returns the answer's body.
Settle = Callable[[TokenUsage, str], Awaitable[dict[str, Any]]]
# Releases the hold: nothing is charged.
Abandon = Callable[[], Awaitable[None]]


def data_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def chunk_events(chunks: Chunks) -> str:
    """The chunks as ``data:`` events, each as the provider wrote it when it is known."""
    return "".join(
        f"data: {c.raw}\n\n" if c.raw is not None else data_event(c.fields) for c in chunks
    )


def named_event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\n{data_event(payload)}"


class StreamRelay:
    def __init__(
        self,
        model: str,
        first: Chunks,
        rest: AsyncGenerator[Chunks, None],
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
            chunks: Chunks | None = self._first
            while chunks is not None:
                yield chunk_events(self._seen(chunks))
                chunks = await self._next_chunks()
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

    def _seen(self, chunks: Chunks) -> Chunks:
        for chunk in chunks:
            self._provider_request_id = self._provider_request_id or chunk.id
            if chunk.usage is not None:
                self._usage = chunk.usage
        return chunks

    async def _next_chunks(self) -> Chunks | None:
        # Shielded: a client going away cancels the request at its next step instead, so
        # the model stream itself stays readable and the call can still be settled.
        chunks: Chunks | None = None
        with anyio.CancelScope(shield=True):
            chunks = await anext(self._rest, None)
        return chunks

    async def _drain(self) -> None:
        self._seen(self._first)
        try:
            while (chunks := await self._next_chunks()) is not None:
                self._seen(chunks)
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
