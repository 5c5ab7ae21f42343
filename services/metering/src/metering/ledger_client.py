"""The ledger's hold API as a port; holds straight from the database, releases over HTTP.

A charged call's capture is not here: it is stored with its usage record, in one statement
(``usage_store``). Every call is idempotent on the ledger's side (a hold by its key, a
release by its hold), so the HTTP client retries network failures and 5xx answers a few
times before giving up with ``LedgerError``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import httpx
from billing_platform.db import HasPool
from billing_platform.http_client import traced_client
from billing_platform.outages import is_outage
from pydantic import SecretStr

from metering import repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Balance:
    balance_millicredits: int
    held_millicredits: int
    available_millicredits: int


@dataclass(frozen=True)
class Hold:
    hold_id: str
    amount_millicredits: int
    balance: Balance


class InsufficientCredits(Exception):
    """The ledger refused a hold: the user's available balance does not cover it."""

    def __init__(self, required_millicredits: int, current_millicredits: int) -> None:
        super().__init__(f"requires {required_millicredits}, has {current_millicredits}")
        self.required_millicredits = required_millicredits
        self.current_millicredits = current_millicredits


class LedgerError(Exception):
    """The ledger could not be reached, or answered something other than the contract."""


class LedgerClient(Protocol):
    async def create_hold(
        self, user_id: str, amount_millicredits: int, idempotency_key: str, ttl_s: int
    ) -> Hold: ...

    async def release(self, hold_id: str) -> Balance: ...


class DirectLedgerClient:
    """Holds in one database round trip: the ledger's ``create_hold`` function, which
    metering's role may execute (with ``capture_hold``, nothing else there); releases, on
    the rare failed call, go to ``rest`` (the HTTP API)."""

    def __init__(self, db: HasPool, ledger_schema: str, rest: LedgerClient) -> None:
        self._db = db
        self._schema = ledger_schema
        self._rest = rest

    async def create_hold(
        self, user_id: str, amount_millicredits: int, idempotency_key: str, ttl_s: int
    ) -> Hold:
        args = (user_id, amount_millicredits, idempotency_key, ttl_s)
        row = await self._call("create hold", repository.create_ledger_hold, *args)
        balance = _row_balance(row)
        if row["r_outcome"] == "insufficient":
            raise InsufficientCredits(amount_millicredits, max(0, balance.available_millicredits))
        if row["r_outcome"] == "key_reused":
            raise LedgerError("create hold: idempotency_key_reused")
        return Hold(str(row["r_hold_id"]), row["r_amount"], balance)

    async def release(self, hold_id: str) -> Balance:
        return await self._rest.release(hold_id)

    async def _call(self, what: str, statement: Any, *args: Any) -> Any:
        """One statement on metering's pool; the database away is the ledger away."""
        try:
            async with self._db.pool.acquire() as conn:
                return await statement(conn, self._schema, *args)
        except Exception as exc:
            if is_outage(exc) or isinstance(exc, asyncpg.RaiseError):
                raise LedgerError(f"{what}: {type(exc).__name__}") from exc
            raise


def _row_balance(row: Any) -> Balance:
    return Balance(row["r_balance"], row["r_held"], row["r_balance"] - row["r_held"])


class HttpLedgerClient:
    """``LedgerClient`` over HTTP, with the service token, trace context and correlation id."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.1,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = traced_client(
            transport=transport,
            base_url=base_url,
            timeout=timeout_s,
            headers={"authorization": f"Bearer {token.get_secret_value()}"},
        )
        self._attempts = attempts
        self._backoff_s = backoff_s

    async def start(self) -> None:
        """Nothing to open: connections are made on first use."""

    async def stop(self) -> None:
        await self._client.aclose()

    async def create_hold(
        self, user_id: str, amount_millicredits: int, idempotency_key: str, ttl_s: int
    ) -> Hold:
        body = {
            "userId": user_id,
            "amountMillicredits": amount_millicredits,
            "idempotencyKey": idempotency_key,
            "ttlSeconds": ttl_s,
        }
        response = await self._post("/internal/holds", body)
        if response.status_code == 402:
            refusal = _json(response)
            raise InsufficientCredits(
                _int(refusal, "requiredMillicredits"), _int(refusal, "currentMillicredits")
            )
        data = _expect(response, "create hold")
        return Hold(_str(data, "holdId"), _int(data, "amountMillicredits"), _balance(data))

    async def release(self, hold_id: str) -> Balance:
        return _balance(_expect(await self._post(f"/internal/holds/{hold_id}/release"), "release"))

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        failure = "no attempt made"
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.post(path, json=body)
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            else:
                if response.status_code < 500:
                    return response
                failure = f"HTTP {response.status_code}"
            log.warning(
                "ledger call failed", extra={"path": path, "attempt": attempt, "error": failure}
            )
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        raise LedgerError(f"POST {path}: {failure}")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise LedgerError(f"ledger answered HTTP {response.status_code} without JSON") from exc
    if not isinstance(data, dict):
        raise LedgerError(f"ledger answered HTTP {response.status_code} with a non-object")
    return data


def _expect(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code not in (200, 201):
        raise LedgerError(f"{what}: HTTP {response.status_code} {_error_code(response)}".rstrip())
    return _json(response)


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        return ""


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise LedgerError(f"ledger answer lacks {name}")
    return value


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise LedgerError(f"ledger answer lacks integer {name}")
    return value


def _balance(data: dict[str, Any]) -> Balance:
    return Balance(
        _int(data, "balanceMillicredits"),
        _int(data, "heldMillicredits"),
        _int(data, "availableMillicredits"),
    )
