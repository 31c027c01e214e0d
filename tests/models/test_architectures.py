"""Issue 19's architectures as configs of danlu's one GPT: Qwen3, Mistral (sliding window), Phi-3 (fused
tensors), LLaMA-3 / YaRN RoPE scaling, OLMo-2, Gemma-2 and Gemma-3.

For each family a tiny random `transformers` model (hidden 64, 2-4 layers, vocab 101, fp32, seeded) is saved
as a Hugging Face folder and loaded by `danlu.load`; its logits must equal transformers' within 1e-4, both in
one full forward and decoded through the KV cache (prefill, then token by token), and the folder danlu
exports must load back into the same transformers class with the same logits. Sequences are longer than the
sliding windows so that the window is exercised.
"""

import json

import pytest
import torch
import transformers

from danlu.errors import DanluError
from danlu.models.checkpoints import load, save_model
from danlu.models.gguf_export import gguf_architecture
from danlu.models.gpt import GPT, GPTConfig

TOL = 1e-4
V, T, WINDOW = 101, 20, 6
SMALL = dict(
    vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
LLAMA3_ROPE = dict(
    rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=32,
)  # fmt: skip
YARN_ROPE = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16)
GEMMA = dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, tie_word_embeddings=True)

# family -> (config class, model class, config overrides, the danlu fields the load must set)
FAMILIES = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32), dict(qk_norm="head", head_dim=32)),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(sliding_window=WINDOW),
        dict(sliding_window=WINDOW),
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=WINDOW), dict(sliding_window=WINDOW)),
    "llama3-rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=LLAMA3_ROPE), {}),
    "yarn-rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=YARN_ROPE), {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}, dict(qk_norm="full", norm_placement="post")),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(GEMMA, num_hidden_layers=4, attn_logit_softcapping=1.5, final_logit_softcapping=4.0),
        dict(
            norm="rmsnorm_1p",
            mlp="geglu_tanh",
            norm_placement="sandwich",
            embedding_scale=8.0,
            query_scale=24**-0.5,
            attn_logit_softcap=1.5,
            final_logit_softcap=4.0,
            layer_types=["sliding", "full", "sliding", "full"],
        ),
    ),  # fmt: skip
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            GEMMA,
            num_hidden_layers=3,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            },
        ),
        dict(
            norm="rmsnorm_1p",
            qk_norm="head",
            rope_local_theta=10000.0,
            rope_theta=1e6,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
    ),  # fmt: skip
}


def _hf_model(family: str):
    config_cls, model_cls, overrides, _ = FAMILIES[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(**{**SMALL, **overrides})
    cfg._attn_implementation = "eager"  # the reference maths, written out (soft-capping needs it)
    hf = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # random init leaves norms at 1 (or 0) and biases at 0: move every tensor
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return hf


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, transformers model, danlu model loaded from its saved folder, a folder to export into)."""
    hf = _hf_model(request.param)
    tmp = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(tmp / "hf")
    model, _ = load(tmp / "hf")
    return request.param, hf, model, tmp


def test_load_sets_the_family_fields(family):
    name, _, model, _ = family
    for field, value in FAMILIES[name][3].items():
        assert getattr(model.config, field) == pytest.approx(value), field


def test_logits_equal_transformers(family):
    _, hf, model, _ = family
    x = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max().item() < TOL


def test_cached_decode_equals_full_forward(family):
    """Prefill 5 tokens, then one at a time past the sliding window: each step's logits equal the full
    forward's (danlu's and transformers')."""
    _, hf, model, _ = family
    x = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(x).logits
        cache = model.new_kv_cache(2, max_len=T)
        steps = [model(x[:, :5], kv_cache=cache).logits]
        steps += [model(x[:, t : t + 1], kv_cache=cache).logits for t in range(5, T)]
        assert (torch.cat(steps, 1) - expected).abs().max().item() < TOL


def test_export_loads_back_into_transformers(family):
    name, hf, model, tmp = family
    x = torch.randint(3, V, (1, T), generator=torch.Generator().manual_seed(3))
    save_model(model, tmp / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp / "ours", attn_implementation="eager").eval()
    assert type(back).__name__ == FAMILIES[name][1]
    with torch.no_grad():
        assert (back(x).logits - hf(x).logits).abs().max().item() < TOL


