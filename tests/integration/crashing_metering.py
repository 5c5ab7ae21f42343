"""metering, dying hard after the model answered and before anything was charged or
published: the moment a gateway crash costs the most.

Run as a subprocess by the gateway tests, configured through the usual env settings; it
serves exactly as `python -m metering serve` does, except that capturing a hold kills it.
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from metering import ledger_client
from metering.main import create_app
from metering.settings import Settings

CRASH_EXIT_CODE = 137


async def crash_instead_of_capture(self: Any, hold_id: str, capture: Any) -> Any:
    os._exit(CRASH_EXIT_CODE)


if __name__ == "__main__":
    ledger_client.DirectLedgerClient.capture = crash_instead_of_capture  # type: ignore[method-assign]
    settings = Settings()
    # A factory, as `serve` uses: the app is built inside uvicorn's event loop.
    uvicorn.run(lambda: create_app(settings), factory=True, host="127.0.0.1", port=settings.port)
