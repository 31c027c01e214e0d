"""What a training run will cost before it starts: parameters, FLOPs, memory, speed, the largest micro-batch.

Notation: B micro-batch sequences per process, T tokens per sequence (block size), C = n_embd, L = n_layer,
V vocabulary, I MLP width, kv = n_kv_head · head_size (the width of K and of V), W processes, N parameters.

FLOPs per token (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", §2.1 and Table 1; PaLM,
Chowdhery et al. 2022, Appendix B "Compute usage and MFU"):
    training = 6·N_matmul + 12·L·C·T
  where N_matmul counts the weights of every matrix multiply (all but the input embedding lookup; the LM head
  counts even when tied) and 12·L·C·T is the attention's QKᵀ and AV (2·2·L·T·C multiply-adds forward, ×3 with
  the backward). A forward alone is a third of it. Gradient checkpointing adds one forward: 8·N + 16·L·C·T.
  MFU (model FLOPs utilisation) = achieved FLOPs/s of that count / the device's peak.

Memory per process, fp32 master weights (mixed precision only changes transient copies):
    weights 4·N, gradients 4·N, AdamW 8·N (exp_avg and exp_avg_sq, Loshchilov & Hutter 2019), all ÷ W under
    FSDP (plus one block's full weights and gradients while it runs);
    activations: the tensors autograd saves for the backward pass, counted per token from danlu's own
    layers (danlu.nn; checked against torch.autograd.graph.saved_tensors_hooks, see tests/train/test_plan.py):
      per layer, in elements: 2 norms × (2·C for LayerNorm: input and output | 3·C for RMSNorm: input, x/rms,
      output) + (C + 2·kv) q,k,v + (C + kv) RoPE's rotated q,k + C attention output + n_head softmax
      log-sum-exp + (2·I for GELU: fc output and activation | 4·I for SwiGLU: gate, silu, up, product);
      once: final norm + V log-probabilities of the loss;
    with gradient checkpointing: C per layer (each block's input) + the once-part, and during the backward
    one layer's full set at a time (recomputed).
  Peak during a step = weights + AdamW + the larger of two moments of the backward pass (zero_grad sets the
  gradients to None, so they grow while the activations are freed):
    its start: activations + 2·B·T·V·4 (the gradients of the log-probs and of the logits, alive together);
    its end: all gradients (+ with checkpointing, the block inputs and one recomputed layer).
KV cache at inference: 2·L·B·T·kv elements (keys and values of every layer).

Speed: tokens/s = MFU · peak FLOP/s / training FLOPs per token. On a GPU the peak is the datasheet's dense
bf16 figure and MFU is a stated guess (0.4 by default: PaLM reports 46%, nanoGPT-class runs 30-50%); on the
CPU `calibrate_cpu` times a few training steps of the same shapes (one layer) and uses the FLOP/s achieved.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from danlu.errors import DanluError

GiB = 2**30

# Dense bf16 tensor-core peaks (no 2:4 sparsity), from the vendors' datasheets, and memory per device.
DEVICES: dict[str, dict[str, float]] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 TFLOPS "with sparsity" -> 989 dense; 80 GB HBM3
    "h100": {"peak_flops": 989e12, "memory_gib": 80},
    # NVIDIA H200 datasheet (SXM): same Hopper compute as H100 SXM, 989 dense BF16 TFLOPS; 141 GB HBM3e
    "h200": {"peak_flops": 989e12, "memory_gib": 141},
    # NVIDIA A100 datasheet (SXM4 80GB): BF16 312 TFLOPS dense (624 with sparsity); 80 GB HBM2e
    "a100": {"peak_flops": 312e12, "memory_gib": 80},
    # NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: BF16 with FP32 accumulate 165.2 TFLOPS
    # dense (330.3 with FP16 accumulate, which PyTorch does not use); 24 GB GDDR6X
    "4090": {"peak_flops": 165.2e12, "memory_gib": 24},
}


@dataclass
class Plan:
    params: int
    params_matmul: int
    flops_per_token: float  # training (forward + backward [+ recompute])
    weights_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    activations_bytes: float  # saved for backward at the chosen setting
    activations_bytes_no_recompute: float
    activations_bytes_recompute: float
    loss_transient_bytes: float
    peak_train_bytes: float
    kv_cache_bytes: float  # inference, B sequences of T tokens
    tokens_per_step: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(cfg: Any) -> tuple[int, int]:
    """(all parameters, parameters of matrix multiplies), exactly, by building the model on the meta device
    (no memory, no compute). For GPT-2 shapes N ≈ 12·L·C² + V·C (Kaplan et al. 2020, Table 1)."""
    return _count_params(json.dumps(cfg.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=64)
def _count_params(cfg_json: str) -> tuple[int, int]:
    import torch

    from danlu.models.gpt import GPT, GPTConfig

    cfg = GPTConfig.from_dict(json.loads(cfg_json))
    with torch.device("meta"):
        model = GPT(cfg)
    total = sum(p.numel() for p in model.parameters())  # a tied head is one tensor, counted once
    embed = model.wte.weight.numel() + (model.wpe.weight.numel() if model.wpe is not None else 0)
    head = model.lm_head.weight.numel()
    matmul = total - embed + (head if cfg.tie_embeddings else 0)
    return total, matmul


def activation_elements_per_token(cfg: Any, recompute: bool) -> tuple[float, float]:
    """(elements autograd keeps per token through the forward pass, elements one recomputed layer adds
    during the backward pass: 0 without checkpointing), the module docstring's count."""
    C, L, V, I = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.intermediate_size
    kv = cfg.n_kv_head * cfg.head_size
    norm = 2 * C if cfg.norm == "layernorm" else 3 * C
    mlp = 4 * I if cfg.mlp == "swiglu" else (I if cfg.mlp == "relu" else 2 * I)
    rope = C + kv if cfg.position == "rope" else 0
    layer = 2 * norm + (C + 2 * kv) + rope + C + cfg.n_head + mlp
    once = norm + V
    if recompute:  # each block's input kept; one block's set rebuilt at a time in the backward pass
        return L * C + once, layer
    return L * layer + once, 0.0


