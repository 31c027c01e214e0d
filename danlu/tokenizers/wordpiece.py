"""WordPiece (Schuster & Nakajima 2012; as used by BERT, Devlin et al. 2019).

Encoding: BERT normalisation (see `normalize.py`), split into words and single punctuation marks, then
greedy longest-match-first: take the longest vocabulary entry that prefixes the rest of the word
(pieces after the first carry the "##" prefix); a word with no match at some point, or longer than
`max_input_chars_per_word` characters, becomes a single [UNK]. `add_special_tokens=True` gives
`[CLS] ... [SEP]`.

Decoding joins pieces with spaces, glues "##" pieces to the previous one, and (cleanup=True) removes
the space before . , ? ! and in contractions, like Hugging Face's WordPiece decoder. Normalisation
loses case and accents, so decode(encode(s)) is not s in general.

Training (`WordPieceTokenizer.train`): like Hugging Face's WordPieceTrainer, BPE merges by pair
frequency over characters, where a symbol that does not start a word carries "##"; the vocabulary is
the specials, every character seen (plain, and "##"-prefixed if seen inside a word; sorted), then the
merged pieces. (Hugging Face's trainer numbers "##" symbols in hash-map order, so ids are not comparable.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer
from danlu.tokenizers.normalize import Normalizer
from danlu.tokenizers.pretokenize import PreTokenizer

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_NORMALIZER = {
    "type": "BertNormalizer",
    "clean_text": True,
    "handle_chinese_chars": True,
    "strip_accents": None,
    "lowercase": True,
}


def _cleanup(piece: str) -> str:
    """Hugging Face's WordPiece decoder clean-up, applied to each piece."""
    for dirty, clean in [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" do not", " don't"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]:
        piece = piece.replace(dirty, clean)
    return piece


