"""GGUF export: transformers' GGUF loader (`gguf_file=`) reads what danlu writes, with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from danlu.errors import DanluError
from danlu.models.checkpoints import load, save_model
from danlu.models.gguf import unpermute_rope
from danlu.models.gguf_export import export_gguf, permute_rope
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer


def _model(tokenizer, preset: str, **overrides) -> GPT:
    torch.manual_seed(0)
    # transformers sizes GPT-2's position table from n_positions (1024), not the GGUF context length
    block = 1024 if preset.startswith("gpt2") else 128
    shape = dict(vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=64, n_head=4, block_size=block)
    if not preset.startswith("gpt2"):
        shape["n_kv_head"] = 2
    return GPT(GPTConfig.from_name(preset, **{**shape, **overrides})).eval()


def _hf_from_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


def test_permute_rope_inverts_unpermute():
    w = torch.randn(4 * 16, 8)
    assert torch.equal(unpermute_rope(permute_rope(w, 4), 4), w)


@pytest.mark.parametrize(
    "preset,extra", [("llama-tiny", {}), ("llama-tiny", {"qkv_bias": True}), ("gpt2-tiny", {})]
)
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_transformers_reads_the_export_with_the_same_logits(tmp_path, tokenizer, preset, extra, dtype):
    model = _model(tokenizer, preset, **extra)
    path = export_gguf(model, tokenizer, tmp_path / "m.gguf", dtype=dtype)
    hf = _hf_from_gguf(path)
    ids = torch.randint(0, tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    span = float(ours.max() - ours.min())
    assert float((ours - theirs).abs().max()) <= 1e-3 * span


def test_q8_0_export_greedy_tokens_equal_in_danlu_and_transformers(tmp_path, tokenizer):
    model = _model(tokenizer, "llama-tiny")
    path = export_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="q8_0")
    hf = _hf_from_gguf(path)
    ours, _ = load(path)
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        ids = torch.randint(0, tokenizer.vocab_size, (1, 6), generator=g)
        a = b = ids
        with torch.no_grad():
            for _ in range(8):
                a = torch.cat([a, ours(a).logits[:, -1:].argmax(-1)], 1)
                b = torch.cat([b, hf(b).logits[:, -1:].argmax(-1)], 1)
        assert torch.equal(a, b)
    assert (
        path.stat().st_size
        < 0.5 * export_gguf(model, tokenizer, tmp_path / "f32.gguf", dtype="f32").stat().st_size
    )


def test_f32_export_round_trips_through_danlu_load(tmp_path, tokenizer):
    model = _model(tokenizer, "llama-tiny")
    back, tok = load(export_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32"))
    ids = torch.randint(0, tokenizer.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)
    assert tok.get_vocab() == tokenizer.get_vocab()
    assert tok.chat_template == tokenizer.chat_template


def test_export_keeps_the_exact_tokenizer_json(tmp_path, tokenizer, world):
    import gguf

    path = export_gguf(_model(tokenizer, "llama-tiny"), tokenizer, tmp_path / "m.gguf", dtype="f16")
    field = gguf.GGUFReader(str(path)).get_field("tokenizer.huggingface.json")
    restored = BPETokenizer.from_hf_dict(json.loads(field.contents()))
    for text in world.pretrain_texts("train")[:200]:
        assert restored.encode(text) == tokenizer.encode(text)


def test_export_names_what_gguf_cannot_express(tmp_path, tokenizer):
    with pytest.raises(DanluError, match="mlp='gelu'"):
        export_gguf(_model(tokenizer, "gpt2-tiny", mlp="gelu"), tokenizer, tmp_path / "a.gguf")
    with pytest.raises(DanluError, match="position='rope'"):
        export_gguf(_model(tokenizer, "gpt2-tiny", position="rope"), tokenizer, tmp_path / "b.gguf")
    with pytest.raises(DanluError, match="q8_0"):
        export_gguf(_model(tokenizer, "llama-tiny"), tokenizer, tmp_path / "c.gguf", dtype="q4")
    assert not list(tmp_path.iterdir())


def test_cli_export_gguf_with_modelfile_and_hf_folder(tmp_path, tokenizer, capsys):
    from danlu.cli import main

    src = save_model(_model(tokenizer, "llama-tiny"), tmp_path / "ckpt", tokenizer=tokenizer)
    assert (
        main(
            [
                "export",
                "--model",
                str(src),
                "--dtype",
                "q8_0",
                "--out",
                str(tmp_path / "o" / "m.gguf"),
                "--ollama",
            ]
        )
        == 0
    )
    modelfile = (tmp_path / "o" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./m.gguf") and "<|im_start|>assistant" in modelfile
    assert (
        main(
            ["export", "--model", str(src), "--format", "hf", "--dtype", "f16", "--out", str(tmp_path / "hf")]
        )
        == 0
    )
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert hf.dtype == torch.float16
    assert main(["export", "--model", str(src), "--dtype", "q4", "--out", str(tmp_path / "x.gguf")]) == 2
    assert "error: --dtype" in capsys.readouterr().err
