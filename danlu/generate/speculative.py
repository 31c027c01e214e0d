"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023), batched: a draft proposes up to γ tokens per
row, the target scores every row's proposals in one forward and each row keeps the prefix its own acceptance
test passes, so one target forward can yield several tokens per row. The draft is a small model sharing the
target's tokenizer (`ModelDraft`) or, needing no second model, prompt lookup (`NgramDraft`, Saxena 2023): the
tokens that followed the latest earlier occurrence of the text's last n-gram (n = 3, else 2, else 1).

Rows accept different numbers of tokens per round, but the KV cache (steps.py) keeps one length for the whole
batch. The scheme kept here is the simplest that stays exact: after a round, both caches are rolled back to the
shortest row's accepted length (`rollback`), and a row that got further keeps its extra accepted tokens in
its output only; next round it re-feeds them at the front of its block, in the slots other rows fill with
draft tokens, and they are accepted as given (the target already chose them). Every slot then holds a real
token (no holes, the left padding aside), and a row ahead proposes fewer new drafts: a row whose block re-feeds
f tokens proposes at most γ + 1 − f, so it keeps at most γ + 1 − f + 1 more and, the cache advancing by at
least one, its block stays within γ + 1 tokens. Each round advances the shared cache by at least one token, so
the loop ends within N rounds.

Per round, row b's block is chunk_b = [its f_b tokens not yet in the cache] + [d_b drafts] (+ filler up to
the batch's width W <= γ + 1, never accepted); the target's logits at block position i score position i + 1.

Notation: B rows, T prompt length after left padding, V vocab, γ = num_draft_tokens, W block width,
N = max_new_tokens, c tokens of each row's output held in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.options import MAX_DRAFT_TOKENS, GenerationOptions
from danlu.generate.processors import TokenHistory, process_logits, warp
from danlu.generate.search import make_generators
from danlu.generate.steps import DecodeState, decode_one, forward_tokens, new_state, prefill, rollback

MAX_NGRAM = 3  # prompt lookup tries the last 3 tokens, then 2, then 1 (Saxena 2023 uses up to 3)


@dataclass
class SpeculativeStats:
    """How well the draft guessed: acceptance_rate = accepted / proposed draft tokens (filler never counts).
    rounds: target forwards after the prefill; tokens: new tokens produced (all rows, stop ids included)."""

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0
    tokens: int = 0
    row_proposed: list[int] = field(default_factory=list)
    row_accepted: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


UNSUPPORTED = {  # options whose processors need each row's history, which a draft block would have to fork
    "num_beams": lambda o: o.num_beams != 1,
    "repetition_penalty": lambda o: o.repetition_penalty != 1.0,
    "presence_penalty": lambda o: o.presence_penalty != 0,
    "frequency_penalty": lambda o: o.frequency_penalty != 0,
    "no_repeat_ngram_size": lambda o: o.no_repeat_ngram_size != 0,
    "json_schema": lambda o: o.json_schema is not None,
}


def check_speculative(
    target: nn.Module, draft: nn.Module | None, opts: GenerationOptions, amateur: nn.Module | None = None
) -> None:
    """A DanluError for a setup speculative decoding cannot run: two drafts, a draft with another vocabulary,
    a contrastive amateur beside it, γ out of range, or options it cannot honour."""
    if draft is not None and opts.draft != "none":
        raise DanluError(f"give either draft_model or draft={opts.draft!r}, not both")
    if draft is None and opts.draft == "none":
        raise DanluError("speculative decoding needs a draft: draft_model=<a small model> or draft='ngram'")
    if amateur is not None:
        raise DanluError("give either a draft (speculative) or amateur_model (contrastive), not both")
    if draft is not None and draft.config.vocab_size != target.config.vocab_size:
        raise DanluError(
            f"the draft model's vocabulary ({draft.config.vocab_size}) differs from the target's "
            f"({target.config.vocab_size}); the draft must share the target's tokenizer"
        )
    if not 1 <= opts.num_draft_tokens <= MAX_DRAFT_TOKENS:  # options validate it; a forged object may not
        raise DanluError(f"num_draft_tokens must be in [1, {MAX_DRAFT_TOKENS}], got {opts.num_draft_tokens}")
    bad = [name for name, on in UNSUPPORTED.items() if on(opts)]
    if bad:
        raise DanluError(f"speculative decoding does not support {bad}; leave them at their defaults")


