from billing_platform import entrypoint

from ledger.settings import Settings

if __name__ == "__main__":
    entrypoint.run(Settings(), app_factory="ledger.main:create_app", package="ledger")
