"""A look inside a GPT: the logit lens and attention maps, read from the one forward through hooks.

Notation: B batch, T time, C channels, V vocab, L layers, n_head query heads, n_kv_head key/value heads.

- Logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): the residual stream after block l is
  un-embedded as if it were the last one, logits_l = lm_head(norm_f(h_l)), to see at which depth the model's
  eventual prediction appears. Row 0 is the token embeddings (nothing computed yet), row L is the model's own
  output (exactly its logits: the same norm, head and soft-cap).
- Attention maps: softmax(q kᵀ · scale) of every layer and head over the prompt, the weights SDPA computes but
  does not return; q and k are recomputed from the inputs each attention layer received (its own projection,
  q/k norms and rotary positions), and the test checks that these weights times v give the layer's output.

Both register forward hooks for one call and remove them after it: the model's forward is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from danlu.nn.position import apply_rope

__all__ = ["logit_lens", "attention_maps", "residual_stream"]


def _blocks(model: Any) -> Any:
    if not hasattr(model, "blocks") or not hasattr(model, "norm_f") or not hasattr(model, "lm_head"):
        raise TypeError(
            f"the logit lens needs a danlu GPT (blocks, norm_f, lm_head), got {type(model).__name__}"
        )
    return model.blocks


@torch.no_grad()
def residual_stream(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, logits): the residual stream before block 0 and after every block, (L + 1, B, T, C), and the
    model's logits (B, T, V), from one forward."""
    blocks = _blocks(model)
    B, T = input_ids.shape
    states: list[torch.Tensor] = []
    hooks = [blocks[0].register_forward_pre_hook(lambda m, args: states.append(args[0].detach()))]
    hooks += [b.register_forward_hook(lambda m, args, out: states.append(out.detach())) for b in blocks]
    try:
        logits = model(input_ids, attention_mask=attention_mask).logits
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([s.reshape(B, T, -1) for s in states]), logits  # (L + 1, B, T, C), (B, T, V)


@torch.no_grad()
def logit_lens(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position: int = -1
) -> torch.Tensor:
    """Logits (L + 1, B, V) read at `position` from the embeddings (row 0) and after each block (rows 1..L)
    through the model's final norm and LM head; row L equals the model's logits there."""
    hidden, _ = residual_stream(model, input_ids, attention_mask)
    logits = model.lm_head(model.norm_f(hidden[:, :, position]))  # (L + 1, B, V)
    cap = getattr(model.config, "final_logit_softcap", None)
    return torch.tanh(logits / cap) * cap if cap is not None else logits


def _queries_keys_values(attn: Any, x: torch.Tensor, rope: Any) -> tuple[torch.Tensor, ...]:
    """q (B, n_head, T, hs), k and v (B, n_kv_head, T, hs) as SelfAttention.forward computes them."""
    B, T, C = x.shape
    hs, nh, nkv = attn.head_size, attn.n_head, attn.n_kv_head
    qkv = attn.qkv(x.reshape(B * T, C))  # (B·T, (n_head + 2·n_kv_head)·hs)
    if attn.qk_norm == "full":
        q, k, v = qkv.split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        qkv = torch.cat([attn.q_norm(q), attn.k_norm(k), v], dim=-1)
    qkv = qkv.view(B, T, nh + 2 * nkv, hs).transpose(1, 2)  # (B, n_head + 2·n_kv_head, T, hs)
    q, k, v = qkv[:, :nh], qkv[:, nh : nh + nkv], qkv[:, nh + nkv :]
    if attn.qk_norm == "head":
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return q, k, v


def _probabilities(attn: Any, x: torch.Tensor, mask: Any, rope: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention weights (B, n_head, T, T), values repeated per query head (B, n_head, T, hs))."""
    q, k, v = _queries_keys_values(attn, x, rope)
    group = attn.n_head // attn.n_kv_head
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, n_head, T, hs)
    scale = attn.head_size**-0.5 if attn.scale is None else attn.scale
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (B, n_head, T, T)
    if attn.softcap is not None:
        scores = torch.tanh(scores / attn.softcap) * attn.softcap
    T = x.shape[1]
    if mask is None:  # the forward ran causal attention without a mask (no padding, no cache)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-1), v


@torch.no_grad()
def attention_maps(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention weights (L, B, n_head, T, T) of every layer over the prompt: row t is query t, summing to 1
    over the keys it may see (causal: key j ≤ t)."""
    blocks = _blocks(model)
    inputs: list[tuple] = []

    def keep(
        m: Any, args: tuple, kwargs: dict
    ) -> None:  # Block calls attn(h, mask, rope, kv_cache, layer, ...)
        inputs.append((m, args[0].detach(), args[1], args[2]))

    hooks = [b.attn.register_forward_pre_hook(keep, with_kwargs=True) for b in blocks]
    try:
        model(input_ids, attention_mask=attention_mask)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([_probabilities(m, x, mask, rope)[0] for m, x, mask, rope in inputs])
