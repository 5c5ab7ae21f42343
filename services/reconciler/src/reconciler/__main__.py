from billing_platform import entrypoint

from reconciler.db_access import schema_access
from reconciler.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    entrypoint.run(
        settings,
        app_factory="reconciler.main:create_app",
        package="reconciler",
        access=schema_access(settings),
    )
