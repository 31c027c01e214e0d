"""Per-token log-probabilities of given tokens: log p(labels[t] | logits[t]) without a full log-softmax.

    log_softmax(z)[y] = z[y] − logsumexp(z)

so the (B, T, V) log-softmax never needs to exist: gather the label's logit, subtract the log-partition. In fp32
the logsumexp is taken chunk by chunk over the rows, which keeps the extra memory to one (chunk, V) buffer
instead of a second (B, T, V) tensor (TRL's "selective log-softmax" makes the same trade).

Notation: B batch, T positions, V vocabulary. `logits[:, t]` and `labels[:, t]` refer to the same position;
callers shift (logits[:, :-1] against input_ids[:, 1:]) as their objective needs.
"""

from __future__ import annotations

import torch

__all__ = ["token_logprobs"]

# Rows of the flattened (B·T, V) logits handled per logsumexp call in fp32.
_ROWS_PER_CHUNK = 1024


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(labels | logits) per position, in fp32: (B, T, V) and (B, T) -> (B, T).

    `mask` (B, T), when given, zeroes the positions it marks False (so `.sum(-1)` is a sequence's log-likelihood
    over the kept tokens). Labels at masked positions may hold any value, e.g. -100: they are never gathered.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
    safe_labels = labels if mask is None else labels.masked_fill(~mask.bool(), 0)
    flat = logits.reshape(-1, logits.shape[-1])  # (B·T, V)
    picked = flat.gather(-1, safe_labels.reshape(-1, 1)).squeeze(-1).float()  # (B·T,)
    log_z = (
        torch.cat([torch.logsumexp(rows.float(), dim=-1) for rows in flat.split(_ROWS_PER_CHUNK)])
        if flat.shape[0]
        else flat.new_zeros(0, dtype=torch.float32)
    )  # (B·T,)
    out = (picked - log_z).reshape(labels.shape)  # (B, T)
    return out if mask is None else out.masked_fill(~mask.bool(), 0.0)
