"""Use cases of metering: the AI gateway (plain and streamed chat), reconcile, usage totals,
and the admin side of the guardrails (caps, pauses, review flags).

A chat, in order:
1. the model must be on the rate card in force (422 ``unknown_model``), ``max_tokens`` at
   most the configured cap (422 ``max_tokens_too_large``), ``returnTo`` a local path; the
   worst case (estimated prompt + every allowed output token) is computed;
2. the switches decide the call's billing mode (``switches.decide``): charged, shadow or
   unbilled;
3. a client idempotency key is claimed (a repeat gets the stored answer, charged once);
4. the user's rate limit (every replica counts together; 429 ``rate_limited`` with
   ``Retry-After``), and for a call to be charged, in the same transaction, the guardrails
   (``guardrails``): 423 ``user_paused``, then 429 for the request, daily and hourly caps;
   passing counts its worst case in flight. A refused call leaves its key free;
5. a call to be charged holds its worst case in the ledger (402 ``insufficient_credits``
   when the user cannot cover it); shadow and unbilled calls make no hold;
   for a chat to be charged, steps 3 to 5 are one statement (``admission``), which refers
   the call back to them one by one only when the user is paused or a cap would trip;
6. the model is called; if it fails, the hold (and in-flight count) is released and
   nothing is charged;
7. the actual tokens are priced; a charged call's hold is captured for exactly that, in
   one statement with its usage record and ``UsageRecorded`` event (every mode has a
   record), so a crash cannot leave a charge without its record.
A streamed chat follows the same steps; ``streaming`` relays it and settles it once.
Reconcile (usage consumed elsewhere) obeys the switches and the user's rate limit (its
caller retries after ``Retry-After``) but not the pause or the caps: refusing usage already
consumed would only lose its charge.
No database transaction is open while the ledger or the model is awaited.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any

from billing_platform import context
from billing_platform.errors import ApiError
from billing_platform.ids import time_ordered_uuid
from billing_platform.ratelimit import Limited, rate_limited

from metering import bodies, guardrails, metrics, overhead, pricing, return_to, streaming
from metering.admission import Admissions, Admitted, Referred, Ticket, hold_key
from metering.guard_store import CapsView, GuardStore, Refusal, ReviewFlag
from metering.guardrails import Pause
from metering.ledger_client import Hold, InsufficientCredits, LedgerClient, LedgerError
from metering.model_client import (
    ChatMessage,
    Chunks,
    Completion,
    ModelClient,
    ModelError,
    ModelRequest,
    ModelTimeout,
    TokenUsage,
)
from metering.pricing import Price
from metering.rate_card import ModelRate, RateCardBook
from metering.records import CHARGED, ShadowCharge, UsageRecord
from metering.switches import Decision, SwitchReader
from metering.usage_store import Claimed, Taken, UsageStore

log = logging.getLogger(__name__)

# Before metering's migration 0012 a usage id derived from (user, key); a claim made then
# stands for that id (Job.usage_id_before).
_USAGE_IDS = uuid.UUID("6f0c2d55-3a8e-4d8e-9f3b-2b5f1c7a9e41")


@dataclass(frozen=True)
class Limits:
    hold_ttl_s: int
    default_max_output_tokens: int
    max_output_tokens: int


@dataclass(frozen=True)
class ChatCall:
    user_id: str
    model: str
    messages: Sequence[ChatMessage]
    max_tokens: int | None = None
    stream: bool = False
    return_to: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ReconcileCall:
    user_id: str
    model: str
    input_tokens: int
    output_tokens: int
    idempotency_key: str


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class StreamAnswer:
    """Events to send; ``close`` must run once the response is over, however it ended."""

    events: AsyncGenerator[str, None]
    finish: Callable[[], Awaitable[None]]

    async def close(self) -> None:
        await self.events.aclose()
        await self.finish()


@dataclass(frozen=True)
class Job:
    """One request: who pays, under which key, at which rate, how much to hold, in which mode.

    ``capped``: the guardrails apply (chat); reconcile reports usage already consumed.
    ``usage_id``: in creation order (the indexes keyed by it take their inserts at one end);
    new for each request, then the one the key's claim holds (``claimed``), so every
    attempt under one key has the first attempt's, which the ledger charges at most once.
    """

    user_id: str
    usage_id: str
    key: str
    keyed: bool
    request_hash: str
    rate: ModelRate
    rate_card_version: str
    hold_millicredits: int
    return_to: str
    decision: Decision
    capped: bool

    @property
    def charged(self) -> bool:
        return self.decision.charged

    @property
    def usage_id_before(self) -> str:
        return str(uuid.uuid5(_USAGE_IDS, f"{self.user_id}\n{self.key}"))

    def claimed(self, usage_id: str) -> Job:
        """The job under the usage id its key's claim holds."""
        return replace(self, usage_id=usage_id)

    def hold_key(self, attempt: int) -> str:
        return hold_key(self.key, attempt)

    def ticket(self) -> Ticket:
        return Ticket(
            self.user_id,
            self.usage_id,
            self.key,
            self.keyed,
            self.request_hash,
            self.hold_millicredits,
            self.usage_id_before,
        )


