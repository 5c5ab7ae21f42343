"""What metering's runtime role and the reconciler's role may do in its schema.

``python -m metering migrate`` applies it (see ``billing_platform.db.SchemaAccess``).
"""

from billing_platform.db import SchemaAccess

from metering.settings import Settings

# The functions that call the ledger's create_hold and capture_hold by name.
LEDGER_CALLERS = (
    "admit_charged_call(text, uuid, uuid, text, boolean, text, double precision, bigint,"
    " timestamptz, timestamptz, timestamptz, bigint, bigint, bigint, timestamptz, integer, text,"
    " timestamptz, timestamptz, integer, bigint, bigint, integer, integer)",
    "settle_charged_call(text, jsonb, uuid, bigint, bigint, uuid, text, text, bigint, bigint,"
    " bigint, bigint, text, text, text, text, json, bigint, text, bytea, bytea, jsonb, integer)",
)
# The functions of migrations 0004 to 0012: only the runtime role may call them.
FUNCTIONS = (
    "rate_limit_take(text, timestamptz, timestamptz, integer, bigint, bigint)",
    "claim_usage(text, text, text, double precision, uuid, uuid)",
    "release_claim(text, text, boolean)",
    "guard_state(text, timestamptz, timestamptz, timestamptz)",
    "recent_charges(text, integer)",
    "reserve_inflight(uuid, text, bigint, timestamptz, timestamptz)",
    "record_usage(uuid, text, text, bigint, bigint, bigint, bigint, bigint, text, text, text,"
    " text, text, text, text, json, bigint, text, bytea, bytea, jsonb, integer)",
    "credits_text(bigint)",
    "settled_body(json, bigint, bigint, bigint, bigint, bigint)",
    "usage_charge_field(bigint)",
    *LEDGER_CALLERS,
)


def ledger_search_paths(ledger_schema: str) -> dict[str, tuple[str, ...]]:
    """The functions that call the ledger's, with the ledger's schema on their search_path."""
    return {fn: (ledger_schema,) for fn in LEDGER_CALLERS}


def schema_access(settings: Settings) -> SchemaAccess:
    return SchemaAccess(
        runtime_role=settings.runtime_role,
        append_only=("guardrail_changes",),
        # The reconciler compares charged usage with the ledger's postings.
        readers={"usage_records": (settings.db_reconciler_role,)},
        executors={fn: () for fn in FUNCTIONS},
        search_paths=ledger_search_paths(settings.ledger_schema),
    )
