"""Checkpoints: round trips, transformers loading danlu's checkpoints, and clear errors for bad ones."""

import json

import pytest
import torch
import transformers

from danlu.errors import DanluError
from danlu.models.checkpoints import load_model, save_model
from danlu.models.gpt import GPT, GPTConfig


@pytest.mark.parametrize(
    "preset, hf_class", [("gpt2-tiny", "GPT2LMHeadModel"), ("llama-tiny", "LlamaForCausalLM")]
)
def test_transformers_loads_a_danlu_checkpoint(tmp_path, preset, hf_class):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset, vocab_size=97, n_layer=2, n_embd=32, block_size=64)).eval()
    save_model(model, tmp_path / "ck")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    assert type(hf).__name__ == hf_class
    x = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        assert (hf(x).logits - model(x).logits).abs().max().item() < 1e-4
        assert torch.equal(load_model(tmp_path / "ck")(x).logits, model(x).logits)


def test_native_layout_for_shapes_hf_does_not_know(tmp_path):
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=50, mlp="gelu", n_layer=1)).eval()
    save_model(model, tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"] == "danlu-gpt"
    x = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "ck")(x).logits, model(x).logits)


@pytest.fixture
def ckpt(tmp_path):
    save_model(GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=50, n_layer=1)), tmp_path / "ck")
    return tmp_path / "ck"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(DanluError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DanluError, match="has no config.json"):
        load_model(tmp_path / "empty")


def test_corrupt_weights(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DanluError, match="not a readable safetensors file"):
        load_model(ckpt)


def test_corrupt_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(DanluError, match="not valid JSON"):
        load_model(ckpt)


def test_foreign_architecture(ckpt):
    (ckpt / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(DanluError, match="unsupported architecture model_type='mamba'; supported: \\['gpt2'"):
        load_model(ckpt)


def test_missing_weights_and_pickles_refused(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    with pytest.raises(DanluError, match="danlu reads safetensors only"):
        load_model(ckpt)


def test_mismatched_shapes_name_the_tensor(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["danlu"]["config"]["n_embd"] = 64
    cfg["danlu"]["config"]["intermediate_size"] = 256
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        DanluError, match="tensor wte.weight has shape \\(50, 128\\) but the config needs \\(50, 64\\)"
    ):
        load_model(ckpt)
