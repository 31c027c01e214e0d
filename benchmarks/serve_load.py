"""Serving under load (issue 17): the same traffic against three schedulers of `danlu serve`, in one run.

    python benchmarks/serve_load.py                 # the default run, bounded to a few minutes on 2 cores
    python benchmarks/serve_load.py --requests 200 --rate 48 --closed-requests 10   # larger
    python benchmarks/serve_load.py --rounds 3      # the modes in turn 3 times, medians (a machine shared with others)

For each scheduler (continuous batching, the static batcher, one by one = static with max_batch_size 1) a fresh
server is started in its own process on 127.0.0.1 and gets, in turn:

1. the mixed load: `--requests` streamed chat requests arriving as a Poisson process of `--rate` per second
   (seeded, so every scheduler sees the same arrivals), with mixed prompt lengths (half of them behind one long
   shared system prompt), mixed output lengths, a third sampled with temperature 0.8 and a seed, the rest greedy.
   Reported: throughput (requests and generated tokens per second of wall time), p50/p95 time to first token
   (the first chunk with content) and total latency, and the prefix-cache hit rate the server reports at
   GET /health (`batching.prefix_cache.hit_rate`; "n/a" for a server without one);
2. the probe: a long request starts, a short one arrives once the long one streams; both finish times (seconds
   after the long one was sent). With iteration-level batching the short one finishes long before the long one;
   a static batcher makes it wait for the whole long batch;
3. the closed loop of issue 17: `--clients` clients each sending `--closed-requests` seeded requests
   (temperature 0.8, each its own seed) one after the other: requests per second.

One table follows, with the ratios continuous / static and continuous / one-by-one (for times, below 1 is
better). A tree without `ServeConfig.scheduler` (before continuous batching) runs static and one-by-one and
says "continuous: not available on this tree". The model is a random `--preset` GPT with a BPE tokenizer
trained on the embedded world: what is measured is serving, not answer quality. Traffic goes to 127.0.0.1
only; every request has a timeout and the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import torch

import danlu
from danlu.data.world import build_world
from danlu.models.gpt import GPT, GPTConfig
from danlu.serve.api import ServeConfig, create_app
from danlu.serve.server import BackgroundServer, serve
from danlu.tokenizers.bpe import BPETokenizer

MODES = ("continuous", "static", "one-by-one")
UNAVAILABLE = "continuous: not available on this tree"


def make_model(
    preset: str = "llama-tiny", seed: int = 0, block_size: int | None = None
) -> tuple[GPT, BPETokenizer]:
    """A random GPT of `preset` (its context widened to block_size, if given) with a BPE tokenizer trained on
    the embedded world."""
    tokenizer = BPETokenizer.train(
        build_world(seed, "tiny").pretrain_texts("train"), vocab_size=512, show_progress=False
    )
    torch.manual_seed(seed)
    extra = {"block_size": block_size} if block_size else {}
    model = GPT(GPTConfig.from_name(preset, vocab_size=tokenizer.vocab_size, **extra))
    return model.eval(), tokenizer


def has_scheduler() -> bool:
    """Whether this tree's ServeConfig chooses a scheduler (it does once continuous batching is merged)."""
    return "scheduler" in {f.name for f in dataclasses.fields(ServeConfig)}


def serve_fields(mode: str, max_batch_size: int) -> dict[str, Any] | None:
    """The ServeConfig fields of a mode, or None when this tree cannot run it."""
    fields: dict[str, Any] = {"model_name": "bench", "max_wait_ms": 5.0, "max_rows_in_flight": 1024}
    fields["max_batch_size"] = 1 if mode == "one-by-one" else max_batch_size
    if has_scheduler():
        fields["scheduler"] = "continuous" if mode == "continuous" else "static"
    elif mode == "continuous":
        return None
    return fields


# ---- servers -------------------------------------------------------------------------------------------------
class ServerProcess:
    """A server for `checkpoint` in its own process on 127.0.0.1 (so the clients do not share its GIL), built
    from ServeConfig fields by this script's --child mode (no CLI flag needed for a field the CLI lacks)."""

    def __init__(
        self,
        checkpoint: Path,
        max_batch_size: int,
        torch_threads: int | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        # The child imports the danlu this process runs (the tree first on sys.path, not the installed one).
        tree = str(Path(danlu.__file__).resolve().parents[1])
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")])}
        if torch_threads:
            self.env["OMP_NUM_THREADS"] = str(torch_threads)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        fields = fields or {"model_name": "bench", "max_wait_ms": 5.0, "max_batch_size": max_batch_size}
        self.command = [sys.executable, str(Path(__file__).resolve()), "--child", str(checkpoint),
                        "--port", str(port), "--fields", json.dumps(fields)]  # fmt: skip

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


def child_server(checkpoint: str, port: int, fields: dict[str, Any]) -> None:
    model, tokenizer = danlu.load(checkpoint)
    serve(create_app(model, tokenizer, ServeConfig(**fields)), host="127.0.0.1", port=port)


# ---- clients -------------------------------------------------------------------------------------------------
def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def _has_content(chunk: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])


