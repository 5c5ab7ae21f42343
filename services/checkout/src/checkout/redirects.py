"""Where Stripe sends the buyer back: a relative path of our web app, never another site.

``returnTo`` comes from the client, so it is accepted only as a same-origin path; anything
that a browser could read as another host (``//evil``, ``/\\evil``, ``https:...``,
control characters that browsers strip) is refused rather than cleaned up.
"""

from __future__ import annotations

from urllib.parse import urlencode

from billing_platform.paths import MAX_LOCAL_PATH_LENGTH, is_local_path

MAX_RETURN_TO_LENGTH = MAX_LOCAL_PATH_LENGTH
is_valid_return_to = is_local_path
DEFAULT_RETURN_TO = "/"


def with_query(return_to: str, params: dict[str, str]) -> str:
    """``return_to`` with ``params`` appended to its query, before any fragment."""
    path, hash_sign, fragment = return_to.partition("#")
    if "?" not in path:
        separator = "?"
    elif path.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    return f"{path}{separator}{urlencode(params)}{hash_sign}{fragment}"


def redirect_urls(public_base_url: str, return_to: str, purchase_id: str) -> tuple[str, str]:
    """(success_url, cancel_url) for a Checkout Session of ``purchase_id``."""
    base = public_base_url.rstrip("/")
    success = with_query(return_to, {"checkout": "success", "purchase": purchase_id})
    cancel = with_query(return_to, {"checkout": "cancelled", "purchase": purchase_id})
    return base + success, base + cancel
