"""Money as the APIs show it: integer millicredits, plus a human credit figure.

1 credit = 1,000 millicredits (US$1 = 1,000 credits). Human-facing figures are decimal
strings with three places, so no float ever carries an amount.
"""

from __future__ import annotations

MILLICREDITS_PER_CREDIT = 1000


def credits_text(millicredits: int) -> str:
    """``12500`` -> ``"12.500"``; ``-1`` -> ``"-0.001"``."""
    sign = "-" if millicredits < 0 else ""
    whole, frac = divmod(abs(millicredits), MILLICREDITS_PER_CREDIT)
    return f"{sign}{whole}.{frac:03d}"