def plan_training(
    cfg: Any,
    batch_size: int,
    block_size: int,
    world_size: int = 1,
    strategy: str = "single",
    gradient_checkpointing: bool = False,
    grad_accum: int = 1,
) -> Plan:
    """The plan of one process: `batch_size` sequences per micro-batch summed over the `world_size`
    processes (as TrainConfig.batch_size), `block_size` tokens each."""
    if batch_size % world_size:
        raise DanluError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
    if block_size > cfg.block_size:
        raise DanluError(f"block_size {block_size} is larger than the model's context ({cfg.block_size})")
    B, T, L, C = batch_size // world_size, block_size, cfg.n_layer, cfg.n_embd
    N, N_matmul = count_params(cfg)
    attention = 12 * L * C * T
    flops = 6 * N_matmul + attention
    if gradient_checkpointing:
        flops += (6 * N_matmul + attention) / 3  # one more forward
    shard = world_size if strategy == "fsdp" else 1
    weights, grads, adam = 4 * N / shard, 4 * N / shard, 8 * N / shard
    if strategy == "fsdp" and shard > 1:  # one block's full weights and gradients exist while it runs
        block = (N_matmul - cfg.vocab_size * C) / L
        weights, grads = weights + 4 * block, grads + 4 * block
    act_plain = 4 * B * T * activation_elements_per_token(cfg, False)[0]
    kept, recomputed = (4 * B * T * n for n in activation_elements_per_token(cfg, True))
    act_recompute = kept + recomputed
    act = act_recompute if gradient_checkpointing else act_plain
    loss_transient = 2 * 4 * B * T * cfg.vocab_size
    if gradient_checkpointing:  # the loss part is freed before the first block is recomputed
        inputs = 4 * B * T * L * C
        peak = weights + adam + max(kept + loss_transient, grads + inputs + recomputed)
    else:
        peak = weights + adam + max(act + loss_transient, grads)
    kv_cache = 4 * 2 * L * B * T * cfg.n_kv_head * cfg.head_size
    return Plan(
        params=N,
        params_matmul=N_matmul,
        flops_per_token=flops,
        weights_bytes=weights,
        grads_bytes=grads,
        optimizer_bytes=adam,
        activations_bytes=act,
        activations_bytes_no_recompute=act_plain,
        activations_bytes_recompute=act_recompute,
        loss_transient_bytes=loss_transient,
        peak_train_bytes=peak,
        kv_cache_bytes=kv_cache,
        tokens_per_step=batch_size * T * grad_accum,
    )


