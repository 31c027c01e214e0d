"""GGUF import: dequantisation checked against the `gguf` package (llama.cpp's own Python reader, a test-only
peer), tiny LLaMA / Qwen2 GGUF files written the way llama.cpp's converter writes them (q/k rows permuted for
LLaMA) compared with the Hugging Face models they came from, and clear errors for bad files."""

import gguf
import numpy as np
import pytest
import torch
import transformers

from danlu.errors import DanluError
from danlu.models.checkpoints import load_model
from danlu.models.gguf import GGML_TYPES, dequantize, read_gguf, unpermute_rope

QT = gguf.GGMLQuantizationType
# Byte offsets of each block's fp16 scale / minimum fields (random bytes there could be NaN or inf).
SCALE_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
                "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # fmt: skip


@pytest.mark.parametrize("name", [*SCALE_FIELDS, "F16", "BF16"])
def test_dequantize_matches_gguf_package(name):
    code = getattr(QT, name).value
    _, block, size = GGML_TYPES[code]
    rng = np.random.default_rng(code)
    n_blocks = 64 if block > 1 else 4096
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in SCALE_FIELDS.get(name, ()):
        raw[:, off : off + 2] = rng.uniform(-0.1, 0.1, (n_blocks, 1)).astype(np.float16).view(np.uint8)
    if name == "BF16":  # keep exponents finite: clear the top exponent bit
        raw[:, 1] &= 0x3F
    if name == "F16":
        raw = rng.uniform(-5, 5, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    expected = gguf.quants.dequantize(raw if block > 1 else raw.reshape(-1), QT(code)).reshape(-1)
    got = dequantize(raw.reshape(-1), code)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_unpermute_undoes_llama_cpp_permutation():
    n_head, head_size = 3, 8
    w = torch.randn(n_head * head_size, 5)
    # llama.cpp's converter: reshape(n_head, 2, hs/2, ...).swapaxes(1, 2) — pairs (x_i, x_{i+hs/2}) interleaved.
    permuted = w.reshape(n_head, 2, head_size // 2, 5).transpose(1, 2).reshape(w.shape)
    assert torch.equal(unpermute_rope(permuted, n_head), w)


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, hf, arch: str, quant: str | None = None, drop: str | None = None, override=None):
    """Write a Hugging Face LLaMA / Qwen2 model as llama.cpp's converter would (F32, or `quant` for matrices)."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    for key, value in (override or {}).items():
        w.add_string(key, value)
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}  # fmt: skip
    layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}  # fmt: skip
    for i in range(c.num_hidden_layers):
        for theirs, ours in layer.items():
            for s in ("weight", "bias"):
                names[f"model.layers.{i}.{theirs}.{s}"] = f"blk.{i}.{ours}.{s}"
    for key, x in sd.items():
        if key not in names or (c.tie_word_embeddings and key == "lm_head.weight"):
            continue
        name = names[key]
        if name == drop:
            continue
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            x = _llama_permute(x, c.num_attention_heads if ".attn_q." in name else c.num_key_value_heads)
        if quant and x.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(x, getattr(QT, quant)), raw_dtype=getattr(QT, quant))
        else:
            w.add_tensor(name, np.ascontiguousarray(x, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _hf(arch: str, tie: bool = False):
    torch.manual_seed(0)
    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=tie)  # fmt: skip
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("arch, tie", [("llama", False), ("llama", True), ("qwen2", False)])
def test_float_gguf_matches_the_hf_model(tmp_path, arch, tie):
    hf = _hf(arch, tie)
    model = load_model(_write_gguf(tmp_path / "m.gguf", hf, arch))
    assert model.config.tie_embeddings == tie and model.config.qkv_bias == (arch == "qwen2")
    x = torch.randint(0, 96, (2, 13))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantised_gguf_holds_the_dequantised_unpermuted_weights(tmp_path, quant):
    """Every attention matrix danlu builds from a quantised file equals the gguf package's dequantisation of it,
    with llama.cpp's q/k row permutation undone."""
    path = _write_gguf(tmp_path / "m.gguf", _hf("llama"), "llama", quant=quant)
    assert read_gguf(path).tensors["blk.0.attn_q.weight"].type_name == quant
    reference = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    model = load_model(path)

    def dequantised(name: str) -> torch.Tensor:
        t = reference[name]
        return torch.from_numpy(
            gguf.quants.dequantize(t.data, t.tensor_type).reshape(t.shape[::-1].tolist()).copy()
        )

    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.split([64, 32, 32])
        assert torch.equal(q, unpermute_rope(dequantised(f"blk.{i}.attn_q.weight"), 4))
        assert torch.equal(k, unpermute_rope(dequantised(f"blk.{i}.attn_k.weight"), 2))
        assert torch.equal(v, dequantised(f"blk.{i}.attn_v.weight"))
        assert torch.equal(block.attn.proj.weight, dequantised(f"blk.{i}.attn_output.weight"))


def test_gguf_without_tokenizer_metadata_says_so(tmp_path):
    import danlu

    path = _write_gguf(tmp_path / "m.gguf", _hf("llama"), "llama")
    w = gguf.GGUFReader(str(path))
    assert "tokenizer.ggml.tokens" not in w.fields
    with pytest.raises(DanluError, match="no tokenizer"):  # the file has no tokenizer metadata: said plainly
        danlu.load(path)


def test_unsupported_quantisation_is_named(tmp_path):
    hf = _hf("llama")
    path = _write_gguf(tmp_path / "m.gguf", hf, "llama", quant="Q8_0")
    data = bytearray(path.read_bytes())
    f = read_gguf(path)
    # Rewrite the type field of one tensor info to Q2_K (10): it sits right after the dims of its name.
    name = b"blk.0.ffn_down.weight"
    at = data.index(name) + len(name) + 4 + 8 * 2  # n_dims (uint32) + two uint64 dims
    assert int.from_bytes(data[at : at + 4], "little") == QT.Q8_0.value
    data[at : at + 4] = (10).to_bytes(4, "little")
    (tmp_path / "q2.gguf").write_bytes(bytes(data))
    assert f.tensors["blk.0.ffn_down.weight"].type_name == "Q8_0"
    with pytest.raises(
        DanluError, match="blk.0.ffn_down.weight: GGML quantisation type Q2_K is not supported"
    ):
        load_model(tmp_path / "q2.gguf")


def test_bad_gguf_files(tmp_path):
    hf = _hf("llama")
    with pytest.raises(DanluError, match="not a GGUF file"):
        (tmp_path / "x.gguf").write_bytes(b"GGML" + bytes(100))
        load_model(tmp_path / "x.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(DanluError, match="not a GGUF file \\(only 0 bytes\\)"):
        load_model(tmp_path / "empty.gguf")
    good = _write_gguf(tmp_path / "m.gguf", hf, "llama").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) - 1000])
    with pytest.raises(DanluError, match="truncated"):
        load_model(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(good[:200])
    with pytest.raises(DanluError, match="truncated"):
        load_model(tmp_path / "head.gguf")
    with pytest.raises(DanluError, match="tensor blk.1.ffn_up.weight is missing"):
        load_model(_write_gguf(tmp_path / "d.gguf", hf, "llama", drop="blk.1.ffn_up.weight"))
    mamba = _write_gguf(tmp_path / "mamba.gguf", hf, "mamba")
    with pytest.raises(
        DanluError, match="unsupported architecture general.architecture='mamba'; danlu loads GGUF"
    ):
        load_model(mamba)
