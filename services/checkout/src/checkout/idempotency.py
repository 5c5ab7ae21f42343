"""The Idempotency-Key of ``POST /api/purchases``, scoped per user.

The key is claimed in its own short transaction before any work (so two concurrent
requests with one key cannot both create a purchase), and holds the answer once done.
Same key + same body -> the stored answer again; same key + other body -> 409.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from billing_platform.db import Database
from billing_platform.errors import ApiError

from checkout import repository

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
# A claim older than this that never finished (the process died mid-request) may be taken
# over by a retry with the same body. Longer than any request: a Stripe call is at most
# timeout x 3 attempts.
ABANDONED_AFTER_S = 300.0

Action = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


class Decision(StrEnum):
    NEW = "new"
    REPLAY = "replay"
    CONFLICT = "conflict"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True)
class StoredKey:
    request_hash: str
    state: str
    response_status: int | None = None
    response_body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


def request_hash(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the validated request body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def decide(stored: StoredKey | None, request_hash: str) -> Decision:
    """What to do with a request, given the key's row (None: this request just claimed it)."""
    if stored is None:
        return Decision.NEW
    if stored.request_hash != request_hash:
        return Decision.CONFLICT
    if stored.state == "done":
        return Decision.REPLAY
    return Decision.IN_PROGRESS


def check_key(key: str) -> str:
    if not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise ApiError(
            422,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
        )
    return key


class IdempotencyKeys:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def run(self, user_id: str, key: str, req_hash: str, action: Action) -> Answer:
        """Run ``action`` once per (user, key); a repeat gets the stored answer."""
        stored = await self._claim(user_id, key, req_hash)
        decision = decide(stored, req_hash)
        if decision is Decision.CONFLICT:
            raise ApiError(
                409, "idempotency_key_reused", "Idempotency-Key was used with another body"
            )
        if decision is Decision.IN_PROGRESS:
            raise ApiError(
                409, "idempotency_key_in_progress", "a request with this key is in progress"
            )
        if decision is Decision.REPLAY and stored is not None:
            return Answer(stored.response_status or 200, stored.response_body or {}, True)
        status, body = await self._perform(user_id, key, action)
        return Answer(status, body)

    async def _claim(self, user_id: str, key: str, req_hash: str) -> StoredKey | None:
        """None when this request now holds the key, else the key's row."""
        for _ in range(3):  # the row may be released between our INSERT and SELECT
            async with self._db.pool.acquire() as conn, conn.transaction():
                if await repository.claim_idempotency_key(
                    conn, user_id, key, req_hash, ABANDONED_AFTER_S
                ):
                    return None
                row = await repository.idempotency_key(conn, user_id, key)
            if row is not None:
                return StoredKey(**row)
        return StoredKey(req_hash, "in_progress")

    async def _perform(self, user_id: str, key: str, action: Action) -> tuple[int, dict[str, Any]]:
        try:
            status, body = await action()
        except ApiError as exc:
            if exc.status >= 500:
                await self._release(user_id, key)
            else:
                await self._store(user_id, key, exc.status, exc.body())
            raise
        except Exception:
            await self._release(user_id, key)
            raise
        await self._store(user_id, key, status, body)
        return status, body

    async def _store(self, user_id: str, key: str, status: int, body: dict[str, Any]) -> None:
        async with self._db.pool.acquire() as conn:
            await repository.complete_idempotency_key(conn, user_id, key, status, body)

    async def _release(self, user_id: str, key: str) -> None:
        # A 5xx (Stripe down, database error) is not an answer worth keeping: the key is
        # deleted so the client can retry with the same key. If even that fails, the claim
        # is taken over once abandoned (ABANDONED_AFTER_S).
        try:
            async with self._db.pool.acquire() as conn:
                await repository.release_idempotency_key(conn, user_id, key)
        except Exception:
            log.warning("could not release idempotency key", exc_info=True)
