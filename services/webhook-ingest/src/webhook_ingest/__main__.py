from billing_platform import entrypoint

from webhook_ingest.settings import Settings

if __name__ == "__main__":
    entrypoint.run(
        Settings(), app_factory="webhook_ingest.main:create_app", package="webhook_ingest"
    )
