"""Text metrics: BLEU, ROUGE-1/2/L, perplexity, exact match, pairwise preference accuracy.

The notes (002 §评测) name the task families (conditional generation, QA, preference ranking) but leave the
formulas open; we use the standard definitions and check them against the reference libraries:

- BLEU (`corpus_bleu`, `sentence_bleu`, from `danlu.eval.bleu`): sacrebleu's, to 1e-6.
- ROUGE-N F = 2 P R / (P + R) with P = overlapping n-grams / prediction n-grams, R = overlap / reference
  n-grams (Lin, 2004); ROUGE-L uses the longest common subsequence: P = LCS / |prediction|, R = LCS /
  |reference|. Tokenization is rouge-score's default (lowercase, keep runs of [a-z0-9]); parity with
  rouge-score (use_stemmer=False) to 1e-6. The Porter stemmer is NOT implemented: scores match rouge-score
  with `use_stemmer=False` only. That tokenizer drops every non-ASCII character, so Chinese text scores 0;
  `tokenizer="zh"` instead makes each Chinese character a token.
- perplexity = exp( Σ_tokens -log p(token | context) / n_tokens ) over a whole dataset (token-weighted, not
  a mean of per-text perplexities); long texts are scored with a sliding window (see `perplexity`).
- exact match: 1 if the normalised prediction equals a normalised reference (SQuAD's normalisation, extended
  to Chinese: NFKC, lowercase, drop all punctuation incl. full-width 。，！？「」, drop English articles,
  collapse whitespace).
- preference accuracy: the fraction of pairs where the chosen response outscores the rejected one.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from danlu.errors import DanluError
from danlu.eval._checks import check_same_length, check_scores
from danlu.eval.bleu import BleuScore, bleu_tokenize, corpus_bleu, sentence_bleu, tokenize_13a, tokenize_zh

__all__ = [
    "BleuScore",
    "bleu_tokenize",
    "corpus_bleu",
    "sentence_bleu",
    "tokenize_13a",
    "tokenize_zh",
    "RougeScore",
    "rouge_tokenize",
    "rouge",
    "corpus_rouge",
    "normalize_answer",
    "exact_match",
    "preference_accuracy",
    "PerplexityResult",
    "perplexity",
]


# ---------------------------------------------------------------------------------------------------------
# ROUGE


@dataclass(frozen=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ZH_OR_ALNUM = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[a-z0-9]+")


def rouge_tokenize(text: str, tokenizer: str = "default") -> list[str]:
    """rouge-score's default tokens (lowercase, runs of [a-z0-9]) or, with "zh", also single Chinese characters."""
    if not isinstance(text, str):
        raise DanluError(f"text: expected a string, got {type(text).__name__} {text!r}")
    if tokenizer == "default":
        return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]
    if tokenizer == "zh":
        return _ZH_OR_ALNUM.findall(text.lower())
    raise DanluError(f"tokenizer: {tokenizer!r} is not 'default' or 'zh'")


def _f_measure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _rouge_n(ref: list[str], pred: list[str], n: int) -> RougeScore:
    ref_grams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    pred_grams = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
    overlap = sum((ref_grams & pred_grams).values())  # Counter & = elementwise min
    precision = overlap / max(sum(pred_grams.values()), 1)
    recall = overlap / max(sum(ref_grams.values()), 1)
    return RougeScore(precision, recall, _f_measure(precision, recall))


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence by dynamic programming, one row at a time: O(|a| |b|) time, O(|b|) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l(ref: list[str], pred: list[str]) -> RougeScore:
    if not ref or not pred:
        return RougeScore(0.0, 0.0, 0.0)
    lcs = _lcs_length(ref, pred)
    precision, recall = lcs / len(pred), lcs / len(ref)
    return RougeScore(precision, recall, _f_measure(precision, recall))


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(
    prediction: str, references: str | Sequence[str], tokenizer: str = "default"
) -> dict[str, RougeScore]:
    """ROUGE-1, ROUGE-2 and ROUGE-L of one prediction. With several references, each type takes the
    reference with the best F-measure (the first on ties), as rouge-score's `score_multi`."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise DanluError("references: is empty; give at least one reference string")
    pred = rouge_tokenize(prediction, tokenizer)
    best: dict[str, RougeScore] = {}
    for ref_text in refs:
        ref = rouge_tokenize(ref_text, tokenizer)
        scores = {
            "rouge1": _rouge_n(ref, pred, 1),
            "rouge2": _rouge_n(ref, pred, 2),
            "rougeL": _rouge_l(ref, pred),
        }
        for name, s in scores.items():
            if name not in best or s.fmeasure > best[name].fmeasure:
                best[name] = s
    return best


def corpus_rouge(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], tokenizer: str = "default"
) -> dict[str, float]:
    """The mean F-measure of each ROUGE type over the examples."""
    if len(predictions) == 0:
        raise DanluError("predictions: is empty; pass at least one prediction")
    check_same_length(predictions=predictions, references=references)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, references, strict=True):
        for name, s in rouge(pred, refs, tokenizer).items():
            sums[name] += s.fmeasure
    return {name: total / len(predictions) for name, total in sums.items()}


# ---------------------------------------------------------------------------------------------------------
# exact match and preference accuracy

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = set(string.punctuation)


def _is_punctuation(ch: str) -> bool:
    # Unicode category P* covers ， 。 、 ； ： ？ ！ “ ” 「 」 《 》 （ ） … — as well as ASCII punctuation;
    # string.punctuation adds the ASCII symbols ($ + < = > ^ ` | ~) that SQuAD's normalisation also drops.
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """NFKC (full-width ＡＢＣ１２ -> ABC12), lowercase, drop punctuation, drop a/an/the, collapse whitespace."""
    if not isinstance(text, str):
        raise DanluError(f"answer: expected a string, got {type(text).__name__} {text!r}")
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not _is_punctuation(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Fraction of predictions equal, after `normalize_answer`, to their reference (or to any of a list)."""
    if isinstance(predictions, str):
        raise DanluError("predictions: pass a list of strings, not one string")
    if len(predictions) == 0:
        raise DanluError("predictions: is empty; pass at least one prediction")
    check_same_length(predictions=predictions, references=references)
    hits = 0
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise DanluError(f"references[{i}]: is empty; give at least one accepted answer")
        norm = normalize_answer(pred)
        hits += any(norm == normalize_answer(r) for r in refs)
    return hits / len(predictions)


