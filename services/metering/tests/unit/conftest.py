"""In-memory stand-ins for metering's ports (ledger, model, store, guardrails, switches), a
settable clock and a token factory.

The fakes follow the contracts the real parts keep: the ledger's holds are idempotent by
key, captures by usage id, releases by hold; the store answers a claimed key as PostgreSQL
would through ``repository``; the guard store applies the same ``guardrails`` rules to the
store's records, as ``PgGuardStore`` does to ``usage_records``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from billing_events.v1 import alert_pb2, usage_pb2
from billing_platform import ratelimit
from billing_platform.hot_routes import HotRoute
from billing_platform.ratelimit import Limited
from billing_platform.settings import InfraSettings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from metering import api, bodies, guardrails, service
from metering.admission import Admission, Admitted, Referred, Ticket, hold_key
from metering.guard_store import CapsView, Refusal, ReviewFlag
from metering.guardrails import CapOverride, Caps, Pause, Spending
from metering.ledger_client import Balance, Hold, InsufficientCredits, LedgerError
from metering.main import gateway_app
from metering.model_client import (
    Chunk,
    Chunks,
    Completion,
    ModelError,
    ModelRequest,
    TokenUsage,
)
from metering.rate_card import RateCardBook, load_rate_cards
from metering.records import CHARGED, ModelTotals, ShadowCharge, UsageRecord
from metering.settings import Settings
from metering.switches import Switches
from metering.usage_store import Claimed, Recorded, Taken
from starlette.types import ASGIApp, Receive, Scope, Send

ISSUER, AUDIENCE = "metering-test", "billing-test"
TODAY = date(2026, 11, 21)
NOON = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DEFAULT_CAPS = Caps(per_request=50_000, per_day=500_000, per_hour=100_000)
# The gateway tests outside the guardrails' own are not about caps: nothing trips these.
UNCAPPED = Caps(per_request=10**12, per_day=10**12, per_hour=10**12)


class FakeClock:
    def __init__(self, now: datetime = NOON) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# --- ledger ----------------------------------------------------------------------------


@dataclass
class FakeHold:
    hold_id: str
    user_id: str
    amount: int
    key: str
    status: str = "active"


@dataclass(frozen=True)
class Capture:
    """What a capture charges, and the usage it charges for (the ledger's posting details)."""

    amount_millicredits: int
    usage_id: str
    model: str
    input_tokens: int
    output_tokens: int
    rate_card_version: str


@dataclass(frozen=True)
class Captured:
    charged_millicredits: int
    uncollected_millicredits: int
    transaction_id: str | None
    balance: Balance


class FakeLedger:
    """Holds reserve available credit; a capture above the hold takes only what is available.
    The store captures with the record (``settle_charged_call``); ``fail_captures`` makes
    the ledger unable to, as when the hold is gone."""

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
    group: int = 1  # chunks that arrive together
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

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Chunks, None]:
        self.requests.append(request)
        await asyncio.sleep(self.delay_s)
        if self.failure is not None:
            raise self.failure
        pending: Chunks = []
        for i in range(self.words):
            if self.break_after is not None and i >= self.break_after:
                raise ModelError("model call failed: RemoteProtocolError")
            self.streamed.append(i)
            delta = {"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}
            pending.append(Chunk("chatcmpl-s1", {"id": "chatcmpl-s1", "choices": [delta]}, None))
            if len(pending) == self.group:
                yield pending
                pending = []
        if self.send_usage:
            usage = {"prompt_tokens": self.usage.input_tokens}
            pending.append(Chunk("chatcmpl-s1", {"choices": [], "usage": usage}, self.usage))
        if pending:
            yield pending


# --- store -----------------------------------------------------------------------------


@dataclass
class FakeClaim:
    request_hash: str
    usage_id: str
    state: str = "in_progress"
    attempt: int = 1


@dataclass
class InFlight:
    user_id: str
    estimate: int
    expires_at: datetime


class FakeStore:
    """Records as ``PgUsageStore`` stores them; a charged call's capture goes to ``ledger``
    with the record, and when the ledger cannot capture, the record keeps the amount asked."""

    def __init__(self, clock: FakeClock | None = None, ledger: FakeLedger | None = None) -> None:
        self.clock = clock or FakeClock()
        self.ledger = ledger or FakeLedger()
        self.deferred: list[str] = []
        self.claims: dict[tuple[str, str], FakeClaim] = {}
        self.records: dict[tuple[str, str], UsageRecord] = {}
        self.created: dict[str, datetime] = {}
        self.published: list[usage_pb2.UsageRecorded] = []
        self.inflight: dict[str, InFlight] = {}
        self.shadow: dict[str, tuple[UsageRecord, ShadowCharge]] = {}
        self.flags: list[ReviewFlag] = []
        self.alerts: list[alert_pb2.BillingAlert] = []

    async def claim(
        self, user_id: str, key: str, request_hash: str, usage_ids: tuple[str, str | None]
    ) -> Claimed | Taken:
        claim = self.claims.get((user_id, key))
        if claim is None:
            self.claims[(user_id, key)] = FakeClaim(request_hash, usage_ids[0])
            return Claimed(1, usage_ids[0])
        if claim.state == "released":
            claim.state, claim.attempt, claim.request_hash = (
                "in_progress",
                claim.attempt + 1,
                request_hash,
            )
            return Claimed(claim.attempt, claim.usage_id)
        record = self.records.get((user_id, key))
        return Taken(claim.state, claim.request_hash, record.response_body if record else None)

    async def release(self, user_id: str, key: str) -> None:
        claim = self.claims.get((user_id, key))
        if claim is not None and claim.state == "in_progress":
            claim.state = "released"

    async def record(
        self,
        record: UsageRecord,
        shadow: ShadowCharge | None = None,
        history: guardrails.History | None = None,
        hold: Hold | None = None,
    ) -> Recorded:
        after = None
        if hold is not None:
            record, after = await self._capture(record, hold)
        tokens = TokenUsage(record.input_tokens, record.output_tokens)
        body = bodies.settled(record.response_body, tokens, record.charged_millicredits, after)
        record = replace(record, response_body=body)
        self.inflight.pop(record.usage_id, None)
        earlier = self.records.get((record.user_id, record.idempotency_key))
        if earlier is not None:
            return Recorded(earlier.response_body, None)
        if record.mode == CHARGED:
            self._flag_anomaly(record, history or self.history(record.user_id))
        self.records[(record.user_id, record.idempotency_key)] = record
        self.created[record.usage_id] = self.clock()
        self.published.append(record.event("corr-test"))
        if shadow is not None:
            self.shadow[record.usage_id] = (record, shadow)
        if (record.user_id, record.idempotency_key) in self.claims:
            self.claims[(record.user_id, record.idempotency_key)].state = "done"
        return Recorded(body, record)

    async def _capture(self, record: UsageRecord, hold: Hold) -> tuple[UsageRecord, Balance]:
        asked = Capture(
            record.charged_millicredits,
            record.usage_id,
            record.model,
            record.input_tokens,
            record.output_tokens,
            record.rate_card_version,
        )
        try:
            captured = await self.ledger.capture(hold.hold_id, asked)
        except LedgerError:
            self.deferred.append(record.usage_id)
            return record, hold.balance
        charged = replace(
            record,
            charged_millicredits=captured.charged_millicredits,
            uncollected_millicredits=captured.uncollected_millicredits,
            transaction_id=captured.transaction_id,
        )
        return charged, captured.balance

    def charged(self, user_id: str) -> list[tuple[datetime, UsageRecord]]:
        """The user's charged records, oldest first."""
        mine = [r for r in self.records.values() if r.user_id == user_id and r.mode == CHARGED]
        return sorted(((self.created[r.usage_id], r) for r in mine), key=lambda p: p[0])

    def history(self, user_id: str) -> guardrails.History:
        """The user's last 20 charged calls, as the store and admission read them."""
        recent = [r.charged_millicredits for _, r in self.charged(user_id)][-20:]
        return guardrails.History(len(recent), sum(recent))

    def _flag_anomaly(self, record: UsageRecord, history: guardrails.History) -> None:
        if not guardrails.is_anomalous(record.charged_millicredits, history):
            return
        self.flags.append(
            ReviewFlag(
                len(self.flags) + 1,
                record.user_id,
                record.usage_id,
                record.model,
                record.charged_millicredits,
                history.average_millicredits,
                history.calls,
                self.clock(),
            )
        )
        self.alerts.append(
            guardrails.anomaly_alert(
                record.user_id,
                record.usage_id,
                record.model,
                record.charged_millicredits,
                history,
            )
        )

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


# --- guardrails and switches ------------------------------------------------------------


class FakeGuard:
    """``PgGuardStore``'s rules over the fake store's records, one call at a time; the rate
    limit keeps its per-window counts as ``rate_limit_hits`` rows do."""

    def __init__(
        self, store: FakeStore, defaults: Caps, ttl_s: float = 180, rate_limit: int = 100
    ) -> None:
        self.store = store
        self.defaults = defaults
        self.ttl = timedelta(seconds=ttl_s)
        self.rate_limit = rate_limit
        self.hits: dict[tuple[str, datetime], int] = {}
        self.overrides: dict[str, CapOverride] = {}
        self.pauses: dict[str, Pause] = {}
        self.released: list[str] = []

    async def reserve(
        self, user_id: str, usage_id: str, estimate: int, now: datetime
    ) -> Refusal | None:
        limited = await self.admit(user_id, now)
        if limited is not None:
            return limited
        pause = self.pauses.get(user_id)
        if pause is not None and pause.active:
            return pause
        caps = guardrails.effective(self.defaults, self.overrides.get(user_id))
        trip = guardrails.check(caps, self.spending(user_id, now), estimate, now)
        if trip is not None and trip.cap == guardrails.HOURLY:
            window = [
                (at, r.charged_millicredits)
                for at, r in self.store.charged(user_id)
                if at > now - guardrails.WINDOW
            ]
            trip = replace(trip, resets_at=guardrails.hourly_resets_at(trip, window, now))
            self.pauses[user_id] = Pause(user_id, guardrails.pause_reason(trip), now)
        if trip is not None:
            return trip
        self.store.inflight[usage_id] = InFlight(user_id, estimate, now + self.ttl)
        return None

    async def admit(self, user_id: str, now: datetime) -> Limited | None:
        window = ratelimit.window_at(now, 60)
        previous = self.hits.get((user_id, window.previous_start), 0)
        current = self.hits.get((user_id, window.start), 0)
        if ratelimit.previous_share(previous, window) + current >= self.rate_limit:
            wait = ratelimit.retry_after_s(self.rate_limit, window, previous, current)
            return Limited(wait)
        self.hits[(user_id, window.start)] = current + 1
        return None

    def spending(self, user_id: str, now: datetime) -> Spending:
        charged = self.store.charged(user_id)
        today = guardrails.day_start(now)
        hour = now - guardrails.WINDOW
        return Spending(
            sum(r.charged_millicredits for at, r in charged if at >= today),
            sum(r.charged_millicredits for at, r in charged if at > hour),
            sum(
                f.estimate
                for f in self.store.inflight.values()
                if f.user_id == user_id and f.expires_at > now
            ),
        )

    async def release(self, usage_id: str) -> None:
        self.released.append(usage_id)
        self.store.inflight.pop(usage_id, None)

    async def caps(self, user_id: str) -> CapsView:
        override = self.overrides.get(user_id)
        return CapsView(guardrails.effective(self.defaults, override), self.defaults, override)

    async def set_caps(
        self, user_id: str, caps: tuple[int | None, int | None, int | None], actor: str, reason: str
    ) -> CapsView:
        self.overrides[user_id] = CapOverride(*caps, actor, reason, self.store.clock())
        return await self.caps(user_id)

    async def pause(self, user_id: str) -> Pause | None:
        return self.pauses.get(user_id)

    async def paused(self, limit: int) -> list[Pause]:
        active = [p for p in self.pauses.values() if p.active]
        return sorted(active, key=lambda p: p.paused_at, reverse=True)[:limit]

    async def resume(self, user_id: str, actor: str, reason: str, now: datetime) -> Pause | None:
        pause = self.pauses.get(user_id)
        if pause is None or not pause.active:
            return None
        self.pauses[user_id] = replace(
            pause, resumed_at=now, resumed_by=actor, resume_reason=reason
        )
        return self.pauses[user_id]

    async def review_flags(self, user_id: str | None, limit: int) -> list[ReviewFlag]:
        mine = [f for f in self.store.flags if user_id is None or f.user_id == user_id]
        return list(reversed(mine))[:limit]


class FakeAdmissions:
    """``admit_charged_call`` over the other fakes: the same steps in the same order (claim,
    refer when paused or over a cap, rate limit, hold, in flight), a refusal freeing the key."""

    def __init__(self, store: FakeStore, guard: FakeGuard, ledger: FakeLedger) -> None:
        self.store, self.guard, self.ledger = store, guard, ledger
        self.referred: list[str] = []

    async def admit(self, ticket: Ticket, now: datetime) -> Admission:
        attempt = 1
        if ticket.keyed:
            ids = (ticket.usage_id, ticket.usage_id_before)
            claim = await self.store.claim(ticket.user_id, ticket.key, ticket.request_hash, ids)
            if isinstance(claim, Taken):
                return claim
            attempt, ticket = claim.attempt, replace(ticket, usage_id=claim.usage_id)
        if self._refers(ticket, now):
            self.referred.append(ticket.usage_id)
            return Referred(attempt, ticket.usage_id)
        try:
            return await self._hold(ticket, attempt, now)
        except (InsufficientCredits, LedgerError):
            await self.store.release(ticket.user_id, ticket.key)
            raise

    def _refers(self, ticket: Ticket, now: datetime) -> bool:
        pause = self.guard.pauses.get(ticket.user_id)
        caps = guardrails.effective(self.guard.defaults, self.guard.overrides.get(ticket.user_id))
        spending = self.guard.spending(ticket.user_id, now)
        tripped = guardrails.check(caps, spending, ticket.estimate, now) is not None
        return tripped or (pause is not None and pause.active)

    async def _hold(self, ticket: Ticket, attempt: int, now: datetime) -> Admission:
        limited = await self.guard.admit(ticket.user_id, now)
        if limited is not None:
            await self.store.release(ticket.user_id, ticket.key)
            return limited
        key, ttl = hold_key(ticket.key, attempt), LIMITS.hold_ttl_s
        hold = await self.ledger.create_hold(ticket.user_id, ticket.estimate, key, ttl)
        inflight = InFlight(ticket.user_id, ticket.estimate, now + self.guard.ttl)
        self.store.inflight[ticket.usage_id] = inflight
        return Admitted(attempt, hold, self.store.history(ticket.user_id), ticket.usage_id)


class FakeFlags:
    """Checkout's feature_flags view: name -> JSON value; ``broken`` makes it unreadable."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.broken = False
        self.reads = 0

    async def load(self) -> dict[str, Any]:
        self.reads += 1
        if self.broken:
            raise OSError("relation checkout.feature_flags does not exist")
        return dict(self.rows)


# --- the gateway and the app -----------------------------------------------------------


LIMITS = service.Limits(hold_ttl_s=120, default_max_output_tokens=1024, max_output_tokens=4096)


@dataclass
class Parts:
    ledger: FakeLedger
    model: FakeModel
    store: FakeStore
    guard: FakeGuard
    admissions: FakeAdmissions
    flags: FakeFlags
    clock: FakeClock
    gateway: service.Gateway


def build_parts(balances: dict[str, int] | None = None, caps: Caps = UNCAPPED) -> Parts:
    ledger = FakeLedger({"alice": 10_000_000} if balances is None else balances)
    clock = FakeClock()
    model, store, flags = FakeModel(), FakeStore(clock, ledger), FakeFlags()
    guard = FakeGuard(store, caps)
    admissions = FakeAdmissions(store, guard, ledger)
    cards = RateCardBook(load_rate_cards(), today=lambda: TODAY)
    gateway = service.Gateway(
        cards,
        ledger,
        model,
        store,
        LIMITS,
        switches=Switches(flags, ttl_s=0),
        guard=guard,
        admissions=admissions,
        clock=clock,
    )
    return Parts(ledger, model, store, guard, admissions, flags, clock, gateway)


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
    # The scope of each HTTP request, as the app left it.
    scopes: list[Scope] = field(default_factory=list)


class _Noting:
    def __init__(self, app: ASGIApp, scopes: list[Scope]) -> None:
        self._app = app
        self._scopes = scopes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
        if scope["type"] == "http":
            self._scopes.append(scope)


def settings_for(keys: Keys) -> Settings:
    infra = InfraSettings(
        jwt_public_keys=[keys.public_path], jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    return Settings(service_name="metering-test", infra=infra)


def application(keys: Keys, parts: Parts) -> FastAPI:
    cards = RateCardBook(load_rate_cards(), today=lambda: TODAY)
    deps = api.ApiDeps(
        parts.gateway, parts.store, cards, parts.guard, today=lambda: TODAY, clock=parts.clock
    )
    return gateway_app(settings_for(keys), deps)


@pytest.fixture
def app(keys: Keys, parts: Parts) -> Iterator[App]:
    scopes: list[Scope] = []
    noting = _Noting(application(keys, parts), scopes)
    with TestClient(noting, raise_server_exceptions=False) as client:
        yield App(client, parts, keys, scopes)


@pytest.fixture
def route_only(keys: Keys, parts: Parts) -> Iterator[App]:
    """The same app without the chat route's shortcut: every chat call goes by the router."""
    plain = application(keys, parts)
    shortcut: object = HotRoute
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not shortcut]
    with TestClient(plain, raise_server_exceptions=False) as client:
        yield App(client, parts, keys)


def utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