async def stream_chat(
    client: httpx.AsyncClient, body: dict[str, Any], on_first: Callable[[], None] | None = None
) -> dict[str, float]:
    """One streamed chat request: seconds to the first content chunk (when `on_first` is called) and to the
    end, the completion tokens, the end time."""
    sent = time.perf_counter()
    first = math.nan
    tokens = 0
    body = {**body, "model": "bench", "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if math.isnan(first) and _has_content(chunk):
                first = time.perf_counter() - sent
                if on_first is not None:
                    on_first()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ttft": first, "latency": end - sent, "tokens": tokens, "end": end}


class Arrival(NamedTuple):  # (a NamedTuple: the tests load this file without registering it as a module)
    at: float  # seconds after the start of the load
    body: dict[str, Any]  # the chat request (model and stream are added when sent)


def world_words(seed: int = 0) -> list[str]:
    text = " ".join(t for t in build_world(seed, "tiny").pretrain_texts("train") if t.isascii())
    return text.split()


def poisson_arrivals(n: int, rate: float, seed: int = 0, system_words: int = 60) -> list[Arrival]:
    """n chat requests at Poisson times of `rate` per second (exponential gaps), mixed in every way the issue
    names, all drawn from one seeded generator so each scheduler sees the same load."""
    rng = random.Random(seed)
    words = world_words()
    system = "You are the archivist of this world. " + " ".join(words[:system_words])
    arrivals, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate)
        length = rng.choice((4, 12, 32))  # words of the user's question
        start = rng.randrange(system_words, len(words) - length)
        messages = [{"role": "user", "content": f"Question {i}: " + " ".join(words[start : start + length])}]
        if rng.random() < 0.5:
            messages.insert(0, {"role": "system", "content": system})
        body: dict[str, Any] = {"messages": messages, "max_tokens": rng.choice((8, 16, 32, 64))}
        if rng.random() < 1 / 3:
            body.update(temperature=0.8, seed=rng.randrange(1 << 30))
        else:
            body["temperature"] = 0
        arrivals.append(Arrival(t, body))
    return arrivals


