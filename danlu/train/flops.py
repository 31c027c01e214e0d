"""Model FLOPs utilisation (MFU): the share of the device's peak the training arithmetic uses.

FLOPs per token of one training step (forward + backward) ≈ 6N + 12·L·H·Q·T (Kaplan et al. 2020 §2.1;
PaLM, Chowdhery et al. 2022, appendix B): 6 per parameter (2 forward, 4 backward) for the N non-embedding
parameters, plus attention's score and mix products over a context of T (L layers, H heads, Q head size).
MFU = tokens/s · FLOPs per token / peak FLOP/s; printed on CUDA only (a CPU has no stated peak).
"""

from __future__ import annotations

import torch
from torch import nn

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by a substring of the device name.
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower (756e12), the name does not always say which
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
}


def non_embedding_params(model: nn.Module) -> int:
    """Parameters minus the learned position table (Kaplan et al. count N without embeddings; the token
    embedding is kept because it is tied to, and does the work of, the output projection)."""
    n = sum(p.numel() for p in model.parameters())
    for name, p in model.named_parameters():
        if name.endswith(("wpe.weight", "position_embeddings.weight", "pos_emb.weight")):
            n -= p.numel()
    return n


def flops_per_token(model: nn.Module, context: int) -> float:
    """6N + 12·L·H·Q·T for a model whose `config` names its shape (n_layer, n_head, n_embd); 6N otherwise."""
    cfg = getattr(model, "config", None)
    flops = 6.0 * non_embedding_params(model)
    n_layer, n_head, n_embd = (getattr(cfg, k, None) for k in ("n_layer", "n_head", "n_embd"))
    if n_layer and n_head and n_embd:
        head_size = getattr(cfg, "head_size", None) or n_embd // n_head
        flops += 12.0 * n_layer * n_head * head_size * context
    return flops


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None when it is not a CUDA device in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak
    return None


def mfu(tokens_per_s: float, flops: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s * flops / peak
