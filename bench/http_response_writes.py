"""What sending a response's head and body in one write saves the server and its client.

Starts a uvicorn server (uvloop, httptools, one process) with a one-route app answering a
small JSON body, as the services answer webhooks and calls, once with uvicorn's own HTTP
protocol (a write for the head, one for the body) and once with
``billing_platform.http_protocol.OneWriteHttpProtocol`` (one write), and drives each with
vegeta (pinned, in ``.local/bin``) open loop at ``--rate`` for ``--seconds``. The two
alternate for ``--rounds`` rounds. Per round it prints the server's CPU per request (from
``/proc``), vegeta's, and the latency percentiles vegeta measured.

Run: ``./scripts/run python bench/http_response_writes.py [--rate 2000] [--seconds 10]
[--rounds 3] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from billing_cli import installers
from billing_cli.layout import Layout

VARIANTS = ("uvicorn", "one-write")
BODY = b'{"received":true,"duplicate":false}'


def serve(variant: str, port: int) -> None:
    import uvicorn
    from billing_platform.http_protocol import OneWriteHttpProtocol
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def answer(_: Request) -> Response:
        return Response(BODY, media_type="application/json")

    app = Starlette(routes=[Route("/answer", answer, methods=["POST"])])
    protocol: Any = OneWriteHttpProtocol if variant == "one-write" else "httptools"
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http=protocol, log_config=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the server on {port} never listened")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def attack(vegeta: Path, port: int, rate: int, seconds: int, workdir: Path) -> dict[str, Any]:
    targets, results = workdir / "targets.txt", workdir / "results.bin"
    targets.write_text(f"POST http://127.0.0.1:{port}/answer\n")
    attack_cmd = [str(vegeta), "attack", f"-targets={targets}", f"-rate={rate}/1s"]
    attack_cmd += [f"-duration={seconds}s", f"-output={results}"]
    subprocess.run(attack_cmd, check=True)
    report = subprocess.run(
        [str(vegeta), "report", "-type=json", str(results)],
        check=True,
        capture_output=True,
    )
    parsed: dict[str, Any] = json.loads(report.stdout)
    return parsed


# Drives the server on the port, with a working folder; returns vegeta's JSON report.
Attack = Callable[[int, Path], dict[str, Any]]


def metered_round(
    script: str, variant: str, attack: Attack, *, quiet: bool = False
) -> dict[str, Any]:
    """One round: ``script --serve variant PORT`` started, attacked, its CPU read from /proc."""
    port = free_port()
    command = [sys.executable, script, "--serve", variant, str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL if quiet else None)
    try:
        wait_for(port)
        time.sleep(1)  # start-up done before the meter starts
        server_before, client_before = process_cpu_s(server.pid), children_cpu_s()
        with tempfile.TemporaryDirectory() as tmp:
            report = attack(port, Path(tmp))
        server_s = process_cpu_s(server.pid) - server_before
        client_s = children_cpu_s() - client_before
    finally:
        server.terminate()
        server.wait(10)
    requests = report["requests"]
    latencies = report["latencies"]
    return {
        "variant": variant,
        "requests": requests,
        "ok": (report.get("status_codes") or {}).get("200", 0),
        "server_us_per_request": server_s * 1e6 / requests,
        "client_us_per_request": client_s * 1e6 / requests,
        "p50_ms": latencies["50th"] / 1e6,
        "p99_ms": latencies["99th"] / 1e6,
    }


def one_round(vegeta: Path, variant: str, opts: argparse.Namespace) -> dict[str, Any]:
    return metered_round(
        __file__, variant, lambda port, tmp: attack(vegeta, port, opts.rate, opts.seconds, tmp)
    )


def parse_args(doc: str, rate: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("VARIANT", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=rate)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def print_rounds(rows: list[dict[str, Any]], opts: argparse.Namespace) -> None:
    if opts.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{opts.rate}/s for {opts.seconds} s per round")
    header = ("variant", "ok", "server us/req", "vegeta us/req", "p50 ms", "p99 ms")
    print("{:<10} {:>7} {:>14} {:>14} {:>7} {:>7}".format(*header))
    for r in rows:
        print(
            f"{r['variant']:<10} {r['ok']:>7} {r['server_us_per_request']:>14.1f}"
            f" {r['client_us_per_request']:>14.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}"
        )


Round = Callable[[Path, str, argparse.Namespace], dict[str, Any]]


def run_bench(
    doc: str,
    rate: int,
    serve_variant: Callable[[str, int], None],
    round_of: Round,
    variants: tuple[str, ...],
) -> None:
    """A bench's command line: serve one variant (the child ``metered_round`` starts), or
    run ``--rounds`` rounds of every variant, alternating, and print them."""
    opts = parse_args(doc, rate)
    if opts.serve:
        serve_variant(opts.serve[0], int(opts.serve[1]))
        return
    vegeta = installers.ensure_vegeta(Layout.dev())
    rows = [round_of(vegeta, v, opts) for _ in range(opts.rounds) for v in variants]
    print_rounds(rows, opts)


def main() -> None:
    run_bench(__doc__ or "", 2000, serve, one_round, VARIANTS)


if __name__ == "__main__":
    main()
