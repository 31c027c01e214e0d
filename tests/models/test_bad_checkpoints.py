"""Malicious or broken checkpoint files (issue 15, finding 7): every one is a DanluError naming the file, the
field and the value, before anything is allocated by what it claims; sizes claimed by a config cost nothing
until used (position tables are lazy)."""

import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from danlu.errors import DanluError
from danlu.gguf import read_gguf
from danlu.models.checkpoints import load_model, save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.nn import position

# (getattr: so that each test fails on its own, not at import, on a danlu without lazy position tables)
INITIAL_POSITIONS = getattr(position, "INITIAL_POSITIONS", 8192)

TINY = dict(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, n_embd=8, intermediate_size=16, block_size=64)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("llama")
    save_model(GPT(GPTConfig.from_name("llama-tiny", **TINY)), d)
    return d


def _with_config(src, dst, edit):
    """A copy of checkpoint src whose config.json is edit(config) (a dict, or any JSON value)."""
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(edit(config)))
    return dst


# ------------------------------------------------------------------------------------------- config.json
@pytest.mark.parametrize("value", [[1, 2], None, "gpt2", 3])
def test_config_json_that_is_not_an_object(tmp_path, llama_dir, value):
    d = _with_config(llama_dir, tmp_path / "ck", lambda c: value)
    with pytest.raises(DanluError, match=r"config.json should hold a JSON object"):
        load_model(d)


def _drop_danlu(c, **hf):
    c.pop("danlu")
    return {**c, **hf}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_attention_heads", 0, r"num_attention_heads must be in \[1, 65536\], got 0"),
        ("num_attention_heads", "2", r"num_attention_heads must be int, got str '2'"),
        ("hidden_size", True, r"hidden_size must be int, got True"),
        ("vocab_size", -5, r"vocab_size must be in \[1, 16777216\], got -5"),
        ("rms_norm_eps", "tiny", r"rms_norm_eps must be float, got str 'tiny'"),
        ("num_hidden_layers", None, r"num_hidden_layers is missing"),
        ("rope_scaling", [1], r"rope_scaling must be dict, got list \[1\]"),
    ],
)
def test_hf_config_field_named_with_its_value(tmp_path, llama_dir, field, value, message):
    d = _with_config(llama_dir, tmp_path / "ck", lambda c: _drop_danlu(c, **{field: value}))
    with pytest.raises(DanluError, match=message) as e:
        load_model(d)
    assert "config.json" in str(e.value)


def test_danlu_block_field_named_with_its_value(tmp_path, llama_dir):
    def edit(c):
        c["danlu"]["config"]["n_head"] = 0
        return c

    d = _with_config(llama_dir, tmp_path / "ck", edit)
    with pytest.raises(
        DanluError, match=r"config.json: bad GPT config: n_head must be in \[1, 65536\], got 0"
    ):
        load_model(d)
    d2 = _with_config(llama_dir, tmp_path / "ck2", lambda c: {**c, "danlu": ["x"]})
    with pytest.raises(DanluError, match=r'"danlu" block should be an object'):
        load_model(d2)


def test_bert_and_seq2seq_configs_are_checked():
    from danlu.models.bert import BertConfig
    from danlu.models.seq2seq import Seq2SeqConfig

    with pytest.raises(DanluError, match=r"bad BERT config: n_head must be in \[1, 65536\], got 0"):
        BertConfig.from_dict({"n_head": 0})
    with pytest.raises(DanluError, match=r"the seq2seq config should be a JSON object, found str"):
        Seq2SeqConfig.from_dict("transformer")
    with pytest.raises(DanluError, match=r"dropout must be float, got str"):
        Seq2SeqConfig.from_dict({"dropout": "0.1"})


def test_diffusion_config_that_is_a_list(tmp_path):
    from danlu.cli.vision import load_diffusion

    (tmp_path / "config.json").write_text("[16, 3]")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(DanluError, match=r"config.json should hold a JSON object"):
        load_diffusion(str(tmp_path))


