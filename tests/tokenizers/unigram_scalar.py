"""The Unigram trainer as plain scalar loops (danlu's first version, kept as the reference the vectorised
trainer in danlu/tokenizers/unigram_train.py must match exactly). Slow: tests use small corpora."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from danlu.errors import DanluError
from danlu.tokenizers.pretokenize import PreTokenizer
from danlu.tokenizers.unigram_train import SEED_PER_PIECE, digamma


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


def _expected_counts(
    words: list[tuple[str, int]], scores: dict[str, float], max_len: int
) -> tuple[dict[str, float], float]:
    """E-step: expected piece counts over all words (forward-backward), and the corpus log-likelihood."""
    expected: dict[str, float] = dict.fromkeys(scores, 0.0)
    log_likelihood = 0.0
    for word, freq in words:
        n = len(word)
        alpha = [-math.inf] * (n + 1)
        alpha[0] = 0.0
        for end in range(1, n + 1):
            acc = -math.inf
            for start in range(max(0, end - max_len), end):
                score = scores.get(word[start:end])
                if score is not None and alpha[start] != -math.inf:
                    acc = _logsumexp(acc, alpha[start] + score)
            alpha[end] = acc
        beta = [-math.inf] * (n + 1)
        beta[n] = 0.0
        for start in range(n - 1, -1, -1):
            acc = -math.inf
            for end in range(start + 1, min(n, start + max_len) + 1):
                score = scores.get(word[start:end])
                if score is not None and beta[end] != -math.inf:
                    acc = _logsumexp(acc, score + beta[end])
            beta[start] = acc
        z = alpha[n]
        log_likelihood += freq * z
        for start in range(n):
            if alpha[start] == -math.inf:
                continue
            for end in range(start + 1, min(n, start + max_len) + 1):
                piece = word[start:end]
                score = scores.get(piece)
                if score is not None:
                    expected[piece] += freq * math.exp(alpha[start] + score + beta[end] - z)
    return expected, log_likelihood


def _viterbi(
    word: str, scores: dict[str, float], max_len: int, banned: str | None = None
) -> list[str] | None:
    n = len(word)
    best = [-math.inf] * (n + 1)
    back = [0] * (n + 1)
    best[0] = 0.0
    for end in range(1, n + 1):
        for start in range(max(0, end - max_len), end):
            piece = word[start:end]
            score = scores.get(piece)
            if score is None or piece == banned or best[start] == -math.inf:
                continue
            if best[start] + score > best[end]:
                best[end], back[end] = best[start] + score, start
    if best[n] == -math.inf:
        return None
    out, end = [], n
    while end > 0:
        out.append(word[back[end] : end])
        end = back[end]
    return out[::-1]


def _m_step(expected: dict[str, float], required: set[str]) -> dict[str, float]:
    kept = {p: c for p, c in expected.items() if c >= 0.5 or p in required}
    log_total = digamma(sum(kept.values()))
    return {p: digamma(max(c, 1e-3)) - log_total for p, c in kept.items()}


def _prune(
    words: list[tuple[str, int]], scores: dict[str, float], max_len: int, target: int, required: set[str]
) -> dict[str, float]:
    """Keep the target pieces whose removal would cost the most likelihood (SentencePiece's pruning)."""
    freq: Counter[str] = Counter()
    for word, count in words:
        for piece in _viterbi(word, scores, max_len) or ():
            freq[piece] += count
    total = sum(freq.values())
    losses: list[tuple[float, str]] = []
    for piece in scores:
        if piece in required:
            continue
        f = freq.get(piece, 0)
        alternative = _viterbi(piece, scores, max_len, banned=piece) if f else None
        if not f or not alternative:
            losses.append((0.0 if not f else math.inf, piece))
            continue
        log_sum_alt = math.log(total + f * (len(alternative) - 1))
        log_prob_piece = math.log(f) - math.log(total)
        log_prob_alt = sum(math.log(freq.get(a, 0) + f) - log_sum_alt for a in alternative)
        losses.append((f * (log_prob_piece - log_prob_alt), piece))
    losses.sort(key=lambda x: (-x[0], x[1]))
    keep = {p for _, p in losses[: max(0, target - len(required))]} | required
    return {p: s for p, s in scores.items() if p in keep}


def train_unigram(
    texts: Iterable[str],
    pre_tokenizer: PreTokenizer,
    vocab_size: int,
    specials: list[str],
    max_piece_length: int = 16,
    shrinking_factor: float = 0.75,
    n_sub_iterations: int = 2,
    show_progress: bool = False,
) -> list[tuple[str, float]]:
    """(piece, score) list: specials first (score 0), then pieces by descending score."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(pre_tokenizer(text))
    if not counts:
        raise DanluError("cannot train a tokenizer on an empty corpus; pass texts with some content")
    words = list(counts.items())
    chars: Counter[str] = Counter()
    for word, count in words:
        for ch in word:
            chars[ch] += count
    required = set(chars)
    desired = vocab_size - len(specials)
    if desired < len(required):
        raise DanluError(
            f"vocab_size {vocab_size} is below the alphabet: {len(specials)} specials + {len(required)} "
            f"distinct characters; use at least {len(specials) + len(required)}"
        )
    substrings: Counter[str] = Counter()
    for word, count in words:
        n = len(word)
        for i in range(n):
            for j in range(i + 2, min(n, i + max_piece_length) + 1):
                substrings[word[i:j]] += count
    seed = sorted(((f * len(s), s) for s, f in substrings.items() if f >= 2), key=lambda x: (-x[0], x[1]))[
        : SEED_PER_PIECE * desired
    ]
    freqs = {**{s: float(substrings[s]) for _, s in seed}, **{c: float(f) for c, f in chars.items()}}
    log_total = math.log(sum(freqs.values()))
    scores = {p: math.log(f) - log_total for p, f in freqs.items()}

    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(desc="Unigram EM", unit="round")
    while True:
        for _ in range(n_sub_iterations):
            expected, _ = _expected_counts(words, scores, max_piece_length)
            scores = _m_step(expected, required)
        if progress is not None:
            progress.set_postfix(pieces=len(scores))
            progress.update(1)
        if len(scores) <= desired:
            break
        target = max(desired, int(len(scores) * shrinking_factor))
        scores = _prune(words, scores, max_piece_length, target, required)
    if progress is not None:
        progress.close()
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:desired]
    return [(s, 0.0) for s in specials] + [(p, s) for p, s in ranked if p not in specials]
