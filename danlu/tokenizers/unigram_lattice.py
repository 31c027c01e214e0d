"""Every vocabulary match in every word, as flat numpy arrays: the one Unigram Viterbi, for the trainer
and the encoder alike.

The trainer runs forward-backward (E-step) and Viterbi (pruning) over the same lattices many times while
the vocabulary only shrinks, so the lattice is built once and filtered as pieces die. Word w owns the
nodes offset[w] .. offset[w] + len(w) (one per character boundary); an edge is one vocabulary match
word[i:j], from node offset[w] + i to node offset[w] + j.

The passes run over all words at once, one "level" at a time: the forward pass handles every edge that
ends at character position j of its word together (their sources, positions < j, are final by then), the
backward pass every edge that starts at position i, from the last position down. Within a level the
edges are sorted by the node they update, so one `reduceat` per level combines them (log-sum-exp for
forward-backward, max for Viterbi). Kudo 2018, section 3.2; Rabiner 1989 for forward-backward.

The Viterbi recursion (`_best_edges`: the best score into each position over the edges ending there)
has this one home: the trainer walks its result back for every word at once (`Lattice.viterbi`), the
encoder (`unigram.UnigramTokenizer`) builds one lattice over the new words of a text and reads each
word's spans (`Lattice.segmentations`).
"""

from __future__ import annotations

import numpy as np


class _Edges:
    """One direction's copy of the edges, sorted by level (the position in the word that the edge
    updates: its end going forward, its start going backward) and within a level by the node updated,
    so a level is one slice and each node's edges are one `reduceat` segment of it."""

    def __init__(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        piece: np.ndarray,
        word: np.ndarray,
        level: np.ndarray,
        forward: bool,
    ) -> None:
        self.src, self.dst, self.piece, self.word, self.level = src, dst, piece, word, level
        self.forward = forward
        # (edge slice start, end, group starts relative to the slice, the groups' nodes, group sizes) per level
        self.levels: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.group_starts = self.group_nodes = np.zeros(0, np.int64)
        n = len(src)
        if n == 0:
            return
        target = dst if forward else src
        starts = np.flatnonzero(_changes(target))  # the first edge of each node's group
        cuts = np.flatnonzero(_changes(level[starts]))  # the first group of each level
        self.group_starts, self.group_nodes = starts, target[starts]  # every node's edges, all levels
        sizes = _gaps(starts, n)
        level_at = starts[cuts]  # the first edge of each level
        rel = starts - np.repeat(level_at, _gaps(cuts, len(starts)))
        bounds, edge_at = [*cuts.tolist(), len(starts)], [*level_at.tolist(), n]
        for k in range(len(cuts)):  # views only: a per-call cost that small lattices (one text) feel
            a, b = bounds[k], bounds[k + 1]
            self.levels.append((edge_at[k], edge_at[k + 1], rel[a:b], self.group_nodes[a:b], sizes[a:b]))

    def keep(self, mask: np.ndarray) -> _Edges:
        """The same order without the masked-out edges (a subsequence of a sorted list stays sorted)."""
        return _Edges(
            self.src[mask], self.dst[mask], self.piece[mask], self.word[mask], self.level[mask], self.forward
        )


