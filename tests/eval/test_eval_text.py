"""Text metrics: BLEU vs sacrebleu, ROUGE vs rouge-score, perplexity with tiny torch models, EM, preferences."""

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

from danlu.errors import DanluError
from danlu.eval.text import (
    corpus_bleu,
    corpus_rouge,
    exact_match,
    normalize_answer,
    perplexity,
    preference_accuracy,
    rouge,
    rouge_tokenize,
    sentence_bleu,
    tokenize_13a,
    tokenize_zh,
)

# Pieces chosen to hit every tokenizer rule: punctuation, numbers with . , -, HTML entities, <skipped>,
# line-break hyphens, Chinese, full-width forms, and code points at the edges of sacrebleu's zh ranges.
PIECES = ["the", "cat", "Cat", "sat", "on", "mat", "a", "dog", "3.5", "1,000", "2-3", "x-ray", "end.", "(hi)",
          "don't", "&amp;", "&quot;", "&lt;b&gt;", "<skipped>", "a,b", ".5", "5.", "e.g.", "U.S.", "$5", "--", "-\n",
          "\n", "@home", "100%", "猫", "坐在", "垫子上", "。", "，", "北京是首都", "ＡＢＣ", "１２", "…", "—", "→",
          "“引号”", "《书》", "\u2000", "\u2001", "\u2a6d", "\u2a6e", "\U00020001", "\u2f80", "\u2f81", "ｶ", "♥",
          "①", "über", "İ", "naïve"]  # fmt: skip


def _sentence(rng: random.Random, base: list[str] | None = None) -> str:
    if base is not None and rng.random() < 0.8:  # an edited copy, so that BLEU is mostly non-zero
        words = [w for w in base if rng.random() > 0.2]
        words += [rng.choice(PIECES) for _ in range(rng.randint(0, 2))]
    else:
        words = [rng.choice(PIECES) for _ in range(rng.randint(0, 14))]
    return (" " if rng.random() < 0.7 else "").join(words)


def test_tokenizers_match_sacrebleu():
    rng = random.Random(0)
    ref13a, refzh = Tokenizer13a(), TokenizerZh()
    for _ in range(2000):
        s = _sentence(rng)
        assert tokenize_13a(s) == ref13a(s), s
        assert tokenize_zh(s) == refzh(s), s


def test_bleu_matches_sacrebleu():
    rng = random.Random(1)
    for case in range(400):
        tokenize = ("13a", "zh")[case % 2]
        smooth = ("exp", "none", "floor", "add-k")[(case // 2) % 4]
        value = rng.choice([None, 0.5, 2.0]) if smooth in ("floor", "add-k") else None
        lowercase = rng.random() < 0.3
        n, n_refs = rng.randint(1, 5), rng.randint(1, 3)
        base = [[rng.choice(PIECES) for _ in range(rng.randint(1, 14))] for _ in range(n)]
        refs = [[_sentence(rng, b) for b in base] for _ in range(n_refs)]  # sacrebleu: one list per stream
        hyps = [_sentence(rng, b) for b in base]
        options = dict(tokenize=tokenize, smooth_method=smooth, smooth_value=value, lowercase=lowercase)
        expected = sacrebleu.corpus_bleu(hyps, refs, **options)
        ours = corpus_bleu(hyps, [list(r) for r in zip(*refs, strict=True)], **options)
        assert ours.score == pytest.approx(expected.score, abs=1e-6), (hyps, refs, options)
        assert ours.bp == pytest.approx(expected.bp, abs=1e-12)
        assert (ours.sys_len, ours.ref_len) == (expected.sys_len, expected.ref_len)
        refs0 = [r[0] for r in refs]
        expected = sacrebleu.sentence_bleu(hyps[0], refs0, **options)
        assert sentence_bleu(hyps[0], refs0, **options).score == pytest.approx(expected.score, abs=1e-6)


def test_bleu_known_values():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]).score == pytest.approx(100.0)
    assert corpus_bleu(["xyz"], ["the cat"]).score == 0.0
    assert sentence_bleu("猫坐在垫子上。", "猫坐在垫子上。", tokenize="zh").score == pytest.approx(100.0)


def test_rouge_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rng = random.Random(2)
    for _ in range(400):
        base = [rng.choice(PIECES) for _ in range(rng.randint(1, 14))]
        pred = _sentence(rng, base)
        refs = [_sentence(rng, base) for _ in range(rng.randint(1, 3))]
        expected = scorer.score_multi(refs, pred)
        ours = rouge(pred, refs)
        for name in ("rouge1", "rouge2", "rougeL"):
            for field in ("precision", "recall", "fmeasure"):
                assert getattr(ours[name], field) == pytest.approx(getattr(expected[name], field), abs=1e-6)


def test_rouge_corpus_mean_and_chinese_tokenizer():
    scores = corpus_rouge(["the cat sat", "a dog"], ["the cat sat", "the dog ran"])
    assert scores["rouge1"] == pytest.approx((1.0 + 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)) / 2)
    assert rouge_tokenize("猫坐在 mat上", "default") == ["mat"]  # rouge-score drops non-ASCII
    assert rouge_tokenize("猫坐在 Mat上", "zh") == ["猫", "坐", "在", "mat", "上"]
    assert rouge("猫坐在垫子上", "猫坐在垫上", tokenizer="zh")["rouge1"].recall == 1.0