def preference_accuracy(
    chosen_scores: Sequence[float], rejected_scores: Sequence[float], tie: float = 0.5
) -> float:
    """Fraction of pairs with score(chosen) > score(rejected), e.g. reward-model scores or DPO implicit rewards.

    A tie counts `tie` (default 0.5: a model that scores everything equal gets 0.5, like a coin).
    """
    chosen = check_scores("chosen_scores", chosen_scores)
    rejected = check_scores("rejected_scores", rejected_scores)
    check_same_length(chosen_scores=chosen, rejected_scores=rejected)
    return float(((chosen > rejected) + tie * (chosen == rejected)).mean())


# ---------------------------------------------------------------------------------------------------------
# perplexity


@dataclass(frozen=True)
class PerplexityResult:
    """perplexity = exp(nll); nll is the mean negative log-likelihood per scored token, in nats."""

    perplexity: float
    nll: float
    n_tokens: int


def _windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) windows over a text of n tokens: tokens [end - n_new, end) are scored in ids[begin:end].

    Token 0 has no context and is never scored. The first window is as long as allowed; each next one moves
    the scored region `stride` tokens on and keeps the `max_length - stride` tokens before it as context, so
    each token is scored exactly once, conditioned on at least `max_length - stride` earlier tokens (or all).
    """
    out = []
    scored_end = 1
    end = min(max_length, n)
    while scored_end < n:
        begin = max(0, end - max_length)
        out.append((begin, end, end - scored_end))
        scored_end = end
        end = min(end + stride, n)
    return out


def perplexity(
    model: Any,
    dataset: Iterable[Sequence[int] | str],
    max_length: int,
    stride: int | None = None,
    tokenizer: Any = None,
    batch_size: int = 8,
) -> PerplexityResult:
    """Token-weighted perplexity of a causal language model over a dataset.

    model: called as `model(input_ids)` with a (B, T) long tensor; returns an object whose `.logits` is
        (B, T, V) with logits[:, t] predicting token t + 1 (a bare tensor is accepted too).
    dataset: texts as token-id sequences, or strings if `tokenizer` (with `.encode`) is given.
    max_length: the longest window fed to the model (its context size).
    stride: how far the window moves; each token sees >= max_length - stride tokens of context. Must be
        in [1, max_length - 1]; default max_length // 2. Smaller is more accurate and slower.
    Windows of equal length are batched (up to `batch_size`), so no padding is ever needed.
    """
    import torch

    from danlu.nn.logprobs import token_logprobs

    if max_length < 2:
        raise DanluError(f"max_length: {max_length} must be >= 2 (one context token plus one to predict)")
    stride = max(1, max_length // 2) if stride is None else stride
    if not 1 <= stride <= max_length - 1:
        raise DanluError(
            f"stride: {stride} must be between 1 and max_length - 1 = {max_length - 1}, so that every "
            f"scored token keeps at least one token of context"
        )
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    device = params[0].device if params else torch.device("cpu")

    # Collect every window, grouped by length so that a batch is a plain (B, T) tensor.
    by_length: dict[int, list[tuple[list[int], int]]] = {}
    for i, item in enumerate(dataset):
        if isinstance(item, str):
            if tokenizer is None:
                raise DanluError(f"dataset[{i}]: is a string but no tokenizer was given; pass tokenizer=")
            ids = list(tokenizer.encode(item))
        else:
            ids = item.tolist() if hasattr(item, "tolist") else list(item)
        for begin, end, n_new in _windows(len(ids), max_length, stride):
            by_length.setdefault(end - begin, []).append((ids[begin:end], n_new))
    if not by_length:
        raise DanluError("dataset: has no text with at least 2 tokens, so there is nothing to score")

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()  # no dropout while measuring
    total_nll, n_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for T, windows in sorted(by_length.items()):
                for start in range(0, len(windows), batch_size):
                    chunk = windows[start : start + batch_size]
                    input_ids = torch.tensor([w for w, _ in chunk], dtype=torch.long, device=device)  # (B, T)
                    out = model(input_ids)
                    logits = getattr(out, "logits", out)
                    if tuple(logits.shape[:2]) != (len(chunk), T):
                        raise DanluError(
                            f"model: returned logits of shape {tuple(logits.shape)}, expected ({len(chunk)}, {T}, V)"
                        )
                    # logits[:, t] predicts ids[t + 1]; the one gather, no (B, T-1, V) log-softmax
                    token_log_probs = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # (B, T-1)
                    for b, (_, n_new) in enumerate(chunk):
                        total_nll -= float(token_log_probs[b, T - 1 - n_new :].double().sum())
                        n_tokens += n_new
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    nll = total_nll / n_tokens
    return PerplexityResult(perplexity=math.exp(nll), nll=nll, n_tokens=n_tokens)
