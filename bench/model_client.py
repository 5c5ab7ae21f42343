"""What metering's model client costs its own process per completion, against httpx.

Starts devllm (the local OpenAI-compatible model server) in a process of its own on a free
127.0.0.1 port, then, in this process on uvloop, sends ``--calls`` completions one after
another through each client, ``--rounds`` times in turn: metering's ``OpenAIModelClient``
(aiohttp) and, as the baseline in the same run, a plain ``httpx.AsyncClient`` posting the
same body and parsing the same JSON. It prints, per client, the CPU microseconds this
process spent per completion (user + system, from ``getrusage``; the server's CPU is not
counted) and the median and 99th percentile latency.

Run: ``./scripts/run python bench/model_client.py [--calls 2000] [--rounds 3] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import uvloop
from metering.model_client import ChatMessage, ModelRequest, OpenAIModelClient
from pydantic import SecretStr

REQUEST = ModelRequest("gpt-4o-mini", (ChatMessage("user", "hello [[tokens=20]]"),), 20)
Call = Callable[[], Awaitable[object]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(call: Call, calls: int) -> tuple[float, list[float]]:
    """CPU microseconds per call, and each call's latency in ms."""
    for _ in range(100):  # warm: connections, caches
        await call()
    latencies, start = [], cpu_s()
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - began) * 1000)
    return (cpu_s() - start) / calls * 1e6, latencies


async def run(base_url: str, calls: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    ours = OpenAIModelClient(base_url, SecretStr("sk-dev"), 10.0)
    await ours.start()
    body = {
        "model": REQUEST.model,
        "messages": [{"role": "user", "content": REQUEST.messages[0].content}],
        "max_completion_tokens": REQUEST.max_output_tokens,
    }
    headers = {"authorization": "Bearer sk-dev"}
    baseline = httpx.AsyncClient(base_url=base_url + "/", headers=headers, timeout=10.0)

    async def with_httpx() -> object:
        answer = await baseline.post("chat/completions", json=body)
        return json.loads(answer.content)

    clients: dict[str, Call] = {
        "metering (aiohttp)": lambda: ours.complete(REQUEST),
        "httpx (baseline)": with_httpx,
    }
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
    try:
        for _ in range(rounds):
            for name, call in clients.items():
                cpu_us, latencies = await measure(call, calls)
                figures[name].append(summary(cpu_us, latencies))
    finally:
        await ours.stop()
        await baseline.aclose()
    return figures


def summary(cpu_us: float, latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return {"cpu_us": round(cpu_us, 1), "p50_ms": round(cuts[49], 2), "p99_ms": round(cuts[98], 2)}


def serve_devllm(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, "-m", "devllm", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("devllm did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    port = free_port()
    server = serve_devllm(port)
    try:
        figures = uvloop.run(run(f"http://127.0.0.1:{port}/v1", args.calls, args.rounds))
    finally:
        server.terminate()
        server.wait(10)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{'client':<20} {'round':>5} {'CPU us/call':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for name, rows in figures.items():
        for i, row in enumerate(rows, 1):
            print(f"{name:<20} {i:>5} {row['cpu_us']:>12} {row['p50_ms']:>8} {row['p99_ms']:>8}")


if __name__ == "__main__":
    main()
