"""Load test of `danlu serve` with bad clients on loopback: C good clients each send R chat requests, first alone,
then while B idle connections are held open (each reopened as soon as the server's header timeout closes it)
and A clients keep sending long requests and hanging up before the answer. Prints the good clients' errors and
p50/p95 latency for both runs, the p95 ratio (the goal: at most 1.5x) and how many abandoned rows the server
cancelled.

    python benchmarks/serve_hardening.py                  # 32 clients x 10 requests, 200 idle, 4 abandoning, 2 rounds
    python benchmarks/serve_hardening.py --clients 8 --requests 3 --idle 20 --abandoning 2

Traffic goes to 127.0.0.1 only; the run is bounded (C x R requests, each with a timeout) and stops by itself.
The server runs in its own process (benchmarks/serve_load.py's ServerProcess) on the random tiny model there.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import danlu

_spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).parent / "serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_load)


async def hold_idle(url: str, count: int, stop: asyncio.Event, out: dict[str, int]) -> None:
    """Keep `count` connections open that never send a byte; reopen each one the server closes."""
    host, port = url.removeprefix("http://").split(":")

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                out["refused"] += 1
                await asyncio.sleep(0.1)
                continue
            out["opened"] += 1
            read = asyncio.ensure_future(reader.read())  # b"" once the server closes it
            halt = asyncio.ensure_future(stop.wait())
            await asyncio.wait({read, halt}, return_when=asyncio.FIRST_COMPLETED)
            if read.done():
                out["closed_by_server"] += 1
            for task in (read, halt):
                task.cancel()
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)))


async def abandon(url: str, client_id: int, stop: asyncio.Event, out: dict[str, int]) -> None:
    """Send long non-streaming requests and hang up 50-300 ms later, until told to stop."""
    host, port = url.removeprefix("http://").split(":")
    rng = random.Random(client_id)
    body = json.dumps({
        "model": "bench",
        "messages": [{"role": "user", "content": f"Abandoning client {client_id}: tell me a long story."}],
        "max_tokens": 200,
        "temperature": 0,
    }).encode()  # fmt: skip
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    while not stop.is_set():
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.write(head + body)
        await writer.drain()
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        writer.close()
        out["abandoned"] += 1


async def good_load(
    url: str, clients: int, requests: int, max_tokens: int, timeout: float
) -> dict[str, list]:
    return await serve_load._load(url, clients, requests, max_tokens, timeout)


async def with_bad_clients(
    url: str, clients: int, requests: int, max_tokens: int, idle: int, abandoning: int, timeout: float
) -> tuple[dict[str, list], dict[str, int]]:
    stop = asyncio.Event()
    bad = {"opened": 0, "refused": 0, "closed_by_server": 0, "abandoned": 0}
    background = [asyncio.ensure_future(hold_idle(url, idle, stop, bad))]
    background += [asyncio.ensure_future(abandon(url, i, stop, bad)) for i in range(abandoning)]
    await asyncio.sleep(0.5)  # the idle connections are open and abandoned requests are in flight
    try:
        good = await good_load(url, clients, requests, max_tokens, timeout)
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
    return good, bad


def summary(out: dict[str, list]) -> dict[str, Any]:
    return {
        "requests": len(out["latency"]),
        "errors": out["errors"],
        "p50_s": serve_load.percentile(out["latency"], 0.50),
        "p95_s": serve_load.percentile(out["latency"], 0.95),
    }


def run(
    url: str,
    clients: int,
    requests: int,
    max_tokens: int,
    idle: int,
    abandoning: int,
    rounds: int = 1,
    timeout: float = 300,
    verbose: bool = False,
) -> dict[str, Any]:
    """`rounds` times in turn against the server at `url`: the good load alone, then with the bad clients
    (taking turns spreads the drift of a shared machine over both modes); latencies pooled per mode."""
    alone: dict[str, list] = {"latency": [], "tokens": [], "errors": []}
    attacked: dict[str, list] = {"latency": [], "tokens": [], "errors": []}
    bad_total = {"opened": 0, "refused": 0, "closed_by_server": 0, "abandoned": 0}
    before = httpx.get(url + "/health").json()["batching"]
    for _ in range(rounds):
        lone = asyncio.run(good_load(url, clients, requests, max_tokens, timeout))
        for k, v in lone.items():
            alone[k] += v
        if verbose:
            print(f"  round: alone p95 {summary(lone)['p95_s'] * 1000:.0f} ms", flush=True)
        good, bad = asyncio.run(
            with_bad_clients(url, clients, requests, max_tokens, idle, abandoning, timeout)
        )
        if verbose:
            print(f"  round: attacked p95 {summary(good)['p95_s'] * 1000:.0f} ms, errors {len(good['errors'])}",
                  flush=True)  # fmt: skip
        for k, v in good.items():
            attacked[k] += v
        for k, v in bad.items():
            bad_total[k] += v
    deadline = time.time() + 60  # the last abandoned rows end within a decode step or two
    after = httpx.get(url + "/health").json()["batching"]
    while after.get("rows_in_flight") and time.time() < deadline:  # (a server before the field: no wait)
        time.sleep(0.1)
        after = httpx.get(url + "/health").json()["batching"]
    alone_s, attacked_s = summary(alone), summary(attacked)
    return {
        "alone": alone_s,
        "attacked": attacked_s,
        "bad": bad_total,
        "cancelled_rows": after.get("cancelled_rows", 0) - before.get("cancelled_rows", 0),
        "rows_in_flight_after": after.get("rows_in_flight"),
        "p95_ratio": attacked_s["p95_s"] / alone_s["p95_s"],
    }


def report(r: dict[str, Any]) -> str:
    lines = []
    for name in ("alone", "attacked"):
        s = r[name]
        lines.append(f"{name:9s} requests {s['requests']:4d}  errors {len(s['errors'])}  "
                     f"p50 {s['p50_s'] * 1000:7.0f} ms  p95 {s['p95_s'] * 1000:7.0f} ms")  # fmt: skip
    b = r["bad"]
    lines.append(f"bad clients: {b['opened']} idle connections opened, {b['closed_by_server']} closed by the server, "
                 f"{b['refused']} refused; {b['abandoned']} requests abandoned, {r['cancelled_rows']} rows "
                 f"cancelled by the server")  # fmt: skip
    lines.append(f"p95 ratio attacked / alone: {r['p95_ratio']:.2f}x (goal <= 1.5x)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=10, help="per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--idle", type=int, default=200, help="idle connections held open")
    p.add_argument("--abandoning", type=int, default=4, help="clients that hang up before the answer")
    p.add_argument("--rounds", type=int, default=2, help="alone / attacked runs taken in turn")
    p.add_argument("--preset", default="llama-tiny")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    args = p.parse_args()
    model, tokenizer = serve_load.make_model(args.preset)
    print(f"{args.clients} clients x {args.requests} requests, {args.max_tokens} new tokens; bad: {args.idle} idle "
          f"connections, {args.abandoning} abandoning clients; preset {args.preset}; {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.1f})")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = danlu.save(model, tokenizer, Path(tmp) / "bench")
        with serve_load.ServerProcess(checkpoint, args.clients, args.threads) as url:
            r = run(url, args.clients, args.requests, args.max_tokens, args.idle, args.abandoning, args.rounds,
                    verbose=True)  # fmt: skip
            print(report(r))


if __name__ == "__main__":
    main()