def test_gguf_export_names_the_feature(family):
    name, _, model, _ = family
    with pytest.raises(DanluError, match="GGUF export: ") as e:
        gguf_architecture(model.config)
    assert "export --format hf" in str(e.value)


@pytest.mark.parametrize("name", ["mistral", "llama3-rope"])
def test_generation_equals_transformers_greedy(tmp_path, name):
    """Greedy generation (a left-padded batch, longer than the window) equals greedy decoding by transformers'
    full forward, eager and through the compiled decode step (the one forward compiled by generate/static.py):
    a sliding-window model (the window in the one mask builder) and a LLaMA-3 RoPE model."""
    from danlu.generate.engine import generate_ids
    from danlu.generate.options import GenerationOptions

    hf = _hf_model(name)
    hf.save_pretrained(tmp_path)
    model, _ = load(tmp_path)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22]]
    input_ids = torch.tensor([prompts[0], [0] * 5 + prompts[1]])
    mask = torch.tensor([[1] * 8, [0] * 5 + [1] * 3])
    opts = GenerationOptions(max_new_tokens=10)
    with torch.no_grad():
        got = torch.stack(list(generate_ids(model, input_ids, mask, opts, [])), 1).tolist()
        for row, prompt in zip(got, prompts):
            ids = list(prompt)
            for _ in range(10):
                ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
            assert row == ids[len(prompt) :]
        compiled = torch.stack(list(generate_ids(model, input_ids, mask, opts, [], compile=True)), 1).tolist()
        assert compiled == got


def test_unsupported_model_type_names_the_supported(tmp_path):
    hf = _hf_model("qwen3")
    hf.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"qwen3"', '"falcon"')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(DanluError, match="model_type='falcon'") as e:
        load(tmp_path)
    for name in ("gpt2", "llama", "qwen2", "qwen3", "mistral", "phi3", "olmo2", "gemma2", "gemma3_text"):
        assert repr(name) in str(e.value)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(qk_norm="rms"), "qk_norm must be 'none', 'head' or 'full'"),
        (dict(norm_placement="middle"), "norm_placement must be 'pre', 'post' or 'sandwich'"),
        (dict(layer_types=["full"]), "layer_types must be a list of n_layer=2 entries"),
        (dict(layer_types=["full", "local"], sliding_window=4), "entries must be 'full' or 'sliding'"),
        (dict(layer_types=["full", "sliding"]), "sliding_window is not set"),
        (dict(sliding_window=0), r"sliding_window must be in \[1,"),
        (dict(attn_logit_softcap=0.0), r"attn_logit_softcap must be in"),
        (dict(rope_scaling={"rope_type": "ntk"}), "rope_type must be one of"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"\(llama3\) needs low_freq_factor"),
        (dict(rope_scaling={"rope_type": "linear", "factor": -1}), "factor must be a positive number"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 2, "scale": 1}), "unknown key 'scale'"),
        (dict(rope_local_theta=1e4), "rope_local_theta .* needs position='rope' and a sliding_window"),
        (dict(n_embd=30, n_head=4), "set head_dim to decouple them"),
        (dict(head_dim=0), r"head_dim must be in \[1,"),
    ],
)
def test_bad_config_fields_are_named(fields, message):
    base = dict(n_layer=2, n_head=2, n_embd=32, position="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    with pytest.raises(DanluError, match=message):
        GPTConfig(**{**base, **fields})


def test_head_dim_decoupled_from_width():
    """n_head · head_dim != n_embd (Gemma, Qwen3): q is n_head · head_dim wide, the output maps back to C."""
    cfg = GPTConfig(vocab_size=V, n_layer=1, n_head=4, n_kv_head=2, n_embd=32, head_dim=16, position="rope")
    model = GPT(cfg)
    assert model.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 16, 32)
    assert model.blocks[0].attn.proj.weight.shape == (32, 4 * 16)
    assert model(torch.randint(0, V, (1, 5))).logits.shape == (1, 5, V)


