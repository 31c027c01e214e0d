"""Decoding strategies (notes 002 §decoding strategies): greedy, sampling, beam search, contrastive decoding and
speculative decoding, on top of the stepping functions of `steps.py` and the processors of `processors.py`.

Notation: B prompts, nb = num_beams, K candidates kept per step, N = max_new_tokens, V vocab, γ draft tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.generate.processors import TokenHistory, process_logits, warp
from danlu.generate.steps import decode_one, forward_tokens, new_state, prefill, reorder, rollback

NEG = -1.0e9  # "minus infinity" that still adds and compares like a number (beam bookkeeping)


# ---- picking one token -----------------------------------------------------------------------------------
def greedy(scores: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row, scores (B, V) -> (B,)."""
    return scores.argmax(-1)


def make_generators(B: int, seed: int | None, device: torch.device) -> list[torch.Generator]:
    """One random stream per row. With a seed every row gets the same stream, so a prompt samples the same
    text alone or inside any batch (what a server batching requests needs); without one, each row draws a
    seed from torch's global generator (so `torch.manual_seed` still makes runs repeatable)."""
    seeds = [seed] * B if seed is not None else torch.randint(0, 2**62, (B,)).tolist()
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Draw one token per row from probs (B, V), row b with generators[b]. -> (B,)."""
    picks = [torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(generators)]
    return torch.cat(picks)


def select(scores: torch.Tensor, opts: GenerationOptions, generators: list[torch.Generator]) -> torch.Tensor:
    """Greedy at temperature 0, else sample from the warped (temperature, top-k, top-p, min-p) distribution."""
    if not opts.do_sample:
        return greedy(scores)
    return sample(warp(scores, opts).softmax(-1), generators)


# ---- contrastive decoding ---------------------------------------------------------------------------------
def contrastive_scores(expert: torch.Tensor, amateur: torch.Tensor, alpha: float) -> torch.Tensor:
    """Contrastive decoding (Li et al. 2022): log p_expert − log p_amateur on the plausible tokens
    V_head = {x : p_expert(x) >= alpha · max p_expert}, −inf elsewhere. expert, amateur (B, V) logits.

    The cutoff keeps the amateur from promoting tokens the expert itself finds implausible."""
    expert_lp = expert.float().log_softmax(-1)
    amateur_lp = amateur.float().log_softmax(-1)
    head = expert_lp >= expert_lp.amax(-1, keepdim=True) + math.log(alpha)  # p >= α·max p, in log space
    return torch.where(head, expert_lp - amateur_lp, float("-inf"))


# ---- greedy / sampling / contrastive: one token at a time ----------------------------------------------------
def decode_n(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    opts: GenerationOptions,
    stop_ids: list[int],
    amateur: nn.Module | None = None,
    compile: bool = False,
    grammar: Any = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until every row produced a stop id or N tokens exist.

    A finished row keeps receiving its stop id (callers ignore it). With an `amateur` model the processed
    scores become contrastive ones (`contrastive_scores`) before a token is picked. grammar: a
    grammar.JsonConstraint whose mask `process_logits` applies (json_schema), or None.
    """
    B, T = input_ids.shape
    N = opts.max_new_tokens
    if amateur is not None and amateur.config.vocab_size != model.config.vocab_size:
        raise DanluError(
            f"the amateur model's vocabulary ({amateur.config.vocab_size}) differs from the model's "
            f"({model.config.vocab_size}); contrastive decoding needs both to share one tokenizer"
        )
    state = new_state(model, B, T + N, compile=compile)
    logits = prefill(model, state, input_ids, attention_mask)
    history = TokenHistory.start(input_ids, attention_mask, logits.shape[-1], opts, grammar=grammar)
    if amateur is not None:
        amateur_state = new_state(amateur, B, T + N)
        amateur_logits = prefill(amateur, amateur_state, input_ids, attention_mask)
    generators = make_generators(B, opts.seed, input_ids.device) if opts.do_sample else []
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=input_ids.device)
    for step in range(N):
        scores = process_logits(logits, history, opts, step, stop_ids)
        if amateur is not None:  # after the processors, so V_head only holds tokens they allow
            scores = contrastive_scores(scores, amateur_logits, opts.contrastive_alpha)
        tok = select(scores, opts, generators)
        if stop_ids:
            tok = tok.masked_fill(done, stop_ids[0])
            done |= torch.isin(tok, stops)
        yield tok
        if step == N - 1 or bool(done.all()):
            return
        history.append(tok)
        logits = decode_one(model, state, tok)
        if amateur is not None:
            amateur_logits = decode_one(amateur, amateur_state, tok)