def speculative_accept(
    p: torch.Tensor, q: torch.Tensor, drafts: list[int], generator: torch.Generator | None = None
) -> tuple[int, int]:
    """The acceptance rule of speculative sampling (Leviathan et al. 2023, Algorithm 1).

    p (k + 1, V): the target's distributions at the k draft positions and one past them; q (k, V): the draft's;
    drafts: the k proposed ids (drawn from q). Draft i is kept with probability min(1, p_i(x) / q_i(x)); at the
    first rejection the replacement is drawn from norm(max(0, p_i − q_i)), and if all k are kept a bonus token is
    drawn from p_k. Returns (number kept, the token after them). The result is distributed exactly as p.
    """
    k = len(drafts)
    for i, x in enumerate(drafts):
        ratio = float(p[i, x] / q[i, x])
        if ratio < 1 and float(torch.rand((), generator=generator, device=p.device)) >= ratio:
            residual = (p[i] - q[i]).clamp(min=0)
            return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return k, int(torch.multinomial(p[k], 1, generator=generator))


def _block_scores(
    logits: torch.Tensor, opts: GenerationOptions, step0: int, stop_ids: list[int]
) -> torch.Tensor:
    """process_logits over one row's block, logits (J, V) at new-token indices step0 .. step0 + J - 1. Only
    min_new_tokens depends on the index: when its boundary falls inside the block, position by position."""
    J = logits.shape[0]
    if step0 >= opts.min_new_tokens or step0 + J <= opts.min_new_tokens:
        return process_logits(logits, TokenHistory(), opts, step0, stop_ids)
    return torch.cat(
        [process_logits(logits[j : j + 1], TokenHistory(), opts, step0 + j, stop_ids) for j in range(J)]
    )


def _pick(
    logits: torch.Tensor, opts: GenerationOptions, step: int, stop_ids: list[int], g: torch.Generator | None
) -> tuple[int, torch.Tensor | None]:
    """One row's token from its logits (V,) at new-token index `step`, and its distribution when sampling."""
    scores = process_logits(logits[None], TokenHistory(), opts, step, stop_ids)  # (1, V)
    if not opts.do_sample:
        return int(scores.argmax(-1)), None
    q = warp(scores, opts).softmax(-1)[0]
    return int(torch.multinomial(q, 1, generator=g)), q


def prompt_lookup(tokens: list[int], k: int, max_n: int = MAX_NGRAM) -> list[int]:
    """Up to k tokens guessed by prompt lookup (Saxena 2023): find the latest earlier occurrence of the last n
    tokens (n = max_n, else smaller, down to 1) and copy what followed it. The copy may run into the tokens it
    is producing (an LZ77-style overlapping copy), so a short period ("1, 2, 1, 2, ...") still fills k."""
    L = len(tokens)
    if k <= 0 or L < 2:
        return []
    ctx = torch.tensor(tokens)
    for n in range(min(max_n, L - 1), 0, -1):
        windows = ctx[: L - 1].unfold(0, n, 1)  # (L - n, n): every n-gram with a token after it
        hits = (windows == ctx[L - n :]).all(-1).nonzero()
        if len(hits):
            start = int(hits[-1]) + n  # the token after the latest match
            ext = list(tokens)
            for j in range(k):
                ext.append(ext[start + j])
            return ext[L:]
    return []


class Draft(Protocol):
    """What proposes the tokens: `start` sees the prompts, `propose` gives up to wants[b] drafts per row (and,
    when sampling, the distribution each was drawn from), `commit` learns that the target's cache now holds
    `length` slots (the first ones of the block `chunk` (B, W) fed this round among them)."""

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int) -> None: ...

    def propose(
        self, contexts: list[list[int]], blocks: list[list[int]], wants: list[int], steps: list[int],
        opts: GenerationOptions, stop_ids: list[int], generators: list,
    ) -> tuple[list[list[int]], list[list[torch.Tensor]]]: ...  # fmt: skip

    def commit(self, length: int, chunk: torch.Tensor) -> None: ...


