"""Byte-level BPE (Sennrich et al. 2016; byte-level as in GPT-2, Radford et al. 2019): encoding and decoding.

A word (one pre-token) becomes its UTF-8 bytes, each byte one of 256 base tokens; then learned merges
are applied, the lowest-ranked (earliest learned) adjacent pair first, until no adjacent pair has a merge.
Every string therefore round-trips: `decode(encode(s)) == s`. Ids whose bytes are not valid UTF-8 on
their own (half of a multi-byte character) decode with errors="replace": each invalid sequence becomes
U+FFFD, exactly what Hugging Face's ByteLevel decoder does.

Training lives in `bpe_train.py`; `BPETokenizer.train` calls it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any

from danlu.errors import DanluError
from danlu.tokenizers.base import DEFAULT_SPECIALS, Tokenizer
from danlu.tokenizers.pretokenize import (
    DEFAULT_PATTERN,
    PreTokenizer,
    token_to_bytes,
)

LONG_WORD = 8  # bytes; longer words use the O(n log n) heap merge (faster in Python from ~9 bytes)
CACHE_LIMIT = 200_000  # cached words; the cache is emptied when full (cheap, and keeps memory bounded)
CACHE_WORD_CHARS = 100  # longer words are not cached (they rarely repeat)


class BPETokenizer(Tokenizer):
    """Byte-level BPE: `BPETokenizer.train(texts, vocab_size)` or `Tokenizer.load(dir)`."""

    kind = "bpe"

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: dict[str, int],
        *,
        extra_tokens: dict[str, int] | None = None,
        pre_tokenizer: PreTokenizer | None = None,
        added_tokens: list[dict] | None = None,
        ignore_merges: bool = False,
        eos_token: str | None = None,
        bos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        """vocab maps byte-level token strings ("Ġthe") to ids; merges are (left, right) strings by rank.

        special_tokens are added tokens matched in raw text (they may also be in vocab, as the Hugging Face
        trainer puts them). added_tokens, if given, are the full Hugging Face entries to save back.
        """
        super().__init__(
            special_tokens,
            extra_tokens=extra_tokens,
            eos_token=eos_token,
            bos_token=bos_token,
            pad_token=pad_token,
            unk_token=unk_token,
            chat_template=chat_template,
        )
        self.pre_tokenizer = pre_tokenizer or PreTokenizer.from_pattern(DEFAULT_PATTERN)
        self.ignore_merges = ignore_merges
        self._vocab = dict(vocab)
        self._merge_strings = [tuple(m) for m in merges]
        self._added = added_tokens or [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False}
            | {"normalized": False, "special": True}
            for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])
        ]
        size = 1 + max([*self._vocab.values(), *self.added_tokens.values(), -1])
        self._id_to_token: list[str | None] = [None] * size
        self._id_to_bytes: list[bytes] = [b""] * size
        for token, i in self._vocab.items():
            data = token_to_bytes(token)
            if data is None and token not in self.added_tokens:
                raise DanluError(f"vocab token {token!r} (id {i}) is not a byte-level token string")
            self._id_to_token[i] = token
            self._id_to_bytes[i] = token.encode() if data is None else data
        for token, i in self.added_tokens.items():
            self._id_to_token[i] = token
            self._id_to_bytes[i] = token.encode()
        self._bytes_to_id = {self._id_to_bytes[i]: i for i in sorted(self._vocab.values(), reverse=True)}
        # Some real vocabularies (SmolLM2) lack bytes that never occur in UTF-8 text, such as most control
        # characters. Like Hugging Face's BPE without an unk token, such bytes are dropped when encoding.
        self._missing_bytes = frozenset(b for b in range(256) if bytes([b]) not in self._bytes_to_id)
        self._byte_ids = [self._bytes_to_id.get(bytes([b]), -1) for b in range(256)]
        # (left id, right id) -> rank; rank -> id of the merged token.
        self._ranks: dict[tuple[int, int], int] = {}
        self._merged: list[int] = []
        for rank, (left, right) in enumerate(self._merge_strings):
            a, b, ab = self._vocab.get(left), self._vocab.get(right), self._vocab.get(left + right)
            if a is None or b is None or ab is None:
                raise DanluError(f"merge {rank} ({left!r}, {right!r}) uses a token missing from the vocab")
            self._ranks.setdefault((a, b), rank)
            self._merged.append(ab)
        self._validate_roles()
        self._cache: dict[str, list[int]] = {}
        self.last_merge_steps = 0  # heap pops of the last long-word merge (a work counter for tests)

    # --- vocabulary ---------------------------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (its UTF-8 text for a special token)."""
        self.id_to_token(token_id)
        return self._id_to_bytes[token_id]

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The merges as (left, right) byte-level strings, in rank order."""
        return list(self._merge_strings)

    # --- encoding -----------------------------------------------------------------------------------------
    def _encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        cache = self._cache
        out: list[int] = []
        for word in self.pre_tokenizer(text):
            ids = cache.get(word)
            if ids is None:
                ids = self.encode_word(word)
                if len(word) <= CACHE_WORD_CHARS:
                    if len(cache) >= CACHE_LIMIT:
                        cache.clear()
                    cache[word] = ids
            out += ids
        return out

    def encode_word(self, word: str) -> list[int]:
        """Ids of one pre-token: its bytes, merged by rank."""
        data = word.encode("utf-8")
        if self.ignore_merges:  # LLaMA-3 style: a word that is itself a token is not split
            whole = self._bytes_to_id.get(data)
            if whole is not None:
                return [whole]
        if self._missing_bytes and not self._missing_bytes.isdisjoint(data):
            data = bytes(b for b in data if b not in self._missing_bytes)
        ids = [self._byte_ids[b] for b in data]
        if len(ids) < 2:
            return ids
        if len(ids) > LONG_WORD:
            return self._merge_long(ids)
        return self._merge_short(ids)

    def _merge_short(self, ids: list[int]) -> list[int]:
        """Merge the leftmost best-ranked pair until none is left, keeping a list of pair ranks.

        O(n^2) in the worst case but with C-speed `min` / `index` / `del`: fastest for short words.
        """
        get, merged = self._ranks.get, self._merged
        missing = len(merged)
        r = [get(p, missing) for p in zip(ids, ids[1:])]  # r[i]: rank of (ids[i], ids[i + 1])
        while r:
            best = min(r)
            if best == missing:
                break
            i = r.index(best)
            ids[i] = merged[best]
            del ids[i + 1]
            del r[i]
            if i < len(r):
                r[i] = get((ids[i], ids[i + 1]), missing)
            if i > 0:
                r[i - 1] = get((ids[i - 1], ids[i]), missing)
        return ids

    def _merge_long(self, ids: list[int]) -> list[int]:
        """Merge with a heap of (rank, position) over a linked list: O(n log n) for an n-byte word.

        Each merge removes one symbol and pushes at most two pairs, so there are at most 3n heap pops;
        popping the lowest (rank, position) merges the leftmost occurrence of the best pair first, which
        gives the same result as `_merge_short`.
        """
        ranks, merged = self._ranks, self._merged
        n = len(ids)
        sym = list(ids)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = [(ranks[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in ranks]
        heapq.heapify(heap)
        pops = 0
        while heap:
            rank, i = heapq.heappop(heap)
            pops += 1
            j = nxt[i]
            if not alive[i] or j < 0 or ranks.get((sym[i], sym[j])) != rank:
                continue  # stale entry: one of the two symbols was merged since it was pushed
            sym[i] = merged[rank]
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prv[k] = i
                r = ranks.get((sym[i], sym[k]))
                if r is not None:
                    heapq.heappush(heap, (r, i))
            p = prv[i]
            if p >= 0:
                r = ranks.get((sym[p], sym[i]))
                if r is not None:
                    heapq.heappush(heap, (r, p))
        self.last_merge_steps = pops
        out, i = [], 0
        while i >= 0:
            out.append(sym[i])
            i = nxt[i]
        return out

    # --- decoding -----------------------------------------------------------------------------------------
    def _decode(self, ids: Sequence[int]) -> str:
        table = self._id_to_bytes
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")

    # --- training and serialisation ------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: list[str] | None = None,
        min_frequency: int = 2,
        show_progress: bool = False,
        pattern: str = DEFAULT_PATTERN,
    ) -> BPETokenizer:
        """Learn a byte-level BPE of vocab_size ids (256 bytes + specials + merges) from texts.

        Special tokens get ids 0.. in the given order; the default is `<|endoftext|>` (EOS and padding),
        `<|im_start|>`, `<|im_end|>`. Stops early if no pair occurs min_frequency times. See `bpe_train`.
        """
        from danlu.tokenizers.bpe_train import train_bpe

        specials = list(dict.fromkeys(DEFAULT_SPECIALS if special_tokens is None else special_tokens))
        vocab, merges = train_bpe(texts, vocab_size, specials, min_frequency, show_progress, pattern)
        eos = "<|endoftext|>" if "<|endoftext|>" in specials else (specials[0] if specials else None)
        return cls(
            vocab,
            merges,
            {s: vocab[s] for s in specials},
            pre_tokenizer=PreTokenizer.from_pattern(pattern),
            eos_token=eos,
            pad_token=eos,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        post: dict[str, Any] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False}
        post["use_regex"] = False
        if self.bos_token is not None and self.add_bos_token:
            bos = {"id": self.bos_token, "type_id": 0}
            post = {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": bos}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"SpecialToken": bos},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": bos},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {
                    self.bos_token: {
                        "id": self.bos_token,
                        "ids": [self.bos_token_id],
                        "tokens": [self.bos_token],
                    }
                },
            }
        model = {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": self.ignore_merges,
            "vocab": self._vocab,
            "merges": [list(m) for m in self._merge_strings],
        }
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        return self._hf_document(model, None, post, decoder, added=self._added)

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], config: dict[str, Any] | None = None) -> BPETokenizer:
        """Build from a parsed `tokenizer.json` (model type BPE, byte-level) and its tokenizer_config."""
        from danlu.tokenizers.hf_fields import check_merges, check_token_ids, special_roles

        model = data["model"]
        added = data.get("added_tokens") or []
        check_token_ids(model["vocab"], added)  # before the id tables are sized by the largest id
        merges = check_merges(model.get("merges", []))
        specials = {t["content"]: t["id"] for t in added if t.get("special", True)}
        others = {t["content"]: t["id"] for t in added if not t.get("special", True)}
        roles = special_roles({**others, **specials}, config)
        tok = cls(
            model["vocab"],
            merges,
            specials,
            extra_tokens=others,
            pre_tokenizer=PreTokenizer(data.get("pre_tokenizer")),
            added_tokens=added,
            ignore_merges=bool(model.get("ignore_merges", False)),
            chat_template=(config or {}).get("chat_template"),
            **roles,
        )
        # BOS is added by encode(add_special_tokens=True) only if the file says so: a TemplateProcessing
        # post-processor that starts with it (LLaMA-style), or add_bos_token in tokenizer_config.json.
        post = data.get("post_processor") or {}
        first = (post.get("single") or [{}])[0] if post.get("type") == "TemplateProcessing" else {}
        from_post = "SpecialToken" in first and first["SpecialToken"].get("id") == roles.get("bos_token")
        tok.add_bos_token = bool(from_post or (config or {}).get("add_bos_token", False))
        return tok
