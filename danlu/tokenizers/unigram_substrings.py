"""Exact integer ids for every substring (1..max_len characters) of a set of words, with numpy.

The Unigram trainer needs, for every substring of every word, (a) its corpus frequency, to pick the seed
vocabulary, and (b) whether it is a vocabulary piece, to build the lattices. Doing that with Python
string slices costs a dict operation per substring (tens of millions on a few MB); here a substring of
length L gets its id from the pair (id of its first L - 1 characters, its last character), numbered
densely with `np.unique` - exact, no hashing, one vectorised pass per length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SubstringIndex:
    """ids[L - 1][p]: the id of joined[p : p + L] among the distinct substrings of length L, or -1
    where that would run past the end of p's word (joined = the words concatenated)."""

    def __init__(self, words: Sequence[str], counts: np.ndarray, max_len: int) -> None:
        self.joined = "".join(words)
        # one code point per position, as Python indexes a str
        codes = np.frombuffer(self.joined.encode("utf-32-le", "surrogatepass"), "<u4")
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        self.lengths = lengths
        self.word_start = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
        self.word_of = np.repeat(np.arange(len(words), dtype=np.int64), lengths)  # position -> word
        self.local = np.arange(len(codes), dtype=np.int64) - self.word_start[self.word_of]
        room = lengths[self.word_of] - self.local  # characters from each position to its word's end
        # code points numbered in sorted order: id of a one-character substring = rank of its character
        self.alphabet, char_id = np.unique(codes, return_inverse=True)
        n_chars = max(1, len(self.alphabet))
        weight = counts[self.word_of]
        self.ids: list[np.ndarray] = []
        self.freq: list[np.ndarray] = []  # weighted count of each id of each length
        self.where: list[np.ndarray] = []  # one position where each id occurs
        previous = char_id.astype(np.int64)
        for length in range(1, max_len + 1):
            at = np.flatnonzero(room >= length)
            if len(at) == 0:
                break
            key = previous[at] if length == 1 else previous[at] * n_chars + char_id[at + length - 1]
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            ids = np.full(len(codes), -1, np.int64)
            ids[at] = inverse
            self.ids.append(ids)
            self.freq.append(np.bincount(inverse, weight[at], minlength=len(first)))
            self.where.append(at[first])
            previous = ids

    def text(self, length: int, position: int) -> str:
        return self.joined[position : position + length]

    def seed(self, n_seed: int, min_freq: float = 2.0) -> list[tuple[str, int, int, float]]:
        """The n_seed substrings of 2+ characters seen at least min_freq times with the largest
        frequency x length (ties: the smaller string first), as (text, length, id, frequency)."""
        rows = []  # (length, ids, frequencies) of the candidates of each length
        for length in range(2, len(self.ids) + 1):
            freq = self.freq[length - 1]
            ok = np.flatnonzero(freq >= min_freq)
            rows.append((length, ok, freq[ok]))
        if not rows:
            return []
        scores = np.concatenate([f * length for length, _, f in rows])
        if len(scores) > n_seed > 0:  # only what can make the cut is turned into Python strings
            threshold = np.partition(scores, len(scores) - n_seed)[len(scores) - n_seed]
        else:
            threshold = -np.inf
        picked = []
        for length, ok, freq in rows:
            take = freq * length >= threshold
            where = self.where[length - 1]
            for uid, f in zip(ok[take].tolist(), freq[take].tolist()):
                picked.append((self.text(length, int(where[uid])), length, uid, f))
        picked.sort(key=lambda row: (-row[3] * row[1], row[0]))
        return picked[:n_seed]

    def corpus_matches(self, piece_of: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """(word, start, end, piece) of every occurrence of a piece (piece_of[L - 1][id], -1 for none)."""
        out = []
        for length, (ids, table) in enumerate(zip(self.ids, piece_of), start=1):
            at = np.flatnonzero(ids >= 0)
            piece = table[ids[at]]
            hit = piece >= 0
            at = at[hit]
            out.append((self.word_of[at], self.local[at], self.local[at] + length, piece[hit]))
        return tuple(np.concatenate(parts) for parts in zip(*out))

    def piece_matches(
        self, lengths: np.ndarray, positions: np.ndarray, piece_of: list[np.ndarray]
    ) -> tuple[np.ndarray, ...]:
        """The same for the pieces themselves (piece k = joined[positions[k] : + lengths[k]]), leaving out
        each piece's match of itself: the segmentations the pruning step prices a removal with."""
        out = []
        for length, (ids, table) in enumerate(zip(self.ids, piece_of), start=1):
            for start in range(0, len(self.ids) - length + 1):
                k = np.flatnonzero((lengths >= start + length) & ~((start == 0) & (lengths == length)))
                piece = table[ids[positions[k] + start]]
                hit = piece >= 0
                k = k[hit]
                out.append((k, np.full(len(k), start), np.full(len(k), start + length), piece[hit]))
        return tuple(np.concatenate(parts).astype(np.int64) for parts in zip(*out))
