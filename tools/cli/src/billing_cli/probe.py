"""``billing probe``: synthetic probes of a deployment, meant to run every 5 minutes.

- checkout: the probe user buys the smallest package, the paid Checkout Session webhook is
  delivered as Stripe would send it (signed with the webhook secret), and the purchase must
  reach ``fulfilled`` in time;
- ai: one small chat call on the cheapest model of the rate card must be charged;
- reconciliation: a reconciliation run (its own Idempotency-Key) must come back clean.

Each probe is timed and passes or fails with a reason. The results go to stdout (a table or
JSON) and, as Prometheus gauges, to a Pushgateway and/or a file for node-exporter's textfile
collector: ``billing_probe_success``, ``billing_probe_duration_seconds`` and
``billing_probe_last_run_timestamp_seconds``, each labelled ``probe``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile
from rich.console import Console
from rich.text import Text

from billing_cli import keys
from billing_cli import stripe_sim as sim
from billing_cli.target import (
    WEBHOOK_SECRET_ENV,
    AdminTargetOption,
    OpsTarget,
    TargetError,
    TargetOption,
    TokenFileOption,
)

PROBES = ("checkout", "ai", "reconciliation")
JOB = "billing_probe"
USER_TOKEN_ENV = "BILLING_PROBE_USER_TOKEN"  # noqa: S105 (a variable's name)
HTTP_TIMEOUT_S = 30.0
# Enough for a one-word answer; the hold reserved for it stays far below every cap.
AI_MAX_TOKENS = 16
# What the probe purchase sends the buyer back to (never visited: nobody pays it).
RETURN_TO = "/credits"
# A purchase in one of these will never be fulfilled.
FINAL_STATUSES = frozenset({"failed", "refunded", "partially_refunded"})

console = Console(stderr=True)


class ProbeFailed(Exception):
    """A probe's failure; the message is its reason."""


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    passed: bool
    seconds: float
    reason: str
    # Unix time at which the probe finished.
    finished_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "reason": self.reason,
            "finishedAt": self.finished_at,
        }


@dataclass(frozen=True)
class ProbeSettings:
    run_id: str
    user_token: str | None = None
    webhook_secret: str | None = None
    # The longest a probe waits for fulfilment, or for a reconciliation run to answer.
    timeout_s: float = 120.0
    poll_s: float = 1.0