class WordPieceTokenizer(Tokenizer):
    """BERT-style WordPiece: `WordPieceTokenizer.from_vocab_file("vocab.txt")`, `Tokenizer.load`, or `train`."""

    kind = "wordpiece"

    def __init__(
        self,
        vocab: dict[str, int],
        special_tokens: dict[str, int],
        *,
        extra_tokens: dict[str, int] | None = None,
        unk_token: str = "[UNK]",
        cls_token: str | None = "[CLS]",
        sep_token: str | None = "[SEP]",
        pad_token: str | None = "[PAD]",
        mask_token: str | None = "[MASK]",
        prefix: str = "##",
        max_input_chars_per_word: int = 100,
        normalizer: Normalizer | None = None,
        pre_tokenizer: PreTokenizer | None = None,
        cleanup: bool = True,
        added_tokens: list[dict] | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(
            special_tokens,
            extra_tokens=extra_tokens,
            eos_token=sep_token,
            bos_token=cls_token,
            pad_token=pad_token,
            unk_token=unk_token,
            chat_template=chat_template,
        )
        self.cls_token, self.sep_token, self.mask_token = cls_token, sep_token, mask_token
        self.prefix, self.max_input_chars_per_word, self.cleanup = prefix, max_input_chars_per_word, cleanup
        self.normalizer = normalizer if normalizer is not None else Normalizer(BERT_NORMALIZER)
        self.pre_tokenizer = (
            pre_tokenizer if pre_tokenizer is not None else PreTokenizer({"type": "BertPreTokenizer"})
        )
        self._vocab = dict(vocab)
        size = 1 + max([*self._vocab.values(), *self.added_tokens.values(), -1])
        self._id_to_token: list[str | None] = [None] * size
        for token, i in {**self._vocab, **self.added_tokens}.items():
            self._id_to_token[i] = token
        if unk_token not in self._vocab and unk_token not in self.added_tokens:
            raise DanluError(f"WordPiece vocab has no unknown token {unk_token!r}; add it to the vocab")
        self._added = added_tokens
        self._cache: dict[str, list[int]] = {}
        self._validate_roles()

    # --- vocabulary ---------------------------------------------------------------------------------------
    @property
    def cls_token_id(self) -> int | None:
        return self.token_to_id(self.cls_token) if self.cls_token else None

    @property
    def sep_token_id(self) -> int | None:
        return self.token_to_id(self.sep_token) if self.sep_token else None

    @property
    def mask_token_id(self) -> int | None:
        return self.token_to_id(self.mask_token) if self.mask_token else None

    # --- encoding / decoding ------------------------------------------------------------------------------
    def with_special_tokens(self, ids: list[int]) -> list[int]:
        """[CLS] ids [SEP]."""
        cls, sep = self.cls_token_id, self.sep_token_id
        return ([cls] if cls is not None else []) + ids + ([sep] if sep is not None else [])

    def _encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        if self.normalizer:
            text = self.normalizer(text)
        out: list[int] = []
        cache = self._cache
        for word in self.pre_tokenizer(text):
            ids = cache.get(word)
            if ids is None:
                ids = self.encode_word(word)
                if len(cache) < 200_000 and len(word) <= 100:
                    cache[word] = ids
            out += ids
        return out

    def encode_word(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces of one word, or [UNK]."""
        unk = self.token_to_id(self.unk_token)
        if len(word) > self.max_input_chars_per_word:
            return [unk]
        vocab, ids, start, n = self._vocab, [], 0, len(word)
        while start < n:
            end = n
            found = None
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                found = vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return [unk]
            ids.append(found)
            start = end
        return ids

    def _decode(self, ids: Sequence[int]) -> str:
        pieces = []
        for j, i in enumerate(ids):
            token = self._id_to_token[i]
            if j > 0:
                token = token[len(self.prefix) :] if token.startswith(self.prefix) else " " + token
            pieces.append(_cleanup(token) if self.cleanup else token)
        return "".join(pieces)

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_vocab_file(cls, path: str | Path, lowercase: bool = True) -> WordPieceTokenizer:
        """A BERT tokenizer from a vocab.txt (one token per line, id = line number)."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise DanluError(f"cannot read WordPiece vocab {path}: {e}") from e
        if lines and lines[-1] == "":
            lines.pop()
        vocab: dict[str, int] = {}
        for i, token in enumerate(lines):
            vocab.setdefault(token.rstrip("\r"), i)
        if not vocab:
            raise DanluError(f"WordPiece vocab {path} is empty")
        if "[UNK]" not in vocab:
            raise DanluError(f"WordPiece vocab {path} has no [UNK] token; is it a BERT vocab.txt?")
        specials = {t: vocab[t] for t in BERT_SPECIALS if t in vocab}
        normalizer = Normalizer({**BERT_NORMALIZER, "lowercase": lowercase})
        roles = {f"{r.strip('[]').lower()}_token": (r if r in vocab else None) for r in BERT_SPECIALS}
        return cls(vocab, specials, normalizer=normalizer, **roles)

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], config: dict[str, Any] | None = None) -> WordPieceTokenizer:
        from danlu.tokenizers.hf_fields import check_token_ids, token_text

        model = data["model"]
        added = data.get("added_tokens") or []
        check_token_ids(model["vocab"], added)  # before the id table is sized by the largest id
        specials = {t["content"]: t["id"] for t in added if t.get("special", True)}
        others = {t["content"]: t["id"] for t in added if not t.get("special", True)}
        config = config or {}
        roles = {}
        for role, default in [("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("mask", "[MASK]")]:
            token = token_text(config.get(f"{role}_token")) if config else None
            token = token or (default if default in specials or default in model["vocab"] else None)
            roles[f"{role}_token"] = token
        decoder = data.get("decoder") or {}
        return cls(
            model["vocab"],
            specials,
            extra_tokens=others,
            unk_token=model.get("unk_token", "[UNK]"),
            prefix=model.get("continuing_subword_prefix", "##"),
            max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
            normalizer=Normalizer(data.get("normalizer")),
            pre_tokenizer=PreTokenizer(data.get("pre_tokenizer")),
            cleanup=decoder.get("cleanup", True),
            added_tokens=added,
            chat_template=config.get("chat_template"),
            **roles,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        cls, sep = self.cls_token, self.sep_token
        post = None
        if cls and sep:
            post = {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": cls, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ]
                + [{"SpecialToken": {"id": sep, "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": cls, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
                + [{"SpecialToken": {"id": sep, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}]
                + [{"SpecialToken": {"id": sep, "type_id": 1}}],
                "special_tokens": {
                    t: {"id": t, "ids": [self.token_to_id(t)], "tokens": [t]} for t in (cls, sep)
                },
            }
        model = {
            "type": "WordPiece",
            "unk_token": self.unk_token,
            "continuing_subword_prefix": self.prefix,
            "max_input_chars_per_word": self.max_input_chars_per_word,
            "vocab": self._vocab,
        }
        decoder = {"type": "WordPiece", "prefix": self.prefix, "cleanup": self.cleanup}
        return self._hf_document(model, self.normalizer.config, post, decoder)

    def hf_config(self) -> dict[str, Any]:
        config = super().hf_config()
        config.update(cls_token=self.cls_token, sep_token=self.sep_token, mask_token=self.mask_token)
        config.update(eos_token=None, bos_token=None, tokenizer_class="BertTokenizerFast")
        return config

    # --- training ----------------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: list[str] | None = None,
        min_frequency: int = 2,
        show_progress: bool = False,
        lowercase: bool = True,
    ) -> WordPieceTokenizer:
        """Learn a WordPiece vocabulary (see the module docstring); specials default to BERT's five."""
        from danlu.tokenizers.bpe_train import merge_loop

        specials = list(dict.fromkeys(BERT_SPECIALS if special_tokens is None else special_tokens))
        if "[UNK]" not in specials:
            specials.insert(0, "[UNK]")
        normalizer = Normalizer({**BERT_NORMALIZER, "lowercase": lowercase})
        pre = PreTokenizer({"type": "BertPreTokenizer"})
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(pre(normalizer(text)))
        if not counts:
            raise DanluError("cannot train a tokenizer on an empty corpus; pass texts with some content")
        # Symbols: every character seen, plain, and "##"-prefixed if it was seen inside a word.
        alphabet = sorted({c for w in counts for c in w} | {"##" + c for w in counts for c in w[1:]})
        if vocab_size < len(specials) + len(alphabet):
            raise DanluError(
                f"vocab_size {vocab_size} is below the alphabet: {len(specials)} specials + {len(alphabet)} "
                f"characters; use at least {len(specials) + len(alphabet)}"
            )
        symbol_id = {s: i for i, s in enumerate(alphabet)}
        words = [[symbol_id[w[0]]] + [symbol_id["##" + c] for c in w[1:]] for w in counts]
        strings = list(alphabet)

        def combine(a: int, b: int) -> str:
            return strings[a] + strings[b][2:]

        merge_loop(
            words,
            list(counts.values()),
            strings,
            combine,
            vocab_size - len(specials),
            min_frequency,
            show_progress,
        )
        vocab = {s: i for i, s in enumerate(specials)}
        for s in strings:
            vocab.setdefault(s, len(vocab))
        return cls(vocab, {s: vocab[s] for s in specials}, normalizer=normalizer, **_bert_roles(specials))


def _bert_roles(specials: list[str]) -> dict[str, str | None]:
    return {
        "cls_token": "[CLS]" if "[CLS]" in specials else None,
        "sep_token": "[SEP]" if "[SEP]" in specials else None,
        "pad_token": "[PAD]" if "[PAD]" in specials else None,
        "mask_token": "[MASK]" if "[MASK]" in specials else None,
    }
