"""One row of decoding, whatever batch it sits in: `RowDecoder` turns the row's tokens into safe-to-show text
pieces (`TextTracker`), applies its stop ids, stop strings and max_new_tokens, and ends as a `Completion`
(text, token ids, log-probs, finish reason, token counts). The engine (engine.py) feeds every row it decodes
through one; a continuous batcher can add and remove rows between steps, since a row knows nothing of the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FINISH_REASONS = ("stop", "length", "cancelled")
# One token as a row with opts.top_logprobs captures it: (token id, its raw log-prob, the k most likely
# (id, raw log-prob) pairs, most likely first). "Raw": the model's own log-softmax, before any processor.
ScoredToken = tuple[int, float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class Completion:
    """One row's result. token_ids: the new tokens, without the stop id that ended the row (that is
    stop_token_id); logprobs[i]: log-probability of token_ids[i] under the distribution it was chosen from
    (the processed one: penalties, bias and grammar applied, and temperature/top-k/top-p/min-p when
    sampling; beam search: the processed log-softmax it summed; speculative decoding: NaN, not computed).
    finish_reason: "stop" (a stop id or stop string), "length" (max_new_tokens) or "cancelled".
    completion_tokens counts token_ids, so a stop string's token counts and the stop id does not.
    With opts.top_logprobs = k (else empty): raw_logprobs[i] is token_ids[i]'s log-prob under the model's raw
    log-softmax (before penalties, bias, grammar and warping: what OpenAI and vLLM report), top_logprobs[i]
    the k most likely (id, raw log-prob) pairs at that step, most likely first."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str
    prompt_tokens: int
    stop_token_id: int | None = None
    stop_logprob: float | None = None  # the stop id's log-probability, when one ended the row
    raw_logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class RowDecoder:
    """One row's token -> text bookkeeping: stop ids, stop strings, its own max_new_tokens, the text released
    so far, the finish reason. Fed one (token, log-prob) at a time; knows nothing of the batch around it."""

    def __init__(
        self,
        tokenizer: Any,
        stop_ids: Sequence[int],
        stop: Sequence[str] = (),
        max_new_tokens: int | None = None,
        prompt_tokens: int = 0,
    ) -> None:
        self.tracker = TextTracker(tokenizer, list(stop))
        self.stop_ids, self.max_new_tokens, self.prompt_tokens = set(stop_ids), max_new_tokens, prompt_tokens
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.stop_token_id: int | None = None
        self.stop_logprob: float | None = None
        self.released = ""  # every piece handed out
        self.raw_logprobs: list[float] = []  # filled only when the caller passes `top` to push
        self.top_logprobs: list[tuple[tuple[int, float], ...]] = []
        self.reported = 0  # tokens already handed out by take_scored

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _end(self, reason: str) -> str:
        self.finish_reason = reason
        piece = self.tracker.flush() if reason != "cancelled" else ""
        self.released += piece
        return piece

    def push(
        self,
        tok: int,
        logprob: float = float("nan"),
        top: tuple[float, tuple[tuple[int, float], ...]] | None = None,
    ) -> str:
        """Add the row's next token; return the text that became safe to show (often ""). top: (its raw
        log-prob, the most likely (id, raw log-prob) pairs), when the row captures them (opts.top_logprobs)."""
        if self.finished:
            return ""
        if tok in self.stop_ids:
            self.stop_token_id, self.stop_logprob = tok, logprob
            return self._end("stop")
        self.ids.append(tok)
        self.logprobs.append(logprob)
        if top is not None:
            self.raw_logprobs.append(top[0])
            self.top_logprobs.append(top[1])
        piece = self.tracker.push(tok)
        self.released += piece
        if self.tracker.finished:  # a stop string: the text is cut before it
            return piece + self._end("stop")
        if self.max_new_tokens is not None and len(self.ids) >= self.max_new_tokens:
            return piece + self._end("length")
        return piece

    def take_scored(self) -> tuple[ScoredToken, ...]:
        """The captured tokens pushed since the last call (empty unless `top` was passed to push): what a
        streamed piece reports as its tokens' log-probs."""
        start, self.reported = self.reported, len(self.top_logprobs)
        return tuple(
            zip(self.ids[start : self.reported], self.raw_logprobs[start:], self.top_logprobs[start:])
        )

    def cancel(self) -> None:
        if not self.finished:
            self._end("cancelled")

    def close(self) -> str:
        """Decoding ended without this row finishing: it ran out of tokens."""
        return "" if self.finished else self._end("length")

    def result(self) -> Completion:
        if not self.finished:
            raise RuntimeError("the row is still decoding; close() it first")
        return Completion(self.released, tuple(self.ids), tuple(self.logprobs), self.finish_reason,
                          self.prompt_tokens, self.stop_token_id, self.stop_logprob,
                          tuple(self.raw_logprobs), tuple(self.top_logprobs))  # fmt: skip


@dataclass(frozen=True)
class RowUpdate:
    """Row `row` released `piece`; `done` is its Completion once it finished (else None); `scored` the tokens
    pushed since its last update, with their log-probs, when the row captures them (opts.top_logprobs)."""

    row: int
    piece: str
    done: Completion | None = None
    scored: tuple[ScoredToken, ...] = ()


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