@pytest.mark.parametrize("preset", ["qwen3-tiny", "olmo2-tiny", "gemma2-tiny"])
def test_family_presets_train_and_save(tmp_path, preset):
    """A tiny preset of each new family takes a gradient step, and saves as its HF family and loads back."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset, vocab_size=V))
    x = torch.randint(0, V, (2, 12))
    loss = model(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss) and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    save_model(model, tmp_path / "ck")
    back, _ = load(tmp_path / "ck")
    model_type = json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"]
    assert model_type == {"qwen3-tiny": "qwen3", "olmo2-tiny": "olmo2", "gemma2-tiny": "gemma2"}[preset]
    with torch.no_grad():
        assert (back(x).logits - model(x).logits).abs().max().item() < TOL


def test_older_config_spellings_read_the_same():
    """Checkpoints saved by transformers 4.x spell RoPE as rope_theta + rope_scaling (Llama 3.1) and Gemma-3's
    local base and pattern as rope_local_base_freq / sliding_window_pattern: they give the same configs."""
    from danlu.models.hf_gpt import config_from_hf

    base = dict(SMALL, model_type="llama", num_hidden_layers=2)
    legacy = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    old = config_from_hf(dict(base, rope_theta=5e5, rope_scaling=legacy))
    new = config_from_hf(dict(base, rope_parameters={**LLAMA3_ROPE, "rope_theta": 5e5}))
    assert old == new and old.rope_theta == 5e5 and old.rope_scaling["rope_type"] == "llama3"
    gemma = dict(SMALL, **GEMMA, model_type="gemma3_text", num_hidden_layers=4, rope_theta=1e6)
    cfg = config_from_hf(dict(gemma, rope_local_base_freq=1e4, sliding_window_pattern=2))
    assert cfg.layer_types == ["sliding", "full", "sliding", "full"] and cfg.rope_local_theta == 1e4
    with pytest.raises(DanluError, match="rope_type must be one of .* got 'longrope'"):
        config_from_hf(dict(base, rope_scaling={"rope_type": "longrope", "factor": 2.0}))


COMPILED_CONFIGS = {
    "qwen3-tiny": {},
    "olmo2-tiny": {},
    "gemma2-tiny": dict(sliding_window=4),
    "gemma3-like": dict(
        sliding_window=4,
        attn_logit_softcap=None,
        final_logit_softcap=None,
        qk_norm="head",
        rope_local_theta=1e4,
    ),
}


def _tiny(name: str) -> GPT:
    torch.manual_seed(0)
    preset = "gemma2-tiny" if name == "gemma3-like" else name
    cfg = GPTConfig.from_name(preset, vocab_size=V, block_size=64, **COMPILED_CONFIGS[name])
    return GPT(cfg).eval()


@pytest.mark.parametrize("name", list(COMPILED_CONFIGS))
def test_decode_step_traces_as_one_graph_with_the_new_fields(name):
    """The decode step the compiled path runs (`decode_one_static`, the one forward) captures whole under dynamo
    (fullgraph) with QK-norm, post/sandwich norms, soft-caps, embedding/query scale, sliding and full layers
    and local RoPE, and equals the eager step on a left-padded batch decoded past the window."""
    from danlu.generate import steps
    from danlu.generate.static import decode_one_static

    model = _tiny(name)
    input_ids = torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(input_ids)
    mask[1, :3] = 0
    torch._dynamo.reset()
    fn = torch.compile(decode_one_static, fullgraph=True, dynamic=False, backend="eager")
    with torch.inference_mode():
        eager, static = steps.new_state(model, 2, 16), steps.new_state(model, 2, 16)
        tok = steps.prefill(model, eager, input_ids, mask).argmax(-1)
        steps.prefill(model, static, input_ids, mask)
        for _ in range(5):
            expected = steps.decode_one(model, eager, tok)
            slot = torch.tensor([static.length])
            got = fn(model, static.cache, static.key_mask, tok[:, None], static.next_pos[:, None], slot)
            static.length += 1
            static.next_pos += 1
            assert (got - expected).abs().max() < TOL
            tok = expected.argmax(-1)


def test_compiled_generation_equals_eager_for_gemma2():
    """compile=True (inductor on CPU) decodes a Gemma-2 model (soft-capped attention, sliding and full layers)
    to the same greedy tokens as eager decoding: no field of issue 19 is refused by the compiled path."""
    from danlu.generate.engine import generate_ids
    from danlu.generate.options import GenerationOptions

    model = _tiny("gemma2-tiny")
    input_ids = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(input_ids)
    mask[0, :2] = 0
    opts = GenerationOptions(max_new_tokens=8)
    with torch.inference_mode():
        eager = torch.stack(list(generate_ids(model, input_ids, mask, opts, [])), 1)
        compiled = torch.stack(list(generate_ids(model, input_ids, mask, opts, [], compile=True)), 1)
    assert torch.equal(compiled, eager)
