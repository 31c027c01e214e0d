"""The library default (`danlu.generate` with no compile= / quantize=) takes the CLI's fastest measured path:
a GGUF-loaded model decodes from the file's own blocks (a decode twin; the model keeps its float weights),
compiled, prepared once and said once; explicit options override; changed weights, a block type without a fast
path, a missing compiler and a model too small to quantise get a fallback or an error that says so.

Nothing here compiles: where the chosen path is the compiled step, `torch.compile` is replaced by the identity,
so the same decode step (static cache, the twin's block layers) runs eagerly."""

import copy
import dataclasses

import pytest
import torch

import danlu
from danlu.errors import DanluError
from danlu.generate import cpu_kernels, fast_path
from danlu.generate.quant_kernels import BlockQuantLinear, FusedGatedMLP
from danlu.generate.quantize import Int8Linear
from danlu.models.gguf import GGUFSource, weights_fingerprint
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer

PROMPT = "The capital of France is"
BLOCKS_COMPILED = "danlu.generate: decoding: the GGUF's Q4_1/Q8_0 blocks as stored, compiled step on cpu"


@pytest.fixture(scope="module")
def smollm(smollm2_gguf):
    return danlu.load(smollm2_gguf)


@pytest.fixture
def no_compile(monkeypatch):
    """torch.compile as the identity: the 'compiled' step runs eagerly (seconds, not a minute)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(fast_path, "compiler_available", lambda: True)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = BPETokenizer.train(["the red fox runs over the hill"] * 20, 280)
    torch.manual_seed(0)
    cfg = GPTConfig.from_name("llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=48)
    return GPT(cfg).eval(), tokenizer


def test_gguf_load_records_its_blocks_and_the_eager_block_path_is_the_same_model(smollm):
    model, tokenizer = smollm
    source = model.gguf_source
    assert isinstance(source, GGUFSource) and source.block_types == {"Q4_1", "Q8_0"}
    assert "gguf_source" not in str(list(model.state_dict())) and isinstance(model.lm_head, torch.nn.Linear)
    twin = fast_path.decode_twin(model)
    assert twin.wte.weight is model.wte.weight  # shared, not copied: only the new layers cost memory
    from danlu.generate.quantize import quantize_from_gguf

    twin, notes = quantize_from_gguf(twin, source.path)
    assert not notes and isinstance(twin.blocks[0].mlp.up, BlockQuantLinear)
    assert isinstance(model.blocks[0].mlp.up, torch.nn.Linear)  # the loaded model is untouched
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.inference_mode():
        for m in twin.modules():
            if isinstance(m, BlockQuantLinear):
                m.kernel_rows = cpu_kernels.MAX_ROWS  # the default: a short prompt through the kernel
        with_kernel = twin(ids).logits
        for m in twin.modules():
            if isinstance(m, BlockQuantLinear):
                m.kernel_rows = 0  # DANLU_CPU_KERNEL=0: the blocks dequantised, float activations
        # the loader's fp32 weights are the blocks dequantised: equal logits, the same model
        assert torch.equal(twin(ids).logits, model(ids).logits)
        # the kernel only rounds activations: the same next token, a next-token distribution close to the
        # float one (KL 0.03 nats here; perplexity rows in benchmarks/decode_speed.py)
        p, q = model(ids).logits[0, -1].log_softmax(-1), with_kernel[0, -1].log_softmax(-1)
        assert torch.equal(q.argmax(), p.argmax()) and (p.exp() * (p - q)).sum() < 0.1


def test_default_generate_takes_the_blocks_compiled_prepares_once_and_says_so_once(
    smollm, no_compile, monkeypatch, capsys
):
    model, tokenizer = smollm
    from danlu.generate import quantize

    calls = []
    real = quantize.quantize_from_gguf
    monkeypatch.setattr(quantize, "quantize_from_gguf", lambda m, p: calls.append(p) or real(m, p))
    # eagerly the block layers dequantise per call (slow): two tokens suffice to run the whole path
    out = danlu.generate(model, tokenizer, PROMPT, max_new_tokens=2)
    err = capsys.readouterr().err
    assert err.count("danlu.generate:") == 1 and BLOCKS_COMPILED in err
    assert "seconds once cached in" in err  # the first compiled call's wait is announced, with the cache
    assert torch._inductor.config.fx_graph_cache  # ... which is on, on disk (TORCHINDUCTOR_CACHE_DIR)
    twin, compiled = fast_path.library_decoding(model)
    assert compiled and isinstance(twin.lm_head, BlockQuantLinear)
    assert "".join(danlu.stream(model, tokenizer, PROMPT, max_new_tokens=2)) == out
    assert len(calls) == 1 and capsys.readouterr().err == ""  # the second call paid nothing, said nothing
    assert out == danlu.generate(model, tokenizer, PROMPT, max_new_tokens=2, compile=False)  # fp32, eager
    assert fast_path.library_decoding(model)[0] is twin  # switching options back rebuilds nothing
    assert len(calls) == 1 and capsys.readouterr().err == ""
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight.requires_grad


def test_explicit_options_override_the_default(smollm, no_compile, capsys):
    model, _ = smollm
    assert fast_path.library_decoding(model, compile=False) == (model, False)  # blocks only pay compiled
    assert fast_path.library_decoding(model, quantize="none") == (model, True)  # 135M params: compiled fp32
    assert "float weights, compiled step" in capsys.readouterr().err
    assert fast_path.library_decoding(model, quantize="none", compile=False) == (model, False)
    assert capsys.readouterr().err == ""  # nothing chosen, nothing said
    fast_path.library_decoding(model, quiet=True)
    assert capsys.readouterr().err == ""


def test_changed_weights_decode_as_they_are_not_from_the_stale_blocks(smollm, no_compile, capsys):
    model, _ = smollm
    copied, compiled = fast_path.library_decoding(copy.deepcopy(model))
    assert compiled and not fast_path.quantised_layers(copied)
    assert "no longer those loaded from SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().err
    model = copy.deepcopy(model)  # a model as loaded (its own fingerprint), which training then changes
    model.gguf_source = dataclasses.replace(model.gguf_source, fingerprint=weights_fingerprint(model))
    before, _ = fast_path.library_decoding(model, quiet=True)
    assert isinstance(before.lm_head, BlockQuantLinear)
    with torch.no_grad():  # what an optimizer step does: write a weight in place
        model.blocks[3].mlp.up.weight.mul_(1.01)
    after, compiled = fast_path.library_decoding(model)
    assert after is model and compiled  # its own (trained) float weights, compiled above 50M parameters
    assert "trained, cast, moved or copied since" in capsys.readouterr().err
    with pytest.raises(DanluError, match="quantize='gguf' reads the Q8_0 / Q4_0 / Q4_1 blocks"):
        fast_path.library_decoding(model, quantize="gguf")


def test_a_block_type_without_a_fast_path_falls_back_and_says_so(smollm, no_compile, monkeypatch, capsys):
    import danlu.models.gguf as gguf_module

    model, _ = smollm
    real_read = gguf_module.read_gguf

    def read_with_one_q6k(path):
        f = real_read(path)
        f.tensors["blk.0.ffn_up.weight"].ggml_type = 14  # Q6_K: danlu reads it dequantised only
        return f

    monkeypatch.setattr(gguf_module, "read_gguf", read_with_one_q6k)
    twin, _ = fast_path.library_decoding(model, quantize="gguf")
    assert isinstance(twin.blocks[0].mlp.up, Int8Linear)  # fell back, so its FFN stays unfused
    assert isinstance(twin.blocks[1].mlp, FusedGatedMLP)  # the others' gate and up rows: one product
    err = capsys.readouterr().err
    assert "stored as Q6_K, which has no fast path" in err and "quantised to int8 instead" in err
    choice = fast_path.choose_decoding(copy.deepcopy(model), model.gguf_source.path)  # the CLI's line too
    assert "which has no fast path" in choice.message and "blocks.0.mlp.up" in choice.message


def test_tiny_models_stay_eager_and_silent(tiny, capsys):
    model, tokenizer = tiny
    assert fast_path.library_decoding(model) == (model, False)  # below the size threshold: no compile wait
    danlu.generate(model, tokenizer, "the red", max_new_tokens=3)
    assert capsys.readouterr().err == ""
    assert copy.deepcopy(model)._danlu_decoding is None  # the prepared model is never copied with it


def test_compile_without_a_compiler_falls_back_with_a_message(tiny, monkeypatch, capsys):
    model, tokenizer = tiny
    monkeypatch.setattr(fast_path, "compiler_available", lambda: False)
    out = danlu.generate(model, tokenizer, "the red", max_new_tokens=4, compile=True)
    assert "compile=True: no C++ compiler (g++/c++/clang++)" in capsys.readouterr().err
    assert out == danlu.generate(model, tokenizer, "the red", max_new_tokens=4, compile=False)


def test_quantize_on_a_model_too_small_names_the_layer_and_bad_values_are_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(DanluError, match=r"layer blocks\.0\.attn\.qkv \(weight \(\d+, 48\)\) is too small"):
        danlu.generate(model, tokenizer, "the red", quantize="int4")  # 48 inputs, groups of 32
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)  # the model itself is never quantised
    with pytest.raises(DanluError, match="quantize='gguf' reads"):
        danlu.generate(model, tokenizer, "the red", quantize="gguf")  # not loaded from a GGUF
    with pytest.raises(DanluError, match="quantize must be one of auto, none, int8, int4, gguf, got 'q4'"):
        danlu.generate(model, tokenizer, "the red", quantize="q4")
    q8 = danlu.generate(model, tokenizer, "the red", max_new_tokens=3, quantize="int8")
    assert isinstance(q8, str) and isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)


def test_a_model_made_in_inference_mode_has_a_fingerprint(tiny):
    # danlu.load(gguf) under torch.inference_mode() (benchmarks/decode_speed.py's perplexity rows) raised
    # "Inference tensors do not track version counter" while recording the GGUF source
    model, _ = tiny
    with torch.inference_mode():
        inference_twin = GPT(model.config)
        inference_twin.load_state_dict(model.state_dict())
    fingerprint = weights_fingerprint(inference_twin)
    assert len(fingerprint) == len(model.state_dict()) and all(entry[2] == -1 for entry in fingerprint)
    assert weights_fingerprint(inference_twin) == fingerprint  # stable while nothing is written
