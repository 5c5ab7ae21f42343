"""HTTP API of checkout: the package catalog, buying a package, a purchase's status, and
the billing switches (public values, admin view and change).

``POST /api/purchases`` flow, in this order:
1. per-IP rate limit, counted in the database for all replicas together (429
   ``rate_limited`` with ``Retry-After``), bearer token (401);
2. purchases switched off (``billingEnabled`` or ``purchasesEnabled`` false, as read from
   the switches on every request, cached for at most ``CHECKOUT_SWITCH_CACHE_S``) -> 503
   ``purchases_disabled``;
3. the package code must be in the catalog (422 ``unknown_package`` + ``knownPackages``),
   ``returnTo`` must be a same-origin relative path (422 ``invalid_return_to``); any
   amount the client sends is ignored, prices come from the server-side catalog;
4. with an ``Idempotency-Key`` header the key is claimed first (see ``idempotency``): a
   repeat answers the stored response (``Idempotent-Replayed: true``), another body 409;
5. the purchase is committed as pending, then a Stripe Checkout Session is created for it
   (no transaction open), then its id and URL are stored -> 201 ``{purchaseId,
   checkoutUrl, status}``. Stripe failing -> the purchase is marked failed, 502.
Credits are granted later by the ledger, only on Stripe's paid webhook; the purchase's
status follows from those events (see ``handlers``).

``PATCH /api/admin/features``: admin token (401/403), then the body: unknown fields or
values of the wrong JSON type -> 422 ``validation_error``; a null value, a percentage
outside 0..100, a bad allowlist entry or no switch at all -> 422 ``invalid_switch``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol

from billing_platform.auth import AdminUser, CurrentUser, current_principal
from billing_platform.errors import ApiError
from billing_platform.ratelimit import Limiter, per_ip
from billing_platform.schemas import Text
from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse

from checkout import catalog
from checkout.idempotency import Answer, IdempotencyKeys, check_key, request_hash
from checkout.redirects import DEFAULT_RETURN_TO, MAX_RETURN_TO_LENGTH, is_valid_return_to
from checkout.schemas import (
    AdminFeaturesOut,
    FeaturesOut,
    FeaturesPatch,
    PackageOut,
    PurchaseCreated,
    PurchaseOut,
    PurchasePage,
    PurchaseRequest,
)
from checkout.service import PurchaseService
from checkout.switches import SwitchValues, checked_value, purchases_allowed

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
PurchaseId = Annotated[Text, Path(max_length=100)]


class SwitchReader(Protocol):
    async def current(self) -> SwitchValues: ...


class SwitchAdmin(Protocol):
    @property
    def forced(self) -> list[str]: ...

    async def view(self) -> AdminFeaturesOut: ...

    async def change(
        self, actor: str, changes: dict[str, Any], reason: str
    ) -> AdminFeaturesOut: ...


def purchases_switch(switches: SwitchReader) -> Callable[[], Any]:
    """Dependency answering 503 while purchases are off; asked on every request."""

    async def check() -> None:
        if not purchases_allowed(await switches.current()):
            raise ApiError(503, "purchases_disabled", "purchases are switched off")

    return check


def valid_package(code: str) -> catalog.Package:
    package = catalog.find_package(code)
    if package is None:
        raise ApiError(
            422,
            "unknown_package",
            f"unknown package: {code[:64]}",
            knownPackages=catalog.package_codes(),
        )
    return package


def valid_return_to(value: str | None) -> str:
    return_to = DEFAULT_RETURN_TO if value is None else value
    if not is_valid_return_to(return_to):
        raise ApiError(
            422,
            "invalid_return_to",
            f"returnTo must be a relative path starting with '/' (at most "
            f"{MAX_RETURN_TO_LENGTH} characters)",
        )
    return return_to


def valid_changes(body: FeaturesPatch) -> dict[str, Any]:
    """Switch name -> value to store, for each switch the body names."""
    changes = {name: checked_value(name, value) for name, value in body.changes().items()}
    if not changes:
        raise ApiError(422, "invalid_switch", "name at least one switch to change")
    return changes


def respond(answer: Answer) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


def router(
    purchases: PurchaseService,
    keys: IdempotencyKeys,
    *,
    limiter: Limiter,
    switches: SwitchReader,
) -> APIRouter:
    api = APIRouter(tags=["checkout"])
    enabled = purchases_switch(switches)

    @api.get("/api/packages", response_model=list[PackageOut])
    async def list_packages() -> list[PackageOut]:
        return [PackageOut.of(p) for p in catalog.PACKAGES]

    @api.post(
        "/api/purchases",
        status_code=201,
        response_model=PurchaseCreated,
        # In this order: rate limit, bearer token, the purchases switch (the principal is
        # resolved once per request and handed to the endpoint from the cache).
        dependencies=[Depends(per_ip(limiter)), Depends(current_principal), Depends(enabled)],
    )
    async def create_purchase(
        principal: CurrentUser,
        body: PurchaseRequest,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        package = valid_package(body.packageCode)
        return_to = valid_return_to(body.returnTo)

        async def create() -> tuple[int, dict[str, Any]]:
            return 201, await purchases.create(principal.user_id, package, return_to)

        if idempotency_key is None:
            status, created = await create()
            return respond(Answer(status, created))
        req_hash = request_hash({"packageCode": package.code, "returnTo": return_to})
        key = check_key(idempotency_key)
        return respond(await keys.run(principal.user_id, key, req_hash, create))

    @api.get("/api/purchases", response_model=PurchasePage)
    async def list_purchases(
        principal: CurrentUser,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        user_id: Annotated[Text | None, Query(alias="userId", max_length=200)] = None,
    ) -> PurchasePage:
        target = user_id or principal.user_id
        principal.ensure_can_access(target)
        return await purchases.history(target, limit, cursor)

    @api.get("/api/purchases/{purchase_id}", response_model=PurchaseOut)
    async def get_purchase(purchase_id: PurchaseId, principal: CurrentUser) -> PurchaseOut:
        purchase = await purchases.get(purchase_id)
        if purchase is None or not (purchase.user_id == principal.user_id or principal.is_admin):
            raise ApiError(404, "purchase_not_found", "no such purchase")
        return purchase

    return api


def features_router(switches: SwitchReader, admin: SwitchAdmin) -> APIRouter:
    api = APIRouter(tags=["features"])

    @api.get("/api/v1/meta/features", response_model=FeaturesOut)
    async def features() -> FeaturesOut:
        """The live switch values. No token: nothing here is secret, and the web app reads
        them before login. The shadow allowlist (user ids) is left out."""
        return FeaturesOut.of(await switches.current(), admin.forced)

    @api.get("/api/admin/features", response_model=AdminFeaturesOut)
    async def admin_features(_admin: AdminUser) -> AdminFeaturesOut:
        return await admin.view()

    @api.patch("/api/admin/features", response_model=AdminFeaturesOut)
    async def change_features(body: FeaturesPatch, principal: AdminUser) -> AdminFeaturesOut:
        return await admin.change(principal.user_id, valid_changes(body), body.reason)

    return api
