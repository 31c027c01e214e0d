"""Training a Unigram LM tokenizer the SentencePiece way (Kudo 2018, section 3.2):

1. Seed vocabulary: every character, plus the most frequent substrings of the words (up to
   max_piece_length characters, scored by frequency x length, as SentencePiece ranks its suffix-array
   candidates), with log-frequency scores.
2. EM: the E-step computes each piece's expected count with forward-backward over every word's lattice
   of vocabulary matches; the M-step sets score = digamma(count) - digamma(total) (SentencePiece's
   variational-Bayes update, which shrinks rare pieces) and drops pieces expected less than 0.5 times.
3. Pruning: for each piece, the loss of likelihood if it were removed and its uses were re-segmented
   with the rest (its best alternative segmentation); keep the shrinking_factor share with the largest
   loss. Characters are never removed, so every text stays encodable.
Repeat 2-3 until the vocabulary fits, then keep the best-scored pieces.

Speed: every pass is vectorised over all distinct words at once (`unigram_lattice.Lattice`, built once
and filtered as pieces die), and substrings are counted and matched as integer ids
(`unigram_substrings.SubstringIndex`), never as Python string slices. The result is the same as the
scalar loops' (tests/tokenizers/unigram_scalar.py keeps them as the reference).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np

from danlu.errors import DanluError
from danlu.tokenizers.pretokenize import PreTokenizer
from danlu.tokenizers.unigram_lattice import Lattice
from danlu.tokenizers.unigram_substrings import SubstringIndex

SEED_PER_PIECE = 10  # seed vocabulary size = this x the target size (SentencePiece's default is 1M)


def digamma(x: float) -> float:
    """psi(x) for x > 0: recurrence up to x >= 6, then the asymptotic series."""
    result = 0.0
    while x < 6.0:
        result -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    return (
        result
        + math.log(x)
        - 0.5 / x
        - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f / 132))))
    )


def _digamma_array(x: np.ndarray) -> np.ndarray:
    """digamma, elementwise, by the same recurrence and series as `digamma`."""
    x = np.asarray(x, np.float64).copy()
    result = np.zeros_like(x)
    while (small := x < 6.0).any():
        result[small] -= 1.0 / x[small]
        x[small] += 1.0
    f = 1.0 / (x * x)
    return (
        result + np.log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f / 132))))
    )


def _m_step(expected: np.ndarray, alive: np.ndarray, required: np.ndarray) -> np.ndarray:
    """New scores from expected counts; pieces expected < 0.5 times leave (-inf), characters stay."""
    kept = alive & ((expected >= 0.5) | required)
    log_total = digamma(float(expected[kept].sum()))
    scores = np.full(len(expected), -np.inf)
    scores[kept] = _digamma_array(np.maximum(expected[kept], 1e-3)) - log_total
    return scores


def _prune(
    corpus: Lattice,
    counts: np.ndarray,
    alternatives: Lattice,
    candidates: np.ndarray,
    scores: np.ndarray,
    names: list[str],
    target: int,
    required: np.ndarray,
) -> np.ndarray:
    """Keep the target pieces whose removal would cost the most likelihood (SentencePiece's pruning).

    For a piece used f times in the corpus's best segmentation, removing it re-segments those uses with
    its best alternative (its own Viterbi path without itself); the loss is f x (log p(piece) - sum of
    log p(alternative pieces)), with the counts shifted as the alternative would shift them."""
    alive = np.isfinite(scores)
    word_of, piece_of = corpus.viterbi(scores)
    freq = np.bincount(piece_of, counts[word_of], minlength=len(scores))
    total = freq.sum()
    # alternatives' "words" are the candidate pieces themselves: word k of that lattice is candidates[k]
    alt_word, alt_piece = alternatives.viterbi(scores)
    alt_word = candidates[alt_word]
    f_alt = freq[alt_word]
    n_alt = np.bincount(alt_word, minlength=len(scores))
    log_alt = np.bincount(
        alt_word, np.log(np.maximum(freq[alt_piece] + f_alt, 1e-300)), minlength=len(scores)
    )
    losses = np.zeros(len(scores))
    used = alive & ~required & (freq > 0)
    f = freq[used]
    log_sum_alt = np.log(total + f * (n_alt[used] - 1))
    log_prob_piece = np.log(f) - np.log(total)
    log_prob_alt = log_alt[used] - n_alt[used] * log_sum_alt
    losses[used] = f * (log_prob_piece - log_prob_alt)
    ranked = sorted(candidates.tolist(), key=lambda k: (-losses[k], names[k]))
    keep = required & alive
    keep[ranked[: max(0, target - int(keep.sum()))]] = True
    return np.where(keep, scores, -np.inf)


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
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(pre_tokenizer(text))
    if not word_counts:
        raise DanluError("cannot train a tokenizer on an empty corpus; pass texts with some content")
    words = list(word_counts.items())
    n_chars = len(set().union(*(w for w, _ in words)))
    desired = vocab_size - len(specials)
    if desired < n_chars:
        raise DanluError(
            f"vocab_size {vocab_size} is below the alphabet: {len(specials)} specials + {n_chars} "
            f"distinct characters; use at least {len(specials) + n_chars}"
        )
    counts = np.array([c for _, c in words], np.float64)
    index = SubstringIndex([w for w, _ in words], counts, max_piece_length)
    seed = index.seed(SEED_PER_PIECE * desired)
    # piece ids: the characters in sorted order (their substring ids), then the seed by rank
    names = [index.text(1, int(p)) for p in index.where[0]]
    piece_of = [np.full(len(f), -1, np.int64) for f in index.freq]
    piece_of[0][:] = np.arange(len(names))
    lengths, positions, freqs = [1] * len(names), index.where[0].tolist(), index.freq[0].tolist()
    for text, length, uid, freq in seed:
        piece_of[length - 1][uid] = len(names)
        names.append(text)
        lengths.append(length)
        positions.append(int(index.where[length - 1][uid]))
        freqs.append(freq)
    scores = np.log(np.array(freqs)) - math.log(sum(freqs))
    required = np.zeros(len(names), bool)
    required[:n_chars] = True
    corpus = Lattice(index.lengths, *index.corpus_matches(piece_of))
    lengths_arr, positions_arr = np.array(lengths, np.int64), np.array(positions, np.int64)

    progress = _EMProgress(len(names), desired, shrinking_factor, n_sub_iterations, show_progress)
    while True:
        for _ in range(n_sub_iterations):
            expected, log_likelihood = corpus.forward_backward(scores, counts)
            scores = _m_step(expected, np.isfinite(scores), required)
            alive = np.isfinite(scores)
            corpus.keep_pieces(alive)
            progress.step("EM", int(alive.sum()), log_likelihood / counts.sum())
        n_alive = int(alive.sum())
        if n_alive <= desired:
            break
        target = max(desired, int(n_alive * shrinking_factor))
        # the pieces' own lattices, without their whole-piece match, built over the live vocabulary only
        # (the first M-step drops most of the seed)
        candidates = np.flatnonzero(alive & ~required)
        live_of = [np.where(t >= 0, np.where(alive[np.maximum(t, 0)], t, -1), -1) for t in piece_of]
        alternatives = Lattice(
            lengths_arr[candidates],
            *index.piece_matches(lengths_arr[candidates], positions_arr[candidates], live_of),
        )
        scores = _prune(corpus, counts, alternatives, candidates, scores, names, target, required)
        progress.step("prune", int(np.isfinite(scores).sum()))
    progress.close()
    alive_ids = np.flatnonzero(np.isfinite(scores)).tolist()
    ranked = sorted(alive_ids, key=lambda k: (-scores[k], names[k]))[:desired]
    return [(s, 0.0) for s in specials] + [
        (names[k], float(scores[k])) for k in ranked if names[k] not in specials
    ]


class _EMProgress:
    """One tqdm bar over the EM steps and pruning steps; the total is the count if no piece left early
    (the M-step also drops pieces, so training often needs fewer; the bar closes full)."""

    def __init__(self, n_pieces: int, desired: int, shrinking: float, n_sub: int, show: bool) -> None:
        self.bar = None
        if not show:
            return
        rounds, n = 0, n_pieces
        while n > desired:
            n, rounds = max(desired, int(n * shrinking)), rounds + 1
        from tqdm import tqdm

        self.bar = tqdm(total=(rounds + 1) * n_sub + rounds, desc="Unigram EM", unit="step")
        self.bar.set_postfix(pieces=n_pieces, refresh=True)

    def step(self, kind: str, n_pieces: int, log_likelihood: float | None = None) -> None:
        if self.bar is None:
            return
        info = {"step": kind, "pieces": n_pieces}
        if log_likelihood is not None:
            info["loglik/word"] = f"{log_likelihood:.3f}"
        self.bar.set_postfix(info, refresh=False)
        self.bar.update(1)
        self.bar.refresh()  # a few dozen steps in all: show each one

    def close(self) -> None:
        if self.bar is not None:
            # the vocabulary fits: training is done even where the estimate was higher
            self.bar.total = self.bar.n
            self.bar.refresh()
            self.bar.close()
