from billing_platform import entrypoint

from checkout.db_access import schema_access
from checkout.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    entrypoint.run(
        settings,
        app_factory="checkout.main:create_app",
        package="checkout",
        access=schema_access(settings),
    )