class ModelDraft:
    """A small model with the target's tokenizer, its cache kept in step with the target's: the rows feed
    their blocks and draft tokens in lockstep (one `decode_one` per block position, W − 1 in all)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.state: DecodeState | None = None
        self.base = 0

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int) -> None:
        self.state = new_state(self.model, input_ids.shape[0], max_len)
        prefill(self.model, self.state, input_ids, attention_mask)

    def propose(self, contexts, blocks, wants, steps, opts, stop_ids, generators):  # see Draft.propose
        B, device = len(blocks), self.state.key_mask.device
        W = max(len(blk) + w for blk, w in zip(blocks, wants))
        drafts: list[list[int]] = [[] for _ in range(B)]
        qs: list[list[torch.Tensor]] = [[] for _ in range(B)]
        self.base = self.state.length
        for j in range(W - 1):  # block position j in, a proposal for position j + 1 out
            seqs = [blk + d for blk, d in zip(blocks, drafts)]
            x = torch.tensor([s[j] if j < len(s) else s[-1] for s in seqs], device=device)  # (B,)
            logits = decode_one(self.model, self.state, x)  # (B, V)
            for b in range(B):
                if len(blocks[b]) - 1 <= j and len(drafts[b]) < wants[b]:
                    tok, q = _pick(logits[b], opts, steps[b] + len(drafts[b]), stop_ids, generators[b])
                    drafts[b].append(tok)
                    if q is not None:
                        qs[b].append(q)
        return drafts, qs

    def commit(self, length: int, chunk: torch.Tensor) -> None:
        if self.state.length >= length:
            rollback(self.state, length)
        else:  # every row kept its whole block: the draft has not seen the block's last token(s) yet
            forward_tokens(
                self.model, self.state, chunk[:, self.state.length - self.base : length - self.base]
            )


class NgramDraft:
    """Prompt lookup (`prompt_lookup`) on each row's prompt and output so far: no model, no cache. When
    sampling, a draft token's distribution q is one-hot (it was chosen, not drawn), so the acceptance test keeps
    it with probability p(x) and otherwise draws from p without x (Leviathan et al.'s rule with that q)."""

    def __init__(self, vocab_size: int, max_n: int = MAX_NGRAM) -> None:
        self.V, self.max_n = vocab_size, max_n

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int) -> None:
        self.device = input_ids.device

    def propose(self, contexts, blocks, wants, steps, opts, stop_ids, generators):  # see Draft.propose
        drafts = [prompt_lookup(ctx, w, self.max_n) for ctx, w in zip(contexts, wants)]
        if not opts.do_sample:  # greedy compares tokens only
            return drafts, [[] for _ in drafts]
        one_hot = torch.nn.functional.one_hot
        ids = [torch.tensor(d, dtype=torch.long, device=self.device) for d in drafts]
        return drafts, [list(one_hot(x, self.V).float()) for x in ids]

    def commit(self, length: int, chunk: torch.Tensor) -> None:
        pass


def _ends(out: list[int], N: int, stop_ids: list[int]) -> bool:
    return len(out) >= N or (bool(out) and out[-1] in stop_ids)


