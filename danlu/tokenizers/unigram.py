"""Unigram language-model tokenizer (Kudo 2018, "Subword Regularization"; the SentencePiece default).

Each piece has a log-probability (its score); a word is cut into the pieces whose scores sum highest,
found by Viterbi over the lattice of vocabulary matches. A character with no single-character piece
is an unknown piece scored `min_score - 10` (SentencePiece's penalty), and adjacent unknowns fuse
into one [unk]. With byte_fallback, an unknown piece is instead spelled as <0xXX> byte tokens.
Ties keep the first candidate found when scanning start positions left to right and, per start,
pieces from short to long, which is what Hugging Face `tokenizers` does.

Words come from a Metaspace pre-tokenizer by default (spaces become "▁", each "▁" starts a word).
Training lives in `unigram_train.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer
from danlu.tokenizers.decoders import Decoder
from danlu.tokenizers.normalize import Normalizer
from danlu.tokenizers.pretokenize import PreTokenizer

UNK_PENALTY = 10.0
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
        self._unk_score = min(self._scores, default=0.0) - UNK_PENALTY
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
        self._validate_roles()

    # --- encoding / decoding ------------------------------------------------------------------------------
    def _encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        if self.normalizer:
            text = self.normalizer(text)
        out: list[int] = []
        cache = self._cache
        # at_start matters for Metaspace's "first" scheme: only the input's start gets the "▁" prefix.
        for word in self.pre_tokenizer(text, at_start):
            ids = cache.get(word)
            if ids is None:
                ids = self.encode_word(word)
                if len(cache) < 200_000 and len(word) <= 100:
                    cache[word] = ids
            out += ids
        return out

    def viterbi(self, word: str) -> list[tuple[int | None, int, int]]:
        """Best segmentation of word as (piece id or None for unknown, start, end) spans."""
        n = len(word)
        vocab, scores, max_len, unk_score = self._vocab, self._scores, self._max_len, self._unk_score
        best = [float("-inf")] * (n + 1)
        back: list[tuple[int | None, int]] = [(None, -1)] * (n + 1)
        best[0] = 0.0
        for start in range(n):
            base = best[start]
            if base == float("-inf"):
                continue
            single = False
            for end in range(start + 1, min(n, start + max_len) + 1):
                piece_id = vocab.get(word[start:end])
                if piece_id is None:
                    continue
                score = base + scores[piece_id]
                if back[end][1] < 0 or score > best[end]:
                    best[end], back[end] = score, (piece_id, start)
                if end == start + 1:
                    single = True
            if not single:  # no piece for this character: an unknown piece of one character
                score = base + unk_score
                if back[start + 1][1] < 0 or score > best[start + 1]:
                    best[start + 1], back[start + 1] = score, (None, start)
        spans = []
        end = n
        while end > 0:
            piece_id, start = back[end]
            spans.append((piece_id, start, end))
            end = start
        return spans[::-1]

    def encode_word(self, word: str) -> list[int]:
        """Ids of one word: Viterbi, unknowns fused (or spelled as bytes with byte_fallback)."""
        ids: list[int] = []
        unknown = ""
        for piece_id, start, end in self.viterbi(word) + [(0, 0, 0)]:
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
        from danlu.tokenizers.io import check_token_ids, special_roles

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
        added = self._added or [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False}
            | {"normalized": False, "special": True}
            for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])
        ]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": self.normalizer.config,
            "pre_tokenizer": self.pre_tokenizer.config,
            "post_processor": None,
            "decoder": self.decoder.config,
            "model": {
                "type": "Unigram",
                "unk_id": self.unk_id,
                "vocab": [[p, s] for p, s in self.pieces],
                "byte_fallback": self.byte_fallback,
            },
        }

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