class Lattice:
    """Words of the given lengths and their matches: edge k is piece[k] over word[k][start[k]:end[k]]."""

    def __init__(
        self, lengths: np.ndarray, word: np.ndarray, start: np.ndarray, end: np.ndarray, piece: np.ndarray
    ) -> None:
        self.offset = (np.cumsum(lengths + 1) - (lengths + 1)).astype(np.int64)  # first node of each word
        self.end_node = self.offset + lengths
        self.n_nodes = int(lengths.sum() + len(lengths))
        src, dst = self.offset[word] + start, self.offset[word] + end
        span = int((end - start).max()) + 1 if len(start) else 1
        # forward: by end position, then node, then source ascending (= longer edge first), so the first
        # best edge in a group (keys are unique: one piece per span) is the one a left-to-right scalar loop would keep on a tie
        order = np.argsort((end * self.n_nodes + dst) * span + (span - 1 - (end - start)))
        self.fwd = _Edges(src[order], dst[order], piece[order], word[order], end[order], True)
        # the backward copy only forward-backward needs (the encoder and pruning never do): built on first use
        self._raw: tuple[np.ndarray, ...] | None = (src, dst, piece, word, start)
        self._bwd: _Edges | None = None

    @property
    def bwd(self) -> _Edges:
        if self._bwd is None:
            assert self._raw is not None
            src, dst, piece, word, start = self._raw
            # by start position from the last one down, then node (ties share a node: any order)
            order = np.argsort((start.max(initial=0) - start) * self.n_nodes + src)
            self._bwd = _Edges(src[order], dst[order], piece[order], word[order], start[order], False)
            self._raw = None
        return self._bwd

    def keep_pieces(self, alive: np.ndarray) -> None:
        """Drop the edges of pieces that left the vocabulary (alive: bool per piece id)."""
        keep = alive[self.fwd.piece]
        if not keep.all():
            bwd = self.bwd
            self.fwd = self.fwd.keep(keep)
            self._bwd = bwd.keep(alive[bwd.piece])

    def forward_backward(self, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
        """Expected count of each piece id (weights: count of each word) and the log-likelihood."""
        alpha = np.full(self.n_nodes, -np.inf)
        alpha[self.offset] = 0.0
        _logsumexp_pass(self.fwd, alpha, scores)
        beta = np.full(self.n_nodes, -np.inf)
        beta[self.end_node] = 0.0
        _logsumexp_pass(self.bwd, beta, scores)
        z = alpha[self.end_node]  # log P(word)
        e = self.fwd
        posterior = np.exp(alpha[e.src] + scores[e.piece] + beta[e.dst] - z[e.word])
        expected = np.bincount(e.piece, posterior * weights[e.word], minlength=len(scores))
        return expected, float(np.dot(weights, z))

    def viterbi(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best segmentation of every word: (word index, piece id) of each piece used, unordered.
        A word no path spans (possible only where whole-word matches are left out) gets no pieces."""
        e = self.fwd
        best, back = _best_edges(e, self.offset, self.n_nodes, scores)
        words_out, pieces_out = [], []
        word = np.arange(len(self.offset))
        node = self.end_node.copy()
        active = (node != self.offset) & np.isfinite(best[node])
        word, node = word[active], node[active]
        while len(node):  # walk every word's best path back one piece per step
            edge = back[node]
            words_out.append(word)
            pieces_out.append(e.piece[edge])
            node = e.src[edge]
            active = node != self.offset[word]
            word, node = word[active], node[active]
        if not words_out:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(words_out), np.concatenate(pieces_out)

    def segmentations(self, scores: np.ndarray) -> list[list[tuple[int, int, int]]]:
        """Each word's best path as (piece id, start, end) spans, left to right. Every position of a word
        must be reachable (the encoder gives each character an edge: its piece or the unknown one)."""
        e = self.fwd
        _, back = _best_edges(e, self.offset, self.n_nodes, scores)
        back_l, src_l, piece_l = back.tolist(), e.src.tolist(), e.piece.tolist()
        out = []
        for first, node in zip(self.offset.tolist(), self.end_node.tolist()):
            spans = []
            while node != first:
                edge = back_l[node]
                spans.append((piece_l[edge], src_l[edge] - first, node - first))
                node = src_l[edge]
            out.append(spans[::-1])
        return out


def _best_edges(
    e: _Edges, offset: np.ndarray, n_nodes: int, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The Viterbi recursion (Kudo 2018, section 3.1): best[node] = max over the edges ending at node of
    best[edge's source] + scores[edge's piece], from best = 0 at each word's first node; back[node] = that
    edge (-1 where none). On a tie the first edge of the node's group wins: the one from the leftmost
    start, as a left-to-right scan keeping only strictly better scores would (Hugging Face `tokenizers`)."""
    edge_score = scores[e.piece]
    best = np.full(n_nodes, -np.inf)
    best[offset] = 0.0
    for e0, e1, rel, targets, _ in e.levels:  # one position at a time: its sources are final
        best[targets] = np.maximum.reduceat(best[e.src[e0:e1]] + edge_score[e0:e1], rel)
    # the edges that reach each node best, found once best is final: the same sums as in the loop (so the
    # same floats), compared with the node's best, first match per node
    back = np.full(n_nodes, -1, np.int64)
    n = len(e.src)
    if n:
        is_best = best[e.src] + edge_score == best[e.dst]
        back[e.group_nodes] = np.minimum.reduceat(np.where(is_best, np.arange(n), n), e.group_starts)
    return best, back


def _changes(a: np.ndarray) -> np.ndarray:
    """True where a[i] differs from a[i - 1], and at 0 (a is not empty)."""
    out = np.empty(len(a), bool)
    out[0] = True
    np.not_equal(a[1:], a[:-1], out=out[1:])
    return out


def _gaps(starts: np.ndarray, total: int) -> np.ndarray:
    """Sizes of the runs that begin at starts (ascending, from 0) in a list of total items."""
    out = np.empty_like(starts)
    out[:-1] = starts[1:]
    out[-1] = total
    return out - starts


def _logsumexp_pass(e: _Edges, table: np.ndarray, scores: np.ndarray) -> None:
    """alpha[node] = logsumexp(alpha[src] + score) going forward, beta[node] = logsumexp(score +
    beta[dst]) going backward, one level at a time."""
    source = e.src if e.forward else e.dst
    edge_score = scores[e.piece]
    for e0, e1, rel, targets, sizes in e.levels:
        values = table[source[e0:e1]] + edge_score[e0:e1]
        peak = np.maximum.reduceat(values, rel)
        total = np.add.reduceat(np.exp(values - peak.repeat(sizes)), rel)
        table[targets] = peak + np.log(total)