@torch.inference_mode()
def speculative_rows(
    target: nn.Module,
    draft: nn.Module | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    opts: GenerationOptions,
    stop_ids: list[int],
) -> tuple[list[list[int]], SpeculativeStats]:
    """Speculative decoding of the left-padded prompts input_ids, attention_mask (B, T): the new token ids of
    every row (ending with its stop id if one came) and the acceptance statistics. draft: the draft model,
    or None for opts.draft ("ngram": prompt lookup). Greedy reproduces the target's greedy tokens row by row;
    sampling has exactly the target's (processed, warped) distribution, row b drawing from its own stream
    (`make_generators`: the same seed, the same text for the same batch; a row's text can change with the
    other rows, whose acceptances set the rounds).
    """
    check_speculative(target, draft, opts)
    B, T = input_ids.shape
    N, gamma, device = opts.max_new_tokens, opts.num_draft_tokens, input_ids.device
    drafter: Draft = ModelDraft(draft) if draft is not None else NgramDraft(target.config.vocab_size)
    # Each round's block ends within T + N slots (a row's block never runs past its N-th token).
    t_state = new_state(target, B, T + N + 1)
    first = prefill(target, t_state, input_ids, attention_mask)  # (B, V)
    drafter.start(input_ids, attention_mask, T + N + 1)
    generators = make_generators(B, opts.seed, device) if opts.do_sample else [None] * B
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
    outs = [[_pick(first[b], opts, 0, stop_ids, generators[b])[0]] for b in range(B)]
    stats = SpeculativeStats(row_proposed=[0] * B, row_accepted=[0] * B)
    live = [not _ends(o, N, stop_ids) for o in outs]
    c = 0  # each row's first c output tokens are in both caches
    while any(live):
        base = t_state.length
        # A live row's block is its output past the cache, f_b <= γ + 1 tokens (module docstring).
        f = [len(o) - c if live[b] else 1 for b, o in enumerate(outs)]
        blocks = [o[c:] if live[b] else o[-1:] for b, o in enumerate(outs)]
        wants = [max(0, min(gamma + 1 - f[b], N - len(o) - 1)) if live[b] else 0 for b, o in enumerate(outs)]
        steps = [len(o) for o in outs]  # the new-token index of each row's first draft
        contexts = [p + o for p, o in zip(prompts, outs)]
        drafts, qs = drafter.propose(contexts, blocks, wants, steps, opts, stop_ids, generators)
        W = max(len(blk) + len(d) for blk, d in zip(blocks, drafts))
        chunk = [blk + d + blk[-1:] * (W - len(blk) - len(d)) for blk, d in zip(blocks, drafts)]  # filler
        chunk_t = torch.tensor(chunk, dtype=torch.long, device=device)  # (B, W)
        logits = forward_tokens(target, t_state, chunk_t).float()  # (B, W, V)
        stats.rounds += 1
        kept = []  # how many tokens of its block each live row keeps
        for b in range(B):
            if not live[b]:
                continue
            d, fb = drafts[b], f[b]
            # Block position fb - 1 + j scores draft j; the last one scores the token after every draft.
            scores = _block_scores(logits[b, fb - 1 : fb + len(d)], opts, steps[b], stop_ids)  # (len(d)+1, V)
            if opts.do_sample:
                p = warp(scores, opts).softmax(-1)
                q = torch.stack(qs[b]) if d else p.new_zeros(0, p.shape[-1])
                n, new = speculative_accept(p, q, d, generators[b])
            else:  # greedy: the drafts up to the first disagreement, then the target's own choice
                best = scores.argmax(-1).tolist()
                n = next((i for i in range(len(d)) if d[i] != best[i]), len(d))
                new = best[n]
            stats.proposed += len(d)
            stats.accepted += n
            stats.row_proposed[b] += len(d)
            stats.row_accepted[b] += n
            for t in (*d[:n], new):
                outs[b].append(t)
                stats.tokens += 1
                if _ends(outs[b], N, stop_ids):
                    live[b] = False
                    break
            if live[b]:
                kept.append(fb + n)
        if not any(live):
            break
        advance = min(kept)  # >= 1: the shortest live row's accepted length (module docstring)
        rollback(t_state, base + advance)
        drafter.commit(base + advance, chunk_t)
        c += advance
    stats.tokens += B  # the first token of every row, from the prefill
    return outs, stats


def speculative_decode(
    target: nn.Module,
    draft: nn.Module | None,
    input_ids: torch.Tensor,
    opts: GenerationOptions,
    stop_ids: list[int],
) -> tuple[list[int], SpeculativeStats]:
    """One prompt, input_ids (1, T) without padding: `speculative_rows`' only row and the statistics."""
    if input_ids.shape[0] != 1:
        raise DanluError(
            f"speculative_decode takes one prompt, got {input_ids.shape[0]}; use speculative_rows"
        )
    rows, stats = speculative_rows(target, draft, input_ids, torch.ones_like(input_ids), opts, stop_ids)
    return rows[0], stats
