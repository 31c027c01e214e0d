"""`danlu plan`: its counts are danlu's own model's (parameters, saved activations), its memory sums and
largest micro-batch are consistent, and the command prints and refuses as it should."""

import json

import pytest
import torch

from danlu.cli import main
from danlu.models.gpt import GPT, GPTConfig
from danlu.train.plan import (
    activation_elements_per_token,
    count_params,
    largest_micro_batch,
    plan_training,
)

SHAPES = [
    ("gpt2-tiny", {"vocab_size": 512, "n_layer": 2}),
    ("llama-tiny", {"vocab_size": 512, "n_layer": 2}),  # RMSNorm, SwiGLU, RoPE, GQA (n_kv_head 2 of 4)
    ("llama-tiny", {"vocab_size": 512, "n_layer": 3, "n_kv_head": 4, "tie_embeddings": False}),
]


@pytest.mark.parametrize("preset, overrides", SHAPES)
def test_parameter_count_is_the_model_s(preset, overrides):
    cfg = GPTConfig.from_name(preset, **overrides)
    total, matmul = count_params(cfg)
    model = GPT(cfg)
    assert total == sum(p.numel() for p in model.parameters())
    head = cfg.vocab_size * cfg.n_embd
    embeddings = head + (cfg.block_size * cfg.n_embd if cfg.position == "learned" else 0)
    assert matmul == total - embeddings + (head if cfg.tie_embeddings else 0)


def _saved_bytes(model: GPT, B: int, T: int) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward (the truth the plan counts)."""
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randint(0, model.config.vocab_size, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, labels=x)
    return sum(storages.values())


@pytest.mark.parametrize("preset, overrides", SHAPES)
def test_activation_count_matches_what_autograd_saves(preset, overrides):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset, **overrides))
    B, T = 2, 64
    planned = 4 * B * T * activation_elements_per_token(model.config, recompute=False)[0]
    assert planned == pytest.approx(_saved_bytes(model, B, T), rel=0.02)


def test_memory_adds_up_and_shrinks_where_it_should():
    cfg = GPTConfig.from_name("gpt2-small", vocab_size=4096)
    plain = plan_training(cfg, 8, 256)
    assert plain.weights_bytes == plain.grads_bytes == 4 * plain.params
    assert plain.optimizer_bytes == 8 * plain.params  # AdamW: two fp32 moments
    recompute = plan_training(cfg, 8, 256, gradient_checkpointing=True)
    assert recompute.activations_bytes < plain.activations_bytes / 2
    assert recompute.flops_per_token == pytest.approx(plain.flops_per_token * 4 / 3)
    fsdp = plan_training(cfg, 8, 256, world_size=4, strategy="fsdp")
    assert fsdp.optimizer_bytes == plain.optimizer_bytes / 4
    assert fsdp.activations_bytes == plain.activations_bytes / 4  # each process sees 2 of the 8 sequences
    # 6N + 12·L·C·T (PaLM, Appendix B)
    assert plain.flops_per_token == 6 * plain.params_matmul + 12 * 6 * 384 * 256
    assert plain.kv_cache_bytes == 4 * 2 * 6 * 8 * 256 * 384


def test_largest_micro_batch_fits_and_one_more_does_not():
    cfg = GPTConfig.from_name("gpt2-small", vocab_size=4096)
    budget = 2 * 2**30
    B = largest_micro_batch(cfg, 256, budget)
    assert B > 1
    assert (
        plan_training(cfg, B, 256).peak_train_bytes
        <= budget
        < plan_training(cfg, B + 1, 256).peak_train_bytes
    )
    assert largest_micro_batch(cfg, 256, budget, gradient_checkpointing=True) > B
    assert largest_micro_batch(cfg, 256, 1e6) == 0  # not even the weights fit


def test_plan_command(capsys):
    args = ["plan", "--preset", "gpt2-tiny", "--vocab-size", "512", "--batch-size", "8", "--block-size", "64",
            "--hardware", "h100", "--nproc", "2", "--strategy", "fsdp", "--memory", "1"]  # fmt: skip
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] == "fsdp" and out["hardware"] == "h100"
    assert out["tokens_per_second"] == pytest.approx(0.4 * 989e12 * 2 / out["flops_per_token"])
    assert out["largest_micro_batch"] > 0 and out["memory_bytes"] == 2**30
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "peak training memory" in text and "with --gradient-checkpointing" in text and "2× h100" in text


def test_plan_on_cpu_calibrates(capsys):
    assert main(["plan", "--preset", "gpt2-tiny", "--vocab-size", "256", "--batch-size", "2", "--block-size",
                 "32", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["hardware"] == "cpu" and out["flops_per_second"] > 1e6 and out["seconds"] > 0


@pytest.mark.parametrize(
    "extra, needle",
    [(["--mfu", "1.5"], "--mfu is a fraction of the peak in \\(0, 1\\], got 1.5"),
     (["--preset", "nope"], "unknown model preset 'nope'"),
     (["--batch-size", "3", "--nproc", "2", "--hardware", "a100"], "batch_size 3 is not divisible by the 2"),
     (["--block-size", "4096", "--hardware", "a100"], "block_size 4096 is larger than the model's context"),
     (["--model", "/nonexistent/ckpt"], "no such checkpoint: /nonexistent/ckpt")],
)  # fmt: skip
def test_plan_refuses_bad_flags(extra, needle, capsys):
    assert main(["plan", "--preset", "gpt2-tiny", *extra]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and __import__("re").search(needle, err), err
