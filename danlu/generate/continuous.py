"""Continuous (iteration-level) batching, the engine's side: a `SlotBatch` holds a fixed number of slots, rows
of one KV cache, and rows join and leave between steps (Orca, Yu et al. 2022; vLLM, Kwon et al. 2023), so a
request never waits for another to finish and any mix of options shares one forward.

Notation: B slots, L cache slots per row (its length), V vocab, T tokens fed.

Each row sits in its slot from cache position 0: no left padding, so its position ids are its cache slots and
rows are at different lengths. One `step()`:
1. decode: every decoding row feeds the token it picked last at its own slot (cache_position (B, 1), the one
   forward of models/gpt.py) over slots [0, hi), hi past the highest decoding slot. A slot in that range that
   is not decoding feeds a dummy token at its next free position, which that row's next real write overwrites
   (a free slot's contents never matter), and its key mask keeps it apart from every other row.
2. prefill: joining rows feed their prompts, at most `prefill_chunk` tokens per step in all (a long prompt
   takes several steps, so decoding rows are never stalled for a whole long prefill), each chunk a forward
   over its slot alone (`KVCache.rows`, a view); the chunk that ends a prompt picks the row's first token.
Each row picks with its own options: `process_logits` over its own `TokenHistory` (penalties, grammar) and
`select_scored` with its own generator (`make_generators`: a seeded row draws the stream it draws alone).
Rows with equal options and nothing of their own to process are picked together in one call. Text, stop
strings, max_new_tokens and finish reasons are each row's `RowDecoder`'s. A row attends only its own slots,
so it picks what `engine.run` picks for it alone (tests/generate/test_continuous.py).

Memory: the cache is (re-)allocated when a joining row does not fit it, to the smallest shape the live rows
and the newcomer need (slots up to the highest one used x the longest prompt + max_new_tokens, rounded up), the
live rows' keys copied over, never beyond `max_kv_tokens` slots x length; so a long row that left no longer
holds the length of every slot. `can_admit` says whether a row fits now (else it waits: the caller's
admission control). With a `PrefixCache`, a joining row's longest cached prompt prefix is copied into
its slot and only the rest prefilled; a finished prefill stores its prompt's blocks.

Beam search (num_beams > 1) and draft/amateur models are not slot rows: the server runs them through the
static batch of engine.py (serve/batching.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.engine import stop_token_ids
from danlu.generate.options import GenerationOptions
from danlu.generate.prefix_cache import PrefixCache
from danlu.generate.processors import TokenHistory, process_logits
from danlu.generate.rows import RowDecoder, RowUpdate
from danlu.generate.search import make_generators, raw_top_logprobs, select_scored
from danlu.generate.steps import model_device
from danlu.nn.attention import KVCache

LENGTH_ROUND = 128  # cache lengths are rounded up to this (fewer re-allocations as rows of new lengths join)


@dataclass
class SlotRow:
    """One row's decoding state in its slot."""

    opts: GenerationOptions
    decoder: RowDecoder
    prompt: list[int]
    stop_ids: list[int]
    history: TokenHistory
    generator: torch.Generator | None  # sampling rows only
    group: GenerationOptions | None  # rows with equal `group` pick together; None: this row picks alone
    need: int = 0  # cache slots it may fill: prompt + max_new_tokens
    length: int = 0  # cache slots filled: prompt tokens prefilled, then tokens fed
    pending: int | None = None  # the token picked last, to be fed next step (None while prefilling)
    picked: int = 0  # new tokens picked so far
    looked_up: bool = False  # the prefix cache was asked
    prompt_logits: torch.Tensor | None = (
        None  # (1, V) after the prompt, for rows of the same prompt (n choices)
    )


def _group_key(opts: GenerationOptions, history: TokenHistory) -> GenerationOptions | None:
    """What rows must share to pick together: the options, but for the per-row ones (own length, stops and
    seed: each row has its own generator). None when the row has its own state to process (penalties that
    count tokens, n-gram bans, a grammar) or min_new_tokens still to hold back."""
    if any(x is not None for x in (history.seen, history.counts, history.tokens, history.grammar)):
        return None
    if opts.min_new_tokens:
        return None
    return replace(opts, max_new_tokens=1, stop=(), seed=None)


