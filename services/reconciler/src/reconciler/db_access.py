"""What the reconciler's runtime role may do in its own schema.

``python -m reconciler migrate`` applies it (see ``billing_platform.db.SchemaAccess``). What
it may read elsewhere, each owning service grants (their ``DB_RECONCILER_ROLE`` setting).
"""

from billing_platform.db import SchemaAccess

from reconciler.settings import Settings


def schema_access(settings: Settings) -> SchemaAccess:
    return SchemaAccess(runtime_role=settings.runtime_role)
