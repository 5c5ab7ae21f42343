"""``billing go-live STAGE``: the go-live runbook (preflight, smoke, webhook, canary, rollback).

Every stage is a list of steps handed to a ``Runner``: helm and kubectl commands, holds and
HTTP calls. ``DryRun`` prints them and touches nothing; ``LiveRun`` carries them out. Both get
the very same steps from the same code, so a dry run shows exactly what a real run would do.
The canary gate (``gate``) is a pure function of Prometheus's answers.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Protocol

import httpx
import typer
from rich.console import Console
from rich.text import Text

from billing_cli import stripe_sim as sim
from billing_cli.layout import repo_root

WEIGHTS = (1, 5, 20, 50, 100)
# Probes and scrapes reach a pod whatever the canary weight: they are not traffic.
NOT_TRAFFIC = "/health|/readyz|/metrics"
# Forced switches (README "Switches"): checkout writes them over the stored ones at start.
SWITCHES_OFF = ("BILLING_PURCHASE_ENABLED", "BILLING_CHARGING_ENABLED")
# What `helm upgrade --install` of the chart creates (Secrets: helm's own release records).
HELM_CREATES = (
    "deployments.apps",
    "services",
    "jobs.batch",
    "ingresses.networking.k8s.io",
    "networkpolicies.networking.k8s.io",
    "horizontalpodautoscalers.autoscaling",
    "poddisruptionbudgets.policy",
    "secrets",
)
DEFAULT_CHART = repo_root() / "deploy" / "helm" / "billing"

console = Console(stderr=True)


class Stage(str, Enum):
    preflight = "preflight"
    smoke = "smoke"
    webhook = "webhook"
    canary = "canary"
    rollback = "rollback"
    full = "full"


class StageFailed(Exception):
    """A check or command failed; the run stops with exit code 1."""


@dataclass(frozen=True)
class Options:
    namespace: str = "billing"
    release: str = "billing"
    canary_release: str = "billing-canary"
    chart: str = str(DEFAULT_CHART)
    values: tuple[str, ...] = ()
    image_tag: str | None = None
    secret: str = "billing-secrets"  # noqa: S105 (the Secret's name, not a credential)
    prometheus: str = "http://127.0.0.1:9090"
    canary_selector: str | None = None
    base_url: str | None = None
    token: str | None = None
    service_token: str | None = None
    user: str | None = None
    webhook_secret: str | None = None
    hold_s: int = 300
    max_error_rate: float = 0.01
    max_p99_s: float = 1.0
    revision: int | None = None
    timeout: str = "15m"
    run_id: str = "golive"


@dataclass(frozen=True)
class HttpCall:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    # How a raw (``content``) body is shown in a dry run.
    shown: str = ""

    def describe(self) -> str:
        """One line, without the headers (they carry the credentials)."""
        parts = [self.method, self.url]
        parts += [f"{k}={v}" for k, v in self.params.items()]
        if self.json is not None:
            parts.append(json.dumps(self.json, separators=(",", ":")))
        if self.shown:
            parts.append(f"({self.shown})")
        return " ".join(parts)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Runner(Protocol):
    def command(self, argv: Sequence[str]) -> None: ...

    def hold(self, seconds: int) -> None: ...

    def http(self, call: HttpCall) -> Reply | None:
        """The answer; None when nothing was sent (a dry run)."""
        ...

    def note(self, message: str) -> None: ...


class DryRun:
    """Prints each step: commands shell-quoted, holds as ``sleep``, HTTP calls as comments."""

    def __init__(self, out: Callable[[str], object]) -> None:
        self._out = out

    def command(self, argv: Sequence[str]) -> None:
        self._out(shlex.join(argv))

    def hold(self, seconds: int) -> None:
        self._out(f"sleep {seconds}")

    def http(self, call: HttpCall) -> Reply | None:
        self._out(f"# {call.describe()}")
        return None

    def note(self, message: str) -> None:
        console.print(Text(message, "dim"))


class LiveRun:
    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def command(self, argv: Sequence[str]) -> None:
        console.print(Text(f"$ {shlex.join(argv)}", "dim"))
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise StageFailed(f"{shlex.join(argv)} exited {done.returncode}:\n{tail}")

    def hold(self, seconds: int) -> None:
        console.print(Text(f"holding {seconds}s", "dim"))
        time.sleep(seconds)

    def http(self, call: HttpCall) -> Reply | None:
        response = self._client.request(
            call.method,
            call.url,
            headers=dict(call.headers),
            params=dict(call.params),
            json=call.json,
            content=call.content,
        )
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return Reply(response.status_code, body)

    def note(self, message: str) -> None:
        console.print(Text(message))


@contextmanager
def live_runner() -> Iterator[Runner]:
    with httpx.Client(timeout=30.0) as client:
        yield LiveRun(client)


# --- the canary gate ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str


def _samples(answer: Mapping[str, Any]) -> list[float]:
    found = [float(s["value"][1]) for s in answer.get("data", {}).get("result", [])]
    return [x for x in found if not math.isnan(x)]


def _failed_query(answers: Sequence[Mapping[str, Any]]) -> str | None:
    for answer in answers:
        if answer.get("status") != "success":
            return f"prometheus query failed: {answer.get('error', answer.get('status'))}"
    return None


def gate(
    requests: Mapping[str, Any],
    errors: Mapping[str, Any],
    p99: Mapping[str, Any],
    *,
    max_error_rate: float = 0.01,
    max_p99_s: float = 1.0,
) -> Verdict:
    """Pass or breach from the answers of ``queries``' three queries (/api/v1/query JSON)."""
    if (failed := _failed_query([requests, errors, p99])) is not None:
        return Verdict(False, failed)
    rate = sum(_samples(requests))
    if rate <= 0:
        # A canary that served nothing proves nothing.
        return Verdict(False, "no traffic seen")
    error_rate = sum(_samples(errors)) / rate
    if error_rate > max_error_rate:
        return Verdict(False, f"error rate {error_rate:.2%} above {max_error_rate:.2%}")
    latency = _samples(p99)
    if not latency:
        return Verdict(False, "no latency data")
    if max(latency) > max_p99_s:
        return Verdict(False, f"p99 latency {max(latency):.2f} s above {max_p99_s:.2f} s")
    return Verdict(True, f"error rate {error_rate:.2%}, p99 latency {max(latency):.3f} s")


