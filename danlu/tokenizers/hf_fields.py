"""The fields of a Hugging Face tokenizer.json (and tokenizer_config.json) that every kind reads, checked.

A leaf module: the kinds (bpe.py, wordpiece.py, unigram.py) read their files with these helpers, and io.py,
which dispatches to the kinds, re-exports them; neither imports the other for them.
"""

from __future__ import annotations

from typing import Any

from danlu.errors import DanluError

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