def new_usage_id() -> str:
    return str(time_ordered_uuid())


def utc_now() -> datetime:
    return datetime.now(UTC)


class Gateway:
    def __init__(
        self,
        cards: RateCardBook,
        ledger: LedgerClient,
        model: ModelClient,
        store: UsageStore,
        limits: Limits,
        *,
        switches: SwitchReader,
        guard: GuardStore,
        admissions: Admissions,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._cards = cards
        self._ledger = ledger
        self._model = model
        self._store = store
        self._limits = limits
        self._switches = switches
        self._guard = guard
        self._admissions = admissions
        self._clock = clock

    async def chat(self, call: ChatCall) -> Answer | StreamAnswer:
        job, request = await self._chat_job(call)
        started = await self._start(job)
        if isinstance(started, Answer):
            return started
        job = started.job
        if call.stream:
            return await self._stream(job, request, started)
        async with self._abandoned_on_error(job, started.hold):
            completion = await self._complete(request)
        body = bodies.completion(completion)
        settled = await self._settle(job, started, completion.usage, completion.id, body)
        return Answer(200, settled)

    async def reconcile(self, call: ReconcileCall) -> Answer:
        """Charge usage made elsewhere: a hold of exactly its price, captured at once.

        The switches and the rate limit apply (an unbilled or shadow reconcile is recorded,
        not charged); the pause and the caps do not, as the usage was already consumed.
        """
        started = await self._start(await self._reconcile_job(call))
        if isinstance(started, Answer):
            return started
        job = started.job
        usage = TokenUsage(call.input_tokens, call.output_tokens)
        body = {
            "usageId": job.usage_id,
            "userId": call.user_id,
            "model": call.model,
            "rateCardVersion": job.rate_card_version,
        }
        return Answer(200, await self._settle(job, started, usage, None, body))

    # --- planning --------------------------------------------------------------------

    async def _chat_job(self, call: ChatCall) -> tuple[Job, ModelRequest]:
        card = self._cards.current()
        rate = card.rate_for(call.model)
        request = ModelRequest(call.model, tuple(call.messages), self._max_tokens(call.max_tokens))
        return_path = return_to.checked(call.return_to)  # refused before the switches are read
        job = Job(
            user_id=call.user_id,
            usage_id=new_usage_id(),
            key=f"chat:{call.user_id}:{call.idempotency_key or context.new_id()}",
            keyed=call.idempotency_key is not None,
            request_hash=chat_hash(request, call.stream),
            rate=rate,
            rate_card_version=card.version,
            hold_millicredits=pricing.hold_amount(
                rate, (m.content for m in call.messages), request.max_output_tokens
            ),
            return_to=return_path,
            decision=await self._switches.decide(call.user_id),
            capped=True,
        )
        return job, request

    async def _reconcile_job(self, call: ReconcileCall) -> Job:
        if call.input_tokens + call.output_tokens == 0:
            raise ApiError(422, "empty_usage", "inputTokens and outputTokens are both 0")
        card = self._cards.current()
        rate = card.rate_for(call.model)
        fields = [call.user_id, call.model, call.input_tokens, call.output_tokens]
        return Job(
            user_id=call.user_id,
            usage_id=new_usage_id(),
            key=f"reconcile:{call.idempotency_key}",
            keyed=True,
            request_hash=_hash(fields),
            rate=rate,
            rate_card_version=card.version,
            hold_millicredits=pricing.price(
                rate, call.input_tokens, call.output_tokens
            ).charged_millicredits,
            return_to=return_to.DEFAULT,
            decision=await self._switches.decide(call.user_id),
            capped=False,
        )

    def _max_tokens(self, asked: int | None) -> int:
        cap = self._limits.max_output_tokens
        if asked is None:
            return min(self._limits.default_max_output_tokens, cap)
        if asked > cap:
            raise ApiError(
                422, "max_tokens_too_large", f"max_tokens may be at most {cap}", maxTokens=cap
            )
        return asked

    # --- idempotency and holds -------------------------------------------------------

    async def _start(self, job: Job) -> Started | Answer:
        """The call's hold once its key is claimed and it passed the guardrails; or the
        stored answer of its key."""
        if job.capped and job.charged:
            admitted = await self._admit_at_once(job)
            if not isinstance(admitted, Referred):
                return admitted
            claimed: Claimed | Answer = Claimed(admitted.attempt, admitted.usage_id)
        else:
            claimed = await self._claim(job)
        if isinstance(claimed, Answer):
            return claimed
        job = job.claimed(claimed.usage_id)
        await self._pass_guardrails(job)
        return Started(job, await self._hold(job, claimed.attempt))

    async def _admit_at_once(self, job: Job) -> Started | Answer | Referred:
        """Claim, rate limit, guardrails and hold in one statement (``admission``)."""
        now = self._clock()
        try:
            admission = await self._admissions.admit(job.ticket(), now)
        except (InsufficientCredits, LedgerError) as exc:
            raise _hold_refused(exc, job.return_to) from exc
        if isinstance(admission, Admitted):
            return Started(job.claimed(admission.usage_id), admission.hold, admission.history)
        if isinstance(admission, Referred):
            return admission
        if isinstance(admission, Taken):
            return _replay(admission, job.request_hash)
        raise _guardrail_refused(admission, now)

    async def _claim(self, job: Job) -> Claimed | Answer:
        """The attempt this request runs as and its usage id, or the stored answer of its
        key. A call without a key is never retried: its new usage id is its own."""
        if not job.keyed:
            return Claimed(1, job.usage_id)
        ids = (job.usage_id, job.usage_id_before)
        claim = await self._store.claim(job.user_id, job.key, job.request_hash, ids)
        if isinstance(claim, Claimed):
            return claim
        return _replay(claim, job.request_hash)

    async def _unclaim(self, job: Job) -> None:
        if not job.keyed:
            return
        try:
            await self._store.release(job.user_id, job.key)
        except Exception:
            log.warning("claim not released; it is taken over once abandoned", exc_info=True)

    async def _unreserve(self, job: Job) -> None:
        """The call ends uncharged: it no longer counts in flight, and its key is free."""
        if job.capped and job.charged:
            try:
                await self._guard.release(job.usage_id)
            except Exception:
                log.warning("in-flight count not released; it expires by itself", exc_info=True)
        await self._unclaim(job)

    # --- guardrails and holds --------------------------------------------------------

    async def _pass_guardrails(self, job: Job) -> None:
        """The rate limit, then pause and caps of a call to be charged (one transaction);
        passing, its worst case counts in flight."""
        now = self._clock()
        try:
            refusal = await self._admit(job, now)
        except BaseException:
            await self._unclaim(job)
            raise
        if refusal is not None:
            await self._unclaim(job)
            raise _guardrail_refused(refusal, now)

    async def _admit(self, job: Job, now: datetime) -> Refusal | None:
        if job.capped and job.charged:
            return await self._guard.reserve(job.user_id, job.usage_id, job.hold_millicredits, now)
        return await self._guard.admit(job.user_id, now)

    async def _hold(self, job: Job, attempt: int) -> Hold | None:
        """The ledger hold of a call to be charged; None for shadow and unbilled calls."""
        if not job.charged:
            return None
        try:
            return await self._ledger.create_hold(
                job.user_id, job.hold_millicredits, job.hold_key(attempt), self._limits.hold_ttl_s
            )
        except (InsufficientCredits, LedgerError) as exc:
            await self._unreserve(job)
            raise _hold_refused(exc, job.return_to) from exc
        except BaseException:
            await self._unreserve(job)
            raise

    @asynccontextmanager
    async def _abandoned_on_error(self, job: Job, hold: Hold | None) -> AsyncIterator[None]:
        """If the block fails, the hold is released and nothing is charged."""
        try:
            yield
        except BaseException:
            await self._abandon(job, hold)
            raise

    async def _abandon(self, job: Job, hold: Hold | None) -> None:
        if hold is not None:
            try:
                await self._ledger.release(hold.hold_id)
            except LedgerError:
                log.warning(
                    "hold not released; it expires by itself", extra={"hold_id": hold.hold_id}
                )
        await self._unreserve(job)

    # --- the model -------------------------------------------------------------------

    async def _complete(self, request: ModelRequest) -> Completion:
        try:
            with overhead.model_time():
                completion = await self._model.complete(request)
        except ModelError as exc:
            raise _model_failed(request.model, exc) from exc
        metrics.model_answered(request.model, completion.usage)
        return completion

    async def _stream(self, job: Job, request: ModelRequest, started: Started) -> StreamAnswer:
        hold = started.hold
        async with self._abandoned_on_error(job, hold):
            chunks = self._model.stream(request)
            first = await _first_chunks(request.model, chunks)

        async def settle(usage: TokenUsage, provider_request_id: str) -> dict[str, Any]:
            body = {"id": provider_request_id, "model": request.model}
            return await self._settle(job, started, usage, provider_request_id, body)

        relay = streaming.StreamRelay(
            request.model, first, chunks, settle, partial(self._abandon, job, hold)
        )
        return StreamAnswer(relay.events(), relay.close)

    # --- charging --------------------------------------------------------------------

    async def _settle(
        self,
        job: Job,
        started: Started,
        usage: TokenUsage,
        provider_request_id: str | None,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        """Price the actual tokens; capture them (if charged) with the stored and published
        record, in one statement; the answer's body."""
        price = pricing.price(job.rate, usage.input_tokens, usage.output_tokens)
        head = {**body, "billingMode": job.decision.mode}
        record = usage_record(job, usage, started.hold, price, provider_request_id, head)
        decision = job.decision
        shadow = ShadowCharge(decision.would_be_mode) if decision.shadow else None
        recorded = await self._store.record(record, shadow, started.history, started.hold)
        if recorded.record is not None:
            _count(decision, recorded.record)
            _annotate(recorded.record)
        return recorded.body


@dataclass(frozen=True)
class Started:
    """A call past its claim and guardrails: its job under the claimed usage id, its hold
    (None unless charged) and, when admission read them, the user's recent charges its own
    is weighed against."""

    job: Job
    hold: Hold | None
    history: guardrails.History | None = None


def usage_record(
    job: Job,
    usage: TokenUsage,
    hold: Hold | None,
    price: Price,
    provider_request_id: str | None,
    head: dict[str, Any],
) -> UsageRecord:
    """The call's record as priced: with a hold, ``charged_millicredits`` is the amount its
    capture asks for (the store fills in what the ledger charged)."""
    return UsageRecord(
        usage_id=job.usage_id,
        user_id=job.user_id,
        model=job.rate.model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        charged_millicredits=price.charged_millicredits if hold else 0,
        uncollected_millicredits=0,
        priced_millicredits=price.charged_millicredits,
        cost_millicredits=price.cost_millicredits,
        rate_card_version=job.rate_card_version,
        hold_id=hold.hold_id if hold else "",
        idempotency_key=job.key,
        provider_request_id=provider_request_id,
        transaction_id=None,
        response_body=head,
        mode=job.decision.mode,
    )


def _annotate(record: UsageRecord) -> None:
    # On the call's own access line: one line per call, not two.
    context.annotate_request(
        usage_id=record.usage_id,
        model=record.model,
        billing_mode=record.mode,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        charged_millicredits=record.charged_millicredits,
        priced_millicredits=record.priced_millicredits,
        hold_id=record.hold_id,
    )


def _count(decision: Decision, record: UsageRecord) -> None:
    # Every mode and reconcile too: the provider bills a call whether or not the user pays
    # for it, and usage reconciled from elsewhere was billed by the provider all the same.
    metrics.MODEL_COST.labels(record.model).inc(record.cost_millicredits)
    if record.mode == CHARGED:
        metrics.charged(record.model, record.charged_millicredits)
    else:
        metrics.UNBILLED_CALLS.labels(decision.reason or "").inc()
    if decision.shadow:
        metrics.SHADOW_CHARGES.labels(record.model).inc(record.priced_millicredits)


async def usage_report(store: UsageStore, user_id: str, start: date, end: date) -> dict[str, Any]:
    """Totals per model from ``start`` to ``end``, both whole days (UTC) included."""
    since = datetime.combine(start, time.min, UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, UTC)
    totals = await store.totals(user_id, since, until)
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "models": [
            {
                "model": t.model,
                "calls": t.calls,
                "inputTokens": t.input_tokens,
                "outputTokens": t.output_tokens,
                "chargedMillicredits": t.charged_millicredits,
            }
            for t in totals
        ],
        "totalChargedMillicredits": sum(t.charged_millicredits for t in totals),
    }


def usage_window(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """The asked days, by default the last 30 (today included); 422 when reversed."""
    end = end or today
    start = start or end - timedelta(days=29)
    if start > end:
        raise ApiError(422, "invalid_range", "from must not be after to")
    return start, end


def chat_hash(request: ModelRequest, stream: bool) -> str:
    messages = [[m.role, m.content] for m in request.messages]
    return _hash([request.model, messages, request.max_output_tokens, stream])


def _hash(fields: list[Any]) -> str:
    canonical = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(claim: Taken, request_hash: str) -> Answer:
    if claim.request_hash != request_hash:
        raise ApiError(
            409, "idempotency_key_reused", "the idempotency key was used with another body"
        )
    if claim.state != "done" or claim.response_body is None:
        raise ApiError(409, "idempotency_key_in_progress", "a request with this key is in progress")
    return Answer(200, claim.response_body, replayed=True)


def _guardrail_refused(refusal: Refusal, now: datetime) -> ApiError:
    if isinstance(refusal, Limited):
        return rate_limited(refusal.retry_after_s, "for this user")
    if isinstance(refusal, Pause):
        metrics.CAP_TRIPS.labels(guardrails.PAUSED).inc()
        return guardrails.paused_refusal(refusal)
    metrics.CAP_TRIPS.labels(refusal.cap).inc()
    log.warning(
        "spend cap tripped",
        extra={
            "cap": refusal.cap,
            "cap_millicredits": refusal.cap_millicredits,
            "used_millicredits": refusal.used_millicredits,
            "requested_millicredits": refusal.requested_millicredits,
        },
    )
    return guardrails.cap_refusal(refusal, now)


def _hold_refused(exc: InsufficientCredits | LedgerError, back: str) -> ApiError:
    if isinstance(exc, LedgerError):
        return ApiError(503, "ledger_unavailable", "the ledger did not answer; nothing was charged")
    metrics.INSUFFICIENT_CREDITS.inc()
    return bodies.insufficient_credits(exc.required_millicredits, exc.current_millicredits, back)


def _model_failed(model: str, exc: ModelError) -> ApiError:
    timed_out = isinstance(exc, ModelTimeout)
    metrics.OPENAI_CALLS.labels(model, "timeout" if timed_out else "error").inc()
    log.warning("model call failed", extra={"model": model, "error": str(exc)})
    if timed_out:
        return ApiError(
            504, "model_timeout", "the model did not answer in time; nothing was charged"
        )
    return ApiError(502, "model_error", "the model call failed; nothing was charged")


async def _first_chunks(model: str, chunks: AsyncGenerator[Chunks, None]) -> Chunks:
    try:
        with overhead.model_time():
            first = await anext(chunks, None)
    except ModelError as exc:
        raise _model_failed(model, exc) from exc
    if first is None:
        raise _model_failed(model, ModelError("the model stream was empty"))
    return first


# --- guardrails, admin side ----------------------------------------------------------------


async def caps_of(guard: GuardStore, user_id: str) -> CapsView:
    return await guard.caps(user_id)


async def set_caps(
    guard: GuardStore,
    user_id: str,
    caps: tuple[int | None, int | None, int | None],
    actor: str,
    reason: str,
) -> CapsView:
    """Replace the user's overrides (None: the default); written to the audit trail."""
    view = await guard.set_caps(user_id, caps, actor, reason)
    log.info("caps set", extra={"target_user": user_id, "actor": actor})
    return view


async def pause_of(guard: GuardStore, user_id: str) -> Pause | None:
    return await guard.pause(user_id)


async def paused_users(guard: GuardStore, limit: int) -> list[Pause]:
    return await guard.paused(limit)


async def resume(guard: GuardStore, user_id: str, actor: str, reason: str, now: datetime) -> Pause:
    """Lift the user's pause; 409 ``not_paused`` when there is none."""
    pause = await guard.resume(user_id, actor, reason, now)
    if pause is None:
        raise ApiError(409, "not_paused", f"user {user_id} is not paused")
    log.info("user resumed", extra={"target_user": user_id, "actor": actor})
    return pause


async def review_flags(guard: GuardStore, user_id: str | None, limit: int) -> list[ReviewFlag]:
    return await guard.review_flags(user_id, limit)
