"""`billing probe` against a remote target without an admin token stops before any call.

That every probe passes is checked on the drill stack (``tests/drill``), whose
reconciliation no other test makes dirty."""

from __future__ import annotations

import os
import subprocess
import sys

from billing_cli import keys
from billing_cli.stack import Stack

# What the shell may carry that would point the CLI elsewhere or give it credentials.
TARGET_VARIABLES = (
    "BILLING_TARGET_URL",
    "BILLING_ADMIN_TARGET_URL",
    "BILLING_ADMIN_TOKEN_FILE",
    "BILLING_ADMIN_TOKEN",
    "BILLING_PROBE_USER_TOKEN",
    "BILLING_STRIPE_WEBHOOK_SECRET",
    "BILLING_CHECKOUT_URL",
    "BILLING_WEBHOOK_INGEST_URL",
    "BILLING_LEDGER_URL",
    "BILLING_METERING_URL",
    "BILLING_RECONCILER_URL",
)


def test_a_remote_target_without_an_admin_token_fails_at_once(stack: Stack) -> None:
    ledger = stack.services["ledger"].url
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    env |= {
        "BILLING_LOCAL_STACK": "test",
        "BILLING_TARGET_URL": ledger,
        "BILLING_PROBE_USER_TOKEN": keys.mint_token(stack.layout, "probe"),
    }

    result = subprocess.run(
        [sys.executable, "-m", "billing_cli", "probe", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert f"no admin token for {ledger}" in line
    assert "BILLING_ADMIN_TOKEN" in line
