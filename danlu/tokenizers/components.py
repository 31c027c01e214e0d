"""A `tokenizer.json` component entry (`normalizer`, `pre_tokenizer`, `decoder`) as a flat list of steps.

Hugging Face `tokenizers` composes each of the three the same way: an entry is one component, or a
`{"type": "Sequence", "<parts>": [...]}` of entries applied in order. `Normalizer`, `PreTokenizer` and `Decoder`
each wrote that walk; here it is once, and each kind turns one non-Sequence entry into its own steps.
"""

from __future__ import annotations

from typing import Any


class ComponentSteps:
    """The steps of one component entry. A subclass names the key holding a Sequence's parts (`parts_key`:
    "normalizers", "pretokenizers", "decoders") and appends the steps of one other entry in `_add_one`,
    refusing a type it does not know."""

    parts_key: str

    def __init__(self, config: dict | None) -> None:
        self.config = config  # kept as given, so saving writes it back
        self._steps: list[Any] = []
        self._add(config)

    def _add(self, config: dict | None) -> None:
        if config is None:
            return
        kind = config.get("type")
        if kind == "Sequence":
            for sub in config.get(self.parts_key, []):
                self._add(sub)
        else:
            self._add_one(kind, config)

    def _add_one(self, kind: Any, config: dict) -> None:
        raise NotImplementedError
