from billing_platform import entrypoint

from metering.db_access import schema_access
from metering.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    entrypoint.run(
        settings,
        app_factory="metering.main:create_app",
        package="metering",
        access=schema_access(settings),
    )