def queries(o: Options) -> tuple[str, str, str]:
    """Request rate, 5xx rate and p99 latency of the canary's pods, over the hold."""
    sel = o.canary_selector or f'namespace="{o.namespace}",pod=~"{o.canary_release}-.+"'
    sel += f',route!~"{NOT_TRAFFIC}"'
    window = f"{max(o.hold_s, 60)}s"
    return (
        f"sum(rate(http_requests_total{{{sel}}}[{window}]))",
        f'sum(rate(http_requests_total{{{sel},status=~"5.."}}[{window}]))',
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(http_request_duration_seconds_bucket{{{sel}}}[{window}])))",
    )


def _measure(o: Options, r: Runner) -> Verdict | None:
    url = f"{o.prometheus.rstrip('/')}/api/v1/query"
    answers = [r.http(HttpCall("GET", url, params={"query": q})) for q in queries(o)]
    if any(a is None for a in answers):
        return None
    bodies = [a.body if a is not None and isinstance(a.body, dict) else {} for a in answers]
    return gate(*bodies, max_error_rate=o.max_error_rate, max_p99_s=o.max_p99_s)


# --- stages --------------------------------------------------------------------------------


def _values(o: Options) -> list[str]:
    return [arg for path in o.values for arg in ("-f", path)]


def _canary_release(o: Options, weight: int) -> list[str]:
    """The canary release at ``weight``: what both ``helm template`` and ``helm upgrade`` take."""
    return [
        *(o.canary_release, o.chart, "-n", o.namespace),
        *_values(o),
        *("-f", f"{o.chart}/values-canary.yaml"),
        *(["--set", f"image.tag={o.image_tag}"] if o.image_tag else []),
        *("--set", "canary.enabled=true", "--set", f"canary.weight={weight}"),
    ]


