"""The `Tokenizer` base class every kind (BPE, WordPiece, Unigram) shares.

It owns what does not depend on the subword model: special tokens (recognised in text before the model
runs, longest first), `add_special_tokens`, batch encoding, id validation in `decode`, the chat template,
and `save` / `load`. A subclass supplies `_encode_ordinary` (text without specials -> ids), `_decode`
(ids -> text), the vocabulary look-ups and `to_hf_dict` (its Hugging Face `tokenizer.json`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from danlu.errors import DanluError
from danlu.tokenizers.chat import CHATML_TEMPLATE, ChatTemplateError, render_chat_template
from danlu.tokenizers.pretokenize import split_matches

DEFAULT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_ROLES = ("system", "user", "assistant", "tool")

# Tokens that close an assistant turn in the chat formats danlu meets: ChatML (Qwen, SmolLM2, danlu's own),
# Llama 3, Gemma, Phi-3. `Tokenizer.end_of_turn_ids` is the ids of those this vocabulary holds.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


# `Tokenizer.load` reads every kind, and the kinds import this module: so io.py, which imports them, fills this
# hook when it is imported, and danlu/tokenizers/__init__.py imports io.py, so the hook is set before any
# module of the package runs (the import graph stays acyclic: tests/test_layering.py).
_LOADER: Callable[[str | os.PathLike], Tokenizer] | None = None


def set_loader(loader: Callable[[str | os.PathLike], Tokenizer]) -> None:
    """Install the function `Tokenizer.load` calls (io.load_tokenizer)."""
    global _LOADER
    _LOADER = loader


class Tokenizer:
    """Text <-> token ids. See the module docstring for what a subclass provides."""

    kind: ClassVar[str] = ""  # "bpe", "wordpiece", "unigram"

    def __init__(
        self,
        special_tokens: dict[str, int],
        *,
        extra_tokens: dict[str, int] | None = None,
        eos_token: str | None = None,
        bos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.special_tokens: dict[str, int] = dict(special_tokens)
        # Every added token (special or not) is matched in raw text; only specials are skipped in decode.
        self.added_tokens: dict[str, int] = {**(extra_tokens or {}), **self.special_tokens}
        self.eos_token, self.bos_token, self.pad_token, self.unk_token = (
            eos_token,
            bos_token,
            pad_token,
            unk_token,
        )
        self.chat_template = chat_template if chat_template is not None else CHATML_TEMPLATE
        self.add_bos_token = True  # whether add_special_tokens=True prepends the BOS token (if any)
        self._special_ids = frozenset(self.special_tokens.values())
        # Longest first, so "<|im_start|>" wins over a shorter special that is its prefix.
        alternatives = sorted((t for t in self.added_tokens if t), key=len, reverse=True)
        self._special_regex = (
            re.compile("|".join(re.escape(s) for s in alternatives)) if alternatives else None
        )

    # --- the vocabulary table: a subclass fills `_vocab` (token -> id) and `_id_to_token` (id -> token) ---
    _vocab: dict[str, int]
    _id_to_token: list[str | None]  # None: an id no token uses (a gap before the special tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids (the largest id + 1), special tokens included."""
        return len(self._id_to_token)

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_tokens:
            return self.added_tokens[token]
        return self._vocab.get(token)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._id_to_token) or self._id_to_token[token_id] is None:
            raise DanluError(f"token id {token_id} is not in this tokenizer (vocab size {self.vocab_size})")
        return self._id_to_token[token_id]

    def get_vocab(self) -> dict[str, int]:
        """token string -> id, special tokens included."""
        return {**self._vocab, **self.added_tokens}

    # --- to implement in a subclass -------------------------------------------------------------------

    def _encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        """Ids of text that contains no special token (at_start: it begins the whole input)."""
        raise NotImplementedError

    def _decode(self, ids: Sequence[int]) -> str:
        """Text of valid ids (specials included, already filtered if asked)."""
        raise NotImplementedError

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `tokenizer.json` content."""
        raise NotImplementedError

    def _hf_document(
        self, model: dict[str, Any], normalizer: Any, post_processor: Any, decoder: Any, added: Any = None
    ) -> dict[str, Any]:
        """`tokenizer.json`'s envelope around a kind's own parts (each kind's to_hf_dict fills them in).
        added_tokens: as loaded, else one special entry per special token, in id order."""
        added = added if added is not None else self._added or [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False}
            | {"normalized": False, "special": True}
            for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])
        ]  # fmt: skip
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": self.pre_tokenizer.config,
            "post_processor": post_processor,
            "decoder": decoder,
            "model": model,
        }

    # --- shared behaviour ------------------------------------------------------------------------------
    def _validate_roles(self) -> None:
        """Check that the eos/bos/pad/unk tokens exist (a subclass calls this once its vocab is built)."""
        for role in ("eos", "bos", "pad", "unk"):
            token = getattr(self, f"{role}_token")
            if token is not None and self.token_to_id(token) is None:
                raise DanluError(f"{role} token {token!r} is not in the vocabulary; name an existing token")

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token) if self.pad_token else None

    @property
    def pad_id(self) -> int:
        """The id to pad batches with: the pad token, else the end-of-text token, else 0 (as Hugging Face's
        `generate` falls back to eos). Padded positions are always masked, so the choice changes no result;
        it only has to be a valid id."""
        return pad_id_of(self)

    @property
    def end_of_turn_ids(self) -> list[int]:
        """Ids that end an assistant turn besides end-of-text (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`,
        ...: the END_OF_TURN_TOKENS this vocabulary holds); decoding a chat reply stops at them."""
        ids = (self.token_to_id(t) for t in END_OF_TURN_TOKENS)
        return [i for i in ids if i is not None]

    @property
    def unk_token_id(self) -> int | None:
        return self.token_to_id(self.unk_token) if self.unk_token else None

    def split_specials(self, text: str) -> list[tuple[str, bool]]:
        """Text cut into (piece, is_added) around the added/special-token strings it contains."""
        if self._special_regex is None or not text:
            return [(text, False)] if text else []
        return split_matches(self._special_regex, text)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of text. Special-token strings in text ("<|im_end|>") become their ids.

        add_special_tokens wraps the result as the model expects (BOS for a BPE tokenizer that has one,
        [CLS] ... [SEP] for WordPiece).
        """
        if not isinstance(text, str):
            raise DanluError(f"encode expects a str, got {type(text).__name__}: {text!r:.80}")
        ids: list[int] = []
        for j, (piece, is_special) in enumerate(self.split_specials(text)):
            if is_special:
                ids.append(self.added_tokens[piece])
            else:
                ids.extend(self._encode_ordinary(piece, j == 0))
        return self.with_special_tokens(ids) if add_special_tokens else ids

    def with_special_tokens(self, ids: list[int]) -> list[int]:
        """Wrap ids with the model's specials (default: BOS in front if there is one)."""
        bos = self.bos_token_id if self.add_bos_token else None
        return [bos, *ids] if bos is not None else ids

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = False) -> list[list[int]]:
        """`encode` of each text."""
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ids. Unknown ids raise DanluError; see the subclass for how invalid bytes are shown."""
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError) as e:
            raise DanluError(f"decode expects a sequence of integer token ids ({e})") from e
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise DanluError(f"token id {i} is out of range for this tokenizer (valid ids: 0..{n - 1})")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self._decode(ids)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
        *,
        documents: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a chat as one prompt string with this tokenizer's template (ChatML by default).

        The keywords and defaults are those of `transformers`' `apply_chat_template(..., tokenize=False)`,
        and so is the text: add_generation_prompt=True appends the assistant header; tools (JSON schemas) and
        every extra keyword reach the template, next to the special tokens this tokenizer has. Message
        content may be a string or a list of parts. Raises `danlu.tokenizers.chat.ChatTemplateError`.
        """
        template = self._select_chat_template(chat_template, tools)
        variables = {**self._template_special_tokens(), **kwargs}  # like transformers: kwargs win
        return render_chat_template(
            template,
            messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )

    def _template_special_tokens(self) -> dict[str, str]:
        """The special tokens a template sees (transformers' special_tokens_map): only those that are set."""
        names = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
        tokens = {f"{n}_token": getattr(self, f"{n}_token", None) for n in names}
        return {k: v for k, v in tokens.items() if isinstance(v, str)}

    def _select_chat_template(self, chat_template: str | None, tools: Any) -> str:
        """Template text: the one given, or this tokenizer's. A tokenizer_config.json may hold several named
        templates (a {name: text} dict or a [{"name", "template"}] list): `chat_template` picks one by
        name, else "tool_use" when tools are given and the tokenizer has one, else "default"."""
        named = self.chat_template
        if isinstance(named, list):
            named = {t.get("name"): t.get("template") for t in named if isinstance(t, dict)}
        if not isinstance(named, dict):
            return chat_template if chat_template is not None else named
        if chat_template is not None:
            return named.get(chat_template, chat_template)
        if tools is not None and "tool_use" in named:
            return named["tool_use"]
        if "default" in named:
            return named["default"]
        raise ChatTemplateError(
            f"this tokenizer has chat templates {sorted(map(str, named))} and none is 'default'; "
            "pass chat_template=<one of these names>"
        )

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face `tokenizer_config.json` content (special-token roles, chat template)."""
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "add_bos_token": self.add_bos_token and self.bos_token is not None,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `tokenizer.json` and `tokenizer_config.json` (Hugging Face format) into directory."""
        from danlu.fileio import atomic_write_text

        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise DanluError(f"cannot save a tokenizer into {out}: it is a file; give a folder")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "tokenizer.json", json.dumps(self.to_hf_dict(), ensure_ascii=False, indent=1))
        atomic_write_text(
            out / "tokenizer_config.json", json.dumps(self.hf_config(), ensure_ascii=False, indent=2)
        )
        return out

    @staticmethod
    def load(path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer from a directory holding tokenizer.json, a tokenizer.json file, or a .gguf file."""
        if _LOADER is None:  # only if this module were loaded outside its package
            raise DanluError("no tokenizer loader is set; import danlu.tokenizers.io (it sets one)")
        return _LOADER(path)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={list(self.special_tokens)})"


def pad_id_of(tokenizer: Any) -> int:
    """`Tokenizer.pad_id`'s rule for any tokenizer object (a Hugging Face one passed to `danlu.generate`): the pad
    token, else the end-of-text token, else 0."""
    if getattr(tokenizer, "pad_token_id", None) is not None:
        return tokenizer.pad_token_id
    eos = getattr(tokenizer, "eos_token_id", None)
    return eos if eos is not None else 0
