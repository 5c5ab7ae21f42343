"""What checkout's runtime role and other services' roles may do in its schema.

``python -m checkout migrate`` applies it (see ``billing_platform.db.SchemaAccess``).
"""

from billing_platform.db import SchemaAccess

from checkout.settings import Settings


def schema_access(settings: Settings) -> SchemaAccess:
    return SchemaAccess(
        runtime_role=settings.runtime_role,
        append_only=("feature_switch_changes",),
        keep_rows=("feature_switches",),
        # The views are checkout's published contract; its tables stay private.
        readers={
            "purchase_terms": (settings.db_ledger_role, settings.db_reconciler_role),
            "feature_flags": (settings.db_metering_role,),
        },
    )