def largest_micro_batch(cfg: Any, block_size: int, memory_bytes: float, **kwargs: Any) -> int:
    """The largest per-process micro-batch whose planned peak fits `memory_bytes` (0 when none does; at most
    2**24). The peak never falls as B grows: double B until it does not fit, then bisect."""
    world = kwargs.get("world_size", 1)

    def fits(B: int) -> bool:
        return plan_training(cfg, B * world, block_size, **kwargs).peak_train_bytes <= memory_bytes

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high) and high < 2**24:
        low, high = high, 2 * high
    if fits(high):
        return high
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def calibrate_cpu(cfg: Any, batch_size: int, block_size: int, steps: int = 3) -> float:
    """FLOP/s this CPU achieves on a training step of these shapes: one layer of the model, timed over a few
    forward+backward+AdamW steps after a warm-up, divided into the planned FLOPs of that one-layer model."""
    import dataclasses

    import torch

    from danlu.models.gpt import GPT

    small = dataclasses.replace(cfg, n_layer=1)
    torch.manual_seed(0)
    model = GPT(small)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, small.vocab_size, (batch_size, block_size))

    def step() -> None:
        model(x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: first-touch allocations and AdamW's state
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    flops = plan_training(small, batch_size, block_size).flops_per_token * batch_size * block_size
    return flops / seconds


def tokens_per_second(plan: Plan, flops_per_second: float) -> float:
    return flops_per_second / plan.flops_per_token


def available_memory() -> float:
    """Bytes of memory this machine can still give (MemAvailable of /proc/meminfo; 8 GiB when unknown)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GiB


def gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB" if x >= 0.1 * GiB else f"{x / 2**20:.1f} MiB"


def describe(plan: Plan, tok_s: float, where: str, max_steps: int, largest: int, memory: float) -> str:
    """The plan as a few readable lines (what `danlu plan` prints)."""
    step_s = plan.tokens_per_step / tok_s if tok_s > 0 else math.inf
    total_s = step_s * max_steps
    lines = [
        f"parameters           {plan.params:,} ({plan.params_matmul:,} in matrix multiplies)",
        f"training FLOPs/token {plan.flops_per_token:,.0f}  (6·N + 12·L·C·T)",
        f"weights              {gib(plan.weights_bytes)}",
        f"gradients            {gib(plan.grads_bytes)}",
        f"AdamW state          {gib(plan.optimizer_bytes)}",
        f"activations          {gib(plan.activations_bytes_no_recompute)} plain, "
        f"{gib(plan.activations_bytes_recompute)} with --gradient-checkpointing",
        f"peak training memory {gib(plan.peak_train_bytes)} per process",
        f"KV cache (inference) {gib(plan.kv_cache_bytes)} for the same batch and context",
        f"speed on {where:<11} {tok_s:,.0f} tokens/s, {step_s:.3g} s/step, {total_s / 3600:.3g} h for "
        f"{max_steps} steps",
        f"largest micro-batch  {largest} sequences per process fit {gib(memory)}",
    ]
    return "\n".join(lines)