def test_exact_match_normalisation():
    assert normalize_answer("  The  Answer! ") == "answer"
    assert normalize_answer("“北京。”") == "北京"
    assert normalize_answer("ＡＢＣ，１２") == "abc12"  # full-width letters, digits and comma
    assert normalize_answer("Theory of an apple") == "theory of apple"
    assert exact_match(["北京。", "Paris", "7"], ["北京", ["paris.", "Lyon"], "8"]) == pytest.approx(2 / 3)


def test_preference_accuracy():
    assert preference_accuracy([1.0, 2.0, 0.0, 3.0], [0.0, 3.0, 0.0, 1.0]) == pytest.approx(
        (1 + 0 + 0.5 + 1) / 4
    )
    assert preference_accuracy([1.0, 1.0], [1.0, 0.0], tie=0.0) == 0.5


# ---------------------------------------------------------------------------------------------------------
# perplexity with tiny models written here: only `model(input_ids).logits` is used


class Bigram(torch.nn.Module):
    """logits[t] depends on token t only, so any window with >= 1 context token gives the same answer."""

    def __init__(self, V: int = 11):
        super().__init__()
        self.table = torch.nn.Embedding(V, V)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table(input_ids))  # (B, T, V)


class PrefixMean(torch.nn.Module):
    """logits[t] from the mean embedding of tokens 0..t: the whole window matters (a causal toy model)."""

    def __init__(self, V: int = 11, C: int = 8):
        super().__init__()
        self.emb, self.head, self.drop = (
            torch.nn.Embedding(V, C),
            torch.nn.Linear(C, V),
            torch.nn.Dropout(0.5),
        )

    def forward(self, input_ids):
        x = self.drop(self.emb(input_ids))  # (B, T, C)
        counts = torch.arange(1, input_ids.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return SimpleNamespace(logits=self.head(x.cumsum(1) / counts))  # (B, T, V)


def _full_context_nll(model, texts):
    total, n = 0.0, 0
    for ids in texts:
        logits = model(torch.tensor([ids])).logits[0, :-1]
        total += torch.nn.functional.cross_entropy(
            logits, torch.tensor(ids[1:], dtype=torch.long), reduction="sum"
        ).item()
        n += len(ids) - 1
    return total / n, n


def test_perplexity_full_window_equals_direct_computation():
    torch.manual_seed(0)
    model = PrefixMean()
    model.train()  # perplexity must switch dropout off and restore the mode afterwards
    rng = np.random.default_rng(0)
    texts = [rng.integers(0, 11, int(rng.integers(1, 30))).tolist() for _ in range(12)]
    result = perplexity(model, texts, max_length=32, stride=8, batch_size=3)
    assert model.training
    model.eval()
    nll, n = _full_context_nll(model, texts)
    assert result.n_tokens == n == sum(len(t) - 1 for t in texts)  # token-weighted: every token but the first
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll), rel=1e-5)


def test_sliding_window_scores_each_token_once():
    torch.manual_seed(1)
    model = Bigram()
    rng = np.random.default_rng(1)
    texts = [rng.integers(0, 11, int(rng.integers(2, 80))).tolist() for _ in range(6)]
    nll, n = _full_context_nll(model, texts)
    for max_length, stride in [(2, 1), (5, 4), (16, 3), (16, 15), (100, 50)]:
        result = perplexity(model, texts, max_length=max_length, stride=stride)
        assert result.n_tokens == n
        assert result.nll == pytest.approx(nll, rel=1e-5), (max_length, stride)
    # a model with long memory is scored differently with a short window than with the full text
    long_model = PrefixMean().eval()
    full = perplexity(long_model, texts, max_length=128).nll
    assert perplexity(long_model, texts, max_length=8, stride=4).nll != pytest.approx(full, rel=1e-6)


def test_uniform_model_has_perplexity_vocab_size():
    class Uniform(torch.nn.Module):
        def forward(self, input_ids):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 7))

    tokenizer = SimpleNamespace(encode=lambda text: [ord(c) % 7 for c in text])
    result = perplexity(Uniform(), ["hello world", "danlu"], max_length=4, tokenizer=tokenizer)
    assert result.perplexity == pytest.approx(7.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: corpus_bleu(["a", "b"], ["a"]), "predictions has 2, references has 1"),
        (lambda: corpus_bleu([], []), "predictions: is empty"),
        (lambda: corpus_bleu(["a"], [[]]), r"references\[0\]: has no reference"),
        (lambda: sentence_bleu("a", "a", tokenize="intl"), "tokenize: 'intl'"),
        (lambda: sentence_bleu("a", "a", smooth_method="add-one"), "smooth_method"),
        (lambda: corpus_rouge(["a"], ["a", "b"]), "predictions has 1, references has 2"),
        (lambda: rouge("a", "a", tokenizer="ja"), "tokenizer: 'ja'"),
        (lambda: exact_match([], []), "predictions: is empty"),
        (lambda: exact_match(["a", "b"], ["a"]), "predictions has 2, references has 1"),
        (
            lambda: preference_accuracy([1.0, float("nan")], [0.0, 0.0]),
            "chosen_scores: contains nan at index 1",
        ),
        (lambda: preference_accuracy([1.0], [0.0, 1.0]), "chosen_scores has 1, rejected_scores has 2"),
        (lambda: perplexity(Bigram(), [[1, 2, 3]], max_length=4, stride=4), "stride: 4"),
        (lambda: perplexity(Bigram(), [[1, 2, 3]], max_length=1), "max_length: 1"),
        (
            lambda: perplexity(Bigram(), [[1], []], max_length=4),
            "dataset: has no text with at least 2 tokens",
        ),
        (lambda: perplexity(Bigram(), ["abc"], max_length=4), r"dataset\[0\]: is a string but no tokenizer"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(DanluError, match=match):
        call()
