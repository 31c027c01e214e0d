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
from danlu.tokenizers.base import Tokenizer, set_loader
from danlu.tokenizers.hf_fields import (  # noqa: F401  (re-exported: the kinds' file checks live there)
    check_merges,
    check_token_ids,
    special_roles,
    token_text,
)


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


set_loader(load_tokenizer)  # `Tokenizer.load` (base.py cannot import this module, which imports it)