async def open_loop(url: str, arrivals: list[Arrival], timeout: float) -> dict[str, Any]:
    """Send every arrival at its time (without waiting for answers) and collect what came back."""
    out: dict[str, Any] = {"results": [], "errors": []}
    limits = httpx.Limits(max_connections=len(arrivals) + 4, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        started = time.perf_counter()

        async def one(a: Arrival) -> None:
            await asyncio.sleep(max(0.0, started + a.at - time.perf_counter()))
            try:
                out["results"].append(await stream_chat(client, a.body))
            except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as e:
                out["errors"].append(f"{type(e).__name__}: {e}")

        await asyncio.gather(*(one(a) for a in arrivals))
        ends = [r["end"] for r in out["results"]]
        out["wall_s"] = (max(ends) if ends else time.perf_counter()) - started
    return out


async def probe(url: str, long_tokens: int, short_tokens: int, timeout: float) -> dict[str, float]:
    """A long greedy request, then a short one as soon as the long one streams its first content: both finish
    times in seconds after the long one was sent, and the tokens each generated (the random model may end a
    request early; the report says so)."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        started = time.perf_counter()
        streaming = asyncio.Event()
        ends: dict[str, float] = {}

        async def long() -> None:
            body = {"messages": [{"role": "user", "content": "Tell me everything about the Telan River."}],
                    "max_tokens": long_tokens, "temperature": 0}  # fmt: skip
            try:
                r = await stream_chat(client, body, on_first=streaming.set)
            finally:
                streaming.set()  # a failed long request must not leave the short one waiting
            ends.update(long=r["end"] - started, long_tokens=r["tokens"])

        async def short() -> None:
            await streaming.wait()
            body = {
                "messages": [{"role": "user", "content": "Hi."}],
                "max_tokens": short_tokens,
                "temperature": 0,
            }
            r = await stream_chat(client, body)
            ends.update(short=r["end"] - started, short_tokens=r["tokens"])

        await asyncio.gather(long(), short())
    return ends


async def _client(
    client: httpx.AsyncClient,
    c: int,
    requests: int,
    max_tokens: int,
    out: dict[str, list],
    seeded: bool = False,
) -> None:
    for r in range(requests):
        body: dict[str, Any] = {
            "model": "bench",
            "messages": [{"role": "user", "content": f"Client {c} asks question {r}: what is {c} + {r}?"}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        if seeded:
            body.update(temperature=0.8, seed=1000 * c + r)
        started = time.perf_counter()
        try:
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            out["tokens"].append(response.json()["usage"]["completion_tokens"])
            out["latency"].append(time.perf_counter() - started)
        except (httpx.HTTPError, KeyError, ValueError) as e:
            out["errors"].append(f"{type(e).__name__}: {e}")


async def _load(
    url: str, clients: int, requests: int, max_tokens: int, timeout: float, seeded: bool = False
) -> dict[str, list]:
    """The closed loop: `clients` clients each sending `requests` requests one after the other."""
    out: dict[str, list] = {"latency": [], "tokens": [], "errors": []}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(_client(client, c, requests, max_tokens, out, seeded) for c in range(clients)))
    return out


# ---- one scheduler, then all ---------------------------------------------------------------------------------
def health(url: str) -> dict[str, Any]:
    return httpx.get(url + "/health", timeout=10).json().get("batching", {})


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Everything for the server at `url`: the mixed load, the probe, the closed loop."""
    arrivals = poisson_arrivals(args.requests, args.rate, args.seed)
    load = asyncio.run(open_loop(url, arrivals, args.timeout))
    stats = health(url)
    done = load["results"]
    ttft = [r["ttft"] for r in done if not math.isnan(r["ttft"])]
    latency = [r["latency"] for r in done]
    cache = stats.get("prefix_cache") or {}
    result: dict[str, Any] = {
        "ok": len(done),
        "errors": load["errors"],
        "req_s": len(done) / load["wall_s"],
        "tok_s": sum(r["tokens"] for r in done) / load["wall_s"],
        "ttft_p50": percentile(ttft, 0.5),
        "ttft_p95": percentile(ttft, 0.95),
        "lat_p50": percentile(latency, 0.5),
        "lat_p95": percentile(latency, 0.95),
        "hit_rate": cache.get("hit_rate") if isinstance(cache, dict) else None,
        "mean_batch": stats.get("mean_batch_size"),
    }
    ends = asyncio.run(probe(url, args.long_tokens, args.short_tokens, args.timeout))
    result.update(probe_long=ends["long"], probe_short=ends["short"])
    result.update(probe_long_tokens=ends["long_tokens"], probe_short_tokens=ends["short_tokens"])
    started = time.perf_counter()
    closed = asyncio.run(
        _load(url, args.clients, args.closed_requests, args.closed_tokens, args.timeout, seeded=True)
    )
    result["closed_req_s"] = len(closed["latency"]) / (time.perf_counter() - started)
    result["errors"] += closed["errors"]
    return result


def run_mode(mode: str, model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """One scheduler's figures against a fresh server (its own process, or a thread with --in-process)."""
    fields = serve_fields(mode, args.max_batch_size)
    if fields is None:
        return None
    if args.in_process:
        with BackgroundServer(create_app(model, tokenizer, ServeConfig(**fields))) as url:
            return measure(url, args)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = danlu.save(model, tokenizer, Path(tmp) / "bench")
        with ServerProcess(checkpoint, fields["max_batch_size"], args.threads, fields) as url:
            return measure(url, args)


ROWS = (  # (key, label, format)
    ("ok", "mixed load: requests answered", "{:.0f}"),
    ("req_s", "mixed load: throughput, req/s", "{:.2f}"),
    ("tok_s", "mixed load: generated tok/s", "{:.1f}"),
    ("ttft_p50", "mixed load: p50 time to first token, s", "{:.3f}"),
    ("ttft_p95", "mixed load: p95 time to first token, s", "{:.3f}"),
    ("lat_p50", "mixed load: p50 latency, s", "{:.3f}"),
    ("lat_p95", "mixed load: p95 latency, s", "{:.3f}"),
    ("hit_rate", "mixed load: prefix-cache hit rate", "{:.2f}"),
    ("mean_batch", "mixed load: mean batch (server's figure)", "{:.1f}"),
    ("probe_short", "probe: short request finished at, s", "{:.2f}"),
    ("probe_long", "probe: long request finished at, s", "{:.2f}"),
    ("probe_long_tokens", "probe: long request's tokens", "{:.0f}"),
    ("closed_req_s", "closed loop, seeded clients: req/s", "{:.2f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def _ratio(a: Any, b: Any) -> str:
    ok = all(isinstance(x, (int, float)) and not math.isnan(x) for x in (a, b))
    return f"{a / b:.2f}x" if ok and b else "n/a"


def table(results: dict[str, dict[str, Any] | None]) -> str:
    """The markdown table of every row, one column per scheduler and the two ratios."""
    head = ["", *MODES, "continuous / static", "continuous / one-by-one"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, label, fmt in ROWS:
        values = [(results.get(m) or {}).get(key) for m in MODES]
        cells = [
            _cell(v, fmt) if results.get(m) is not None else "not available" for m, v in zip(MODES, values)
        ]
        lines.append("| " + " | ".join([label, *cells, _ratio(values[0], values[1]), _ratio(values[0], values[2])])
                     + " |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=64, help="requests of the mixed (Poisson) load")
    p.add_argument("--rate", type=float, default=32.0, help="mean arrivals per second of the mixed load")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival process and the mix")
    p.add_argument("--clients", type=int, default=32, help="clients of the closed seeded loop")
    p.add_argument("--closed-requests", type=int, default=3, help="requests per client of the closed loop")
    p.add_argument("--closed-tokens", type=int, default=32, help="new tokens per closed-loop request")
    p.add_argument("--long-tokens", type=int, default=400, help="the probe's long request")
    p.add_argument("--short-tokens", type=int, default=8, help="the probe's short request")
    p.add_argument("--max-batch-size", type=int, default=32, help="of the continuous and static servers")
    p.add_argument(
        "--rounds", type=int, default=1, help="the modes in turn this many times; medians reported"
    )
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--preset", default="llama-tiny")
    p.add_argument("--block-size", type=int, default=512, help="the model's context (the preset's is 256)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--in-process", action="store_true", help="run each server in a thread of this process")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server (default: torch's)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: serve this checkpoint
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--fields", default="{}", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, dict[str, Any] | None]:
    # 512 positions: the mix's longest request (shared system prompt, long question, 64 new tokens) fits.
    model, tokenizer = make_model(args.preset, block_size=args.block_size)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"error: unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    arrivals = poisson_arrivals(args.requests, args.rate, args.seed)
    offered = len(arrivals) / arrivals[-1].at  # the arrival rate this draw realised
    print(f"mixed load: {args.requests} requests at {args.rate:g}/s (Poisson, seed {args.seed}; "
          f"{offered:.1f}/s realised); probe "
          f"{args.long_tokens} vs {args.short_tokens} tokens; closed loop {args.clients} seeded clients x "
          f"{args.closed_requests}; preset {args.preset}; max batch {args.max_batch_size}; rounds {args.rounds}; "
          f"load average {open('/proc/loadavg').read().split()[0] if os.path.exists('/proc/loadavg') else '?'}; "
          f"danlu from {Path(danlu.__file__).resolve().parents[1]}",
          flush=True)  # fmt: skip
    rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(args.rounds):  # the modes in turn, so a drift of the machine's load touches each alike
        for mode in (m for m in MODES if m in modes):
            started = time.perf_counter()
            result = run_mode(mode, model, tokenizer, args)
            if result is None:
                if r == 0:
                    print(UNAVAILABLE, flush=True)
                continue
            rounds[mode].append(result)
            errors = result["errors"]
            print(f"{mode}, round {r + 1}: done in {time.perf_counter() - started:.1f} s, {len(errors)} errors"
                  + "".join(f"\n  error: {e}" for e in errors[:5]), flush=True)  # fmt: skip
            if result["req_s"] >= 0.9 * offered:
                print(f"  {mode} kept up with the arrivals ({offered:.1f}/s offered): its throughput is the "
                      "offered rate, not its capacity; raise --rate to compare capacities")  # fmt: skip
    return {m: pooled(rounds[m]) if rounds[m] else None for m in MODES}


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one mode as one: the median of each figure, the answered requests and errors summed."""
    out: dict[str, Any] = {
        "ok": sum(r["ok"] for r in results),
        "errors": [e for r in results for e in r["errors"]],
    }
    for key in results[0]:
        if key not in out:
            values = [r[key] for r in results if isinstance(r[key], (int, float))]
            out[key] = statistics.median(values) if values else None
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child_server(args.child, args.port, json.loads(args.fields))
        return
    results = run(args)
    print(table(results))


if __name__ == "__main__":
    main()
