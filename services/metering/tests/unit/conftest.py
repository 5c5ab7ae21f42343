"""In-memory stand-ins for metering's ports (ledger, model, store) and a token factory.

The fakes follow the contracts the real parts keep: the ledger's holds are idempotent by
key, captures by usage id, releases by hold; the store answers a claimed key as PostgreSQL
would through ``repository``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from billing_events.v1 import usage_pb2
from billing_platform.settings import InfraSettings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from metering import api, service
from metering.ledger_client import (
    Balance,
    Capture,
    Captured,
    Hold,
    InsufficientCredits,
    LedgerError,
)
from metering.main import gateway_app
from metering.model_client import (
    Chunk,
    Completion,
    ModelError,
    ModelRequest,
    TokenUsage,
)
from metering.rate_card import RateCardBook, load_rate_cards
from metering.records import ModelTotals, UsageRecord
from metering.settings import Settings
from metering.usage_store import Claimed, Taken

ISSUER, AUDIENCE = "metering-test", "billing-test"
TODAY = date(2026, 11, 21)


# --- ledger ----------------------------------------------------------------------------


@dataclass
class FakeHold:
    hold_id: str
    user_id: str
    amount: int
    key: str
    status: str = "active"


class FakeLedger:
    """Holds reserve available credit; a capture above the hold takes only what is available."""

    def __init__(self, balances: dict[str, int] | None = None) -> None:
        self.balances: dict[str, int] = dict(balances or {})
        self.holds: dict[str, FakeHold] = {}
        self.captures: dict[str, tuple[str, Capture, Captured]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail_holds = False
        self.fail_captures = False

    def held(self, user_id: str) -> int:
        return sum(
            h.amount for h in self.holds.values() if h.user_id == user_id and h.status == "active"
        )

    def balance(self, user_id: str) -> Balance:
        balance, held = self.balances.get(user_id, 0), self.held(user_id)
        return Balance(balance, held, balance - held)

    async def create_hold(
        self, user_id: str, amount_millicredits: int, idempotency_key: str, ttl_s: int
    ) -> Hold:
        self.calls.append(("hold", (user_id, amount_millicredits, idempotency_key, ttl_s)))
        if self.fail_holds:
            raise LedgerError("POST /internal/holds: ConnectError")
        hold = next(
            (h for h in self.holds.values() if (h.user_id, h.key) == (user_id, idempotency_key)),
            None,
        )
        if hold is None:
            available = self.balance(user_id).available_millicredits
            if available < amount_millicredits:
                raise InsufficientCredits(amount_millicredits, available)
            hold = FakeHold(
                f"hold-{len(self.holds) + 1}", user_id, amount_millicredits, idempotency_key
            )
            self.holds[hold.hold_id] = hold
        return Hold(hold.hold_id, hold.amount, self.balance(user_id))

    async def capture(self, hold_id: str, capture: Capture) -> Captured:
        self.calls.append(("capture", (hold_id, capture)))
        if self.fail_captures:
            raise LedgerError("capture: HTTP 503")
        if capture.usage_id in self.captures:
            return self.captures[capture.usage_id][2]
        hold = self.holds[hold_id]
        if hold.status != "active":
            raise LedgerError(f"capture: HTTP 409 hold_{hold.status}")
        captured = self._charge(hold, capture.amount_millicredits)
        self.captures[capture.usage_id] = (hold_id, capture, captured)
        return captured

    def _charge(self, hold: FakeHold, amount: int) -> Captured:
        available = self.balance(hold.user_id).available_millicredits  # beyond this hold
        hold.status = "captured"
        charged = min(amount, hold.amount + max(available, 0))
        self.balances[hold.user_id] = self.balances.get(hold.user_id, 0) - charged
        txn = f"txn-{len(self.captures) + 1}"
        return Captured(charged, amount - charged, txn, self.balance(hold.user_id))

    async def release(self, hold_id: str) -> Balance:
        self.calls.append(("release", hold_id))
        hold = self.holds[hold_id]
        if hold.status == "active":
            hold.status = "released"
        return self.balance(hold.user_id)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    def captured(self) -> list[Capture]:
        return [args[1] for kind, args in self.calls if kind == "capture"]


# --- model -----------------------------------------------------------------------------


@dataclass
class FakeModel:
    """Answers with fixed usage; ``failure`` fails the call, ``break_after`` the stream."""

    usage: TokenUsage = field(default_factory=lambda: TokenUsage(1000, 500))
    words: int = 3
    failure: ModelError | None = None
    delay_s: float = 0.0
    break_after: int | None = None
    send_usage: bool = True
    requests: list[ModelRequest] = field(default_factory=list)
    streamed: list[int] = field(default_factory=list)

    async def complete(self, request: ModelRequest) -> Completion:
        self.requests.append(request)
        await asyncio.sleep(self.delay_s)
        if self.failure is not None:
            raise self.failure
        message = {"role": "assistant", "content": "hello there"}
        fields = {
            "id": "chatcmpl-fake1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": request.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": self.usage.input_tokens},
        }
        return Completion("chatcmpl-fake1", fields, self.usage)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        await asyncio.sleep(self.delay_s)
        if self.failure is not None:
            raise self.failure
        for i in range(self.words):
            if self.break_after is not None and i >= self.break_after:
                raise ModelError("model call failed: RemoteProtocolError")
            self.streamed.append(i)
            delta = {"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}
            yield Chunk("chatcmpl-s1", {"id": "chatcmpl-s1", "choices": [delta]}, None)
        if self.send_usage:
            usage = {"prompt_tokens": self.usage.input_tokens}
            yield Chunk("chatcmpl-s1", {"choices": [], "usage": usage}, self.usage)


# --- store -----------------------------------------------------------------------------


@dataclass
class FakeClaim:
    request_hash: str
    state: str = "in_progress"
    attempt: int = 1


class FakeStore:
    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], FakeClaim] = {}
        self.records: dict[tuple[str, str], UsageRecord] = {}
        self.published: list[usage_pb2.UsageRecorded] = []

    async def claim(self, user_id: str, key: str, request_hash: str) -> Claimed | Taken:
        claim = self.claims.get((user_id, key))
        if claim is None:
            self.claims[(user_id, key)] = FakeClaim(request_hash)
            return Claimed(1)
        if claim.state == "released":
            claim.state, claim.attempt, claim.request_hash = (
                "in_progress",
                claim.attempt + 1,
                request_hash,
            )
            return Claimed(claim.attempt)
        record = self.records.get((user_id, key))
        return Taken(claim.state, claim.request_hash, record.response_body if record else None)

    async def release(self, user_id: str, key: str) -> None:
        claim = self.claims.get((user_id, key))
        if claim is not None and claim.state == "in_progress":
            claim.state = "released"

    async def record(self, record: UsageRecord) -> dict[str, Any] | None:
        earlier = self.records.get((record.user_id, record.idempotency_key))
        if earlier is not None:
            return earlier.response_body
        self.records[(record.user_id, record.idempotency_key)] = record
        self.published.append(record.event("corr-test"))
        if (record.user_id, record.idempotency_key) in self.claims:
            self.claims[(record.user_id, record.idempotency_key)].state = "done"
        return None

    async def totals(self, user_id: str, start: datetime, end: datetime) -> list[ModelTotals]:
        self.window = (start, end)
        by_model: dict[str, ModelTotals] = {}
        for r in self.records.values():
            if r.user_id != user_id:
                continue
            t = by_model.get(r.model, ModelTotals(r.model, 0, 0, 0, 0))
            by_model[r.model] = ModelTotals(
                r.model,
                t.calls + 1,
                t.input_tokens + r.input_tokens,
                t.output_tokens + r.output_tokens,
                t.charged_millicredits + r.charged_millicredits,
            )
        return [by_model[m] for m in sorted(by_model)]


# --- the gateway and the app -----------------------------------------------------------


LIMITS = service.Limits(hold_ttl_s=120, default_max_output_tokens=1024, max_output_tokens=4096)


@dataclass
class Parts:
    ledger: FakeLedger
    model: FakeModel
    store: FakeStore
    gateway: service.Gateway


def build_parts(balances: dict[str, int] | None = None) -> Parts:
    ledger = FakeLedger({"alice": 10_000_000} if balances is None else balances)
    model, store = FakeModel(), FakeStore()
    cards = RateCardBook(load_rate_cards(), today=lambda: TODAY)
    return Parts(ledger, model, store, service.Gateway(cards, ledger, model, store, LIMITS))


@pytest.fixture
def parts() -> Parts:
    return build_parts()


@pytest.fixture
def make_parts() -> Callable[..., Parts]:
    return build_parts


class Keys:
    def __init__(self, folder: Path) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_path = folder / "public.pem"
        self.public_path.write_bytes(
            self._private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def headers(self, user: str = "alice", *roles: str, **extra: str) -> dict[str, str]:
        now = int(time.time())
        claims = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "roles": roles}
        token = jwt.encode(claims, self._private, algorithm="RS256")
        return {"Authorization": f"Bearer {token}", **extra}


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("jwt"))


@dataclass
class App:
    client: TestClient
    parts: Parts
    keys: Keys


def settings_for(keys: Keys) -> Settings:
    infra = InfraSettings(
        jwt_public_keys=[keys.public_path], jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    return Settings(service_name="metering-test", infra=infra)


@pytest.fixture
def app(keys: Keys, parts: Parts) -> Iterator[App]:
    cards = RateCardBook(load_rate_cards(), today=lambda: TODAY)
    deps = api.ApiDeps(parts.gateway, parts.store, cards, today=lambda: TODAY)
    application = gateway_app(settings_for(keys), deps)
    with TestClient(application, raise_server_exceptions=False) as client:
        yield App(client, parts, keys)


def utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
