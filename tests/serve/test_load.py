"""Bounded load tests on 127.0.0.1 (benchmarks/serve_load.py, small): no request fails, batching concurrent
requests serves more of them per second than serving them one by one, and the issue-17 table has every row."""

import asyncio
import importlib.util
import tempfile
import time
from pathlib import Path

import danlu

BENCH = Path(__file__).parents[2] / "benchmarks" / "serve_load.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batching_raises_throughput_without_errors():
    """Two server processes (the benchmark's --child mode), 16 clients x 2 greedy requests each."""
    bench = load_benchmark()
    model, tokenizer = bench.make_model("llama-tiny")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = danlu.save(model, tokenizer, Path(tmp) / "bench")
        for b in (16, 1):
            fields = {"model_name": "bench", "max_wait_ms": 5.0, "max_batch_size": b}
            with bench.ServerProcess(checkpoint, b, torch_threads=1, fields=fields) as url:
                started = time.perf_counter()
                out = asyncio.run(bench._load(url, clients=16, requests=2, max_tokens=32, timeout=120))
                runs[b] = (out, bench.health(url), len(out["latency"]) / (time.perf_counter() - started))
    for out, _, _ in runs.values():
        assert out["errors"] == [] and len(out["latency"]) == 32
    (_, batched_stats, batched_rate), (_, sequential_stats, sequential_rate) = runs[16], runs[1]
    assert batched_stats["mean_batch_size"] > 1 and sequential_stats["mean_batch_size"] == 1
    assert batched_rate > 1.2 * sequential_rate


def test_the_arrivals_are_seeded_and_mixed():
    bench = load_benchmark()
    a, b = bench.poisson_arrivals(40, rate=10, seed=3), bench.poisson_arrivals(40, rate=10, seed=3)
    assert a == b and a != bench.poisson_arrivals(40, rate=10, seed=4)
    assert all(x.at < y.at for x, y in zip(a, a[1:]))
    assert 2 < a[-1].at < 8  # 40 arrivals at 10/s: about 4 s
    bodies = [x.body for x in a]
    seeded = [x for x in bodies if "seed" in x]
    assert 0 < len(seeded) < len(bodies) and all(x["temperature"] == 0.8 for x in seeded)
    shared = [x for x in bodies if x["messages"][0]["role"] == "system"]
    assert 0 < len(shared) < len(bodies) and len({x["messages"][0]["content"] for x in shared}) == 1
    assert (
        len({x["max_tokens"] for x in bodies}) > 1
        and len({len(x["messages"][-1]["content"]) for x in bodies}) > 3
    )


def test_the_table_has_every_row_for_every_scheduler(capsys):
    """Every scheduler this tree has answers every request of a tiny run, and the table prints every row;
    continuous batching is "not available" exactly when ServeConfig has no scheduler field."""
    bench = load_benchmark()
    args = bench.parse_args(["--requests", "6", "--rate", "50", "--clients", "4", "--closed-requests", "1",
                             "--closed-tokens", "4", "--long-tokens", "24", "--short-tokens", "4",
                             "--max-batch-size", "8", "--in-process"])  # fmt: skip
    results = bench.run(args)
    table = bench.table(results)
    with capsys.disabled():
        print("\n" + table)
    lines = table.splitlines()
    assert len(lines) == 2 + len(bench.ROWS)
    for (_key, label, _), line in zip(bench.ROWS, lines[2:]):
        assert line.startswith(f"| {label} |")
    available = bench.MODES if bench.has_scheduler() else ("static", "one-by-one")
    assert (results["continuous"] is None) == (not bench.has_scheduler())
    for mode in available:
        r = results[mode]
        assert r["errors"] == [] and r["ok"] == 6, (mode, r["errors"])
        assert 0 < r["ttft_p50"] <= r["ttft_p95"] <= r["lat_p95"] and r["tok_s"] > 0
        assert r["probe_long_tokens"] > 0 and r["probe_short"] > 0
    assert results["one-by-one"]["mean_batch"] == 1
    if not bench.has_scheduler():
        assert "| mixed load: throughput, req/s | not available |" in table
        assert bench.UNAVAILABLE in capsys.readouterr().out
