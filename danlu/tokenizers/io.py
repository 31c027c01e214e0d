"""Reading tokenizers from disk: Hugging Face `tokenizer.json` (+ `tokenizer_config.json`).

`load_tokenizer(path)` accepts a folder holding tokenizer.json, or the tokenizer.json file itself, and
dispatches on the model type written in it. Every problem with the file (missing, not JSON, truncated,
unknown model type, missing fields) is a DanluError naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer

# Used only when a tokenizer.json comes without a tokenizer_config.json naming the roles.
_EOS_GUESSES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def token_text(value: Any) -> str | None:
    """tokenizer_config.json stores a role as a string or as an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def special_roles(tokens: dict[str, int], config: dict[str, Any] | None) -> dict[str, str | None]:
    """eos/bos/pad/unk token strings: from tokenizer_config.json if given, else a guess for EOS only."""
    if config:
        return {f"{r}_token": token_text(config.get(f"{r}_token")) for r in ("eos", "bos", "pad", "unk")}
    eos = next((t for t in _EOS_GUESSES if t in tokens), None)
    return {"eos_token": eos, "bos_token": None, "pad_token": None, "unk_token": None}


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_token_ids(vocab: Any, added: Any, vocab_key: str = "model.vocab") -> None:
    """Validate a tokenizer file's token -> id tables before anything sized by the largest id is allocated.

    vocab is the model's {token: id} (a WordPiece / BPE `model.vocab`; pass {} for Unigram, whose ids are list
    positions), added the `added_tokens` entries. Ids must be integers in [0, limit) where limit is twice the
    number of tokens the file holds (plus 1024): real files are dense, and holes beyond that could only make
    one wrong id cost gigabytes (a table of 3e8 slots for a 5-token file).
    """
    if not isinstance(vocab, dict):
        raise DanluError(
            f"{vocab_key} should be an object mapping tokens to ids, found {type(vocab).__name__}"
        )
    if not isinstance(added, list):
        raise DanluError(f"added_tokens should be a list, found {type(added).__name__}")
    for j, entry in enumerate(added):
        if not (
            isinstance(entry, dict) and isinstance(entry.get("content"), str) and _is_id(entry.get("id"))
        ):
            raise DanluError(
                f"added_tokens[{j}] should be an object with a string content and an integer id, found "
                f"{str(entry)[:200]}"
            )
    n = len(vocab) + len(added)
    limit = 2 * n + 1024
    entries = [(vocab_key, t, i) for t, i in vocab.items()]
    entries += [("added_tokens", e["content"], e["id"]) for e in added]
    for where, token, i in entries:
        if not _is_id(i) or not 0 <= i < limit:
            raise DanluError(
                f"{where} gives token {token[:100]!r} the id {i!r}, but the file holds only {n} tokens "
                f"(ids must be integers in [0, {limit})); the file is corrupt"
            )


def check_merges(merges: Any) -> list[tuple[str, str]]:
    """BPE merges as (left, right) pairs: each a "left right" string or a two-string list."""
    if not isinstance(merges, list):
        raise DanluError(f"model.merges should be a list, found {type(merges).__name__}")
    out = []
    for rank, m in enumerate(merges):
        pair = tuple(m.split(" ", 1)) if isinstance(m, str) else m
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DanluError(f"model.merges[{rank}] should be 'left right' or [left, right], found {m!r}")
        out.append((pair[0], pair[1]))
    return out


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Parse a JSON object from path; any failure is a DanluError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DanluError(f"{what} {path} is not UTF-8 text ({e}); is it the right file?") from e
    except (json.JSONDecodeError, RecursionError) as e:  # (RecursionError: arrays nested thousands deep)
        raise DanluError(
            f"{what} {path} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); the file may be truncated "
            "or corrupt: save or copy it again"
        ) from e
    if not isinstance(data, dict):
        raise DanluError(f"{what} {path} should hold a JSON object, found {type(data).__name__}")
    return data


def tokenizer_from_hf(data: dict[str, Any], config: dict[str, Any] | None, source: str) -> Tokenizer:
    """A danlu tokenizer from a parsed tokenizer.json (and tokenizer_config.json)."""
    model = data.get("model")
    if not isinstance(model, dict) or "type" not in model:
        kind = model.get("type") if isinstance(model, dict) else None
        if not (isinstance(model, dict) and "vocab" in model and "merges" in model):
            raise DanluError(
                f"{source} has no model section with a type; is it a Hugging Face tokenizer.json?"
            )
        kind = "BPE" if kind is None else kind
    else:
        kind = model["type"]
    try:
        if kind == "BPE":
            from danlu.tokenizers.bpe import BPETokenizer

            return BPETokenizer.from_hf_dict(data, config)
        if kind == "WordPiece":
            from danlu.tokenizers.wordpiece import WordPieceTokenizer

            return WordPieceTokenizer.from_hf_dict(data, config)
        if kind == "Unigram":
            from danlu.tokenizers.unigram import UnigramTokenizer

            return UnigramTokenizer.from_hf_dict(data, config)
    except DanluError as e:
        raise DanluError(f"{source}: {e}") from e
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise DanluError(f"{source} is malformed ({type(e).__name__}: {e}); save or copy it again") from e
    raise DanluError(f"{source} has model type {kind!r}; danlu reads BPE, WordPiece and Unigram tokenizers")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a folder with tokenizer.json (and tokenizer_config.json), or a tokenizer.json file."""
    p = Path(path)
    if not p.exists():
        raise DanluError(f"tokenizer path {p} does not exist; give a folder with tokenizer.json or the file")
    if p.is_dir():
        file = p / "tokenizer.json"
        if not file.is_file():
            if (p / "vocab.txt").is_file():
                from danlu.tokenizers.wordpiece import WordPieceTokenizer

                return WordPieceTokenizer.from_vocab_file(p / "vocab.txt")
            raise DanluError(f"folder {p} has no tokenizer.json; train one with `danlu tokenizer train`")
    elif p.suffix == ".gguf":
        from danlu.tokenizers.gguf import tokenizer_from_gguf

        return tokenizer_from_gguf(p)
    elif p.name.endswith(".txt"):
        from danlu.tokenizers.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer.from_vocab_file(p)
    else:
        file = p
    config_file = file.parent / "tokenizer_config.json"
    config = read_json(config_file, "tokenizer config") if config_file.is_file() else None
    return tokenizer_from_hf(read_json(file, "tokenizer file"), config, str(file))
