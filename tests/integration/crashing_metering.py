"""metering, dying hard at the moments a gateway crash costs the most.

Run as a subprocess by the gateway tests, configured through the usual env settings; it
serves exactly as `python -m metering serve` does, except that it dies where
``CRASH_AT`` says:
- ``settle`` (the default): after the model answered, before anything was charged or
  published;
- ``answer``: after the call was charged and recorded (one statement), before it answered.
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from metering.main import create_app
from metering.settings import Settings
from metering.usage_store import PgUsageStore

CRASH_EXIT_CODE = 137


def crash(*_: Any, **__: Any) -> Any:
    os._exit(CRASH_EXIT_CODE)


def crash_after(method: Any) -> Any:
    async def recorded_then_crash(*args: Any, **kwargs: Any) -> Any:
        await method(*args, **kwargs)
        os._exit(CRASH_EXIT_CODE)

    return recorded_then_crash


if __name__ == "__main__":
    if os.environ.get("CRASH_AT", "settle") == "settle":
        PgUsageStore._settle = crash  # type: ignore[method-assign]
    else:
        PgUsageStore.record = crash_after(PgUsageStore.record)  # type: ignore[method-assign]
    settings = Settings()
    # A factory, as `serve` uses: the app is built inside uvicorn's event loop.
    uvicorn.run(lambda: create_app(settings), factory=True, host="127.0.0.1", port=settings.port)
