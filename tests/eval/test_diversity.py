"""distinct-n and the repetition rate against values worked out by hand."""

import pytest

from danlu.errors import DanluError
from danlu.eval import distinct_n, repetition_rate
from danlu.eval.diversity import ngrams, sample_repetition, words


def test_words_split_letters_digits_and_marks():
    assert words("Yuli eats 3 eggs. 尤利吃鸡蛋。") == ["Yuli", "eats", "3", "eggs", ".", *"尤利吃鸡蛋。"]


def test_distinct_n_by_hand():
    a = "the cat the cat sat".split()
    b = "a dog sat".split()
    # unigrams: a's 5 + b's 3 = 8 in all; distinct {the, cat, sat, a, dog} = 5
    assert distinct_n([a, b], 1) == pytest.approx(5 / 8)
    # bigrams: a: (the cat) (cat the) (the cat) (cat sat); b: (a dog) (dog sat) -> 6 in all, 5 distinct
    assert distinct_n([a, b], 2) == pytest.approx(5 / 6)
    # the same sample twice halves distinct-1: diversity across samples counts, not only within one
    assert distinct_n([b, b], 1) == pytest.approx(3 / 6)
    assert distinct_n([["x"]], 2) == 0.0  # no bigram at all


def test_repetition_rate_by_hand():
    loop = "a b a b a b".split()  # bigrams ab ba ab ba ab: 5, 2 unique -> 1 - 2/5
    assert sample_repetition(loop, 2) == pytest.approx(0.6)
    clean = "a b c d".split()
    assert sample_repetition(clean, 2) == 0.0
    assert sample_repetition(["a"], 2) is None  # too short: left out of the mean
    assert repetition_rate([loop, clean, ["a"]], 2) == pytest.approx(0.3)
    # token ids work as well as words
    assert repetition_rate([[1, 2, 3, 1, 2, 3, 1, 2, 3, 1]], 4) == pytest.approx(1 - 3 / 7)


def test_ngrams_and_bad_n():
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    with pytest.raises(DanluError, match="n-gram size"):
        distinct_n([[1, 2]], 0)
    with pytest.raises(DanluError, match="n-gram size"):
        repetition_rate([[1, 2]], True)
