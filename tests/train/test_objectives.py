"""MLM / NSP and BART's noise functions, each tested on its defining property."""

import math
import random
from collections import Counter

import pytest
import torch

from danlu.errors import DanluError
from danlu.train.objectives import (
    document_rotation,
    mask_tokens,
    nsp_pairs,
    poisson_span_length,
    sentence_permutation,
    text_infilling,
    token_deletion,
    token_masking,
)

MASK = 4


def test_mlm_statistics_15_80_10_10():
    g = torch.Generator().manual_seed(0)
    V = 1000
    input_ids = torch.randint(10, V, (256, 256), generator=g)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] ... [SEP]
    corrupted, labels = mask_tokens(input_ids, MASK, V, special, generator=g, random_token_low=10)
    chosen = labels != -100
    n = chosen.sum().item()
    eligible = (~special).sum().item()
    # Binomial standard errors: about 0.07% of the rate here; allow a few.
    assert abs(n / eligible - 0.15) < 0.005
    assert not chosen[special].any()
    assert torch.equal(labels[chosen], input_ids[chosen])  # the target is always the original token
    assert torch.equal(corrupted[~chosen], input_ids[~chosen])  # unchosen tokens are untouched
    masked = (corrupted == MASK) & chosen
    same = (corrupted == input_ids) & chosen
    replaced = chosen & ~masked & ~same
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    # A random replacement equals the original with probability 1/990: "kept" absorbs those.
    assert abs(same.sum().item() / n - 0.1) < 0.01
    assert abs(replaced.sum().item() / n - 0.1) < 0.01
    assert corrupted[replaced].min().item() >= 10


def test_mlm_rejects_bad_probability():
    with pytest.raises(DanluError, match="mlm_probability"):
        mask_tokens(torch.zeros(2, 3, dtype=torch.long), MASK, 10, mlm_probability=1.5)


def test_nsp_pairs_half_consecutive():
    docs = [[f"d{d} s{i}" for i in range(5)] for d in range(20)]
    pairs = nsp_pairs(docs, random.Random(0), n_pairs=4000)
    labels = Counter(label for _, _, label in pairs)
    assert abs(labels[0] / 4000 - 0.5) < 0.03
    for a, b, label in pairs:
        da, ia = a.split()
        db, ib = b.split()
        if label == 0:  # B is the sentence right after A, same document
            assert da == db and int(ib[1:]) == int(ia[1:]) + 1
        else:  # B comes from another document
            assert da != db


def test_token_masking_keeps_length_and_rate():
    rng = random.Random(0)
    ids = list(range(10, 20010))
    out = token_masking(ids, 0.3, MASK, rng)
    assert len(out) == len(ids)
    assert all(o == t or o == MASK for o, t in zip(out, ids))
    assert abs(sum(o == MASK for o in out) / len(ids) - 0.3) < 0.01


def _is_subsequence(small, big):
    it = iter(big)
    return all(x in it for x in small)


def test_token_deletion_is_a_subsequence():
    rng = random.Random(1)
    ids = list(range(10, 20010))
    out = token_deletion(ids, 0.2, rng)
    assert _is_subsequence(out, ids)
    assert abs(len(out) / len(ids) - 0.8) < 0.01


def test_poisson_span_lengths_have_mean_and_variance_three():
    rng = random.Random(2)
    draws = [poisson_span_length(3.0, rng) for _ in range(20000)]
    mean = sum(draws) / len(draws)
    var = sum((d - mean) ** 2 for d in draws) / len(draws)
    assert abs(mean - 3) < 0.06 and abs(var - 3) < 0.15
    assert abs(draws.count(0) / len(draws) - math.exp(-3)) < 0.01  # some spans are empty


def test_text_infilling_one_mask_per_span():
    rng = random.Random(3)
    zero_length_seen = False
    for _ in range(50):
        ids = list(range(10, 110))  # distinct tokens: where each mask sits is recoverable
        out = text_infilling(ids, 0.3, MASK, rng)
        kept = [t for t in out if t != MASK]
        assert _is_subsequence(kept, ids)
        assert len(ids) - len(kept) == 30  # exactly 30% of the tokens are removed
        # Walk the output: each [MASK] stands for one span, of 0 or more consecutive missing tokens.
        pos, spans = 0, []
        for t in out:
            if t == MASK:
                spans.append(0)
                continue
            gap = ids.index(t) - pos
            if gap:  # missing tokens must sit under exactly one preceding mask
                assert spans and spans[-1] == 0
                spans[-1] = gap
            pos = ids.index(t) + 1
        if len(ids) - pos:
            assert spans and spans[-1] == 0
            spans[-1] = len(ids) - pos
        assert sum(spans) == 30
        zero_length_seen |= 0 in spans
    assert zero_length_seen  # Poisson(3) gives empty spans about 5% of the time: inserted masks


def test_sentence_permutation_shuffles_whole_sentences():
    STOP = 5
    sentences = [[10 + 10 * i + j for j in range(3)] + [STOP] for i in range(8)]
    doc = [t for s in sentences for t in s]
    out = sentence_permutation(doc, {STOP}, random.Random(4))
    got = [out[i : i + 4] for i in range(0, len(out), 4)]
    assert sorted(got) == sorted(sentences) and got != sentences


def test_document_rotation_is_a_rotation():
    doc = list(range(10, 60))
    out = document_rotation(doc, random.Random(5))
    k = out.index(doc[0])
    assert out[k:] + out[:k] == doc and out != doc
    starts = Counter(document_rotation(doc[:5], random.Random(i))[0] for i in range(2000))
    assert set(starts) == set(doc[:5])  # every token can become the start
