"""``returnTo``: where the credits page sends a user back after a 402.

It comes from the client and ends up in a link our web app follows, so it is accepted only
as a same-origin path (the rule checkout applies to its own ``returnTo``); anything a
browser could read as another host is refused rather than cleaned up.
"""

from __future__ import annotations

from urllib.parse import quote

from billing_platform.errors import ApiError
from billing_platform.paths import MAX_LOCAL_PATH_LENGTH, is_local_path

MAX_LENGTH = MAX_LOCAL_PATH_LENGTH
DEFAULT = "/"
CREDITS_PAGE = "/credits"


def checked(value: str | None) -> str:
    """The client's ``returnTo`` (``/`` when absent); 422 ``invalid_return_to`` if unsafe."""
    if value is None:
        return DEFAULT
    if not is_local_path(value):
        raise ApiError(
            422,
            "invalid_return_to",
            f"returnTo must be a relative path starting with '/' (at most {MAX_LENGTH} "
            "characters)",
        )
    return value


def credits_link(return_to: str) -> str:
    """``/chat?x=1`` -> ``/credits?returnTo=%2Fchat%3Fx%3D1``."""
    return f"{CREDITS_PAGE}?returnTo={quote(return_to, safe='')}"
