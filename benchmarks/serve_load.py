"""Load test of `danlu serve` on loopback: C concurrent clients each send R chat requests, first to a server that
batches concurrent requests (max_batch_size = C), then to one that serves them one by one (max_batch_size = 1).
Prints p50/p95 latency and throughput for both and their ratio.

    python benchmarks/serve_load.py                       # 32 clients x 10 requests, 32 new tokens each
    python benchmarks/serve_load.py --clients 8 --requests 3 --preset llama-tiny

Traffic goes to 127.0.0.1 only; the run is bounded (C x R requests, each with a timeout) and stops by itself.
The model is a random GPT of the named preset with a BPE tokenizer trained on the embedded world: what is
measured is serving (batching, HTTP, streaming), not answer quality.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

import danlu
from danlu.data.world import build_world
from danlu.models.gpt import GPT, GPTConfig
from danlu.serve.api import ServeConfig, create_app
from danlu.serve.server import BackgroundServer
from danlu.tokenizers.bpe import BPETokenizer


def make_model(preset: str = "llama-tiny", seed: int = 0) -> tuple[GPT, BPETokenizer]:
    tokenizer = BPETokenizer.train(
        build_world(seed, "tiny").pretrain_texts("train"), vocab_size=512, show_progress=False
    )
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_name(preset, vocab_size=tokenizer.vocab_size))
    return model.eval(), tokenizer


async def _client(
    client: httpx.AsyncClient, c: int, requests: int, max_tokens: int, out: dict[str, list]
) -> None:
    for r in range(requests):
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": f"Client {c} asks question {r}: what is {c} + {r}?"}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        started = time.perf_counter()
        try:
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            out["tokens"].append(response.json()["usage"]["completion_tokens"])
            out["latency"].append(time.perf_counter() - started)
        except (httpx.HTTPError, KeyError, ValueError) as e:
            out["errors"].append(f"{type(e).__name__}: {e}")


async def _load(url: str, clients: int, requests: int, max_tokens: int, timeout: float) -> dict[str, list]:
    out: dict[str, list] = {"latency": [], "tokens": [], "errors": []}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(_client(client, c, requests, max_tokens, out) for c in range(clients)))
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


class ServerProcess:
    """`python -m danlu.serve` in its own process on 127.0.0.1 (so the clients do not share its GIL)."""

    def __init__(self, checkpoint: Path, max_batch_size: int, torch_threads: int | None = None) -> None:
        self.env = {**os.environ, "OMP_NUM_THREADS": str(torch_threads)} if torch_threads else None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.command = [sys.executable, "-m", "danlu.serve", "--model", str(checkpoint), "--name", "bench",
                        "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", str(max_batch_size),
                        "--max-wait-ms", "5"]  # fmt: skip

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("the server did not start within 120 s")

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_load(
    model: Any,
    tokenizer: Any,
    clients: int,
    requests: int,
    max_tokens: int,
    max_batch_size: int,
    timeout: float = 300,
    subprocess_server: bool = True,
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """One load run against a fresh server on 127.0.0.1 (in its own process, or in a thread of this one);
    latency in seconds, throughput per second."""
    started = time.perf_counter()
    if subprocess_server:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = danlu.save(model, tokenizer, Path(tmp) / "bench")
            with ServerProcess(checkpoint, max_batch_size, torch_threads) as url:
                started = time.perf_counter()
                out = asyncio.run(_load(url, clients, requests, max_tokens, timeout))
                wall = time.perf_counter() - started
                stats = httpx.get(url + "/health").json()["batching"]
    else:
        app = create_app(
            model, tokenizer, ServeConfig(model_name="bench", max_batch_size=max_batch_size, max_wait_ms=5.0)
        )
        with BackgroundServer(app) as url:
            started = time.perf_counter()
            out = asyncio.run(_load(url, clients, requests, max_tokens, timeout))
            wall = time.perf_counter() - started
            stats = app.state.batcher.stats.to_dict()
    done = len(out["latency"])
    return {
        "max_batch_size": max_batch_size,
        "requests": done,
        "errors": out["errors"],
        "wall_s": wall,
        "p50_s": percentile(out["latency"], 0.50),
        "p95_s": percentile(out["latency"], 0.95),
        "requests_per_s": done / wall,
        "tokens_per_s": sum(out["tokens"]) / wall,
        "mean_batch": stats["mean_batch_size"],
    }


def report(r: dict[str, Any]) -> str:
    mode = "batched   " if r["max_batch_size"] > 1 else "sequential"
    return (
        f"{mode} requests {r['requests']:4d}  errors {len(r['errors'])}  p50 {r['p50_s'] * 1000:7.0f} ms  "
        f"p95 {r['p95_s'] * 1000:7.0f} ms  {r['requests_per_s']:6.2f} req/s  {r['tokens_per_s']:7.1f} tok/s  "
        f"mean batch {r['mean_batch']:.1f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=10, help="per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--preset", default="llama-tiny")
    p.add_argument("--in-process", action="store_true", help="run the server in a thread of this process")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads of the server (default: torch's choice)"
    )
    args = p.parse_args()
    sub = not args.in_process
    model, tokenizer = make_model(args.preset)
    print(f"{args.clients} clients x {args.requests} requests, {args.max_tokens} new tokens, preset {args.preset}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, torch threads {torch.get_num_threads()}")  # fmt: skip
    batched = run_load(
        model,
        tokenizer,
        args.clients,
        args.requests,
        args.max_tokens,
        args.clients,
        subprocess_server=sub,
        torch_threads=args.threads,
    )
    print(report(batched), flush=True)
    sequential = run_load(
        model,
        tokenizer,
        args.clients,
        args.requests,
        args.max_tokens,
        1,
        subprocess_server=sub,
        torch_threads=args.threads,
    )
    print(report(sequential), flush=True)
    for r in (batched, sequential):
        for e in r["errors"][:5]:
            print("  error:", e)
    print(f"throughput ratio batched / sequential: {batched['requests_per_s'] / sequential['requests_per_s']:.2f}x  "
          f"(p50 latency ratio {sequential['p50_s'] / batched['p50_s']:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