# ---- beam search -------------------------------------------------------------------------------------------
def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, M, ...) rows picked by index (B, k) along dim 1 -> (B, k, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


@torch.inference_mode()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    opts: GenerationOptions,
    stop_ids: list[int],
    should_stop: Callable[[], bool] | None = None,
) -> list[list[int]]:
    """The best hypothesis of each prompt (its new token ids, ending with the stop id if it stopped).

    Each step extends every live beam by every token and keeps the K = max(2, 1 + #stop ids)·nb best by summed
    log-probability, so at least nb stay alive even if many end. A candidate ending in a stop id (or at N
    tokens) among the nb best becomes a finished hypothesis scored score / length^length_penalty (Wu et al.
    2016: alpha > 0 favours longer outputs, < 0 shorter); a prompt is done when no live beam can beat its worst
    finished one (the bound uses the current length), or, with early_stopping, once nb have finished. This is
    the procedure transformers' `generate(num_beams=...)` runs, so both pick the same tokens.

    `should_stop`, when given, is called before every step; once it returns True the search ends at once with
    what is finished so far (a server whose client went away; a prompt with nothing finished gets []).
    """
    B, T = input_ids.shape
    nb, N, alpha = opts.num_beams, opts.max_new_tokens, opts.length_penalty
    device = input_ids.device
    ids = input_ids.repeat_interleave(nb, dim=0)  # (B·nb, T)
    mask = attention_mask.repeat_interleave(nb, dim=0)
    state = new_state(model, B * nb, T + N)
    logits = prefill(model, state, ids, mask)
    V = logits.shape[-1]
    history = TokenHistory.start(ids, mask, V, opts)
    K = max(2, 1 + len(stop_ids)) * nb
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    top_nb = torch.arange(K, device=device) < nb  # (K,): only the nb best candidates may finish

    live_scores = torch.zeros(B, nb, device=device)
    live_scores[:, 1:] = NEG  # all beams start identical: expand only the first
    live_seqs = torch.full((B, nb, N), -1, dtype=torch.long, device=device)
    done_seqs = live_seqs.clone()
    done_scores = torch.full((B, nb), NEG, device=device)
    done_lens = torch.zeros(B, nb, dtype=torch.long, device=device)
    is_done = torch.zeros(B, nb, dtype=torch.bool, device=device)
    can_improve = torch.ones(B, dtype=torch.bool, device=device)
    offsets = torch.arange(B, device=device)[:, None] * nb  # (B, 1)

    for step in range(N):
        if should_stop is not None and should_stop():
            break
        log_probs = process_logits(logits.log_softmax(-1), history, opts, step, stop_ids)  # (B·nb, V)
        total = (log_probs.view(B, nb, V) + live_scores[..., None]).view(B, nb * V)
        cand_scores, cand_index = torch.topk(total, K)  # (B, K)
        cand_beam, cand_tok = cand_index // V, cand_index % V
        cand_seqs = _gather(live_seqs, cand_beam)  # (B, K, N)
        cand_seqs[:, :, step] = cand_tok
        ends = torch.isin(cand_tok, stops) | (step == N - 1)  # (B, K)

        # The nb best candidates that did not end live on.
        alive = cand_scores + ends.float() * NEG
        keep = torch.topk(alive, nb).indices  # (B, nb)
        live_seqs, live_scores = _gather(cand_seqs, keep), _gather(alive, keep)
        parent, next_tok = _gather(cand_beam, keep), _gather(cand_tok, keep)

        # Finished candidates compete with the finished pool on length-normalised score.
        finishing = ends & top_nb
        final = cand_scores / ((step + 1) ** alpha)
        blocked = ~can_improve[:, None] | (is_done.all(-1, keepdim=True) & opts.early_stopping)
        final = final + blocked.float() * NEG + (~finishing).float() * NEG
        merged_scores = torch.cat([done_scores, final], 1)  # (B, nb + K)
        best = torch.topk(merged_scores, nb).indices
        done_scores = _gather(merged_scores, best)
        done_seqs = _gather(torch.cat([done_seqs, cand_seqs], 1), best)
        lens = torch.full((B, K), step + 1, dtype=torch.long, device=device)
        done_lens = _gather(torch.cat([done_lens, lens], 1), best)
        is_done = _gather(torch.cat([is_done, finishing], 1), best)

        # Could the best live beam still beat the worst finished one (at today's length)?
        best_live = live_scores[:, 0] / ((step + 1) ** alpha)  # (B,)
        worst_done = torch.where(is_done, done_scores.min(-1, keepdim=True).values, NEG)  # (B, nb)
        can_improve &= (best_live[:, None] > worst_done).any(-1)
        if step == N - 1 or not bool(can_improve.any()) or (opts.early_stopping and bool(is_done.all())):
            break
        rows = (parent + offsets).view(-1)  # (B·nb,) the old row each beam continues
        reorder(state, rows)
        history.reorder(rows)
        history.append(next_tok.view(-1))
        logits = decode_one(model, state, next_tok.view(-1))
    best_seqs, best_lens = done_seqs[:, 0].tolist(), done_lens[:, 0].tolist()
    return [seq[:n] for seq, n in zip(best_seqs, best_lens)]


