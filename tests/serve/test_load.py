"""A bounded load test on 127.0.0.1 (benchmarks/serve_load.py, small): no request fails, and batching concurrent
requests serves more of them per second than serving them one by one."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).parents[2] / "benchmarks" / "serve_load.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batching_raises_throughput_without_errors(capsys):
    bench = load_benchmark()
    model, tokenizer = bench.make_model("llama-tiny")
    runs = [
        bench.run_load(
            model, tokenizer, clients=16, requests=2, max_tokens=32, max_batch_size=b, torch_threads=1
        )
        for b in (16, 1)
    ]
    batched, sequential = runs
    with capsys.disabled():
        print("\n" + "\n".join(bench.report(r) for r in runs))
    for r in runs:
        assert r["errors"] == [] and r["requests"] == 32
        assert 0 < r["p50_s"] <= r["p95_s"]
    assert batched["mean_batch"] > 1 and sequential["mean_batch"] == 1
    assert batched["requests_per_s"] > 1.2 * sequential["requests_per_s"]
