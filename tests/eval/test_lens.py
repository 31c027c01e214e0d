"""The logit lens and attention maps read the one forward faithfully."""

import pytest
import torch

from danlu.eval.lens import _probabilities, attention_maps, logit_lens, residual_stream
from danlu.models.gpt import GPT, GPTConfig

SMALL = dict(vocab_size=97, n_layer=3, n_head=4, n_embd=32, block_size=32)
PRESETS = {
    "gpt2-tiny": {},
    "llama-tiny": dict(n_kv_head=2),  # GQA
    "qwen3-tiny": dict(n_kv_head=2),  # per-head q/k norm
    "olmo2-tiny": dict(n_kv_head=2),  # whole-q/k norm, post-norm blocks
    "gemma2-tiny": dict(n_kv_head=2, head_dim=8, query_scale=8**-0.5, embedding_scale=32**0.5,
                        sliding_window=4, layer_types=["sliding", "full", "sliding"]),  # soft-caps, window
}  # fmt: skip


def _model(preset: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset, **{**SMALL, **PRESETS[preset]})).eval()
    for p in model.parameters():  # larger weights than the init, so the layers differ visibly
        p.data.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("preset", list(PRESETS))
def test_last_layer_of_the_lens_is_the_models_logits(preset):
    model = _model(preset)
    ids = torch.randint(0, 97, (2, 9))
    lens = logit_lens(model, ids)  # (L + 1, B, V)
    assert lens.shape == (4, 2, 97)
    logits = model(ids).logits[:, -1]
    torch.testing.assert_close(lens[-1], logits)
    assert not torch.allclose(lens[1], logits, atol=1e-3)  # an earlier layer reads differently
    hidden, _ = residual_stream(model, ids)
    embedded = model.wte(ids) * (model.config.embedding_scale or 1.0)
    if model.wpe is not None:  # GPT-2's learned positions are added before block 0
        embedded = embedded + model.wpe(torch.arange(9))
    torch.testing.assert_close(hidden[0], embedded)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_attention_maps_times_values_give_each_layers_output(preset):
    model = _model(preset)
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # a left-padded row: its padding is never attended by real tokens
    maps = attention_maps(model, ids, mask)  # (L, B, n_head, T, T)
    assert maps.shape == (3, 2, 4, 9, 9)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 4, 9))
    assert (maps.triu(1) == 0).all()  # causal
    assert (maps[:, 1, :, 3:, :3] == 0).all()  # padding hidden from the real queries
    if preset == "gemma2-tiny":  # the sliding layers see the window only
        assert (maps[0].tril(-4) == 0).all() and (maps[1, 0].tril(-4) > 0).any()

    seen = []
    hooks = [
        b.attn.register_forward_hook(lambda m, args, out: seen.append((m, args, out)), with_kwargs=False)
        for b in model.blocks
    ]
    with torch.no_grad():
        model(ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    for layer, (attn, args, out) in enumerate(seen):
        p, v = _probabilities(attn, args[0], args[1], args[2])
        torch.testing.assert_close(p, maps[layer])
        y = (p @ v).transpose(1, 2).reshape(2 * 9, -1)  # (B·T, n_head·hs)
        torch.testing.assert_close(attn.proj(y).view(2, 9, -1)[:, 3:], out[:, 3:], atol=1e-5, rtol=1e-4)


def test_a_model_without_blocks_is_a_clear_error():
    with pytest.raises(TypeError, match="danlu GPT"):
        logit_lens(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long))
