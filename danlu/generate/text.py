"""Token ids to safe-to-show text, incrementally: what a stream may print after each new token.

Used by the engine's `RowDecoder` (engine.py) for every row it decodes.
"""

from __future__ import annotations

from typing import Any


class TextTracker:
    """Turns a growing list of token ids into safe-to-show text.

    Decoding is incremental (each token costs O(1) decodes, not a re-decode of everything): the text of
    ids[prefix:] minus that of ids[prefix:read] is the new text, where the few tokens before `read` give the
    tokenizer its context (SentencePiece spaces, byte merges). New text ending in U+FFFD is an incomplete UTF-8
    character split across tokens: it waits for the rest. A tail that could still grow into a stop string is
    held back; once a stop string appears, the text is cut before it and nothing more is shown.
    """

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] is decoded context, ids[read:] not yet turned to text
        self.text = ""  # all text decoded so far
        self.emitted = 0  # characters of `text` already shown
        self.finished = False  # a stop string was seen: nothing more is shown

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, tok: int) -> str:
        """Add one token; return the text that became safe to show (often "")."""
        self.ids.append(tok)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(len(self.text), hold=True)

    def _release(self, safe: int, hold: bool) -> str:
        if self.finished:
            return ""
        for s in self.stop:
            cut = self.text.find(s, self.emitted)
            if cut != -1:
                self.finished = True
                piece = self.text[self.emitted : cut]
                self.emitted = cut
                return piece
        if hold:
            for s in self.stop:  # hold back a tail that could still grow into a stop string
                for n in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                    if self.text[:safe].endswith(s[:n]):
                        safe -= n
                        break
        piece = self.text[self.emitted : max(safe, self.emitted)]
        self.emitted = max(safe, self.emitted)
        return piece

    def flush(self) -> str:
        """The rest of the text at the end of generation (an undecodable tail included)."""
        if self.finished:
            return ""
        self.text += self._decode(self.ids[self.prefix :])[
            len(self._decode(self.ids[self.prefix : self.read])) :
        ]
        self.prefix = self.read = len(self.ids)
        return self._release(len(self.text), hold=False)
