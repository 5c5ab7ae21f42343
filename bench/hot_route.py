"""What a route answered in front of FastAPI's router (``HotRoute``) saves per request.

Starts a uvicorn server (uvloop, the services' HTTP protocol, one process) with the
services' own app factory (``billing_platform.app.create_app``: ids, access line, metrics,
spans) and one POST route that reads a JSON body into a pydantic model, with a header
parameter, and answers a small JSON body, as the gateway's chat route does without its
work. Two variants of the same app:
- **router**: the route as FastAPI serves it (routing, dependency solving, validation,
  the exception middleware) - the baseline;
- **hot-route**: the same route behind a ``HotRoute`` whose handler does the same reading
  and validation and answers the same body (the gateway's ``chat_route`` and webhook-ingest's
  ``delivery_route`` are built this way).
Each is driven by vegeta (pinned, in ``.local/bin``) open loop at ``--rate`` for
``--seconds``; the variants alternate for ``--rounds`` rounds. Per round it prints the
server's CPU per request (from ``/proc``), vegeta's, and the latency percentiles.

Run: ``./scripts/run python bench/hot_route.py [--rate 500] [--seconds 10] [--rounds 3]
[--json]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
from pathlib import Path
from typing import Annotated, Any

from http_response_writes import metered_round, run_bench
from pydantic import BaseModel

VARIANTS = ("router", "hot-route")


# At module level: FastAPI resolves a route's annotations by name, in the module.
class Message(BaseModel):
    role: str
    content: str


class Echo(BaseModel):
    model: str
    messages: list[Message]


PATH = "/api/echo"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def serve(variant: str, port: int) -> None:
    import uvicorn
    from billing_platform.app import create_app
    from billing_platform.hot_routes import HotRoute
    from billing_platform.http_protocol import OneWriteHttpProtocol
    from billing_platform.settings import InfraSettings, ServiceSettings
    from fastapi import APIRouter, Header, Request, Response
    from fastapi.responses import JSONResponse
    from starlette.middleware import Middleware

    def answer(body: Echo, key: str | None) -> Response:
        return JSONResponse({"model": body.model, "messages": len(body.messages), "key": key})

    router = APIRouter()

    @router.post(PATH)
    async def echo(
        body: Echo, key: Annotated[str | None, Header(alias="Idempotency-Key")] = None
    ) -> Response:
        return answer(body, key)

    async def hot(request: Request) -> Response | None:
        body = Echo.model_validate(json.loads(await request.body()))
        return answer(body, request.headers.get("idempotency-key"))

    hot_routes = [Middleware(HotRoute, method="POST", path=PATH, handler=hot)]
    settings = ServiceSettings(service_name="hot-route-bench", infra=InfraSettings())
    app = create_app(
        settings, routers=[router], hot_routes=hot_routes if variant == "hot-route" else ()
    )
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http=OneWriteHttpProtocol)


def attack(vegeta: Path, port: int, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    target = {
        "method": "POST",
        "url": f"http://127.0.0.1:{port}{PATH}",
        "header": {"Content-Type": ["application/json"], "Idempotency-Key": ["k-1"]},
        "body": base64.b64encode(json.dumps(BODY).encode()).decode(),
    }
    targets, results = workdir / "targets.json", workdir / "results.bin"
    targets.write_text(json.dumps(target) + "\n")
    attack_cmd = [str(vegeta), "attack", "-format=json", f"-targets={targets}"]
    attack_cmd += [f"-rate={opts.rate}/1s", f"-duration={opts.seconds}s", f"-output={results}"]
    subprocess.run(attack_cmd, check=True)
    report = subprocess.run(
        [str(vegeta), "report", "-type=json", str(results)], check=True, capture_output=True
    )
    parsed: dict[str, Any] = json.loads(report.stdout)
    return parsed


def one_round(vegeta: Path, variant: str, opts: argparse.Namespace) -> dict[str, Any]:
    # quiet: the access lines go nowhere (writing them is the same work in both variants).
    return metered_round(
        __file__, variant, lambda port, tmp: attack(vegeta, port, opts, tmp), quiet=True
    )


def main() -> None:
    run_bench(__doc__ or "", 500, serve, one_round, VARIANTS)


if __name__ == "__main__":
    main()
