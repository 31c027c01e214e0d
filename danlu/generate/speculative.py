"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a draft model proposes γ tokens, the target
scores them all in one forward and keeps a prefix of them, so each target forward can yield several tokens.

Notation: V vocab, γ draft tokens, N = max_new_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.generate.processors import TokenHistory, process_logits, warp
from danlu.generate.search import greedy, make_generators, sample
from danlu.generate.steps import decode_one, forward_tokens, new_state, prefill, rollback


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
