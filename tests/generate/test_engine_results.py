"""The engine's per-row results (Completion): token ids, log-probs of the chosen tokens, finish reasons and
token counts; identical prompts prefilled once; frozen, hashable options; overflow-prone options."""

import dataclasses

import pytest
import torch

import danlu
from danlu.errors import DanluError
from danlu.generate import search
from danlu.generate.engine import Completion, GenerationOptions, RowDecoder, decode_rows, run, stop_token_ids
from danlu.models.gpt import GPT, GPTConfig


class ByteTokenizer:
    """One token per UTF-8 byte, plus <eos> = 256 and <pad> = 257."""

    eos_token_id, pad_token_id, bos_token_id, vocab_size = 256, 257, None, 258
    pad_id = 257  # what the engine pads batches with (danlu.tokenizers.base.Tokenizer.pad_id)

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=False):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("llama-tiny", vocab_size=258, n_layer=2, n_embd=64, block_size=128)).eval()


def test_completion_text_ids_and_counts(model):
    prompts = ["Hello", "a longer prompt"]
    done = run(model, TOK, prompts, max_new_tokens=7)
    assert [c.text for c in done] == danlu.generate(model, TOK, prompts, max_new_tokens=7)
    for p, c in zip(prompts, done):
        assert isinstance(c, Completion) and c.prompt_tokens == len(TOK.encode(p))
        assert c.completion_tokens == len(c.token_ids) == len(c.logprobs)
        assert c.finish_reason in ("stop", "length")
        if c.finish_reason == "length":
            assert c.completion_tokens == 7 and c.stop_token_id is None


def test_counts_equal_retokenizing_and_finish_reasons(model):
    z = ord("z")
    (c,) = run(model, TOK, ["abc"], max_new_tokens=5, logit_bias={z: 100})
    assert c.text == "zzzzz" and c.finish_reason == "length"
    assert c.completion_tokens == len(TOK.encode(c.text)) == 5 and c.prompt_tokens == len(TOK.encode("abc"))
    (c,) = run(model, TOK, ["abc"], max_new_tokens=5, logit_bias={z: 100}, stop_token_ids=[z])
    assert (c.text, c.finish_reason, c.token_ids, c.stop_token_id) == ("", "stop", (), z)
    (c,) = run(model, TOK, ["abc"], max_new_tokens=5, logit_bias={z: 100}, stop=["zzz"])
    assert (c.text, c.finish_reason, c.completion_tokens) == ("", "stop", 3)  # the stop string's tokens count
    (c,) = run(model, TOK, ["abc"], max_new_tokens=5, logit_bias={TOK.eos_token_id: 100})
    assert (c.finish_reason, c.stop_token_id, c.completion_tokens) == ("stop", TOK.eos_token_id, 0)


@torch.no_grad()
def test_logprobs_are_the_chosen_tokens_under_the_processed_distribution(model):
    prompt = TOK.encode("Deva is")
    (g,) = run(model, TOK, [prompt], max_new_tokens=6, add_eos_stop=False)
    full = torch.tensor([prompt + list(g.token_ids)])
    logp = model(full).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)  # (6, V)
    want = logp[torch.arange(6), torch.tensor(g.token_ids)]
    assert torch.allclose(torch.tensor(g.logprobs), want, atol=1e-4)
    (s,) = run(model, TOK, [prompt], max_new_tokens=6, add_eos_stop=False, temperature=0.7, top_k=5, seed=3)
    full = torch.tensor([prompt + list(s.token_ids)])
    scaled = model(full).logits[0, len(prompt) - 1 : -1].float() / 0.7
    kth = scaled.topk(5, -1).values[:, -1:]
    warped = scaled.masked_fill(scaled < kth, float("-inf")).log_softmax(-1)
    want = warped[torch.arange(6), torch.tensor(s.token_ids)]
    assert torch.allclose(torch.tensor(s.logprobs), want, atol=1e-4)
    assert (torch.tensor(s.logprobs) > logp[torch.arange(6), torch.tensor(s.token_ids)] - 1e-4).all()


def test_identical_prompts_are_prefilled_once(model, monkeypatch):
    rows = []
    prefill = search.prefill
    monkeypatch.setattr(
        search, "prefill", lambda m, st, ids, mask: rows.append(ids.shape[0]) or prefill(m, st, ids, mask)
    )
    prompts = ["same prompt", "other", "same prompt", "same prompt"]
    done = run(model, TOK, prompts, max_new_tokens=6)
    assert rows == [2]  # two distinct prompts, one prefill
    rows.clear()
    alone = [run(model, TOK, [p], max_new_tokens=6)[0] for p in prompts]
    assert [c.token_ids for c in done] == [c.token_ids for c in alone]
    rows.clear()
    sampled = run(model, TOK, ["same prompt"], num_samples=4, max_new_tokens=6, temperature=1.0,
                  row_seeds=[1, 2, 3, 4])  # fmt: skip
    assert rows == [1] and len(sampled) == 4 and len({c.token_ids for c in sampled}) > 1
    one = run(model, TOK, ["same prompt"], max_new_tokens=6, temperature=1.0, seed=3)[0]
    assert sampled[2].token_ids == one.token_ids  # row seed 3 samples what seed 3 samples alone


def test_cancelled_rows_finish_cancelled(model):
    opts = GenerationOptions(max_new_tokens=20)
    ids = torch.tensor([TOK.encode("abcd")] * 2)
    stop_ids = stop_token_ids(TOK, opts)
    rows = [RowDecoder(TOK, stop_ids, (), 20, 4) for _ in range(2)]
    steps = []
    updates = list(decode_rows(model, ids, torch.ones_like(ids), opts, rows, stop_ids,
                               is_cancelled=lambda r: r == 1 and len(steps) >= 3, on_step=lambda: steps.append(1)))  # fmt: skip
    done = {u.row: u.done for u in updates if u.done is not None}
    assert done[1].finish_reason == "cancelled" and done[1].completion_tokens == 2
    assert done[0].finish_reason in ("stop", "length") and len(updates) >= 2


def test_options_are_frozen_and_hashable():
    a = GenerationOptions(stop=["x"], logit_bias={"3": 1}, stop_token_ids=[5])
    b = GenerationOptions(stop=("x",), logit_bias={3: 1.0}, stop_token_ids=(5,))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.temperature = 1.0
    with pytest.raises(TypeError, match="cannot change"):
        a.logit_bias[4] = 2.0
    assert dataclasses.replace(a, seed=1).seed == 1 and a.seed is None


def test_tiny_temperature_is_greedy_and_huge_length_penalty_is_refused(model):
    greedy = danlu.generate(model, TOK, "Deva is", max_new_tokens=8)
    assert danlu.generate(model, TOK, "Deva is", max_new_tokens=8, temperature=1e-300, seed=0) == greedy
    with pytest.raises(DanluError, match=r"length_penalty must be in \[-10, 10\], got 1000"):
        danlu.generate(model, TOK, "Deva is", max_new_tokens=8, num_beams=2, length_penalty=1000)
    beams = danlu.generate(model, TOK, "Deva is", max_new_tokens=8, num_beams=2, length_penalty=-10)
    assert isinstance(beams, str)  # the extreme allowed value ranks hypotheses without overflow