# ---- speculative decoding ----------------------------------------------------------------------------------
@dataclass
class SpeculativeStats:
    """How well the draft model guessed: acceptance_rate = accepted / proposed draft tokens."""

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0  # target forwards after the prefill

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def _check_speculative(
    target: nn.Module, draft: nn.Module, input_ids: torch.Tensor, opts: GenerationOptions
) -> None:
    if input_ids.shape[0] != 1:
        raise DanluError("speculative decoding runs one prompt at a time; pass a single prompt")
    if draft.config.vocab_size != target.config.vocab_size:
        raise DanluError(
            f"the draft model's vocabulary ({draft.config.vocab_size}) differs from the target's "
            f"({target.config.vocab_size}); the draft must share the target's tokenizer"
        )
    unsupported = {
        "num_beams": opts.num_beams != 1,
        "repetition_penalty": opts.repetition_penalty != 1.0,
        "presence_penalty": opts.presence_penalty != 0,
        "frequency_penalty": opts.frequency_penalty != 0,
        "no_repeat_ngram_size": opts.no_repeat_ngram_size != 0,
        "json_schema": opts.json_schema is not None,
    }
    bad = [name for name, on in unsupported.items() if on]
    if bad:
        raise DanluError(f"speculative decoding does not support {bad}; leave them at their defaults")


def _probs(logits: torch.Tensor, opts: GenerationOptions, step: int, stop_ids: list[int]) -> torch.Tensor:
    """The distribution a token is drawn from: one-hot on the argmax when greedy, else warped softmax."""
    scores = process_logits(logits, TokenHistory(), opts, step, stop_ids)
    if not opts.do_sample:
        return torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).float()
    return warp(scores, opts).softmax(-1)


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


@torch.inference_mode()
def speculative_decode(
    target: nn.Module,
    draft: nn.Module,
    input_ids: torch.Tensor,
    opts: GenerationOptions,
    stop_ids: list[int],
) -> tuple[list[int], SpeculativeStats]:
    """Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): the draft proposes γ tokens, the target
    scores all of them in one forward, and draft token x is kept with probability min(1, p(x) / q(x)). At the
    first rejection the target's token is drawn from norm(max(0, p − q)); if all γ pass, one more comes from p.
    The output has exactly the target's distribution; greedy (one-hot p and q) reproduces the target's greedy
    tokens. input_ids (1, T). Returns the new token ids and the acceptance statistics.
    """
    _check_speculative(target, draft, input_ids, opts)
    T, N, gamma = input_ids.shape[1], opts.max_new_tokens, opts.num_draft_tokens
    mask = torch.ones_like(input_ids)
    t_state, d_state = new_state(target, 1, T + N + gamma), new_state(draft, 1, T + N + gamma)
    p = _probs(prefill(target, t_state, input_ids, mask), opts, 0, stop_ids)
    prefill(draft, d_state, input_ids, mask)
    generators = make_generators(1, opts.seed, input_ids.device)
    g = generators[0]
    stats = SpeculativeStats()
    tok = int(sample(p, generators))  # p is one-hot when greedy: the argmax
    out = [tok]
    while len(out) < N and tok not in stop_ids:
        k = min(gamma, N - len(out))  # never propose past max_new_tokens
        base = t_state.length  # both caches hold the prefix up to, not including, `tok`
        drafts, qs, x = [], [], tok
        for i in range(k):
            logits = decode_one(draft, d_state, torch.tensor([x], device=input_ids.device))
            if opts.do_sample:
                q = _probs(logits, opts, len(out) + i, stop_ids)
                x = int(sample(q, generators))
                qs.append(q[0])
            else:  # greedy: the draft's argmax, no distributions needed
                x = int(greedy(process_logits(logits, TokenHistory(), opts, len(out) + i, stop_ids)))
            drafts.append(x)
        verify = torch.tensor([[tok, *drafts]], device=input_ids.device)  # (1, k + 1)
        p_all = forward_tokens(target, t_state, verify).float()[0]  # (k + 1, V)
        stats.rounds += 1
        stats.proposed += k
        if opts.do_sample:
            ps = torch.cat([_probs(p_all[i : i + 1], opts, len(out) + i, stop_ids) for i in range(k + 1)])
            n, new = speculative_accept(ps, torch.stack(qs), drafts, g)
        else:  # greedy: keep the drafts up to the first disagreement, then take the target's own choice
            best = [int(greedy(process_logits(p_all[i : i + 1], TokenHistory(), opts, len(out) + i, stop_ids)))
                    for i in range(k + 1)]  # fmt: skip
            n = next((i for i in range(k) if drafts[i] != best[i]), k)
            new = best[n]
        stats.accepted += n
        rollback(t_state, base + 1 + n)  # keep tok and the accepted drafts
        if n == k:  # the draft never saw its own last proposal: feed it so both caches agree
            decode_one(draft, d_state, torch.tensor([drafts[-1]], device=input_ids.device))
        else:
            rollback(d_state, base + 1 + n)
        for t in (*drafts[:n], new):
            out.append(t)
            if t in stop_ids or len(out) == N:
                break
        tok = out[-1]
    return out, stats