class SlotBatch:
    """A continuous batch over one KV cache: `add_row` / `step` / `remove`. A danlu GPT only (it writes its
    cache by per-row position)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_rows: int,
        max_kv_tokens: int | None = None,
        prefill_chunk: int = 256,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        from danlu.models.gpt import GPT

        if not isinstance(model, GPT):
            raise DanluError(f"continuous batching needs a danlu GPT, got {type(model).__name__}")
        if max_rows < 1 or prefill_chunk < 1 or (max_kv_tokens is not None and max_kv_tokens < 1):
            raise DanluError(
                f"bad slot batch: max_rows={max_rows}, prefill_chunk={prefill_chunk} and "
                f"max_kv_tokens={max_kv_tokens} must be >= 1"
            )
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_rows, self.prefill_chunk, self.prefix_cache = max_rows, prefill_chunk, prefix_cache
        self.block_size = model.config.block_size
        self.max_kv_tokens = max_kv_tokens or max_rows * self.block_size
        self.device = model_device(model)
        self.vocab_size = model.config.vocab_size
        self.rows: dict[int, SlotRow] = {}  # slot -> row, in order of admission
        self.cache: KVCache | None = None
        self.key_mask = torch.zeros(0, 0, dtype=torch.bool, device=self.device)  # (B, L): slot holds a token
        self._constraints: dict[tuple[str, tuple[int, ...]], Any] = {}
        self.steps = self.prefill_tokens = 0

    # ---- room --------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(B, L) of the cache allocated now."""
        return tuple(self.key_mask.shape)  # type: ignore[return-value]

    def _free_slot(self) -> int:
        return next(s for s in range(self.max_rows) if s not in self.rows)

    def _holds(self, slot: int, need: int) -> bool:
        """The cache allocated now takes a row needing `need` slots in `slot`, within max_kv_tokens."""
        B, L = self.shape
        return slot < B and need <= L and B * L <= self.max_kv_tokens

    def _smallest(self, slot: int, need: int) -> tuple[int, int]:
        """The smallest cache (B, L) for the live rows and one needing `need` in `slot`: not the one allocated
        now, which a past long row may have stretched (after it left, shorter rows fit more slots)."""
        B = max(slot, *self.rows) + 1 if self.rows else slot + 1
        longest = max(need, *(r.need for r in self.rows.values())) if self.rows else need
        return B, min(self.block_size, -(-longest // LENGTH_ROUND) * LENGTH_ROUND)

    def can_admit(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """A row of this size fits now: a free slot, and the cache it needs within max_kv_tokens (a lone row
        always fits: the cache is then made for it)."""
        if len(self.rows) >= self.max_rows:
            return False
        if not self.rows:
            return True
        slot, need = self._free_slot(), prompt_tokens + max_new_tokens
        B, L = self._smallest(slot, need)
        return self._holds(slot, need) or B * L <= self.max_kv_tokens

    def _make_room(self, slot: int, need: int) -> None:
        """Re-allocate the cache when it cannot take the row: to the smallest shape the rows need, B doubled
        when that still fits (fewer re-allocations as the batch fills); the live rows' keys are copied over."""
        if self._holds(slot, need):
            return
        B, L = self._smallest(slot, need)
        wider = min(self.max_rows, max(B, 2 * self.shape[0]))
        if wider * L <= self.max_kv_tokens:
            B = wider
        cache = self.model.new_kv_cache(B, L)  # also grows the RoPE tables to L (a by-position forward won't)
        key_mask = torch.zeros(B, L, dtype=torch.bool, device=self.device)
        if self.cache is not None and self.rows:
            b, n = min(B, self.shape[0]), min(L, self.shape[1])  # every live row sits within both
            for new, old in zip((*cache.k, *cache.v), (*self.cache.k, *self.cache.v)):
                new[:b, :, :n] = old[:b, :, :n]
            key_mask[:b, :n] = self.key_mask[:b, :n]
        self.cache, self.key_mask = cache, key_mask

    # ---- rows --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def add_row(
        self, prompt_ids: list[int], opts: GenerationOptions, decoder: RowDecoder | None = None
    ) -> int:
        """Put a row in a free slot (check `can_admit` first); it is prefilled by the next steps. Returns the
        slot, the `row` of its RowUpdates."""
        if opts.num_beams > 1:
            raise DanluError(f"num_beams={opts.num_beams}: beam search rows are decoded as a static batch")
        if opts.draft != "none":
            raise DanluError(f"draft={opts.draft!r}: speculative rows are decoded as a static batch")
        n = len(prompt_ids)
        if n == 0:
            raise DanluError("a prompt is empty; give at least one character of prompt")
        if n + opts.max_new_tokens > self.block_size:
            raise DanluError(
                f"max_new_tokens={opts.max_new_tokens} plus the {n}-token prompt exceeds the model's context "
                f"of {self.block_size} tokens; use max_new_tokens <= {max(self.block_size - n, 0)}"
            )
        if len(self.rows) >= self.max_rows:
            raise DanluError(f"all {self.max_rows} slots are taken; wait for a row to finish")
        stop_ids = stop_token_ids(self.tokenizer, opts)
        if decoder is None:
            decoder = RowDecoder(self.tokenizer, stop_ids, opts.stop, opts.max_new_tokens, n)
        slot = self._free_slot()
        self._make_room(slot, n + opts.max_new_tokens)
        self.key_mask[slot] = False
        ids = torch.tensor([prompt_ids], device=self.device)  # (1, n)
        history = TokenHistory.start(
            ids, torch.ones_like(ids), self.vocab_size, opts, self._grammar(opts, stop_ids)
        )
        generator = make_generators(1, opts.seed, self.device)[0] if opts.do_sample else None
        self.rows[slot] = SlotRow(opts, decoder, list(prompt_ids), stop_ids, history, generator,
                                  _group_key(opts, history), need=n + opts.max_new_tokens)  # fmt: skip
        return slot

    def _grammar(self, opts: GenerationOptions, stop_ids: list[int]) -> Any:
        if opts.json_schema is None:
            return None
        key = (opts.json_schema, tuple(stop_ids))
        if key not in self._constraints:  # compiling a schema costs milliseconds: once per schema
            from danlu.generate.grammar import json_constraint

            if len(self._constraints) >= 64:
                self._constraints.pop(next(iter(self._constraints)))
            self._constraints[key] = json_constraint(self.tokenizer, opts, self.vocab_size, stop_ids)
        return self._constraints[key]  # TokenHistory.start gives the row its matcher

    def remove(self, slot: int) -> None:
        """Drop a row (its client went away): it finishes "cancelled" and its slot is free."""
        row = self.rows.pop(slot, None)
        if row is not None:
            row.decoder.cancel()

    def __len__(self) -> int:
        return len(self.rows)

    # ---- one step ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RowUpdate]:
        """One iteration: every decoding row gets a token, joining rows prefill a chunk (their first token
        when the prompt is done). Returns the rows that released text or finished (their slots are free)."""
        self.steps += 1
        return self._decode() + self._prefill()

    def _decode(self) -> list[RowUpdate]:
        slots = [s for s, r in self.rows.items() if r.pending is not None]
        if not slots:
            return []
        hi = max(slots) + 1
        L = self.shape[1]
        S = max(self.rows[s].length for s in slots) + 1  # keys attended: up to the longest row's new token
        tok, pos, dummy = [0] * hi, [0] * hi, []
        for b in range(hi):
            r = self.rows.get(b)
            if r is not None and r.pending is not None:
                tok[b], pos[b] = r.pending, r.length
            else:  # its next real write overwrites this slot
                pos[b] = min(r.length if r is not None else 0, L - 1)
                dummy.append(b)
        pos_t = torch.tensor(pos, device=self.device)[:, None]  # (hi, 1)
        decoding = torch.tensor(slots, device=self.device)
        self.key_mask[decoding, pos_t[decoding, 0]] = True
        mask = self.key_mask[:hi, :S]  # (hi, S)
        if dummy:  # a dummy row sees slot 0, so that no row of the batch attends nothing (NaN)
            mask = mask.clone()
            mask[dummy, 0] = True
        input_ids = torch.tensor(tok, device=self.device)[:, None]  # (hi, 1)
        out = self.model(input_ids, attention_mask=mask, kv_cache=self.cache.rows(0, hi), position_ids=pos_t,
                         cache_position=pos_t, logits_to_keep=1)  # fmt: skip
        logits = out.logits[:, -1]  # (hi, V)
        for s in slots:
            self.rows[s].length += 1
        return self._pick(slots, logits.index_select(0, decoding).float())

    def _prefill(self) -> list[RowUpdate]:
        updates: list[RowUpdate] = []
        budget = self.prefill_chunk
        for s in [s for s, r in self.rows.items() if r.pending is None]:
            if budget <= 0:
                break
            r = self.rows[s]
            if not r.looked_up:
                donor = self._same_prompt(s, r)
                if donor is not None:  # n choices of one prompt: one prefill, its keys copied
                    updates += self._copy_prompt(donor, s, r)
                    continue
                self._reuse_prefix(s, r)
            t = min(budget, len(r.prompt) - r.length)
            start, stop = r.length, r.length + t
            self.key_mask[s, start:stop] = True
            pos = torch.arange(start, stop, device=self.device)  # (t,)
            input_ids = torch.tensor([r.prompt[start:stop]], device=self.device)  # (1, t)
            mask = self.key_mask[s : s + 1, :stop]  # (1, stop)
            out = self.model(input_ids, attention_mask=mask, kv_cache=self.cache.rows(s, s + 1),
                             position_ids=pos[None], cache_position=pos, logits_to_keep=1)  # fmt: skip
            logits = out.logits[:, -1]  # (1, V)
            r.length, budget = stop, budget - t
            self.prefill_tokens += t
            if stop == len(r.prompt):
                if self.prefix_cache is not None:
                    self.prefix_cache.store(r.prompt, lambda a, b, s=s: self._read_kv(s, a, b))
                r.prompt_logits = logits.float()
                updates += self._pick([s], r.prompt_logits)
        return updates

    def _same_prompt(self, s: int, r: SlotRow) -> int | None:
        """A live row whose prefill of this very prompt is done (its prompt's logits kept), or None."""
        for d, other in self.rows.items():
            if d != s and other.prompt_logits is not None and other.prompt == r.prompt:
                return d
        return None

    def _copy_prompt(self, d: int, s: int, r: SlotRow) -> list[RowUpdate]:
        """Row s takes row d's prompt keys and its next-token logits: no forward (the engine's shared
        prefill, `steps.expand`, for a slot batch); each row then picks with its own generator."""
        r.looked_up, n = True, len(r.prompt)
        for k, v in zip(self.cache.k, self.cache.v):
            k[s, :, :n] = k[d, :, :n]
            v[s, :, :n] = v[d, :, :n]
        self.key_mask[s, :n] = True
        r.length, r.prompt_logits = n, self.rows[d].prompt_logits
        return self._pick([s], r.prompt_logits)

    def _reuse_prefix(self, s: int, r: SlotRow) -> None:
        """Copy the longest cached prefix of the row's prompt into its slot (asked when its prefill begins, so
        a row admitted with another of the same prompt, n choices, finds what that one just stored)."""
        r.looked_up = True
        if self.prefix_cache is None:
            return
        kv = self.prefix_cache.lookup(r.prompt)  # (n_layer, 2, n_kv_head, hit, head_size) or None
        if kv is None:
            return
        hit = kv.shape[3]
        for layer, (k, v) in enumerate(zip(self.cache.k, self.cache.v)):
            k[s, :, :hit] = kv[layer, 0]
            v[s, :, :hit] = kv[layer, 1]
        self.key_mask[s, :hit] = True
        r.length = hit

    def _read_kv(self, s: int, start: int, stop: int) -> torch.Tensor:
        """Slot s's keys and values of tokens [start, stop): (n_layer, 2, n_kv_head, stop - start, hs)."""
        return torch.stack(
            [
                torch.stack([k[s, :, start:stop], v[s, :, start:stop]])
                for k, v in zip(self.cache.k, self.cache.v)
            ]
        )

    def _pick(self, slots: list[int], logits: torch.Tensor) -> list[RowUpdate]:
        """Each row's next token from its logits (len(slots), V), fed to its decoder."""
        picks: list[tuple[int, float]] = [(0, 0.0)] * len(slots)
        groups: dict[GenerationOptions, list[int]] = {}
        for i, s in enumerate(slots):
            r = self.rows[s]
            if r.group is not None:
                groups.setdefault(r.group, []).append(i)
                continue
            scores = process_logits(logits[i : i + 1], r.history, r.opts, r.picked, r.stop_ids)
            tok, lp = select_scored(scores, r.opts, [r.generator] if r.generator is not None else [])
            picks[i] = (int(tok[0]), float(lp[0]))
        for opts, members in groups.items():  # one call for rows that differ only in length, stops, seed
            rows = [self.rows[slots[i]] for i in members]
            scores = process_logits(logits[members], TokenHistory(), opts, 0, rows[0].stop_ids)
            gens = [r.generator for r in rows] if opts.do_sample else []
            tok, lp = select_scored(scores, opts, gens)
            for i, t, p in zip(members, tok.tolist(), lp.tolist()):
                picks[i] = (t, p)
        updates = []
        for i, (s, (tok, lp)) in enumerate(zip(slots, picks)):
            r = self.rows[s]
            r.picked += 1
            piece = r.decoder.push(tok, lp, self._top(r, logits[i : i + 1], tok))
            if r.decoder.finished:
                del self.rows[s]
                if self.prefix_cache is not None:  # the prompt and the answer so far: a chat's next turn
                    fed = r.prompt + r.decoder.ids[: r.length - len(r.prompt)]
                    self.prefix_cache.store(fed, lambda a, b, s=s: self._read_kv(s, a, b))
                updates.append(RowUpdate(s, piece, r.decoder.result(), r.decoder.take_scored()))
                continue
            if r.group is None:
                r.history.append(torch.tensor([tok], device=self.device))
            r.pending = tok
            scored = r.decoder.take_scored()
            if piece or scored:
                updates.append(RowUpdate(s, piece, None, scored))
        return updates

    def _top(self, r: SlotRow, logits: torch.Tensor, tok: int) -> tuple[float, tuple] | None:
        """With opts.top_logprobs = k: the picked token's raw log-prob and the k most likely (id, raw log-prob)
        pairs, from the model's own logits (1, V) (what engine.decode_rows captures); else None."""
        k = r.opts.top_logprobs
        if k is None:
            return None
        chosen, ids, lps = raw_top_logprobs(logits, torch.tensor([tok], device=logits.device), k)
        return float(chosen[0]), tuple(zip(ids[0].tolist(), lps[0].tolist()))
