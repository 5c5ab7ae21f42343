from billing_platform import entrypoint

from metering.settings import Settings

if __name__ == "__main__":
    entrypoint.run(Settings(), app_factory="metering.main:create_app", package="metering")
