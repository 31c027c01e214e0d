"""danlu GPT vs Hugging Face transformers: same weights, same logits (fp32, max abs diff < 1e-4)."""

import pytest
import torch
import transformers  # a dev-extra peer, always installed on CI

from danlu.models.gpt import GPT
from danlu.models.hf_gpt import config_from_hf, state_dict_from_hf

TOL = 1e-4


def _hf_gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=101,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        attn_pdrop=0,
        resid_pdrop=0,
        embd_pdrop=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _hf_llama(**kw):
    cfg = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kw.get("kv", 2),
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=kw.get("tie", False),
    )
    return transformers.LlamaForCausalLM(cfg)


def _danlu_from(hf_model) -> GPT:
    hf_cfg = hf_model.config.to_dict()
    cfg = config_from_hf(hf_cfg)
    model = GPT(cfg)
    model.load_state_dict(state_dict_from_hf(hf_cfg["model_type"], hf_model.state_dict(), cfg))
    return model.eval()


@pytest.fixture(params=["gpt2", "llama-gqa", "llama-mha-tied"])
def pair(request):
    torch.manual_seed(0)
    hf = {"gpt2": _hf_gpt2, "llama-gqa": _hf_llama, "llama-mha-tied": lambda: _hf_llama(kv=4, tie=True)}[
        request.param
    ]().eval()
    # Random init leaves LLaMA's norms at 1 and biases at 0: perturb every tensor so each mapping is exercised.
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf, _danlu_from(hf)


def test_logits_match(pair):
    hf, ours = pair
    input_ids = torch.randint(0, 101, (3, 17))
    with torch.no_grad():
        expected = hf(input_ids).logits
        got = ours(input_ids).logits
    assert (got - expected).abs().max().item() < TOL


def test_loss_matches(pair):
    hf, ours = pair
    input_ids = torch.randint(0, 101, (2, 12))
    labels = input_ids.clone()
    labels[:, :4] = -100  # ignored positions, as in prompt-masked SFT
    with torch.no_grad():
        assert (
            abs(hf(input_ids, labels=labels).loss.item() - ours(input_ids, labels=labels).loss.item()) < TOL
        )


def test_kv_cache_matches_full_forward(pair):
    """Prefill 9 tokens, then feed 1, then 3 at a time: every logit equals the no-cache forward and HF's."""
    hf, ours = pair
    input_ids = torch.randint(0, 101, (2, 16))
    with torch.no_grad():
        expected = hf(input_ids).logits
        cache = ours.new_kv_cache(B=2, max_len=32)
        pieces = [ours(input_ids[:, :9], kv_cache=cache).logits]
        pieces.append(ours(input_ids[:, 9:10], kv_cache=cache).logits)
        pieces.append(ours(input_ids[:, 10:13], kv_cache=cache).logits)
        pieces.append(ours(input_ids[:, 13:], kv_cache=cache).logits)
    got = torch.cat(pieces, dim=1)
    assert cache.seq_len == 16
    assert (got - expected).abs().max().item() < TOL


def test_hf_kv_cache_decode_matches(pair):
    """HF's own cached decoding and ours agree step by step."""
    hf, ours = pair
    input_ids = torch.randint(0, 101, (1, 6))
    with torch.no_grad():
        out = hf(input_ids, use_cache=True)
        cache = ours.new_kv_cache(B=1)
        ours_logits = ours(input_ids, kv_cache=cache).logits
        past = out.past_key_values
        for _ in range(4):
            nxt = out.logits[:, -1:].argmax(-1)
            assert torch.equal(nxt, ours_logits[:, -1:].argmax(-1))
            out = hf(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            ours_logits = ours(nxt, kv_cache=cache).logits
            assert (ours_logits - out.logits).abs().max().item() < TOL


def test_padding_mask_matches_hf(pair):
    """Left-padded batch with an attention mask: real positions match HF given the same position ids."""
    hf, ours = pair
    input_ids = torch.randint(0, 101, (2, 10))
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[0, :3] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        got = ours(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    real = attention_mask.bool()
    assert (got[real] - expected[real]).abs().max().item() < TOL
