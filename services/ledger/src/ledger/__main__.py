from billing_platform import entrypoint

from ledger.db_access import schema_access
from ledger.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    entrypoint.run(
        settings,
        app_factory="ledger.main:create_app",
        package="ledger",
        access=schema_access(settings),
    )