def _canary_install(o: Options, weight: int) -> list[str]:
    return [
        *("helm", "upgrade", "--install", *_canary_release(o, weight)),
        *("--wait", "--timeout", o.timeout),
    ]


def preflight(o: Options, r: Runner) -> None:
    """Cluster, Secret, rights, the running release ready, the canary renders and validates."""
    r.command(["kubectl", "version"])
    r.command(["kubectl", "-n", o.namespace, "get", "secret", o.secret])
    for resource in HELM_CREATES:
        r.command(["kubectl", "-n", o.namespace, "auth", "can-i", "create", resource])
    # Ready pods passed /readyz: their database and Kafka are reachable from the cluster.
    selector = f"app.kubernetes.io/instance={o.release}"
    r.command(
        [
            *("kubectl", "-n", o.namespace, "wait", "--for=condition=Available", "deployment"),
            *("-l", selector, "--timeout=120s"),
        ]
    )
    # --validate: against the cluster's API, as an install would be (CRDs, versions).
    r.command(["helm", "template", *_canary_release(o, WEIGHTS[0]), "--validate"])


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or ''}"}


def _ok(reply: Reply | None, what: str) -> Any:
    """The body of a 2xx answer (None in a dry run); anything else fails the stage."""
    if reply is None:
        return None
    if not reply.ok:
        raise StageFailed(f"{what}: {reply.status} {reply.body}")
    return reply.body


def _balance(o: Options, r: Runner) -> int | None:
    call = HttpCall("GET", f"{_base(o)}/api/balance", _bearer(o.token))
    body = _ok(r.http(call), "ledger GET /api/balance")
    return None if body is None else int(body["balanceMillicredits"])


def _base(o: Options) -> str:
    return (o.base_url or "").rstrip("/")


def _purchase(o: Options, r: Runner) -> None:
    headers = {**_bearer(o.token), "Idempotency-Key": f"{o.run_id}-purchase"}
    call = HttpCall("POST", f"{_base(o)}/api/purchases", headers, json={"packageCode": "starter"})
    body = _ok(r.http(call), "checkout POST /api/purchases")
    if body is not None and not body.get("checkoutUrl"):
        raise StageFailed(f"checkout POST /api/purchases: no checkoutUrl in {body}")


def _usage(o: Options, r: Runner) -> None:
    usage = {
        "userId": o.user,
        "model": "gpt-4o-mini",
        "inputTokens": 1000,
        "outputTokens": 500,
        "idempotencyKey": f"{o.run_id}-usage",
    }
    call = HttpCall("POST", f"{_base(o)}/api/usage/reconcile", _bearer(o.service_token), json=usage)
    _ok(r.http(call), "metering POST /api/usage/reconcile")


def smoke(o: Options, r: Runner) -> None:
    """Each public service answers through the ingress; a purchase and a charge go through."""
    _ok(r.http(HttpCall("GET", f"{_base(o)}/api/packages")), "checkout GET /api/packages")
    rate_card = HttpCall("GET", f"{_base(o)}/api/rate-card", _bearer(o.token))
    _ok(r.http(rate_card), "metering GET /api/rate-card")
    before = _balance(o, r)
    _purchase(o, r)
    _usage(o, r)
    after = _balance(o, r)
    if before is None or after is None:
        return
    if not after < before:
        raise StageFailed(f"the usage charge did not move the balance ({before} -> {after})")
    r.note(f"smoke passed: balance {before} -> {after} millicredits")


