"""`danlu merge-lora`: an adapter from `danlu sft --lora` folded into its base equals the in-memory merge, is
saved in the base's dtype (or --dtype) without training state, and an adapter for another base is refused."""

import json

import torch
from safetensors import safe_open

from danlu.models.checkpoints import load, save_model
from danlu.tune.lora import LoRAConfig, apply_lora, merge_and_unload, save_adapter
from danlu.tune.merge import base_dtype


def _adapter(make_gpt, tokenizer, tmp_path, base_dtype_=torch.bfloat16, **shape):
    """A base checkpoint (saved in `base_dtype_`) and a trained-looking adapter for it."""
    base = make_gpt(**shape)
    ck = save_model(base.to(base_dtype_), tmp_path / "base", tokenizer=tokenizer)
    model, _ = load(ck)  # float32, as training sees it
    apply_lora(model, LoRAConfig(r=4, targets=["q", "v", "down"]))
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B, so the merge changes the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(ck))
    return ck, tmp_path / "adapter", merge_and_unload(model).eval()


def _dtypes(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def test_merge_lora_equals_the_in_memory_merge_in_the_base_dtype(make_gpt, tokenizer, tmp_path, cli, capsys):
    ck, adapter, expected = _adapter(make_gpt, tokenizer, tmp_path)
    assert (
        cli(["merge-lora", "--model", str(ck), "--adapter", str(adapter), "--out", str(tmp_path / "m")]) == 0
    )
    assert "merged checkpoint (bfloat16)" in capsys.readouterr().out
    assert _dtypes(tmp_path / "m") == {"BF16"}
    assert not (tmp_path / "m" / "optimizer.pt").exists()
    merged, tok = load(tmp_path / "m")
    assert tok is not None
    ids = torch.tensor([tokenizer.encode("Zorvia is a country")])
    with torch.no_grad():
        want = expected.to(torch.bfloat16).float()(ids).logits  # the same weights, rounded to bf16 once
        assert torch.allclose(merged(ids).logits, want, atol=1e-5)
        base, _ = load(ck)
        assert not torch.allclose(base(ids).logits, want, atol=1e-3)  # the adapter did change the model


def test_merge_lora_dtype_flag(make_gpt, tokenizer, tmp_path, cli):
    ck, adapter, _ = _adapter(make_gpt, tokenizer, tmp_path)
    out = tmp_path / "m16"
    assert (
        cli(
            ["merge-lora", "--model", str(ck), "--adapter", str(adapter), "--out", str(out), "--dtype", "f16"]
        )
        == 0
    )
    assert _dtypes(out) == {"F16"}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"


def test_an_adapter_for_another_base_is_an_error_naming_both(make_gpt, tokenizer, tmp_path, cli, capsys):
    ck, adapter, _ = _adapter(make_gpt, tokenizer, tmp_path)
    other = save_model(make_gpt(n_embd=64), tmp_path / "other", tokenizer=tokenizer)
    assert (
        cli(["merge-lora", "--model", str(other), "--adapter", str(adapter), "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(ck) in err and str(other) in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    # a folder that is no adapter: one line, before the base is loaded
    assert (
        cli(["merge-lora", "--model", str(ck), "--adapter", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    )
    assert "adapter_config.json is missing" in capsys.readouterr().err


def test_sft_merge_flag_needs_lora(make_gpt, tokenizer, tmp_path, cli, capsys):
    ck = save_model(make_gpt(), tmp_path / "base", tokenizer=tokenizer)
    code = cli(["sft", "--model", str(ck), "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o"),
                "--merge"])  # fmt: skip
    assert code == 2 and "add --lora" in capsys.readouterr().err


def test_base_dtype_of_a_quantised_gguf_is_float16(smollm2_gguf, tmp_path):
    # SmolLM2's Q4_1 file: 4-bit blocks with f16 scales (and f32 norms): merged weights go to f16, not f32.
    assert base_dtype(smollm2_gguf) == torch.float16
    assert base_dtype(tmp_path) == torch.float32  # a folder without config.json: the safe default
