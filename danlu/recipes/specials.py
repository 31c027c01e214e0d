"""The recipes' tokenizers: a byte-level BPE trained with a model family's special tokens as its first ids, and
the check that a tokenizer handed to a recipe has them (BERT's [CLS] [SEP] ..., the translator's <s> </s> ...).

bert.py and seq2seq.py each trained and checked their own; the two differed only in the token names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.errors import DanluError

if TYPE_CHECKING:
    from danlu.tokenizers.bpe import BPETokenizer


def train_bpe(
    texts: list[str], vocab_size: int, special_tokens: list[str], show_progress: bool = False, **roles: str
) -> BPETokenizer:
    """A byte-level BPE with `special_tokens` as ids 0, 1, ... (never merged, skipped by
    decode(skip_special_tokens=True)); `roles` say which special is which (pad_token="[PAD]", ...)."""
    from danlu.tokenizers.bpe import BPETokenizer

    tokenizer = BPETokenizer.train(
        texts, vocab_size=vocab_size, special_tokens=special_tokens, show_progress=show_progress
    )
    for role, token in roles.items():
        if token not in special_tokens:  # a programming error of the recipe, not a user's
            raise ValueError(f"{role}={token!r} is not among the special tokens {special_tokens}")
        setattr(tokenizer, role, token)
    return tokenizer


def require_specials(tokenizer: Any, names: list[str], needed_by: str, trainer: str) -> dict[str, int]:
    """{name: id} of every special token in `names`; a DanluError lists the missing ones, says what needs
    them (`needed_by`, "BERT") and which function trains a tokenizer that has them (`trainer`)."""
    ids = {s: tokenizer.token_to_id(s) for s in names}
    missing = [s for s, i in ids.items() if i is None]
    if missing:
        raise DanluError(
            f"the tokenizer lacks the special tokens {missing}; {needed_by} needs all of {names} "
            f"(train one with {trainer})"
        )
    return ids
