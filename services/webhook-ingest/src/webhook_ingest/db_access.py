"""What webhook-ingest's runtime role and the reconciler's role may do in its schema.

``python -m webhook_ingest migrate`` applies it (see ``billing_platform.db.SchemaAccess``).
"""

from billing_platform.db import SchemaAccess

from webhook_ingest.settings import Settings


def schema_access(settings: Settings) -> SchemaAccess:
    return SchemaAccess(
        runtime_role=settings.runtime_role,
        # The reconciler reads the Stripe side of every check from the verified events.
        readers={"stripe_events": (settings.db_reconciler_role,)},
    )
