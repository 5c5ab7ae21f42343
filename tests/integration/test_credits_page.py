"""The Credits page in a real browser (Debian's Chromium, driven by Playwright) on the stack.

Every test signs in the way the dev stack allows (``/credits#token=<JWT>``), fails on any
console error or uncaught page error, runs axe-core on what it saw, and leaves a screenshot
in ``.local/test-artifacts/credits/``.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from billing_cli import keys, stripe_sim
from billing_cli.layout import repo_root
from billing_cli.stack import Stack
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed"
)

ARTIFACTS = repo_root() / ".local" / "test-artifacts" / "credits"
AXE = repo_root() / "web" / "node_modules" / "axe-core" / "axe.min.js"
STARTER_GRANT = 9_990_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        # As root the sandbox cannot start; the pages are the project's own.
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Visit:
    """A signed-in tab of the Credits page that records every console error."""

    def __init__(self, stack: Stack, page: Page, name: str) -> None:
        self.stack = stack
        self.page = page
        self.name = name
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def open(self, path: str, user: str, admin: bool = False) -> None:
        token = keys.mint_token(self.stack.layout, user, ["admin"] if admin else [], mfa=admin)
        self.page.goto(f"{self.stack.web.url}{path}#token={token}")

    def accessible(self) -> None:
        """No axe-core violation (WCAG 2 A/AA) on the page as it is now."""
        # Evaluated, not added as a <script>: the page's CSP rightly refuses inline scripts.
        self.page.evaluate(AXE.read_text())
        found: list[dict[str, Any]] = self.page.evaluate(
            "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})).violations"
        )
        assert found == [], [(v["id"], v["help"], len(v["nodes"])) for v in found]

    def shot(self, step: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-{step}.png"), full_page=True)


@pytest.fixture
def visit(stack: Stack, browser: Browser, request: pytest.FixtureRequest) -> Iterator[Visit]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    seen = Visit(stack, page, request.node.name.removeprefix("test_"))
    yield seen
    context.close()
    assert seen.errors == []


@pytest.fixture
def api(stack: Stack) -> Iterator[Callable[..., httpx.Response]]:
    """``api(service, method, path, user=..., admin=..., **httpx kwargs)`` on the real stack."""
    with httpx.Client(timeout=30) as client:

        def call(service: str, method: str, path: str, *, user: str = "ops", **kw: Any) -> Any:
            admin = kw.pop("admin", False)
            token = keys.mint_token(stack.layout, user, ["admin"] if admin else [], mfa=admin)
            headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
            url = stack.services[service].url + path
            return client.request(method, url, headers=headers, **kw)

        yield call


def _user() -> str:
    return f"web-{uuid.uuid4().hex[:10]}"


def _give(api: Callable[..., httpx.Response], user: str, millicredits: int) -> None:
    answer = api(
        "ledger",
        "POST",
        "/api/admin/adjustments",
        admin=True,
        json={
            "userId": user,
            "amountMillicredits": millicredits,
            "reason": "browser test credits",
            "referenceId": f"seed-{uuid.uuid4().hex[:8]}",
        },
    )
    assert answer.status_code == 201, answer.text


def _switch(api: Callable[..., httpx.Response], reason: str, **changes: bool) -> None:
    """Change billing switches as an admin (the page reads them, so the test sets them)."""
    answer = api(
        "checkout", "PATCH", "/api/admin/features", admin=True, json={**changes, "reason": reason}
    )
    assert answer.status_code == 200, answer.text


def test_buy_credits_end_to_end_and_go_back(
    stack: Stack, visit: Visit, api: Callable[..., httpx.Response]
) -> None:
    user, page = _user(), visit.page
    # Stripe's hosted page is not reachable here: the buyer "pays" while it shows.
    page.route(
        re.compile(r"https://checkout\.stripe\.com/.*"),
        lambda route: route.fulfill(status=200, content_type="text/html", body="<p>Stripe</p>"),
    )
    visit.open("/credits?returnTo=%2Fchat", user)
    expect(page.get_by_test_id("balance-credits")).to_have_text(re.compile(r"^0"))
    visit.accessible()
    visit.shot("before")

    page.get_by_role("button", name="Buy Starter").click()
    page.wait_for_url(re.compile(r"https://checkout\.stripe\.com/"))

    [made] = api("checkout", "GET", "/api/purchases", user=user).json()["purchases"]
    assert (made["packageCode"], made["status"]) == ("starter", "pending")
    purchase = stripe_sim.SimPurchase.from_api(made)
    secret = stack.secrets["stripe_webhook_secret"]
    webhook = f"{stack.services['webhook-ingest'].url}/webhooks/stripe"
    with httpx.Client() as client:
        for event in (
            stripe_sim.session_completed(purchase),
            stripe_sim.charge_succeeded(purchase),
        ):
            assert stripe_sim.send_sync(client, webhook, event, secret).is_success

    # Where Stripe sends the buyer back: checkout's success URL for this purchase.
    query = f"returnTo=%2Fchat&checkout=success&purchase={purchase.purchase_id}"
    page.goto(f"{stack.web.url}/credits?{query}")
    expect(page.get_by_test_id("checkout-status")).to_contain_text(
        "Payment received: 9,990 credits added", timeout=30_000
    )
    expect(page.get_by_test_id("balance-credits")).to_have_text(re.compile(r"^9,990"))
    expect(
        page.get_by_role("link", name=re.compile(r"^Receipt for the Starter"))
    ).to_have_attribute("href", stripe_sim.receipt_url(purchase), timeout=15_000)
    back = page.get_by_test_id("back-to-return")
    expect(back).to_have_attribute("href", "/chat")
    assert "checkout=success" not in page.url  # the query is cleaned, returnTo kept
    assert "returnTo=%2Fchat" in page.url
    visit.accessible()
    visit.shot("fulfilled")


def test_a_402_leads_to_the_credits_page_and_back(
    stack: Stack, visit: Visit, api: Callable[..., httpx.Response]
) -> None:
    user, page = _user(), visit.page
    refused = api(
        "metering",
        "POST",
        "/api/ai/chat",
        user=user,
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert refused.status_code == 402, refused.text
    return_to = refused.json()["returnTo"]
    assert return_to.startswith("/credits?returnTo=")

    visit.open(return_to, user)
    expect(page.get_by_test_id("need-credits")).to_be_visible()
    expect(page.get_by_role("heading", name="You need more credits to continue")).to_be_visible()
    expect(page.get_by_test_id("back-to-return")).to_have_attribute("href", "/")
    visit.accessible()
    visit.shot("need-credits")

    # A returnTo pointing off-site is never offered as the way back.
    visit.open("/credits?returnTo=%2F%2Fevil.example%2Fsteal", user)
    expect(page.get_by_test_id("need-credits")).to_be_visible()
    expect(page.get_by_test_id("back-to-return")).to_have_count(0)


def test_history_pages_and_statements_download(
    visit: Visit, api: Callable[..., httpx.Response]
) -> None:
    user, page = _user(), visit.page
    for _ in range(23):
        _give(api, user, 1_000)
    visit.open("/credits", user)
    rows = page.get_by_test_id("history-table").locator("tbody tr")
    expect(rows).to_have_count(20)
    page.get_by_role("button", name="Older entries").click()
    expect(rows).to_have_count(3)
    page.get_by_role("button", name="Newer entries").click()
    expect(rows).to_have_count(20)

    month = datetime.now(UTC).strftime("%Y-%m")
    page.get_by_test_id("month-input").fill(month)
    with page.expect_download() as csv:
        page.get_by_role("button", name="Download CSV statement").click()
    assert csv.value.suggested_filename == f"statement-{month}.csv"
    text = Path(csv.value.path()).read_text()
    assert "browser test credits" in text or "adjustment" in text
    with page.expect_download() as pdf:
        page.get_by_role("button", name="Download PDF statement").click()
    assert Path(pdf.value.path()).read_bytes().startswith(b"%PDF")
    visit.accessible()
    visit.shot("history")


def test_the_banner_shows_when_billing_is_switched_off(
    visit: Visit, api: Callable[..., httpx.Response]
) -> None:
    page = visit.page
    _switch(api, "browser test: kill switch", billingEnabled=False)
    try:
        visit.open("/credits", _user())
        banner = page.get_by_test_id("billing-paused-banner")
        expect(banner).to_have_text(
            "Billing is paused. AI features remain available with no charges.", timeout=10_000
        )
        expect(banner).to_have_attribute("role", "status")
        visit.accessible()
        visit.shot("paused")
    finally:
        _switch(api, "browser test over", billingEnabled=True)


def test_an_operator_switches_purchases_off_and_on(
    visit: Visit, api: Callable[..., httpx.Response]
) -> None:
    page = visit.page
    run = api("reconciler", "POST", "/api/admin/reconcile", admin=True, json={}, timeout=300)
    assert run.status_code == 200, run.text
    visit.open("/credits/admin", "web-operator", admin=True)
    switch = page.get_by_role("switch", name="Purchases enabled")
    expect(switch).to_be_checked()
    paused = page.get_by_test_id("admin-paused-users")
    expect(paused).to_contain_text(re.compile("No user is paused|Users paused by the session cap"))
    expect(page.get_by_test_id("reconciliation-status")).to_be_visible()
    visit.accessible()
    visit.shot("admin")
    try:
        switch.click()
        page.get_by_label("Reason for the change (kept in the audit log)").fill("browser test")
        page.get_by_role("button", name="Apply changes").click()
        expect(switch).not_to_be_checked(timeout=10_000)
        features = api("checkout", "GET", "/api/admin/features", admin=True).json()
        assert features["purchasesEnabled"] is False
    finally:
        _switch(api, "browser test over", purchasesEnabled=True)


def test_a_phone_sized_screen_needs_no_sideways_scrolling(visit: Visit) -> None:
    page = visit.page
    page.set_viewport_size({"width": 360, "height": 740})
    visit.open("/credits", _user())
    expect(page.get_by_test_id("balance")).to_be_visible()
    expect(page.get_by_role("button", name="Buy Starter")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to main content"
    visit.shot("phone")
