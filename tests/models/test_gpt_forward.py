"""The one GPT forward: the cache written by position (a tensor) equals appending and the no-cache forward,
`logits_to_keep` keeps the last positions' logits, the attention backends agree, and the causal + padding mask
has one home."""

import pytest
import torch

from danlu.errors import DanluError
from danlu.models.gpt import GPT, GPTConfig
from danlu.nn import attention

TOL = 1e-4


@pytest.fixture(params=["gpt2-tiny", "llama-tiny"], scope="module")
def model(request):
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name(request.param, vocab_size=97, n_layer=2, n_embd=64, block_size=64)).eval()


def ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 97, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_logits_to_keep_is_the_last_positions(model):
    input_ids = ids(2, 9)
    full = model(input_ids).logits  # (2, 9, V)
    for k in (1, 3):
        kept = model(input_ids, logits_to_keep=k).logits
        assert kept.shape == (2, k, 97)
        assert (kept - full[:, -k:]).abs().max() < TOL
    with pytest.raises(DanluError, match="logits_to_keep"):
        model(input_ids, labels=input_ids, logits_to_keep=1)


@torch.inference_mode()
def test_cache_written_by_position_equals_full_forward(model):
    """gpt-fast's use: slots as a tensor, no mask (causal by slot over the whole cache), seq_len untouched."""
    input_ids = ids(2, 12, seed=1)
    expected = model(input_ids).logits
    cache = model.new_kv_cache(2, max_len=20)
    pieces = [model(input_ids[:, :7], kv_cache=cache, cache_position=torch.arange(7)).logits]
    for t in range(7, 12):
        pieces.append(model(input_ids[:, t : t + 1], kv_cache=cache, cache_position=torch.tensor([t])).logits)
    assert cache.seq_len == 0  # the caller keeps the count when it writes by position
    assert (torch.cat(pieces, 1) - expected).abs().max() < TOL


@torch.inference_mode()
def test_by_position_with_a_key_mask_equals_appending(model):
    """The decoding state's use: left padding, a (B, S) key mask and explicit position ids; the same logits as
    appending with the same mask (seq_len advanced) and as the whole sequence at once."""
    input_ids = ids(2, 8, seed=2)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, :3] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    expected = model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    appended, by_slot = model.new_kv_cache(2, 16), model.new_kv_cache(2, 16)
    head = dict(position_ids=position_ids[:, :5])
    a = [model(input_ids[:, :5], attention_mask[:, :5], kv_cache=appended, **head).logits]
    b = [
        model(
            input_ids[:, :5], attention_mask[:, :5], kv_cache=by_slot, cache_position=torch.arange(5), **head
        ).logits
    ]
    key_mask = torch.zeros(2, 16, dtype=torch.bool)
    key_mask[:, :5] = attention_mask[:, :5].bool()
    for t in range(5, 8):
        tok, pos = input_ids[:, t : t + 1], position_ids[:, t : t + 1]
        a.append(model(tok, attention_mask[:, : t + 1], kv_cache=appended, position_ids=pos).logits)
        key_mask[:, t] = True  # the whole (B, L) mask: slots not yet written are False
        slot = torch.tensor([t])
        b.append(model(tok, key_mask, kv_cache=by_slot, position_ids=pos, cache_position=slot).logits)
    real = attention_mask.bool()
    assert appended.seq_len == 8
    for got in (torch.cat(a, 1), torch.cat(b, 1)):
        assert (got - expected)[real].abs().max() < TOL


@torch.inference_mode()
def test_one_query_backend_equals_sdpa(model):
    input_ids = ids(3, 6, seed=3)
    runs = {}
    for impl in ("sdpa", "one_query"):
        model.set_attn_impl(impl)
        cache = model.new_kv_cache(3, 10)
        model(input_ids[:, :5], kv_cache=cache)
        runs[impl] = model(input_ids[:, 5:], kv_cache=cache).logits
    model.set_attn_impl("auto")
    assert (runs["sdpa"] - runs["one_query"]).abs().max() < TOL
    with pytest.raises(ValueError, match="attn_impl"):
        attention.SelfAttention(64, 4, 2, False, False, attn_impl="flash")


def test_mask_wider_than_the_keys_is_a_clear_error(model):
    with pytest.raises(DanluError, match="attention_mask covers 5 positions"):
        model(ids(1, 4), attention_mask=torch.ones(1, 5, dtype=torch.long))


def test_build_attention_mask_causal_padding_and_self():
    """Causal by slot, padding hidden, a padding query sees itself; None where SDPA needs no mask."""
    am = torch.tensor([[0, 1, 1, 1]])
    mask = attention.build_attention_mask(am, torch.arange(4), 4, past=0)  # (1, 1, 4, 4)
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    assert attention.build_attention_mask(None, torch.arange(4), 4, past=0) is None
    assert attention.build_attention_mask(None, torch.tensor([4]), 5, past=4) is None
    by_slot = attention.build_attention_mask(None, torch.tensor([2]), 6)  # whole cache: causal by slot
    assert by_slot[0, 0, 0].tolist() == [True, True, True, False, False, False]
