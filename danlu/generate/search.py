"""Decoding strategies (notes 002 §decoding strategies): greedy, sampling, beam search and contrastive decoding,
on top of a stepping backend (`Stepper`: `steps.py` for decoder-only models, `encoder_decoder.py` for the
seq2seq Transformer) and the processors of `processors.py`. The one token-by-token loop is `decode_steps`, the
one beam search `beam_hypotheses`. Speculative decoding lives in speculative.py.

Notation: B prompts, nb = num_beams, K candidates kept per step, N = max_new_tokens, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.generate.processors import TokenHistory, process_logits, warp
from danlu.generate.steps import decode_one, expand, new_state, prefill, reorder
from danlu.nn.logprobs import token_logprobs

NEG = -1.0e9  # "minus infinity" that still adds and compares like a number (beam bookkeeping)


# ---- stepping backends --------------------------------------------------------------------------------------
class Stepper(Protocol):
    """What the search loops drive: `start` runs the prompts and gives the first next-token logits, `step`
    feeds one token per row, `reorder` keeps beams (rows picked by index, the row count unchanged) and `expand`
    copies rows (any count: one prefill shared by several samples). Logits are (rows, V) in fp32.

    `CausalStepper` drives a decoder-only model through `steps.py` (danlu's GPT, its static cache and compiled
    step); `encoder_decoder.Seq2SeqStepper` drives the seq2seq Transformer (encoder once, then the decoder
    with its self- and cross-attention caches)."""

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def step(self, tok: torch.Tensor) -> torch.Tensor: ...

    def reorder(self, index: torch.Tensor) -> None: ...

    def expand(self, index: torch.Tensor) -> None: ...


class CausalStepper:
    """A decoder-only model: the prompt is the start of the sequence (steps.py's prefill / decode_one)."""

    def __init__(self, model: nn.Module, max_new_tokens: int, compile: bool = False) -> None:
        self.model, self.max_new_tokens, self.compile = model, max_new_tokens, compile
        self.state: Any = None

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        self.state = new_state(self.model, B, T + self.max_new_tokens, compile=self.compile)
        return prefill(self.model, self.state, input_ids, attention_mask)

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        return decode_one(self.model, self.state, tok)

    def reorder(self, index: torch.Tensor) -> None:
        reorder(self.state, index)

    def expand(self, index: torch.Tensor) -> None:
        self.state = expand(self.state, index)


# ---- picking one token -----------------------------------------------------------------------------------
def greedy(scores: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row, scores (B, V) -> (B,)."""
    return scores.argmax(-1)


def make_generators(
    B: int, seed: int | None, device: torch.device, row_seeds: list[int] | None = None
) -> list[torch.Generator]:
    """One random stream per row. With a seed every row gets the same stream, so a prompt samples the same
    text alone or inside any batch (what a server batching requests needs); without one, each row draws a
    seed from torch's global generator (so `torch.manual_seed` still makes runs repeatable). `row_seeds`
    (one per row) overrides both: the G samples of a shared prompt need G different streams."""
    if row_seeds is not None:
        if len(row_seeds) != B:
            raise DanluError(f"row_seeds has {len(row_seeds)} seeds for {B} rows; give one per row")
        seeds = list(row_seeds)
    else:
        seeds = [seed] * B if seed is not None else torch.randint(0, 2**62, (B,)).tolist()
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Draw one token per row from probs (B, V), row b with generators[b]. -> (B,)."""
    picks = [torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(generators)]
    return torch.cat(picks)


def select_scored(
    scores: torch.Tensor, opts: GenerationOptions, generators: list[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token (B,), its log-probability (B,)): greedy at temperature 0, else a draw from the warped
    (temperature, top-k, top-p, min-p) distribution. The log-probability is the chosen token's under the
    distribution it was picked from: log_softmax of the processed scores (penalties, bias, grammar; warped
    too when sampling), so a top-k sample's log-prob counts only the k tokens kept."""
    dist = warp(scores, opts) if opts.do_sample else scores
    tok = sample(dist.softmax(-1), generators) if opts.do_sample else greedy(scores)
    return tok, token_logprobs(dist[:, None], tok[:, None])[:, 0]


def raw_top_logprobs(
    logits: torch.Tensor, tok: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Under the model's own distribution log_softmax(logits) (before any processor or warping, what OpenAI
    and vLLM report): the chosen tokens' log-probs (R,), the k most likely ids (R, k) and their log-probs
    (R, k), most likely first. logits (R, V), tok (R,). Run only for rows that asked (opts.top_logprobs)."""
    chosen = token_logprobs(logits[:, None], tok[:, None])[:, 0]  # (R,)
    values, ids = logits.float().topk(k, dim=-1)  # (R, k), sorted descending
    return chosen, ids, values - torch.logsumexp(logits.float(), dim=-1, keepdim=True)


def select(scores: torch.Tensor, opts: GenerationOptions, generators: list[torch.Generator]) -> torch.Tensor:
    """Greedy at temperature 0, else sample from the warped (temperature, top-k, top-p, min-p) distribution."""
    return select_scored(scores, opts, generators)[0]


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
def decode_steps(
    model: nn.Module | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    opts: GenerationOptions,
    stop_ids: list[int],
    amateur: nn.Module | None = None,
    compile: bool = False,
    grammar: Any = None,
    expand_rows: torch.Tensor | None = None,
    row_seeds: list[int] | None = None,
    stepper: Stepper | None = None,
    history_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (token (R,), its log-probability (R,)) of every row, until every row produced a stop id or N
    tokens exist. The one decoding loop: greedy, sampling and contrastive decoding, of any stepping backend.

    A finished row keeps receiving its stop id (callers ignore it). With an `amateur` model the processed
    scores become contrastive ones (`contrastive_scores`) before a token is picked (the log-prob is then of
    the contrastive scores' softmax). grammar: a grammar.JsonConstraint whose mask `process_logits` applies
    (json_schema), or None. expand_rows (R,): row r continues prompt row expand_rows[r], the prompts being
    prefilled once (R = B when None). row_seeds: one sampling seed per row (else opts.seed). stepper: the
    backend (default `CausalStepper(model)`); history_ids: the (ids, mask) the penalties count as already
    written (default the prompt; an encoder-decoder passes its decoder's start token). observe(logits, tok),
    when given, sees each step's raw next-token logits (R, V) and the chosen tokens (R,) just before they are
    yielded (the engine's top_logprobs capture; nothing is computed for it otherwise).
    """
    if amateur is not None and model is not None and amateur.config.vocab_size != model.config.vocab_size:
        raise DanluError(
            f"the amateur model's vocabulary ({amateur.config.vocab_size}) differs from the model's "
            f"({model.config.vocab_size}); contrastive decoding needs both to share one tokenizer"
        )
    N = opts.max_new_tokens
    steppers = [stepper or CausalStepper(model, N, compile=compile)]
    if amateur is not None:
        steppers.append(CausalStepper(amateur, N))
    logits = [s.start(input_ids, attention_mask) for s in steppers]
    seen_ids, seen_mask = history_ids if history_ids is not None else (input_ids, attention_mask)
    if expand_rows is not None:  # prefill once, then copy each prompt's cache to its samples
        for s in steppers:
            s.expand(expand_rows)
        logits = [x.index_select(0, expand_rows) for x in logits]
        seen_ids, seen_mask = seen_ids.index_select(0, expand_rows), seen_mask.index_select(0, expand_rows)
    R, device = logits[0].shape[0], logits[0].device
    history = TokenHistory.start(seen_ids, seen_mask, logits[0].shape[-1], opts, grammar=grammar)
    generators = make_generators(R, opts.seed, device, row_seeds) if opts.do_sample else []
    done = torch.zeros(R, dtype=torch.bool, device=device)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    for step in range(N):
        scores = process_logits(logits[0], history, opts, step, stop_ids)
        if amateur is not None:  # after the processors, so V_head only holds tokens they allow
            scores = contrastive_scores(scores, logits[1], opts.contrastive_alpha)
        tok, logprob = select_scored(scores, opts, generators)
        if stop_ids:
            tok = tok.masked_fill(done, stop_ids[0])
            done |= torch.isin(tok, stops)
        if observe is not None:
            observe(logits[0], tok)
        yield tok, logprob
        if step == N - 1 or bool(done.all()):
            return
        history.append(tok)
        logits = [s.step(tok) for s in steppers]


# ---- beam search -------------------------------------------------------------------------------------------
def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, M, ...) rows picked by index (B, k) along dim 1 -> (B, k, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


def length_normalized(score: torch.Tensor, length: int, alpha: float, form: str) -> torch.Tensor:
    """A finished beam's ranking score: score / lp(length)^alpha, lp(n) = n ("power", transformers) or
    (5 + n) / 6 ("gnmt", Wu et al. 2016 eq. 14). In float64: |alpha| <= 10 (the options' range) keeps the
    power within 1e±40 for any context, which float32 would overflow to inf."""
    base = float(length) if form == "power" else (5.0 + length) / 6.0
    return score.double() / (base**alpha)


@dataclass(frozen=True)
class Hypothesis:
    """A beam search's answer for one prompt: its new token ids (the stop id last if one ended it) and each
    token's log-probability under the processed log-softmax the search summed."""

    token_ids: list[int]
    logprobs: list[float]


@torch.inference_mode()
def beam_hypotheses(
    stepper: Stepper,
    history: tuple[torch.Tensor, torch.Tensor],
    opts: GenerationOptions,
    stop_ids: list[int],
    should_stop: Callable[[], bool] | None = None,
    prompt: tuple[torch.Tensor, torch.Tensor] | None = None,
    finish_at_length: bool = True,
) -> list[Hypothesis]:
    """The best hypothesis of each prompt, of any stepping backend (decoder-only or encoder-decoder).

    prompt (input_ids, attention_mask) (B, T) is what `stepper.start` runs (history when None); history (the
    same shapes) is what the penalties count as already written. The prompts are started once and each row
    copied to its nb beams.

    Each step extends every live beam by every token and keeps the K = max(2, 1 + #stop ids)·nb best by summed
    log-probability, so at least nb stay alive even if many end. A candidate ending in a stop id (or at N
    tokens) among the nb best becomes a finished hypothesis scored `length_normalized` (Wu et al. 2016:
    alpha > 0 favours longer outputs, < 0 shorter; lp(n) = n or GNMT's (5 + n) / 6, opts.length_penalty_form);
    a prompt is done when no live beam can beat its worst finished one (the bound uses the current length),
    or, with early_stopping, once nb have finished. This is the procedure transformers' `generate(num_beams=...)`
    runs, so both pick the same tokens. finish_at_length=False (the seq2seq translator's rule): only a stop id
    finishes a hypothesis, and a prompt none of whose beams stopped within N tokens gets its best live beam.

    `should_stop`, when given, is called before every step; once it returns True the search ends at once with
    what is finished so far (a server whose client went away; a prompt with nothing finished gets []).
    """
    ids, mask = history
    B = ids.shape[0]
    nb, N, alpha, form = opts.num_beams, opts.max_new_tokens, opts.length_penalty, opts.length_penalty_form
    device = ids.device
    rows_of = torch.arange(B, device=device).repeat_interleave(nb)  # (B·nb,): beam k of prompt b is b·nb + k
    logits = stepper.start(*(prompt or history)).index_select(0, rows_of)
    stepper.expand(rows_of)
    V = logits.shape[-1]
    tokens = TokenHistory.start(ids.index_select(0, rows_of), mask.index_select(0, rows_of), V, opts)
    K = max(2, 1 + len(stop_ids)) * nb
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    top_nb = torch.arange(K, device=device) < nb  # (K,): only the nb best candidates may finish
    ninf = torch.tensor(float("-inf"), dtype=torch.float64, device=device)

    live_scores = torch.zeros(B, nb, device=device)
    live_scores[:, 1:] = NEG  # all beams start identical: expand only the first
    live_seqs = torch.full((B, nb, N), -1, dtype=torch.long, device=device)
    live_lps = torch.zeros(B, nb, N, device=device)
    done_seqs, done_lps = live_seqs.clone(), live_lps.clone()
    done_scores = torch.full((B, nb), float("-inf"), dtype=torch.float64, device=device)
    done_lens = torch.zeros(B, nb, dtype=torch.long, device=device)
    is_done = torch.zeros(B, nb, dtype=torch.bool, device=device)
    can_improve = torch.ones(B, dtype=torch.bool, device=device)
    offsets = torch.arange(B, device=device)[:, None] * nb  # (B, 1)

    for step in range(N):
        if should_stop is not None and should_stop():
            break
        log_probs = process_logits(logits.log_softmax(-1), tokens, opts, step, stop_ids)  # (B·nb, V)
        total = (log_probs.view(B, nb, V) + live_scores[..., None]).view(B, nb * V)
        cand_scores, cand_index = torch.topk(total, K)  # (B, K)
        cand_beam, cand_tok = cand_index // V, cand_index % V
        cand_seqs, cand_lps = _gather(live_seqs, cand_beam), _gather(live_lps, cand_beam)  # (B, K, N)
        cand_seqs[:, :, step] = cand_tok
        cand_lps[:, :, step] = cand_scores - _gather(live_scores, cand_beam)  # the new token's log-prob
        ends = torch.isin(cand_tok, stops) | (finish_at_length and step == N - 1)  # (B, K)

        # The nb best candidates that did not end live on.
        alive = cand_scores + ends.float() * NEG
        keep = torch.topk(alive, nb).indices  # (B, nb)
        live_seqs, live_lps, live_scores = (
            _gather(cand_seqs, keep),
            _gather(cand_lps, keep),
            _gather(alive, keep),
        )
        parent, next_tok = _gather(cand_beam, keep), _gather(cand_tok, keep)

        # Finished candidates compete with the finished pool on length-normalised score.
        finishing = ends & top_nb
        blocked = ~can_improve[:, None] | (is_done.all(-1, keepdim=True) & opts.early_stopping)
        final = torch.where(finishing & ~blocked, length_normalized(cand_scores, step + 1, alpha, form), ninf)
        merged_scores = torch.cat([done_scores, final], 1)  # (B, nb + K)
        best = torch.topk(merged_scores, nb).indices
        done_scores = _gather(merged_scores, best)
        done_seqs = _gather(torch.cat([done_seqs, cand_seqs], 1), best)
        done_lps = _gather(torch.cat([done_lps, cand_lps], 1), best)
        lens = torch.full((B, K), step + 1, dtype=torch.long, device=device)
        done_lens = _gather(torch.cat([done_lens, lens], 1), best)
        is_done = _gather(torch.cat([is_done, finishing & ~blocked], 1), best)

        # Could the best live beam still beat the worst finished one (at today's length)?
        best_live = length_normalized(live_scores[:, 0], step + 1, alpha, form)  # (B,)
        worst_done = torch.where(is_done, done_scores.min(-1, keepdim=True).values, ninf)  # (B, nb)
        can_improve &= (best_live[:, None] > worst_done).any(-1)
        if step == N - 1 or not bool(can_improve.any()) or (opts.early_stopping and bool(is_done.all())):
            break
        rows = (parent + offsets).view(-1)  # (B·nb,) the old row each beam continues
        stepper.reorder(rows)
        tokens.reorder(rows)
        tokens.append(next_tok.view(-1))
        logits = stepper.step(next_tok.view(-1))
    if not finish_at_length:  # nothing stopped: the best live beam (all have the same length)
        none = ~is_done.any(-1)  # (B,)
        done_seqs[:, 0] = torch.where(none[:, None], live_seqs[:, 0], done_seqs[:, 0])
        done_lps[:, 0] = torch.where(none[:, None], live_lps[:, 0], done_lps[:, 0])
        done_lens[:, 0] = torch.where(none, step + 1, done_lens[:, 0])
    seqs, lps, lens = done_seqs[:, 0].tolist(), done_lps[:, 0].tolist(), done_lens[:, 0].tolist()
    return [Hypothesis(s[:n], lp[:n]) for s, lp, n in zip(seqs, lps, lens)]


@torch.inference_mode()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    opts: GenerationOptions,
    stop_ids: list[int],
    should_stop: Callable[[], bool] | None = None,
) -> list[list[int]]:
    """The best hypothesis of each prompt of a decoder-only model: its new token ids, ending with the stop id
    if it stopped (`beam_hypotheses` has the procedure and the log-probs)."""
    stepper = CausalStepper(model, opts.max_new_tokens)
    hyps = beam_hypotheses(stepper, (input_ids, attention_mask), opts, stop_ids, should_stop)
    return [h.token_ids for h in hyps]
