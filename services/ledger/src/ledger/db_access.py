"""What the ledger's runtime role and the reconciler's role may do in its schema.

``python -m ledger migrate`` applies it (see ``billing_platform.db.SchemaAccess``).
"""

from billing_platform.db import SchemaAccess

from ledger.settings import Settings

# What the reconciler's checks read (journal sums, balances, grants, what was consumed).
HOLD_FUNCTIONS = (
    "create_hold(text, bigint, text, integer)",
    "capture_hold(uuid, text, bigint, text, bigint, bigint, text, text, jsonb, text)",
)
RECONCILED = ("journal_transactions", "journal_entries", "balances", "inbox", "purchase_grants")


def schema_access(settings: Settings) -> SchemaAccess:
    return SchemaAccess(
        runtime_role=settings.runtime_role,
        append_only=("journal_transactions", "journal_entries", "audit_log"),
        readers={table: (settings.db_reconciler_role,) for table in RECONCILED},
        # Metering holds and captures credits for each AI call in one round trip each, and
        # may do no more here.
        executors={fn: (settings.db_metering_role,) for fn in HOLD_FUNCTIONS},
    )
