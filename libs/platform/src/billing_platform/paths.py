"""Client-supplied return paths (``returnTo``) that our web app will navigate to.

They come from the client and end up in links a browser follows, so only a same-origin
path is accepted; anything a browser could read as another host (``//evil``, ``/\\evil``,
``https:...``, control characters browsers strip) is refused rather than cleaned up.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_LOCAL_PATH_LENGTH = 512


def is_local_path(value: str) -> bool:
    if not value or len(value) > MAX_LOCAL_PATH_LENGTH:
        return False
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc
