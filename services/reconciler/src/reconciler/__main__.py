from billing_platform import entrypoint

from reconciler.settings import Settings

if __name__ == "__main__":
    entrypoint.run(Settings(), app_factory="reconciler.main:create_app", package="reconciler")
