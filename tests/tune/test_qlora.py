"""QLoRA: NF4 levels, gradients through the dequantised base, memory, merging, and the CLI flag."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from danlu.errors import DanluError
from danlu.generate.quantize import model_bytes
from danlu.models.checkpoints import load, save_model
from danlu.tune.lora import LoRAConfig, apply_lora, lora_layers, merge_and_unload
from danlu.tune.qlora import NF4_LEVELS, QuantizedLinear, dequantize_base


def test_nf4_levels_are_normal_quantiles_with_an_exact_zero():
    assert NF4_LEVELS.shape == (16,)
    assert torch.all(NF4_LEVELS[1:] > NF4_LEVELS[:-1])
    assert NF4_LEVELS[0] == -1 and NF4_LEVELS[-1] == 1 and (NF4_LEVELS == 0).sum() == 1
    assert (NF4_LEVELS > 0).sum() == 8 and (NF4_LEVELS < 0).sum() == 7
    # bitsandbytes' published table starts -1, -0.6962, -0.5251 and ends 0.5626, 0.7230, 1
    assert NF4_LEVELS[1] == pytest.approx(-0.6962, abs=1e-4) and NF4_LEVELS[-2] == pytest.approx(
        0.7230, abs=1e-4
    )


def test_nf4_beats_a_uniform_4_bit_grid_on_normal_weights():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128, bias=False)
    torch.nn.init.normal_(linear.weight, std=0.02)
    w = linear.weight.detach()
    nf4_err = (QuantizedLinear(linear, 4).dequantize() - w).pow(2).mean()
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    grid = torch.linspace(-1, 1, 16)
    uniform = grid[((blocks / absmax)[..., None] - grid).abs().argmin(-1)] * absmax
    uniform_err = (uniform.reshape(w.shape) - w).pow(2).mean()
    assert nf4_err < 0.9 * uniform_err
    int8_err = (QuantizedLinear(linear, 8).dequantize() - w).pow(2).mean()
    assert int8_err < nf4_err / 50


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_gradients_equal_a_dequantised_reference(make_gpt, bits):
    model = make_gpt("llama-tiny", n_embd=64)
    apply_lora(model, LoRAConfig(r=4, targets=["q", "v", "mlp.down"], quantize_base=bits))
    assert any(isinstance(m, QuantizedLinear) for m in model.modules())
    torch.manual_seed(1)
    for layer in lora_layers(model).values():
        for b in layer.lora_B.values():
            torch.nn.init.normal_(b, std=0.1)
    reference = dequantize_base(copy.deepcopy(model))
    assert not any(isinstance(m, QuantizedLinear) for m in reference.modules())
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    losses = []
    for m in (model, reference):
        out = m(ids, labels=ids)
        out.loss.backward()
        losses.append(out.loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    ours = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    theirs = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert ours.keys() == theirs.keys() and ours
    for n in ours:
        assert torch.allclose(ours[n], theirs[n], atol=1e-6, rtol=1e-4), n


def test_qlora_base_is_smaller_and_merges_to_a_plain_model(make_gpt):
    model = make_gpt("llama-tiny", n_embd=64)
    full = model_bytes(model)
    apply_lora(model, LoRAConfig(r=4, quantize_base=4))
    linear_fp32 = sum(
        m.in_features * m.out_features * 4 for m in model.modules() if isinstance(m, QuantizedLinear)
    )
    linear_nf4 = sum(
        m.codes.numel() + m.scale.numel() * 4 for m in model.modules() if isinstance(m, QuantizedLinear)
    )
    assert linear_nf4 < linear_fp32 / 6  # 4 bits + one fp32 scale per 64 weights
    assert model_bytes(model) < full
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    with torch.no_grad():
        before = model(ids).logits
    merged = merge_and_unload(model)
    assert not any(isinstance(m, QuantizedLinear) for m in merged.modules())
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, before, atol=1e-5)


def test_sft_cli_trains_qlora_and_merge_saves_the_model_in_the_base_dtype(
    world, tokenizer, make_gpt, tmp_path, cli
):
    base = make_gpt("llama-tiny", n_embd=64).to(torch.bfloat16)
    ck = save_model(base, tmp_path / "base", tokenizer=tokenizer)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in world.sft_records("train")[:20]))
    code = cli(["sft", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "out"), "--lora",
                "--quantize-base", "4", "--merge", "--max-steps", "3", "--batch-size", "4", "--block-size", "64",
                "--quiet"])  # fmt: skip
    assert code == 0
    merged, _ = load(tmp_path / "out" / "merged")
    assert not (tmp_path / "out" / "merged" / "optimizer.pt").exists()
    assert json.loads((tmp_path / "out" / "merged" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert next(merged.parameters()).dtype == torch.float32
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["r"] == 8


def test_qlora_bad_settings(make_gpt, tmp_path, cli, capsys, tokenizer):
    with pytest.raises(DanluError, match="4 \\(NF4\\) or 8"):
        LoRAConfig(quantize_base=3)
    ck = save_model(make_gpt(), tmp_path / "base", tokenizer=tokenizer)
    code = cli(["sft", "--model", str(ck), "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o"),
                "--quantize-base", "4"])  # fmt: skip
    assert code == 2 and "add --lora" in capsys.readouterr().err
