"""Rollouts through the decoding engine: GRPO's G copies of a prompt are prefilled once and share the prompt's
KV cache, each row samples what the engine samples for its prompt alone with the row's seed, and the sampling
log-probs are the policy's at temperature 1."""

import torch

from danlu.align.rollout import row_seeds, sample, sequence_log_probs
from danlu.generate import search
from danlu.generate.engine import run
from danlu.tune.sft import prompt_text


def _chat(tokenizer, questions):
    return [prompt_text({"instruction": q, "output": ""}, tokenizer) for q in questions]


def test_grpo_groups_prefill_each_prompt_once(tokenizer, make_gpt, monkeypatch):
    model = make_gpt().eval()
    G = 4
    prompts = [p for p in _chat(tokenizer, ["What is 2 + 3?", "Name a pet."]) for _ in range(G)]  # as grpo.py
    prefilled = []
    prefill = search.prefill

    def counting(m, state, ids, mask):
        prefilled.append(tuple(ids.shape))
        return prefill(m, state, ids, mask)

    monkeypatch.setattr(search, "prefill", counting)
    im_end = tokenizer.token_to_id("<|im_end|>")
    r = sample(model, tokenizer, prompts, max_new_tokens=6, temperature=1.0, top_k=20, seed=7,
               stop_ids=[im_end, 0])  # fmt: skip
    P = max(len(tokenizer.encode(p)) for p in prompts)
    assert prefilled == [(2, P)]  # one prefill of the two distinct prompts, not of 2·G rows
    assert r.input_ids.shape[0] == 2 * G
    # The contract: row i is what the engine samples for prompt i alone with seed row_seeds(7, 2G)[i].
    seeds = row_seeds(7, 2 * G)
    for i, p in enumerate(prompts):
        (alone,) = run(model, tokenizer, [p], max_new_tokens=6, temperature=1.0, top_k=20, seed=seeds[i],
                       stop_token_ids=[im_end, 0], add_eos_stop=False)  # fmt: skip
        got = r.input_ids[i, r.prompt_len :][r.response_mask[i, r.prompt_len :].bool()].tolist()
        want = [*alone.token_ids, *([alone.stop_token_id] if alone.stop_token_id is not None else [])]
        assert got == want and r.texts[i] == alone.text
    answers = {tuple(r.input_ids[i, r.prompt_len :].tolist()) for i in range(G)}
    assert len(answers) > 1  # the G samples of one prompt differ


def test_sample_log_probs_are_the_policys_at_temperature_one(tokenizer, make_gpt):
    model = make_gpt().eval()
    prompts = _chat(tokenizer, ["What is 2 + 3?", "What pet does Voyu have? Answer in one word please."])
    r = sample(model, tokenizer, prompts, max_new_tokens=6, temperature=1.0, seed=0)
    with torch.no_grad():
        scored = sequence_log_probs(model, r)
    mask = r.action_mask.bool()
    assert r.sample_log_probs.shape == scored.shape
    assert torch.allclose(r.sample_log_probs[mask], scored[mask], atol=1e-4)
    assert (r.sample_log_probs[~mask] == 0).all()
