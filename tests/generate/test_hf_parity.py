"""danlu's decoding vs transformers' `generate` on the same weights (a tiny random LLaMA): greedy, greedy with
a repetition penalty, and beam search (4 beams, length penalty 0.6 and 2.0, no-repeat-3-grams) pick identical
token ids on 10 prompts; batched beam search equals one prompt at a time."""

import pytest
import torch
import transformers

from danlu.generate.engine import generate_ids
from danlu.generate.options import GenerationOptions
from danlu.generate.search import beam_search
from danlu.models.gpt import GPT
from danlu.models.hf_gpt import config_from_hf, state_dict_from_hf

V, EOS = 64, 3


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, eos_token_id=EOS,
        pad_token_id=0, bos_token_id=None, tie_word_embeddings=False,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # random init leaves norms at 1: perturb so every weight matters
            p.add_(torch.randn_like(p) * 0.05)
        hf.lm_head.weight.mul_(8.0)  # peakier distributions, so beams and EOS actually compete
    hf_cfg = hf.config.to_dict()
    ours = GPT(config_from_hf(hf_cfg))
    ours.load_state_dict(state_dict_from_hf("llama", hf.state_dict(), ours.config))
    return hf, ours.eval()


PROMPTS = [
    torch.randint(4, V, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in range(2, 12)
]


def hf_new_tokens(hf, prompt, **kw):
    input_ids = torch.tensor([prompt])
    config = transformers.GenerationConfig(eos_token_id=EOS, pad_token_id=EOS, do_sample=False, **kw)
    with torch.no_grad():
        out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    new = out[0, len(prompt) :].tolist()
    while new and new[-1] == EOS and new.count(EOS) > 1:  # padding after the hypothesis' own EOS
        new.pop()
    return new


def danlu_new_tokens(model, prompt, **kw):
    opts = GenerationOptions(**kw)
    input_ids = torch.tensor([prompt])
    if opts.num_beams > 1:
        return beam_search(model, input_ids, torch.ones_like(input_ids), opts, [EOS])[0]
    return [int(t) for t in generate_ids(model, input_ids, torch.ones_like(input_ids), opts, [EOS])]


@pytest.mark.parametrize("kw", [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 2}])
def test_greedy_matches_hf(pair, kw):
    hf, ours = pair
    for prompt in PROMPTS:
        assert danlu_new_tokens(ours, prompt, max_new_tokens=20, **kw) == hf_new_tokens(
            hf, prompt, max_new_tokens=20, **kw
        )


@pytest.mark.parametrize("length_penalty", [0.6, 2.0])
def test_beam_search_matches_hf(pair, length_penalty):
    hf, ours = pair
    kw = dict(num_beams=4, length_penalty=length_penalty, no_repeat_ngram_size=3, max_new_tokens=16)
    lengths = set()
    for prompt in PROMPTS:
        expected = hf_new_tokens(hf, prompt, **kw)
        assert danlu_new_tokens(ours, prompt, **kw) == expected, prompt
        lengths.add(len(expected))
    if length_penalty < 1:
        assert len(lengths) > 1  # some hypotheses ended early on EOS, so the length penalty mattered
    else:
        assert lengths == {16}  # alpha = 2 favours long hypotheses: every prompt runs to max_new_tokens


def test_beam_early_stopping_matches_hf(pair):
    hf, ours = pair
    kw = dict(num_beams=3, length_penalty=1.0, early_stopping=True, max_new_tokens=12)
    for prompt in PROMPTS[:5]:
        assert danlu_new_tokens(ours, prompt, **kw) == hf_new_tokens(hf, prompt, **kw)


def test_batched_beam_search_equals_one_by_one(pair):
    _, ours = pair
    opts = GenerationOptions(num_beams=4, length_penalty=0.6, no_repeat_ngram_size=3, max_new_tokens=12)
    prompts = PROMPTS[:6]
    T = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), T, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, T - len(p) :] = torch.tensor(p)
        attention_mask[i, T - len(p) :] = 1
    batched = beam_search(ours, input_ids, attention_mask, opts, [EOS])
    assert batched == [danlu_new_tokens(ours, p, **vars(opts)) for p in prompts]


def test_batched_greedy_equals_one_by_one(pair):
    _, ours = pair
    opts = GenerationOptions(max_new_tokens=15, repetition_penalty=1.2, no_repeat_ngram_size=2)
    prompts = PROMPTS[:5]
    T = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), T, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, T - len(p) :] = torch.tensor(p)
        attention_mask[i, T - len(p) :] = 1
    steps = torch.stack(list(generate_ids(ours, input_ids, attention_mask, opts, [EOS])), 1).tolist()
    for row, prompt in zip(steps, prompts):
        alone = danlu_new_tokens(ours, prompt, **vars(opts))
        assert row[: len(alone)] == alone