# ------------------------------------------------------------------------------------------- context lengths
def _run_memory_limited(code: str, extra_mb: int = 1500) -> subprocess.CompletedProcess:
    """Run code in a child whose address space may grow only extra_mb past what importing torch took,
    so a claim that would allocate gigabytes fails there instead of straining the machine."""
    prelude = textwrap.dedent(
        f"""
        import resource, torch, danlu.models.checkpoints
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + {extra_mb} * 2**20, resource.RLIM_INFINITY))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_huge_contexts_cost_nothing_until_used(tmp_path, llama_dir):
    """config.json max_position_embeddings 1e8 and GGUF context_length 2e7: built eagerly, their RoPE tables
    take 3.2 GB and 640 MB here (head_size 4; many GB for real head sizes). One child process for both."""
    d = _with_config(llama_dir, tmp_path / "ck", lambda c: _drop_danlu(c, max_position_embeddings=10**8))
    gguf = _gguf(tmp_path / "m.gguf", *_llama(context_length=20_000_000))
    out = _run_memory_limited(
        f"""
        from danlu.models.checkpoints import load_model
        for path in ({str(d)!r}, {str(gguf)!r}):
            m = load_model(path)
            print(m.config.block_size, m.rope_cos.shape[0], m(torch.tensor([[1, 2, 3]])).logits.shape[-1])
        """,
        extra_mb=400,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [
        "100000000",
        str(INITIAL_POSITIONS),
        "32",
        "20000000",
        str(INITIAL_POSITIONS),
        "32",
    ]


def test_rope_table_grows_to_the_longest_sequence_and_matches_an_eager_table(monkeypatch):
    import danlu.models.gpt
    import danlu.nn.position
    from danlu.nn.position import rope_cache

    monkeypatch.setattr(danlu.models.gpt, "INITIAL_POSITIONS", 16)  # a short first table: grows quickly
    monkeypatch.setattr(danlu.nn.position, "INITIAL_POSITIONS", 16)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", **{**TINY, "block_size": 100}))
    eager, _ = rope_cache(100, model.config.head_size, model.config.rope_theta)
    assert model.rope_cos.shape[0] == 16
    ids = torch.randint(0, 32, (1, 20))
    with torch.no_grad():
        logits = model(ids).logits
        assert model.rope_cos.shape[0] == 32  # doubled, not sized to block_size
        model.ensure_positions(40)
        assert model.rope_cos.shape[0] == 64
        torch.testing.assert_close(model(ids).logits, logits)  # the same values whatever the table's length
        model.ensure_positions(100)
    torch.testing.assert_close(model.rope_cos, eager, rtol=0, atol=0)
    with pytest.raises(
        DanluError, match="sequence of 101 tokens is longer than the model's context block_size=100"
    ):
        model(torch.randint(0, 32, (1, 101)))


def test_seq2seq_positions_are_lazy():
    from danlu.models.seq2seq import Seq2SeqConfig, Transformer

    model = Transformer(Seq2SeqConfig(block_size=10**8, n_layer=1, n_head=2, n_embd=8, vocab_size=16))
    assert model.positions.shape[0] == INITIAL_POSITIONS


# ------------------------------------------------------------------------------------------- NaN weights
def test_nan_weight_in_safetensors_is_named(tmp_path, llama_dir):
    from safetensors.torch import load_file

    d = tmp_path / "ck"
    d.mkdir()
    (d / "config.json").write_text((llama_dir / "config.json").read_text())
    tensors = load_file(str(llama_dir / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"][3, 1] = float("nan")
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(DanluError, match=r"tensor blocks.0.mlp.up.weight holds 1 NaN or infinite value"):
        load_model(d)


# ------------------------------------------------------------------------------------------- GGUF
def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _gguf(path, kvs: list[bytes], tensors: dict[str, np.ndarray], dims_override=None):
    """A GGUF v3 file: raw key-value entries, F32 tensors in PyTorch shape (written with dims reversed)."""
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    data, infos = b"", b""
    for name, a in tensors.items():
        dims = dims_override.get(name, a.shape[::-1]) if dims_override else a.shape[::-1]
        infos += _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", x) for x in dims)
        infos += struct.pack("<IQ", 0, len(data))
        data += a.astype("<f4").tobytes()
        data += b"\0" * (-len(data) % 32)
    head = header + infos
    path.write_bytes(head + b"\0" * (-len(head) % 32) + data)
    return path


def _llama(context_length=64, nan=False, alignment=None):
    C, H, F, V = 8, 2, 16, 32
    kvs = [
        _kv("general.architecture", 8, _s("llama")),
        _kv("llama.context_length", 4, struct.pack("<I", context_length)),
        _kv("llama.embedding_length", 4, struct.pack("<I", C)),
        _kv("llama.block_count", 4, struct.pack("<I", 1)),
        _kv("llama.feed_forward_length", 4, struct.pack("<I", F)),
        _kv("llama.attention.head_count", 4, struct.pack("<I", H)),
        _kv("llama.attention.head_count_kv", 4, struct.pack("<I", H)),
    ]
    if alignment is not None:
        kvs.append(_kv("general.alignment", 4, struct.pack("<I", alignment)))
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (V, C), "output_norm.weight": (C,), "blk.0.attn_q.weight": (C, C),
              "blk.0.attn_k.weight": (C, C), "blk.0.attn_v.weight": (C, C), "blk.0.attn_output.weight": (C, C),
              "blk.0.ffn_gate.weight": (F, C), "blk.0.ffn_up.weight": (F, C), "blk.0.ffn_down.weight": (C, F),
              "blk.0.attn_norm.weight": (C,), "blk.0.ffn_norm.weight": (C,)}  # fmt: skip
    tensors = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    if nan:
        tensors["blk.0.ffn_up.weight"][0, 0] = np.inf
    return kvs, tensors


def test_gguf_zero_head_count_is_named(tmp_path):
    kvs, tensors = _llama()
    kvs[5] = _kv("llama.attention.head_count", 4, struct.pack("<I", 0))
    with pytest.raises(
        DanluError, match=r"metadata llama.attention.head_count must be in \[1, 65536\], got 0"
    ):
        load_model(_gguf(tmp_path / "m.gguf", kvs, tensors))


@pytest.mark.parametrize("alignment", [0, 24])
def test_gguf_alignment_zero_or_not_a_power_of_two(tmp_path, alignment):
    path = _gguf(tmp_path / "m.gguf", *_llama(alignment=alignment))
    with pytest.raises(DanluError, match=rf"general.alignment = {alignment} is not a power of two"):
        read_gguf(path)


def test_gguf_deeply_nested_arrays(tmp_path):
    depth = 5000  # deep enough to exhaust Python's recursion limit without a bound
    nested = b"".join(struct.pack("<IQ", 9, 1) for _ in range(depth)) + struct.pack("<IQ", 4, 0)
    kvs, tensors = _llama()
    kvs.append(_kv("evil.nested", 9, nested))
    with pytest.raises(DanluError, match=r"metadata evil.nested nests arrays more than 8 deep"):
        read_gguf(_gguf(tmp_path / "m.gguf", kvs, tensors))


def test_gguf_array_count_bounded_by_the_file_size(tmp_path):
    kvs, tensors = _llama()
    kvs.append(_kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2**50)))
    with pytest.raises(
        DanluError, match=r"metadata array tokenizer.ggml.tokens claims 1125899906842624 items"
    ):
        read_gguf(_gguf(tmp_path / "m.gguf", kvs, tensors))


def test_gguf_tensor_shape_that_overflows_is_past_the_end(tmp_path):
    kvs, tensors = _llama()
    path = _gguf(tmp_path / "m.gguf", kvs, tensors, dims_override={"output_norm.weight": (2**32, 2**32)})
    with pytest.raises(
        DanluError, match=r"tensor output_norm.weight \(shape \(4294967296, 4294967296\).*runs past"
    ):
        read_gguf(path)


def test_gguf_inf_weight_is_named(tmp_path):
    path = _gguf(tmp_path / "m.gguf", *_llama(nan=True))
    with pytest.raises(DanluError, match=r"m.gguf: tensor blocks.0.mlp.up.weight holds 1 NaN or infinite"):
        load_model(path)


@pytest.mark.parametrize("weight_map", [{"a": "../../outside.safetensors"}, [1, 2], {"a": ["x"]}])
def test_safetensors_index_must_name_shards_in_the_folder(tmp_path, llama_dir, weight_map):
    d = _with_config(llama_dir, tmp_path / "ck", lambda c: c)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(DanluError, match=r"model.safetensors.index.json (names the shard|is not a valid)"):
        load_model(d)
