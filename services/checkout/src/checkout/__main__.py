from billing_platform import entrypoint

from checkout.settings import Settings

if __name__ == "__main__":
    entrypoint.run(Settings(), app_factory="checkout.main:create_app", package="checkout")
