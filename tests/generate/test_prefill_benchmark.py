"""benchmarks/decode_speed.py's prefill rows (benchmarks/prefill_speed.py) (issue 22 item 2), small: every length gets a danlu and a
transformers row on the same weights, a length beyond the context is capped (and said), and without llama.cpp
the script says so instead of failing."""

import importlib
import importlib.util
from pathlib import Path

import torch

from danlu.models.gpt import GPT, GPTConfig

BENCH = Path(__file__).parents[2] / "benchmarks" / "decode_speed.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("decode_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prefill_module():
    load_benchmark()  # puts benchmarks/ on sys.path, where decode_speed.py imports its prefill rows from
    return importlib.import_module("prefill_speed")


def test_prefill_rows_for_every_length(capsys):
    bench = load_benchmark()
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=256)).eval()  # block_size 256
    hf = bench.hf_twin(model)
    bench.prefill_rows(model, hf, None, [8, 64, 300], repeats=1, compile=False)
    out = capsys.readouterr().out
    assert "capped to the model's context (256 tokens)" in out
    rows = [(line[2:30].strip(), int(line[30:37]), line[37:]) for line in out.splitlines()
            if line.startswith(("  danlu", "  transformers"))]  # fmt: skip
    assert sorted((label, T) for label, T, _ in rows) == [
        (label, T) for label in ("danlu (eager, the engine's)", "transformers") for T in (8, 64, 255)
    ]
    for _, _, figures in rows:  # tokens/s, x HF, CPU-time tokens/s, x HF: all positive
        values = [float(x.rstrip("x")) for x in figures.split()]
        assert len(values) == 4 and all(v > 0 for v in values), figures
    assert "llama.cpp prefill: not run (needs a GGUF model)" in out


def test_the_engine_prefill_timed_is_the_one_forward_with_one_logit():
    """What the danlu row times: the engine's prefill, whose logits equal the full forward's last position."""
    from danlu.generate import steps

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=256)).eval()
    ids = torch.randint(0, 256, (1, 40))
    with torch.inference_mode():
        state = steps.new_state(model, 1, 41)
        logits = steps.prefill(model, state, ids, torch.ones_like(ids))
        full = model(ids).logits[:, -1]
        compiled_input = prefill_module()._prefill_forward(model, ids, model.new_kv_cache(1, 41))
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_input, full, atol=1e-5, rtol=1e-5)