def webhook(o: Options, r: Runner) -> None:
    """A signed test event twice: stored once, then recognised as a duplicate."""
    probe = {"id": f"golive_{o.run_id}", "object": "golive_probe"}
    # A type the ledger ignores: the probe moves no credits.
    evt = sim.event("golive.probe", probe, event_id=f"evt_golive_{o.run_id}")
    body = sim.encode(evt)
    for expect_duplicate in (False, True):
        headers = {
            "Stripe-Signature": sim.sign(body, o.webhook_secret or ""),
            "Content-Type": "application/json",
        }
        url = f"{_base(o)}/webhooks/stripe"
        shown = f"signed {evt['type']} {evt['id']}"
        call = HttpCall("POST", url, headers, content=body, shown=shown)
        answer = _ok(r.http(call), f"webhook-ingest POST /webhooks/stripe {evt['id']}")
        if answer is not None and answer.get("duplicate") is not expect_duplicate:
            raise StageFailed(f"expected duplicate={expect_duplicate}, got {answer}")


def rollback(o: Options, r: Runner) -> None:
    """Purchases and charging forced off, the release rolled back, the canary removed.

    The forced switches are stored by checkout when it starts, so they stay off after the
    rollback drops the variables, until an admin turns them on again."""
    switches = [a for name in SWITCHES_OFF for a in ("--set-string", _checkout_env(name))]
    r.command(
        [
            *("helm", "upgrade", o.release, o.chart, "-n", o.namespace),
            *("--reset-then-reuse-values", *switches, "--wait", "--timeout", o.timeout),
        ]
    )
    revision = [] if o.revision is None else [str(o.revision)]
    r.command(
        [
            *("helm", "rollback", o.release, *revision, "-n", o.namespace),
            *("--wait", "--timeout", o.timeout),
        ]
    )
    r.command(
        ["helm", "uninstall", o.canary_release, "-n", o.namespace, "--ignore-not-found", "--wait"]
    )


def _checkout_env(name: str) -> str:
    return f"services.checkout.env.{name}=false"


def _promote(o: Options, r: Runner) -> None:
    r.command(
        [
            *("helm", "upgrade", o.release, o.chart, "-n", o.namespace),
            *("--reset-then-reuse-values", *_values(o), "--set", f"image.tag={o.image_tag}"),
            *("--wait", "--timeout", o.timeout),
        ]
    )
    r.command(["helm", "uninstall", o.canary_release, "-n", o.namespace, "--wait"])


def canary(o: Options, r: Runner) -> None:
    """1, 5, 20, 50, 100 % with a hold and the gate after each; a breach rolls back."""
    for weight in WEIGHTS:
        r.command(_canary_install(o, weight))
        r.hold(o.hold_s)
        verdict = _measure(o, r)
        if verdict is not None and not verdict.passed:
            r.note(f"canary breached at {weight}%: {verdict.reason}; rolling back")
            rollback(o, r)
            raise StageFailed(f"canary breached at {weight}%: {verdict.reason} (rolled back)")
        if verdict is not None:
            r.note(f"canary at {weight}%: {verdict.reason}")
    _promote(o, r)


STAGES: dict[Stage, Callable[[Options, Runner], None]] = {
    Stage.preflight: preflight,
    Stage.smoke: smoke,
    Stage.webhook: webhook,
    Stage.canary: canary,
    Stage.rollback: rollback,
}
FULL = (Stage.preflight, Stage.smoke, Stage.webhook, Stage.canary)


def _missing(o: Options, stages: Sequence[Stage], dry_run: bool) -> list[str]:
    """Options a run of ``stages`` cannot do without (credentials only when really run)."""
    need: dict[str, Any] = {}
    if {Stage.smoke, Stage.webhook} & set(stages):
        need["--base-url"] = o.base_url
    if Stage.smoke in stages:
        need["--user"] = o.user
        if not dry_run:
            need |= {"--token": o.token, "--service-token": o.service_token}
    if Stage.webhook in stages and not dry_run:
        need["--webhook-secret"] = o.webhook_secret
    if Stage.canary in stages:
        need |= {"--image-tag": o.image_tag, "--values": o.values}
    return [name for name, value in need.items() if not value]


def run(stage: Stage, o: Options, r: Runner, dry_run: bool) -> None:
    """The stage (or every stage of ``full`` in order); raises StageFailed at the first failure."""
    stages = list(FULL) if stage is Stage.full else [stage]
    if missing := _missing(o, stages, dry_run):
        raise StageFailed(f"{stage.value} needs {', '.join(missing)}")
    for each in stages:
        r.note(f"== {each.value}")
        STAGES[each](o, r)


