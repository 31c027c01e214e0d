"""Unigram language-model tokenizer (Kudo 2018, "Subword Regularization"; the SentencePiece default).

Each piece has a log-probability (its score); a word is cut into the pieces whose scores sum highest,
found by Viterbi over the lattice of vocabulary matches (the trainer's one: unigram_lattice.py, which
the words of a text go through together). A character with no single-character piece is an unknown
piece scored `min_score - 10` (SentencePiece's penalty), and adjacent unknowns fuse into one [unk].
With byte_fallback, an unknown piece is instead spelled as <0xXX> byte tokens.
Ties keep the first candidate found when scanning start positions left to right and, per start,
pieces from short to long, which is what Hugging Face `tokenizers` does.

Words come from a Metaspace pre-tokenizer by default (spaces become "▁", each "▁" starts a word).
Training lives in `unigram_train.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer
from danlu.tokenizers.decoders import Decoder
from danlu.tokenizers.normalize import Normalizer
from danlu.tokenizers.pretokenize import PreTokenizer
from danlu.tokenizers.unigram_lattice import Lattice

UNK_PENALTY = 10.0
_BATCH_CHARS = 1 << 18  # characters of new words per lattice: bounds its arrays (~100 bytes a match)
METASPACE = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
METASPACE_DECODER = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
UNIGRAM_SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class UnigramTokenizer(Tokenizer):
    """Unigram LM tokenizer: `UnigramTokenizer.train(texts, vocab_size)` or `Tokenizer.load(path)`."""

    kind = "unigram"

    def __init__(
        self,
        pieces: Sequence[tuple[str, float]],
        special_tokens: dict[str, int],
        *,
        unk_id: int | None = 0,
        byte_fallback: bool = False,
        extra_tokens: dict[str, int] | None = None,
        normalizer: Normalizer | None = None,
        pre_tokenizer: PreTokenizer | None = None,
        decoder: Decoder | None = None,
        added_tokens: list[dict] | None = None,
        eos_token: str | None = None,
        bos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        """pieces: (piece, log-probability) in id order; unk_id: the id of the unknown piece."""
        unk_token = pieces[unk_id][0] if unk_id is not None and 0 <= unk_id < len(pieces) else None
        if unk_id is not None and unk_token is None:
            raise DanluError(f"Unigram unk_id {unk_id} is outside the vocabulary of {len(pieces)} pieces")
        super().__init__(
            special_tokens,
            extra_tokens=extra_tokens,
            eos_token=eos_token,
            bos_token=bos_token,
            pad_token=pad_token,
            unk_token=unk_token,
            chat_template=chat_template,
        )
        self.pieces = [(str(p), float(s)) for p, s in pieces]
        self.unk_id, self.byte_fallback = unk_id, byte_fallback
        self.normalizer = normalizer if normalizer is not None else Normalizer(None)
        self.pre_tokenizer = pre_tokenizer if pre_tokenizer is not None else PreTokenizer(METASPACE)
        self.decoder = decoder if decoder is not None else Decoder(METASPACE_DECODER)
        self._added = added_tokens
        self._vocab: dict[str, int] = {}
        for i, (piece, _) in enumerate(self.pieces):
            self._vocab.setdefault(piece, i)
        self._scores = [s for _, s in self.pieces]
        self._max_len = max((len(p) for p, _ in self.pieces), default=1)
        bad = next(((p, x) for p, x in self.pieces if not math.isfinite(x)), None)
        if bad is not None:  # a NaN or infinite sum would leave the Viterbi no best edge to keep
            raise DanluError(
                f"Unigram piece {bad[0][:50]!r} has score {bad[1]}; scores must be finite log-probabilities "
                "(a NaN, inf or -inf in the file is corrupt)"
            )
        self._unk_score = min(self._scores, default=0.0) - UNK_PENALTY
        # per piece id, then the unknown edge's score at id len(pieces) (see _viterbi_words)
        self._edge_scores = np.array([*self._scores, self._unk_score], np.float64)
        size = max([len(self.pieces) - 1, *self.added_tokens.values()]) + 1
        self._id_to_token = [p for p, _ in self.pieces] + [""] * (size - len(self.pieces))
        for token, i in self.added_tokens.items():
            self._id_to_token[i] = token
        self._byte_ids = None
        if byte_fallback:
            self._byte_ids = [self._vocab.get(f"<0x{b:02X}>") for b in range(256)]
            if None in self._byte_ids:
                raise DanluError("Unigram byte_fallback is on but the vocab lacks some <0xXX> byte pieces")
        self._cache: dict[str, list[int]] = {}
        self._prefixes: dict[str, int] | None = None
        self._validate_roles()

    # --- encoding / decoding ------------------------------------------------------------------------------
    def _encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        words = self._words(text, at_start)
        return self._assemble(words, self._segment_new([words]))

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = False) -> list[list[int]]:
        """`encode` of each text, with the batch's new words segmented together (one lattice, so numpy's
        per-call cost is paid once per batch rather than once per text)."""
        parts: list[list[int | list[str]]] = []  # per text: a special token's id or the words of a span
        for text in texts:
            if not isinstance(text, str):
                raise DanluError(f"encode expects a str, got {type(text).__name__}: {text!r:.80}")
            parts.append(
                [
                    self.added_tokens[piece] if special else self._words(piece, j == 0)
                    for j, (piece, special) in enumerate(self.split_specials(text))
                ]
            )
        found = self._segment_new([p for ps in parts for p in ps if isinstance(p, list)])
        out = []
        for ps in parts:
            ids: list[int] = []
            for p in ps:
                if isinstance(p, list):
                    ids += self._assemble(p, found)
                else:
                    ids.append(p)
            out.append(self.with_special_tokens(ids) if add_special_tokens else ids)
        return out

    def _words(self, text: str, at_start: bool) -> list[str]:
        if self.normalizer:
            text = self.normalizer(text)
        # at_start matters for Metaspace's "first" scheme: only the input's start gets the "▁" prefix.
        return self.pre_tokenizer(text, at_start)

    def _segment_new(self, word_lists: list[list[str]]) -> dict[str, list[int]]:
        """Ids of the words not in the cache, found together in lattices of at most _BATCH_CHARS
        characters (a bound on the arrays; a longer word is one lattice of its own)."""
        cache = self._cache
        new = [w for w in dict.fromkeys(w for words in word_lists for w in words) if w not in cache]
        found: dict[str, list[int]] = {}
        i = 0
        while i < len(new):
            j, size = i, 0
            while j < len(new) and (j == i or size + len(new[j]) <= _BATCH_CHARS):
                size += len(new[j])
                j += 1
            found.update(zip(new[i:j], self._encode_words(new[i:j])))
            i = j
        for word, ids in found.items():
            if len(cache) < 200_000 and len(word) <= 100:
                cache[word] = ids
        return found

    def _assemble(self, words: list[str], found: dict[str, list[int]]) -> list[int]:
        cache = self._cache
        out: list[int] = []
        for word in words:
            ids = cache.get(word)
            out += found[word] if ids is None else ids
        return out

    def viterbi(self, word: str) -> list[tuple[int | None, int, int]]:
        """Best segmentation of word as (piece id or None for unknown, start, end) spans."""
        return self._viterbi_words([word])[0]

    def _viterbi_words(self, words: Sequence[str]) -> list[list[tuple[int | None, int, int]]]:
        """Best segmentation of each word, by the one Unigram Viterbi (unigram_lattice) over a lattice of
        their vocabulary matches. A character with no single-character piece gets an unknown edge (piece
        id len(pieces), scored unk_score), so every position is reachable."""
        get, max_len, unk = self._prefix_table().get, self._max_len, len(self.pieces)
        word_of: list[int] = []
        starts: list[int] = []
        ends: list[int] = []
        piece_of: list[int] = []
        add_word, add_start, add_end, add_piece = word_of.append, starts.append, ends.append, piece_of.append
        for w, word in enumerate(words):
            n = len(word)
            for start in range(n):
                piece_id = get(word[start])
                if piece_id is None or piece_id < 0:  # no piece for this character: an unknown piece of one
                    add_word(w)
                    add_start(start)
                    add_end(start + 1)
                    add_piece(unk)
                end, last = start + 1, min(n, start + max_len)
                while piece_id is not None:  # longer matches only while word[start:end] begins some piece
                    if piece_id >= 0:
                        add_word(w)
                        add_start(start)
                        add_end(end)
                        add_piece(piece_id)
                    end += 1
                    piece_id = get(word[start:end]) if end <= last else None
        lattice = Lattice(
            np.array([len(w) for w in words], np.int64),
            np.array(word_of, np.int64),
            np.array(starts, np.int64),
            np.array(ends, np.int64),
            np.array(piece_of, np.int64),
        )
        return [
            [(None if p == unk else p, a, b) for p, a, b in spans]
            for spans in lattice.segmentations(self._edge_scores)
        ]

    def _prefix_table(self) -> dict[str, int]:
        """Every piece -> its id, and every proper prefix of a piece that is not one -> -1: the lattice stops
        extending a match at the first substring no piece begins with (built on first use)."""
        if self._prefixes is None:
            table: dict[str, int] = {}
            for piece in self._vocab:
                for k in range(1, len(piece)):
                    table.setdefault(piece[:k], -1)
            table.update(self._vocab)
            self._prefixes = table
        return self._prefixes

    def _encode_words(self, words: Sequence[str]) -> list[list[int]]:
        return [self._ids_of(word, spans) for word, spans in zip(words, self._viterbi_words(words))]

    def encode_word(self, word: str) -> list[int]:
        """Ids of one word: Viterbi, unknowns fused (or spelled as bytes with byte_fallback)."""
        return self._encode_words([word])[0]

    def _ids_of(self, word: str, spans: list[tuple[int | None, int, int]]) -> list[int]:
        """Ids of word's Viterbi spans: adjacent unknowns fused into one [unk] (or bytes with byte_fallback)."""
        ids: list[int] = []
        unknown = ""
        for piece_id, start, end in spans + [(0, 0, 0)]:
            if piece_id is None:
                unknown += word[start:end]
                continue
            if unknown:
                if self._byte_ids is not None:
                    ids += [self._byte_ids[b] for b in unknown.encode("utf-8")]
                elif self.unk_id is None:
                    raise DanluError(f"cannot encode {unknown!r}: not in the vocabulary and no unknown piece")
                else:
                    ids.append(self.unk_id)
                unknown = ""
            if end:
                ids.append(piece_id)
        return ids

    def _decode(self, ids: Sequence[int]) -> str:
        return self.decoder([self._id_to_token[i] for i in ids])

    # --- construction and serialisation ------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], config: dict[str, Any] | None = None) -> UnigramTokenizer:
        from danlu.tokenizers.hf_fields import check_token_ids, special_roles

        model = data["model"]
        added = data.get("added_tokens") or []
        pieces = model["vocab"]
        if not isinstance(pieces, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], (int, float))
            for p in pieces
        ):
            raise DanluError("model.vocab of a Unigram tokenizer should be a list of [piece, score] pairs")
        # A Unigram id is a list position; added tokens may sit past the end, but not far past it.
        check_token_ids({}, [{"content": f"#{i}", "id": i} for i in range(len(pieces))] + added)
        specials = {t["content"]: t["id"] for t in added if t.get("special", True)}
        others = {t["content"]: t["id"] for t in added if not t.get("special", True)}
        roles = special_roles({**others, **specials}, config)
        roles.pop("unk_token", None)
        return cls(
            [(p, s) for p, s in pieces],
            specials,
            unk_id=model.get("unk_id"),
            byte_fallback=bool(model.get("byte_fallback", False)),
            extra_tokens=others,
            normalizer=Normalizer(data.get("normalizer")),
            pre_tokenizer=PreTokenizer(data.get("pre_tokenizer")),
            decoder=Decoder(data.get("decoder")),
            added_tokens=added,
            chat_template=(config or {}).get("chat_template"),
            **roles,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        model = {
            "type": "Unigram",
            "unk_id": self.unk_id,
            "vocab": [[p, s] for p, s in self.pieces],
            "byte_fallback": self.byte_fallback,
        }
        return self._hf_document(model, self.normalizer.config, None, self.decoder.config)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: list[str] | None = None,
        show_progress: bool = False,
        max_piece_length: int = 16,
        shrinking_factor: float = 0.75,
        n_sub_iterations: int = 2,
    ) -> UnigramTokenizer:
        """Learn a Unigram vocabulary of vocab_size pieces (specials included); see unigram_train."""
        from danlu.tokenizers.unigram_train import train_unigram

        specials = list(dict.fromkeys(UNIGRAM_SPECIALS if special_tokens is None else special_tokens))
        if "<unk>" not in specials:
            specials.insert(0, "<unk>")
        pre = PreTokenizer(METASPACE)
        pieces = train_unigram(
            texts,
            pre,
            vocab_size,
            specials,
            max_piece_length,
            shrinking_factor,
            n_sub_iterations,
            show_progress,
        )
        eos = "<|endoftext|>" if "<|endoftext|>" in specials else None
        return cls(
            pieces,
            {s: i for i, s in enumerate(specials)},
            unk_id=specials.index("<unk>"),
            pre_tokenizer=pre,
            eos_token=eos,
            pad_token=eos,
        )
