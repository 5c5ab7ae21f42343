from billing_platform import entrypoint

from webhook_ingest.db_access import schema_access
from webhook_ingest.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    entrypoint.run(
        settings,
        app_factory="webhook_ingest.main:create_app",
        package="webhook_ingest",
        access=schema_access(settings),
    )