def execute(stage: Stage, o: Options, dry_run: bool) -> None:
    if dry_run:
        run(stage, o, DryRun(lambda line: sys.stdout.write(line + "\n")), dry_run)
        return
    with live_runner() as runner:
        run(stage, o, runner, dry_run)


# --- the command -----------------------------------------------------------------------------

Opt = typer.Option


def command(
    stage: Annotated[Stage, typer.Argument(help="The runbook stage; full: the first four")],
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the steps, change nothing")] = False,
    namespace: Annotated[str, Opt("--namespace", "-n", help="Kubernetes namespace")] = "billing",
    release: Annotated[str, Opt(help="The stable release")] = "billing",
    canary_release: Annotated[str, Opt(help="The canary release")] = "billing-canary",
    chart: Annotated[str, Opt(help="The chart's directory")] = str(DEFAULT_CHART),
    values: Annotated[
        list[str] | None, Opt("--values", "-f", help="Values of the stable release (repeatable)")
    ] = None,
    image_tag: Annotated[str | None, Opt(help="The version going live (canary)")] = None,
    secret: Annotated[str, Opt(help="The Secret the release reads")] = "billing-secrets",  # noqa: S107
    prometheus: Annotated[
        str, Opt(envvar="BILLING_GOLIVE_PROMETHEUS", help="Prometheus base URL")
    ] = "http://127.0.0.1:9090",
    canary_selector: Annotated[
        str | None, Opt(help="PromQL label matchers of the canary's series")
    ] = None,
    base_url: Annotated[
        str | None, Opt(envvar="BILLING_GOLIVE_BASE_URL", help="Public URL (smoke, webhook)")
    ] = None,
    token: Annotated[
        str | None, Opt(envvar="BILLING_GOLIVE_TOKEN", help="A test user's JWT (smoke)")
    ] = None,
    service_token: Annotated[
        str | None,
        Opt(envvar="BILLING_GOLIVE_SERVICE_TOKEN", help="A JWT with the service role (smoke)"),
    ] = None,
    user: Annotated[
        str | None, Opt(envvar="BILLING_GOLIVE_USER", help="The --token's user (sub)")
    ] = None,
    webhook_secret: Annotated[
        str | None, Opt(envvar="BILLING_GOLIVE_WEBHOOK_SECRET", help="whsec_... (webhook)")
    ] = None,
    hold_s: Annotated[int, Opt(min=0, help="Seconds at each canary weight")] = 300,
    max_error_rate: Annotated[float, Opt(help="Canary 5xx share that breaches")] = 0.01,
    max_p99_s: Annotated[float, Opt(help="Canary p99 latency (s) that breaches")] = 1.0,
    revision: Annotated[int | None, Opt(help="Revision rollback returns to")] = None,
    timeout: Annotated[str, Opt(help="helm --timeout")] = "15m",
    run_id: Annotated[
        str | None, Opt(help="Names the probes' keys and event id (default: the time)")
    ] = None,
) -> None:
    """The go-live runbook: preflight, smoke, webhook, canary (1-100%), rollback, or all."""
    options = Options(
        namespace=namespace,
        release=release,
        canary_release=canary_release,
        chart=chart,
        values=tuple(values or ()),
        image_tag=image_tag,
        secret=secret,
        prometheus=prometheus,
        canary_selector=canary_selector,
        base_url=base_url,
        token=token,
        service_token=service_token,
        user=user,
        webhook_secret=webhook_secret,
        hold_s=hold_s,
        max_error_rate=max_error_rate,
        max_p99_s=max_p99_s,
        revision=revision,
        timeout=timeout,
        run_id=run_id or f"golive-{int(time.time())}",
    )
    try:
        execute(stage, options, dry_run)
    except (StageFailed, httpx.HTTPError, OSError) as exc:
        console.print(Text.assemble(("✗ ", "red"), str(exc) or type(exc).__name__))
        raise typer.Exit(1) from None
