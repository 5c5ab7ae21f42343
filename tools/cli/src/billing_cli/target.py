"""Where the ops commands send their calls, and with which admin token.

A target is one of:

- a gateway: one URL in front of every service (``--target`` / ``BILLING_TARGET_URL``), such
  as the chart's Ingress. Paths are sent as they are and routed by the same prefixes as the
  Ingress (``ingress.routes``, and ``ingress.admin.routes`` on the admin host, which
  ``--admin-target`` / ``BILLING_ADMIN_TARGET_URL`` names when it is another host);
- per-service base URLs (``BILLING_CHECKOUT_URL``, ``BILLING_WEBHOOK_INGEST_URL``,
  ``BILLING_LEDGER_URL``, ``BILLING_METERING_URL``, ``BILLING_RECONCILER_URL``), e.g. the
  in-cluster Services or a ``kubectl port-forward``; each one wins over a gateway from the
  environment for its service;
- otherwise the selected local stack (``billing up``, or the test stack).

The admin token comes from ``--token-file``, ``BILLING_ADMIN_TOKEN_FILE`` or
``BILLING_ADMIN_TOKEN``. Only a local stack falls back to a token minted with its dev key:
a remote target without a token is an error, never a token signed by a key it does not trust.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from billing_cli import keys
from billing_cli.layout import SERVICES, Layout
from billing_cli.stack import Stack

ADMIN_SUBJECT = "billing-cli"
ADMIN_TOKEN_TTL_S = 300

TARGET_ENV = "BILLING_TARGET_URL"
ADMIN_TARGET_ENV = "BILLING_ADMIN_TARGET_URL"
# Names of variables, not credentials.
TOKEN_FILE_ENV = "BILLING_ADMIN_TOKEN_FILE"  # noqa: S105
TOKEN_ENV = "BILLING_ADMIN_TOKEN"  # noqa: S105
WEBHOOK_SECRET_ENV = "BILLING_STRIPE_WEBHOOK_SECRET"  # noqa: S105
KAFKA_BOOTSTRAP_ENV = "BILLING_KAFKA_BOOTSTRAP"
TOPIC_NAMESPACE_ENV = "BILLING_TOPIC_NAMESPACE"

# The chart's Ingress (deploy/helm/billing/values.yaml): path prefix -> service. A unit test
# keeps these equal to the chart's values, so a gateway target routes as the Ingress does.
PUBLIC_ROUTES: dict[str, str] = {
    "/api/packages": "checkout",
    "/api/purchases": "checkout",
    "/api/v1/meta": "checkout",
    "/webhooks/stripe": "webhook-ingest",
    "/api/balance": "ledger",
    "/api/ledger": "ledger",
    "/api/statements": "ledger",
    "/api/ai": "metering",
    "/api/usage": "metering",
    "/api/rate-card": "metering",
}
ADMIN_ROUTES: dict[str, str] = {
    "/api/admin/features": "checkout",
    "/api/admin/webhooks": "webhook-ingest",
    "/api/admin/adjustments": "ledger",
    "/api/admin/fulfill-purchase": "ledger",
    "/api/admin/accounting": "ledger",
    "/api/admin/audit": "ledger",
    "/api/admin/caps": "metering",
    "/api/admin/users": "metering",
    "/api/admin/review-flags": "metering",
    "/api/admin/reconcile": "reconciler",
    "/api/admin/reconciliation": "reconciler",
}


class TargetError(Exception):
    """The target or its credentials are missing or unusable (one line for the operator)."""


def service_url_env(service: str) -> str:
    """``BILLING_<SERVICE>_URL``, e.g. ``BILLING_WEBHOOK_INGEST_URL``."""
    return f"BILLING_{service.upper().replace('-', '_')}_URL"


def _elements(path: str) -> list[str]:
    return [p for p in path.split("?", 1)[0].split("/") if p]


def gateway_route(path: str) -> tuple[str, bool] | None:
    """(service, on the admin host) of the Ingress rule a path falls under, or None.

    Prefix matching by whole path elements (Kubernetes ``pathType: Prefix``), longest first.
    """
    have = _elements(path)
    best: tuple[int, str, bool] | None = None
    for admin, routes in ((False, PUBLIC_ROUTES), (True, ADMIN_ROUTES)):
        for prefix, service in routes.items():
            want = _elements(prefix)
            if have[: len(want)] == want and (best is None or len(want) > best[0]):
                best = (len(want), service, admin)
    return None if best is None else (best[1], best[2])


def _first_secret(value: str) -> str:
    # The secret list of a rotation ("new,old"), as webhook-ingest reads it: any one signs.
    return next((s.strip() for s in value.split(",") if s.strip()), "")


@dataclass(frozen=True)
class TokenSource:
    """Where the admin token comes from, read when a command first needs it."""

    file: Path | None = None
    value: str | None = None
    mint: Callable[[], str] | None = None
    # Names the target in the error when there is no token.
    target: str = ""

    def token(self) -> str:
        if self.file is not None:
            try:
                token = self.file.read_text().strip()
            except OSError as exc:
                raise TargetError(f"cannot read the admin token file {self.file}: {exc}") from exc
            if not token:
                raise TargetError(f"the admin token file {self.file} is empty")
            return token
        if self.value:
            return self.value.strip()
        if self.mint is not None:
            return self.mint()
        raise TargetError(
            f"no admin token for {self.target}: pass --token-file or set {TOKEN_FILE_ENV} "
            f"or {TOKEN_ENV} (the local dev key signs tokens for the local stack only)"
        )


@dataclass(frozen=True)
class OpsTarget:
    """Base URLs of the services, the admin token and the webhook secret of one deployment."""

    # service -> base URL, for services reached directly.
    services: Mapping[str, str]
    gateway: str | None = None
    admin_gateway: str | None = None
    # The local stack's layout when the target is a local stack.
    local: Layout | None = None
    tokens: TokenSource = field(default_factory=TokenSource)
    webhook_signing_secret: str | None = None

    @property
    def is_local(self) -> bool:
        return self.local is not None

    def describe(self) -> str:
        if self.local is not None:
            return f"the local stack ({self.local.name})"
        if self.gateway is not None:
            return self.gateway
        return ", ".join(f"{name}={url}" for name, url in self.services.items())

    def url(self, service: str, path: str) -> str:
        """The URL of ``path`` on ``service``; a gateway only for paths its Ingress routes."""
        if service in self.services:
            return self.services[service].rstrip("/") + path
        if self.gateway is None:
            raise TargetError(
                f"no URL for {service}: set {service_url_env(service)}, or {TARGET_ENV} "
                "(or --target) to a gateway in front of every service"
            )
        routed = gateway_route(path)
        if routed is None or routed[0] != service:
            raise TargetError(
                f"the ingress routes no {path.split('?', 1)[0]} to {service}: set "
                f"{service_url_env(service)} to the service's own URL (e.g. a port-forward)"
            )
        base = (self.admin_gateway or self.gateway) if routed[1] else self.gateway
        return base.rstrip("/") + path

    def admin_token(self) -> str:
        return self.tokens.token()

    def webhook_secret(self) -> str | None:
        """The Stripe webhook signing secret, when known (environment, or the local stack)."""
        return self.webhook_signing_secret

    @classmethod
    def resolve(
        cls,
        target: str | None = None,
        admin_target: str | None = None,
        token_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        local_layout: Callable[[], Layout] | None = None,
    ) -> OpsTarget:
        """Options first, then the environment, then the selected local stack."""
        env = os.environ if env is None else env
        secret = _first_secret(env.get(WEBHOOK_SECRET_ENV, "")) or None
        file = token_file or (Path(env[TOKEN_FILE_ENV]) if env.get(TOKEN_FILE_ENV) else None)
        value = env.get(TOKEN_ENV) or None
        admin_gateway = admin_target or env.get(ADMIN_TARGET_ENV) or None
        if target:
            # An explicit gateway is the whole target: leftover per-service variables in
            # the shell must not send some calls elsewhere.
            return cls(
                {}, target, admin_gateway, None, TokenSource(file, value, None, target), secret
            )
        direct = {s: env[service_url_env(s)] for s in SERVICES if env.get(service_url_env(s))}
        gateway = env.get(TARGET_ENV) or None
        if direct or gateway:
            where = gateway or ", ".join(direct.values())
            return cls(
                direct, gateway, admin_gateway, None, TokenSource(file, value, None, where), secret
            )
        layout = local_layout() if local_layout is not None else Layout.selected()
        return cls.local_stack(layout, file, value, secret, env)

    @classmethod
    def local_stack(
        cls,
        layout: Layout,
        token_file: Path | None = None,
        token: str | None = None,
        webhook_secret: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> OpsTarget:
        env = os.environ if env is None else env
        # Services inherit BILLING_TOPIC_NAMESPACE from the shell that started them.
        stack = Stack(layout, env.get(TOPIC_NAMESPACE_ENV, ""))
        urls = {name: svc.url for name, svc in stack.services.items()}

        def mint() -> str:
            return keys.mint_token(layout, ADMIN_SUBJECT, ["admin"], ADMIN_TOKEN_TTL_S, mfa=True)

        tokens = TokenSource(token_file, token, mint, f"the local stack ({layout.name})")
        secret = webhook_secret or stack.secrets["stripe_webhook_secret"]
        return cls(urls, None, None, layout, tokens, secret)


@dataclass(frozen=True)
class KafkaTarget:
    """The broker and topic namespace of the dlq commands."""

    bootstrap: str
    topic_namespace: str

    @classmethod
    def resolve(
        cls,
        env: Mapping[str, str] | None = None,
        local_layout: Callable[[], Layout] | None = None,
    ) -> KafkaTarget:
        env = os.environ if env is None else env
        namespace = env.get(TOPIC_NAMESPACE_ENV, "")
        bootstrap = env.get(KAFKA_BOOTSTRAP_ENV)
        if bootstrap:
            return cls(bootstrap, namespace)
        layout = local_layout() if local_layout is not None else Layout.selected()
        return cls(Stack(layout, namespace).kafka.bootstrap, namespace)


# Options every command that calls a service takes (flags first, then the environment).
TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="One gateway URL in front of every service, e.g. the chart's Ingress (default: "
        f"$BILLING_<SERVICE>_URL per service, then ${TARGET_ENV}, then the local stack)",
        show_default=False,
    ),
]
AdminTargetOption = Annotated[
    str | None,
    typer.Option(
        "--admin-target",
        help=f"The gateway for /api/admin paths when it is another host (the chart's "
        f"ingress.admin.host; default: ${ADMIN_TARGET_ENV}, then --target)",
        show_default=False,
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help=f"File holding an admin JWT (default: ${TOKEN_FILE_ENV}, then ${TOKEN_ENV}; "
        "the local stack mints one with its dev key)",
        show_default=False,
    ),
]
