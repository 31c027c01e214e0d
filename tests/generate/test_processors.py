"""Logits processors vs transformers' warpers and processors on random logits (seeded loops and hypothesis),
plus the OpenAI penalties, logit bias and contrastive scores against their formulas."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from danlu.generate.options import GenerationOptions
from danlu.generate.processors import (
    TokenHistory,
    add_logit_bias,
    apply_temperature,
    min_p_filter,
    no_repeat_ngram,
    presence_frequency_penalty,
    process_logits,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from danlu.generate.search import contrastive_scores


def kept(scores: torch.Tensor) -> torch.Tensor:
    return scores > float("-inf")


def test_warpers_keep_the_same_sets_as_hf_seeded():
    g = torch.Generator().manual_seed(0)
    dummy = torch.zeros(4, 1, dtype=torch.long)
    for _ in range(300):
        V = int(torch.randint(2, 300, (1,), generator=g))
        logits = torch.randn(4, V, generator=g) * float(torch.rand(1, generator=g) * 6 + 0.1)
        k = int(torch.randint(1, V + 2, (1,), generator=g))
        p = float(torch.rand(1, generator=g).clamp(0.01, 1.0))
        min_p = float(torch.rand(1, generator=g))
        assert torch.equal(kept(top_k_filter(logits, k)), kept(TopKLogitsWarper(k)(dummy, logits.clone())))
        assert torch.equal(kept(top_p_filter(logits, p)), kept(TopPLogitsWarper(p)(dummy, logits.clone())))
        assert torch.equal(
            kept(min_p_filter(logits, min_p)), kept(MinPLogitsWarper(min_p)(dummy, logits.clone()))
        )
        t = float(torch.rand(1, generator=g) * 2 + 0.05)
        assert torch.allclose(apply_temperature(logits, t), TemperatureLogitsWarper(t)(dummy, logits.clone()))


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=2, max_size=60),
    p=st.floats(0.001, 1.0),
    k=st.integers(1, 70),
    min_p=st.floats(0.0, 1.0),
)
def test_warpers_keep_the_same_sets_as_hf_property(values, p, k, min_p):
    logits = torch.tensor([values])  # ties included: hypothesis likes repeated values
    dummy = torch.zeros(1, 1, dtype=torch.long)
    assert torch.equal(kept(top_k_filter(logits, k)), kept(TopKLogitsWarper(k)(dummy, logits.clone())))
    assert torch.equal(
        kept(min_p_filter(logits, min_p)), kept(MinPLogitsWarper(min_p)(dummy, logits.clone()))
    )
    ours = kept(top_p_filter(logits, p))
    if len(set(values)) == len(values):  # with ties the sort order (and so HF's own choice) is arbitrary
        assert torch.equal(ours, kept(TopPLogitsWarper(p)(dummy, logits.clone())))
    probs = logits.softmax(-1)[0]
    assert probs[ours[0]].sum() >= p - 1e-5  # the nucleus holds at least p ...
    assert ours.any()


def test_top_p_is_the_smallest_set_reaching_p():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        logits = torch.randn(3, 40, generator=g)
        p = float(torch.rand(1, generator=g).clamp(0.05, 0.95))
        keep = kept(top_p_filter(logits, p))
        probs = logits.softmax(-1)
        for row in range(3):
            order = probs[row].argsort(descending=True)
            n = int(keep[row].sum())
            assert set(order[:n].tolist()) == set(keep[row].nonzero().flatten().tolist())
            assert probs[row, order[:n]].sum() >= p - 1e-6
            assert n == 1 or probs[row, order[: n - 1]].sum() < p + 1e-6


def test_repetition_penalty_and_ngrams_match_hf():
    g = torch.Generator().manual_seed(2)
    for _ in range(30):
        V, L = 20, int(torch.randint(1, 25, (1,), generator=g))
        input_ids = torch.randint(0, V, (3, L), generator=g)
        scores = torch.randn(3, V, generator=g) * 3
        seen = torch.zeros(3, V, dtype=torch.bool).scatter_(1, input_ids, True)
        expected = RepetitionPenaltyLogitsProcessor(1.7)(input_ids, scores.clone())
        assert torch.allclose(repetition_penalty(scores, seen, 1.7), expected)
        for n in (1, 2, 3):
            expected = NoRepeatNGramLogitsProcessor(n)(input_ids, scores.clone())
            assert torch.equal(no_repeat_ngram(scores, input_ids.tolist(), n), expected)


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.zeros(1, 5)
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0, 2.0]])
    out = presence_frequency_penalty(logits, counts, presence=0.5, frequency=0.25)
    # mu[j] - c[j]·alpha_frequency - [c[j] > 0]·alpha_presence
    assert torch.allclose(out, torch.tensor([[0.0, -0.75, -1.25, 0.0, -1.0]]))


def test_history_counts_only_generated_tokens_and_ignores_padding():
    input_ids = torch.tensor([[9, 9, 1, 2], [3, 4, 5, 6]])
    attention_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    opts = GenerationOptions(repetition_penalty=2.0, presence_penalty=1.0, no_repeat_ngram_size=2)
    h = TokenHistory.start(input_ids, attention_mask, 10, opts)
    assert h.seen[0].nonzero().flatten().tolist() == [1, 2]  # padding id 9 is not "seen"
    assert h.tokens == [[1, 2], [3, 4, 5, 6]]
    h.append(torch.tensor([7, 7]))
    h.append(torch.tensor([7, 8]))
    assert h.counts[0, 7] == 2 and h.counts[1, 7] == 1 and h.counts[1, 8] == 1 and h.counts[:, 1].sum() == 0
    h.reorder(torch.tensor([1, 1]))
    assert h.tokens == [[3, 4, 5, 6, 7, 8]] * 2 and torch.equal(h.counts[0], h.counts[1])


def test_min_new_tokens_and_logit_bias():
    opts = GenerationOptions(min_new_tokens=2, logit_bias={"4": -100, 1: 5.0})
    scores = torch.zeros(2, 6)
    h = TokenHistory()
    early = process_logits(scores, h, opts, step=1, stop_ids=[0])
    late = process_logits(scores, h, opts, step=2, stop_ids=[0])
    assert (early[:, 0] == float("-inf")).all() and (late[:, 0] == 0).all()
    assert (late[:, 4] == -100).all() and (late[:, 1] == 5).all()
    assert torch.equal(add_logit_bias(scores, {}), scores)


def test_contrastive_scores_formula():
    expert = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    amateur = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]]))
    out = contrastive_scores(expert, amateur, alpha=0.2)  # cutoff 0.2·0.5 = 0.1: token 3 is implausible
    assert out[0, 3] == float("-inf")
    assert math.isclose(float(out[0, 0]), math.log(0.5 / 0.7), rel_tol=1e-5)
    assert math.isclose(float(out[0, 1]), math.log(0.3 / 0.1), rel_tol=1e-5)
    assert int(out.argmax()) == 1  # the token the expert likes far more than the amateur wins
