"""Monthly statements (CSV and PDF) and the daily accounting export, from a real journal."""

from __future__ import annotations

import csv
import io
import time
import uuid
from typing import Any

from billing_cli import keys, stripe_sim
from pypdf import PdfReader

STARTER_GRANT = 9_990_000


def summary(csv_text: str) -> dict[tuple[str, str], str]:
    block = csv_text.split("\n\n", 1)[0]
    rows = list(csv.reader(io.StringIO(block)))
    return {(section, key): value for section, key, value in rows[1:]}


async def test_statement_csv_and_pdf_agree_with_the_journal(platform: Any, user: str) -> None:
    purchase = await platform.buy(user, "starter")
    await platform.deliver(stripe_sim.session_completed(purchase))
    await platform.wait_balance(user, STARTER_GRANT)
    service = {
        "Authorization": f"Bearer {keys.mint_token(platform.stack.layout, 'm', ['service'])}"
    }
    hold = await platform.http.post(
        f"{platform.ledger}/internal/holds",
        json={"userId": user, "amountMillicredits": 60_000, "idempotencyKey": f"st-{user}"},
        headers=service,
    )
    capture = await platform.http.post(
        f"{platform.ledger}/internal/holds/{hold.json()['holdId']}/capture",
        json={
            "amountMillicredits": 50_000,
            "usageId": f"st-usage-{uuid.uuid4().hex}",
            "model": "gpt-4o",
            "inputTokens": 1000,
            "outputTokens": 500,
        },
        headers=service,
    )
    assert capture.status_code == 200, capture.text
    await platform.deliver(
        stripe_sim.charge_refunded(purchase, refunded_total_cents=333, refund_cents=333)
    )
    closing = STARTER_GRANT - 50_000 - 3_330_000
    await platform.wait_balance(user, closing)

    month = time.strftime("%Y-%m", time.gmtime())
    url = f"{platform.ledger}/api/statements/{month}"
    got_csv = await platform.http.get(f"{url}.csv", headers=platform.auth(user))
    assert got_csv.status_code == 200, got_csv.text
    figures = summary(got_csv.text)
    assert figures[("opening", "balance_millicredits")] == "0"
    assert figures[("purchases", "millicredits")] == str(STARTER_GRANT)
    assert figures[("usage:gpt-4o", "millicredits")] == "50000"
    assert figures[("refunds", "millicredits")] == "3330000"
    assert figures[("closing", "balance_millicredits")] == str(closing)

    got_pdf = await platform.http.get(f"{url}.pdf", headers=platform.auth(user))
    assert got_pdf.headers["content-type"] == "application/pdf"
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(got_pdf.content)).pages)
    for key in (("purchases", "credits"), ("refunds", "credits"), ("closing", "balance_credits")):
        assert figures[key].lstrip("-") in text, (key, figures[key])
    stranger = await platform.http.get(
        f"{url}.csv", headers=platform.auth("someone-else"), params={"userId": user}
    )
    assert stranger.status_code == 403


async def test_daily_accounting_export_balances_per_transaction(platform: Any, user: str) -> None:
    purchase = await platform.buy(user, "professional")
    await platform.deliver(stripe_sim.session_completed(purchase))
    await platform.wait_balance(user, 54_990_000)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    export = await platform.http.get(
        f"{platform.ledger}/api/admin/accounting/journal.csv",
        params={"date": day},
        headers=platform.auth("finance", admin=True),
    )
    assert export.status_code == 200, export.text
    rows = [r for r in csv.DictReader(io.StringIO(export.text)) if r["user_id"] == user]
    lines = {(r["debit_account"], r["credit_account"]): int(r["amount_millicredits"]) for r in rows}
    assert lines[("Cash (Stripe clearing)", "Deferred revenue")] == 49_990_000
    assert lines[("Promotional expense", "Deferred revenue")] == 5_000_000
    assert {r["amount_usd"] for r in rows} == {"49.990000", "5.000000"}
