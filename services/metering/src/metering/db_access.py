"""What metering's runtime role and the reconciler's role may do in its schema.

``python -m metering migrate`` applies it (see ``billing_platform.db.SchemaAccess``).
"""

from billing_platform.db import SchemaAccess

from metering.settings import Settings


def schema_access(settings: Settings) -> SchemaAccess:
    return SchemaAccess(
        runtime_role=settings.runtime_role,
        append_only=("guardrail_changes",),
        # The reconciler compares charged usage with the ledger's postings.
        readers={"usage_records": (settings.db_reconciler_role,)},
    )