def _short(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _answer(response: httpx.Response, what: str, status: int = 200) -> Any:
    """The JSON body of an expected answer, or the probe fails naming what came instead."""
    if response.status_code != status:
        try:
            body = response.json()
            error = f"{body.get('error', '')}: {body.get('message', '')}".strip(": ")
        except (ValueError, AttributeError):
            error = response.text
        raise ProbeFailed(_short(f"{what} answered {response.status_code} {error}".rstrip()))
    try:
        return response.json()
    except ValueError as exc:
        raise ProbeFailed(_short(f"{what} answered {status} with no JSON body")) from exc


def cheapest_model(rate_card: Mapping[str, Any]) -> str:
    """The rate card's model with the lowest input plus output price per 1M tokens."""

    def price(rate: Mapping[str, Any]) -> Decimal:
        return Decimal(str(rate["inputUsdPer1M"])) + Decimal(str(rate["outputUsdPer1M"]))

    models: list[Mapping[str, Any]] = list(rate_card.get("models") or [])
    if not models:
        raise ProbeFailed("the rate card lists no model")
    return str(min(models, key=price)["model"])


def smallest_package(packages: Sequence[Mapping[str, Any]]) -> str:
    if not packages:
        raise ProbeFailed("the catalog lists no package")
    return str(min(packages, key=lambda p: int(p["priceCents"]))["code"])


class Prober:
    """Runs the probes against one target with one HTTP client (injectable for tests)."""

    def __init__(
        self,
        client: httpx.Client,
        target: OpsTarget,
        settings: ProbeSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.target = target
        self.settings = settings
        self._monotonic = monotonic
        self._sleep = sleep
        self._wall = wall

    def run(self, probes: Sequence[str]) -> list[ProbeResult]:
        steps: dict[str, Callable[[], str]] = {
            "checkout": self.checkout,
            "ai": self.ai,
            "reconciliation": self.reconciliation,
        }
        return [self._timed(name, steps[name]) for name in probes]

    def _timed(self, name: str, step: Callable[[], str]) -> ProbeResult:
        started = self._monotonic()
        try:
            reason, passed = step(), True
        except ProbeFailed as exc:
            reason, passed = str(exc), False
        except TargetError as exc:
            reason, passed = str(exc), False
        except httpx.HTTPError as exc:
            reason, passed = _short(f"{type(exc).__name__}: {exc}"), False
        except (AttributeError, KeyError, TypeError, ValueError, InvalidOperation) as exc:
            reason, passed = _short(f"unexpected answer ({type(exc).__name__}: {exc})"), False
        return ProbeResult(name, passed, self._monotonic() - started, reason, self._wall())

    def _user(self) -> dict[str, str]:
        if not self.settings.user_token:
            raise ProbeFailed("no token for the probe user")
        return {"Authorization": f"Bearer {self.settings.user_token}"}

    def _key(self, probe: str) -> str:
        return f"{self.settings.run_id}-{probe}"

    # --- checkout ---------------------------------------------------------------------------

    def checkout(self) -> str:
        secret = self.settings.webhook_secret
        if not secret:
            raise ProbeFailed(f"no webhook signing secret ({WEBHOOK_SECRET_ENV})")
        user = self._user()
        packages = _answer(
            self.client.get(self.target.url("checkout", "/api/packages")), "GET /api/packages"
        )
        code = smallest_package(packages)
        created = _answer(
            self.client.post(
                self.target.url("checkout", "/api/purchases"),
                json={"packageCode": code, "returnTo": RETURN_TO},
                headers={**user, "Idempotency-Key": self._key("checkout")},
            ),
            "POST /api/purchases",
            201,
        )
        purchase_id = str(created["purchaseId"])
        purchase = sim.SimPurchase.from_api(self._purchase(purchase_id, user))
        event = sim.session_completed(purchase)
        webhook_url = self.target.url("webhook-ingest", "/webhooks/stripe")
        delivered = sim.send_sync(self.client, webhook_url, event, secret)
        if not delivered.is_success:
            raise ProbeFailed(
                _short(
                    f"POST /webhooks/stripe answered {delivered.status_code} {delivered.text} "
                    f"for {event['id']}"
                )
            )
        self._wait_fulfilled(purchase_id, user)
        return f"{code} purchase {purchase_id} fulfilled"

    def _purchase(self, purchase_id: str, user: Mapping[str, str]) -> dict[str, Any]:
        url = self.target.url("checkout", f"/api/purchases/{purchase_id}")
        body: dict[str, Any] = _answer(
            self.client.get(url, headers=dict(user)), "GET /api/purchases/{id}"
        )
        return body

    def _wait_fulfilled(self, purchase_id: str, user: Mapping[str, str]) -> None:
        deadline = self._monotonic() + self.settings.timeout_s
        while True:
            status = str(self._purchase(purchase_id, user)["status"])
            if status == "fulfilled":
                return
            if status in FINAL_STATUSES:
                raise ProbeFailed(f"purchase {purchase_id} became {status}, not fulfilled")
            if self._monotonic() >= deadline:
                raise ProbeFailed(
                    f"purchase {purchase_id} still {status} "
                    f"after {self.settings.timeout_s:g}s (never fulfilled)"
                )
            self._sleep(self.settings.poll_s)

    # --- ai ---------------------------------------------------------------------------------

    def ai(self) -> str:
        user = self._user()
        card = _answer(
            self.client.get(self.target.url("metering", "/api/rate-card"), headers=user),
            "GET /api/rate-card",
        )
        model = cheapest_model(card)
        response = self.client.post(
            self.target.url("metering", "/api/ai/chat"),
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Synthetic probe: answer with OK."}],
                "max_tokens": AI_MAX_TOKENS,
            },
            headers={**user, "Idempotency-Key": self._key("ai")},
        )
        if response.status_code == 402:
            credits = _answer(response, "", 402).get("currentCredits", "?")
            raise ProbeFailed(
                f"POST /api/ai/chat answered 402 insufficient_credits: the probe user has "
                f"{credits} credits (run the checkout probe, or grant an adjustment)"
            )
        body = _answer(response, "POST /api/ai/chat")
        charged = int(body["usage"]["chargedMillicredits"])
        if charged <= 0:
            raise ProbeFailed(
                f"{model}: answered but charged {charged} millicredits (charging switched off?)"
            )
        return f"{model} charged {charged} millicredits"

    # --- reconciliation ---------------------------------------------------------------------

    def reconciliation(self) -> str:
        admin = {"Authorization": f"Bearer {self.target.admin_token()}"}
        run = _answer(
            self.client.post(
                self.target.url("reconciler", "/api/admin/reconcile"),
                json={},
                headers={**admin, "Idempotency-Key": self._key("reconciliation")},
                timeout=self.settings.timeout_s,
            ),
            "POST /api/admin/reconcile",
        )
        run_id = run.get("runId", "?")
        if run.get("status") == "clean":
            return f"run {run_id} clean"
        findings: list[Mapping[str, Any]] = list(run.get("findings") or [])
        kinds = sorted({str(f.get("kind")) for f in findings})
        raise ProbeFailed(
            _short(
                f"run {run_id} is {run.get('status')}: {len(findings)} finding(s) "
                f"({', '.join(kinds)}); GET /api/admin/reconciliation/latest lists them"
            )
        )


# --- metrics ---------------------------------------------------------------------------------


def metrics_registry(results: Sequence[ProbeResult]) -> CollectorRegistry:
    """The results as gauges, in a registry of their own (nothing else of the process)."""
    registry = CollectorRegistry()
    success = Gauge(
        "billing_probe_success",
        "1 if the probe's last run passed, 0 if it failed",
        ["probe"],
        registry=registry,
    )
    duration = Gauge(
        "billing_probe_duration_seconds",
        "How long the probe's last run took",
        ["probe"],
        registry=registry,
    )
    last_run = Gauge(
        "billing_probe_last_run_timestamp_seconds",
        "When the probe last finished a run (Unix time)",
        ["probe"],
        registry=registry,
    )
    for result in results:
        success.labels(probe=result.probe).set(1 if result.passed else 0)
        duration.labels(probe=result.probe).set(result.seconds)
        last_run.labels(probe=result.probe).set(result.finished_at)
    return registry


def write_metrics_file(path: Path, results: Sequence[ProbeResult]) -> None:
    """The text exposition format, replaced atomically (a collector never reads half a file)."""
    write_to_textfile(str(path), metrics_registry(results))


def push_metrics(gateway: str, results: Sequence[ProbeResult], timeout_s: float = 10.0) -> None:
    """PUT to the Pushgateway: the group of job ``billing_probe`` holds this run only."""
    push_to_gateway(gateway, job=JOB, registry=metrics_registry(results), timeout=timeout_s)


# --- output ----------------------------------------------------------------------------------


def render_table(results: Sequence[ProbeResult]) -> list[str]:
    rows = [("PROBE", "RESULT", "SECONDS", "REASON")] + [
        (r.probe, "pass" if r.passed else "FAIL", f"{r.seconds:.2f}", r.reason) for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        "  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2])])
        + f"  {row[3]}\n"
        for row in rows
    ]


def report(
    target: str, run_id: str, results: Sequence[ProbeResult], skipped: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "target": target,
        "runId": run_id,
        "passed": all(r.passed for r in results),
        "probes": [r.as_dict() for r in results],
        "skipped": dict(skipped),
    }


# --- the command ------------------------------------------------------------------------------


def _user_token(
    target: OpsTarget, user: str, token_file: Path | None, env: Mapping[str, str]
) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise TargetError(
                f"cannot read the probe user's token file {token_file}: {exc}"
            ) from exc
        if not token:
            raise TargetError(f"the probe user's token file {token_file} is empty")
        return token
    if env.get(USER_TOKEN_ENV):
        return env[USER_TOKEN_ENV].strip()
    if target.local is not None:
        return keys.mint_token(target.local, user, [], 600)
    raise TargetError(
        f"no token for the probe user on {target.describe()}: pass --user-token-file or set "
        f"{USER_TOKEN_ENV}"
    )


@dataclass(frozen=True)
class Plan:
    probes: list[str]
    skipped: dict[str, str]
    settings: ProbeSettings


def plan(
    target: OpsTarget,
    *,
    user: str,
    user_token_file: Path | None,
    checkout: bool | None,
    ai: bool,
    reconciliation: bool,
    timeout_s: float,
    run_id: str,
    env: Mapping[str, str],
) -> Plan:
    """Which probes run and with which credentials; TargetError when one is missing."""
    secret = target.webhook_secret()
    skipped: dict[str, str] = {}
    if checkout is None:
        checkout = target.is_local or secret is not None
        if not checkout:
            skipped["checkout"] = (
                f"off by default on a remote target (--checkout, or set {WEBHOOK_SECRET_ENV})"
            )
    elif not checkout:
        skipped["checkout"] = "--no-checkout"
    if checkout and secret is None:
        raise TargetError(
            f"the checkout probe signs its webhook with the Stripe webhook secret: set "
            f"{WEBHOOK_SECRET_ENV}, or pass --no-checkout"
        )
    if not ai:
        skipped["ai"] = "--no-ai"
    if not reconciliation:
        skipped["reconciliation"] = "--no-reconciliation"
    chosen = [
        name
        for name, on in (("checkout", checkout), ("ai", ai), ("reconciliation", reconciliation))
        if on
    ]
    if not chosen:
        raise TargetError("every probe is switched off: nothing to run")
    user_token = _user_token(target, user, user_token_file, env) if checkout or ai else None
    if reconciliation:
        target.admin_token()  # a missing admin token is a configuration error, said up front
    settings = ProbeSettings(run_id, user_token, secret, timeout_s)
    return Plan(chosen, skipped, settings)


CHECKOUT_HELP = (
    "Run the checkout probe (default: on for the local stack, or when "
    f"{WEBHOOK_SECRET_ENV} is set). It plays the paid webhook itself: see above."
)


def command(
    user: Annotated[
        str,
        typer.Option(
            "--user", help="The probe user, for the local stack's minted token (else: the token's)"
        ),
    ] = "probe",
    user_token_file: Annotated[
        Path | None,
        typer.Option(
            "--user-token-file",
            help=f"File holding the probe user's JWT (default: ${USER_TOKEN_ENV})",
            show_default=False,
        ),
    ] = None,
    checkout: Annotated[
        bool | None,
        typer.Option("--checkout/--no-checkout", help=CHECKOUT_HELP, show_default=False),
    ] = None,
    ai: Annotated[bool, typer.Option("--ai/--no-ai", help="Run the AI probe")] = True,
    reconciliation: Annotated[
        bool,
        typer.Option("--reconciliation/--no-reconciliation", help="Run the reconciliation probe"),
    ] = True,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=1, help="Seconds to wait for fulfilment or a reconciliation run"
        ),
    ] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="The results as JSON on stdout")] = False,
    pushgateway: Annotated[
        str | None,
        typer.Option(
            "--pushgateway",
            help=f"Push the results to this Pushgateway (job {JOB})",
            show_default=False,
        ),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Write the results here in the text format (node-exporter textfile collector)",
            show_default=False,
        ),
    ] = None,
    target: TargetOption = None,
    admin_target: AdminTargetOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Synthetic probes: checkout, AI call, reconciliation; exit 1 if any fails.

    The checkout probe buys the smallest package for the probe user and then plays the paid
    Checkout Session webhook itself, signed with the webhook secret: the credits are granted
    although nobody paid. Against production that is opt-in (--checkout, or the secret in
    the environment): every run adds a payment Stripe never took to the revenue and
    liability figures, which a reconciliation against Stripe's own records would (rightly)
    flag. Without it, keep the probe user funded (an admin adjustment) for the AI probe.
    """
    run_id = f"probe-{int(time.time())}-{uuid.uuid4().hex[:8]}"
    try:
        where = OpsTarget.resolve(target, admin_target, token_file)
        chosen = plan(
            where,
            user=user,
            user_token_file=user_token_file,
            checkout=checkout,
            ai=ai,
            reconciliation=reconciliation,
            timeout_s=timeout,
            run_id=run_id,
            env=os.environ,
        )
    except TargetError as exc:
        _fail(str(exc))
    for name, why in chosen.skipped.items():
        console.print(Text(f"{name} probe skipped: {why}", "dim"), soft_wrap=True)
    with httpx.Client(timeout=min(HTTP_TIMEOUT_S, timeout)) as client:
        results = Prober(client, where, chosen.settings).run(chosen.probes)
    if as_json:
        body = report(where.describe(), run_id, results, chosen.skipped)
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    else:
        sys.stdout.writelines(render_table(results))
    try:
        if metrics_file is not None:
            write_metrics_file(metrics_file, results)
        if pushgateway is not None:
            push_metrics(pushgateway, results)
    except OSError as exc:
        _fail(f"results not exported: {exc}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def _fail(message: str) -> NoReturn:
    # Text, not markup: messages may quote response bodies with brackets in them. Not
    # wrapped: one line per error, also in a job's log.
    console.print(Text.assemble(("✗ ", "red"), message), soft_wrap=True)
    raise typer.Exit(1)
