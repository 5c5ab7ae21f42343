"""A charged call's admission in one database round trip: a port, and its PostgreSQL version.

Admitting a chat call to be charged used to take eight round trips: the claim of its key,
a transaction of the guard lock, the rate limit, the guard state and the in-flight row, and
the ledger's hold. ``admit_charged_call`` (migrations 0004, 0012) does all of it in one
statement, one transaction, under the same per-user guard lock, calling the same pieces the
step-by-step path calls. It only ever admits; where the answer is a refusal that needs
more than a status (the pause, a cap, with the session cap pausing the user), it keeps the
key claimed, writes nothing else and refers the call to the step-by-step path
(``GuardStore.reserve`` then the hold), which answers exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
from billing_platform import ratelimit
from billing_platform.db import HasPool
from billing_platform.ratelimit import Limit, Limited

from metering import guardrails, repository
from metering.guardrails import Caps
from metering.ledger_client import Balance, Hold, InsufficientCredits, LedgerError
from metering.usage_store import Taken


@dataclass(frozen=True)
class Ticket:
    """A call to admit: who pays, under which key, its worst case in millicredits.

    ``usage_id`` is the request's new usage id; a claim taken over keeps the first
    attempt's. ``usage_id_before``: the id a claim made before the claims kept one stands
    for (``Job.usage_id_before``)."""

    user_id: str
    usage_id: str
    key: str
    keyed: bool
    request_hash: str
    estimate: int
    usage_id_before: str | None = None


@dataclass(frozen=True)
class Admitted:
    """The key is claimed as ``attempt`` for ``usage_id``, the hold made, the call counted in
    flight; ``history``: the user's last charged calls recorded before it (the anomaly
    check's)."""

    attempt: int
    hold: Hold
    history: guardrails.History
    usage_id: str


@dataclass(frozen=True)
class Referred:
    """Paused or over a cap: the key is claimed as ``attempt`` for ``usage_id``; the full
    path must answer."""

    attempt: int
    usage_id: str


Admission = Admitted | Referred | Taken | Limited


def hold_key(key: str, attempt: int) -> str:
    """The ledger hold's key of an attempt under a claimed key (``admit_charged_call`` names
    its holds by the same rule): an attempt after a failed one needs a hold of its own, the
    first having been released."""
    return key if attempt == 1 else f"{key}:{attempt}"


class Admissions(Protocol):
    async def admit(self, ticket: Ticket, now: datetime) -> Admission:
        """Admitted, referred, the key taken, or over the rate limit (the key left free).

        Raises ``InsufficientCredits`` or ``LedgerError`` when the ledger refuses the hold;
        the key is left free then too."""
        ...


@dataclass(frozen=True)
class AdmissionRules:
    """What admission weighs a call against, besides the user's own state."""

    defaults: Caps
    rate: Limit
    takeover_after_s: float
    inflight_ttl_s: float
    hold_ttl_s: int


class PgAdmissions:
    def __init__(self, db: HasPool, rules: AdmissionRules) -> None:
        self._db = db
        self._rules = rules

    async def admit(self, ticket: Ticket, now: datetime) -> Admission:
        # A claim can be released between the failed claim and the read of its owner.
        for _ in range(3):
            row = await self._statement(self._args(ticket, now))
            outcome = self._outcome(ticket, row, now)
            if not (isinstance(outcome, Taken) and outcome.state == "released"):
                return outcome
        return Taken("in_progress", ticket.request_hash, None)

    async def _statement(self, args: tuple[Any, ...]) -> Any:
        try:
            async with self._db.pool.acquire() as conn:
                return await repository.admit_charged_call(conn, args)
        except asyncpg.RaiseError as exc:  # the ledger's own refusal of a malformed hold
            raise LedgerError(f"create hold: {exc}") from exc

    def _args(self, ticket: Ticket, now: datetime) -> tuple[Any, ...]:
        rules, caps = self._rules, self._rules.defaults
        return (
            ticket.user_id,
            ticket.usage_id,
            ticket.usage_id_before,
            ticket.key,
            ticket.keyed,
            ticket.request_hash,
            rules.takeover_after_s,
            ticket.estimate,
            now,
            guardrails.day_start(now),
            now - guardrails.WINDOW,
            caps.per_request,
            caps.per_day,
            caps.per_hour,
            now + timedelta(seconds=rules.inflight_ttl_s),
            repository.GUARD_LOCK_SPACE,
            *ratelimit.take_args(rules.rate, ticket.user_id, now),
            rules.hold_ttl_s,
            guardrails.ANOMALY_HISTORY,
        )

    def _outcome(self, ticket: Ticket, row: Any, now: datetime) -> Admission:
        outcome = row["r_outcome"]
        if outcome == "admitted":
            history = guardrails.History(row["r_recent_calls"], row["r_recent_total"])
            return Admitted(row["r_attempt"], _hold(row), history, str(row["r_usage_id"]))
        if outcome == "refer":
            return Referred(row["r_attempt"], str(row["r_usage_id"]))
        if outcome == "taken":
            body = repository.decode_body(row["r_response_body"])
            return Taken(row["r_claim_state"], row["r_request_hash"], body)
        if outcome == "limited":
            previous, current = row["r_rate_previous"], row["r_rate_current"]
            return ratelimit.refused(self._rules.rate, now, previous, current, row["r_rate_budget"])
        if outcome == "insufficient":
            available = row["r_balance"] - row["r_held"]
            raise InsufficientCredits(ticket.estimate, max(0, available))
        raise LedgerError(f"create hold: {outcome}")


def _hold(row: Any) -> Hold:
    balance, held = row["r_balance"], row["r_held"]
    return Hold(str(row["r_hold_id"]), row["r_hold_amount"], Balance(balance, held, balance - held))
