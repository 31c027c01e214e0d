"""Stepping a model through a batch, gpt-fast style: `prefill` the prompts once, then `decode_one` token at a
time (or `forward_tokens` several, for speculative verification), with `reorder` for beams and `rollback`
for rejected draft tokens.

Notation: B batch rows, T tokens fed this call, L cache slots (max_len), V vocab.

Every row of a batch shares one cache length: prompts are left-padded so each row's next token sits in the same
slot. `key_mask` (B, L) says which slots hold real tokens (padding and not-yet-written slots are False) and
`next_pos` (B,) is each row's next position id, which counts only its real tokens, so a padded row computes what
it would alone.

Two backends, one interface: danlu's GPT runs the lean static-cache forward of `static.py` (compiled when
asked: into a CUDA graph on CUDA, into fused C++ loops on CPU); any other model with
`forward(input_ids, attention_mask, kv_cache, position_ids)` and `new_kv_cache(B, max_len)` runs its own
forward (the test suite's scripted fakes do).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.static import compiled_decode_one, gpt_forward, new_static_cache


@dataclass
class DecodeState:
    """Where decoding of one batch stands."""

    cache: Any  # a StaticKVCache (danlu GPT) or the model's own cache
    key_mask: torch.Tensor  # (B, L) bool: slot holds a real token
    next_pos: torch.Tensor  # (B,) long: position id of each row's next token
    length: int = 0  # slots filled, the same for every row
    lean: bool = True  # the static-cache GPT forward, else model.forward
    padded: bool = False  # some row has left padding (else attention needs no mask)
    decode_fn: Any = None  # compiled decode_one_static, or None to run eagerly
    guards_checked: bool = False  # decode_fn ran once for this state with all of dynamo's guards

    @property
    def max_len(self) -> int:
        return self.key_mask.shape[1]


def _is_danlu_gpt(model: nn.Module) -> bool:
    from danlu.models.gpt import GPT

    return isinstance(model, GPT)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def new_state(model: nn.Module, B: int, max_len: int, compile: bool = False) -> DecodeState:
    """An empty decoding state for B rows and up to max_len tokens (prompt + new) per row.

    compile=True compiles the decode step (a CUDA graph on CUDA, fused C++ kernels on CPU); L is then rounded up to
    a multiple of 256 (within the model's context) so that nearby lengths reuse one compiled step.
    """
    device = model_device(model)
    lean = _is_danlu_gpt(model)
    if lean:  # a GPT using fields static.py does not implement decodes through its own forward (issue 19)
        from danlu.models.gpt import lean_decode_blockers

        blockers = lean_decode_blockers(model.config)
        if blockers and compile:
            raise DanluError(
                f"compile=True: the compiled decode step does not implement {', '.join(blockers)} of this "
                "model; decode it with compile=False (drop --compile)"
            )
        lean = not blockers
    if compile and lean:
        return _graph_state(model, B, max_len, device)
    cache = new_static_cache(model, B, max_len) if lean else model.new_kv_cache(B, max_len=max_len)
    key_mask = torch.zeros(B, max_len, dtype=torch.bool, device=device)
    return DecodeState(cache, key_mask, torch.zeros(B, dtype=torch.long, device=device), lean=lean)


# (model) -> {(B, L): (cache, key_mask)}: a CUDA graph replays fixed addresses, so the buffers it was recorded
# with are kept and reused by later calls of the same shape instead of re-recording the graph each time.
_GRAPH_BUFFERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _graph_state(model: nn.Module, B: int, max_len: int, device: torch.device) -> DecodeState:
    max_len = min(-(-max_len // 256) * 256, model.config.block_size)
    buffers = _GRAPH_BUFFERS.setdefault(model, {})
    if (B, max_len) not in buffers:
        cache = new_static_cache(model, B, max_len)
        key_mask = torch.zeros(B, max_len, dtype=torch.bool, device=device)
        for t in (*cache.k, *cache.v, key_mask):  # mutated in place by the graph: keep their addresses fixed
            torch._dynamo.mark_static_address(t)
        buffers[(B, max_len)] = (cache, key_mask)
    cache, key_mask = buffers[(B, max_len)]
    key_mask.fill_(False)  # a fresh start: old keys are masked out, then overwritten
    state = DecodeState(cache, key_mask, torch.zeros(B, dtype=torch.long, device=device))
    state.decode_fn = compiled_decode_one(model)
    return state


def _check_room(state: DecodeState, T: int) -> None:
    if state.length + T > state.max_len:
        raise DanluError(
            f"decoding state is full: {state.length} + {T} tokens exceed its {state.max_len} slots; "
            "ask for fewer new tokens"
        )


def forward_tokens(
    model: nn.Module, state: DecodeState, input_ids: torch.Tensor, last_only: bool = False
) -> torch.Tensor:
    """Feed input_ids (B, T) after what the state holds (every token real); return logits (B, T or 1, V)."""
    B, T = input_ids.shape
    _check_room(state, T)
    start, S = state.length, state.length + T
    position_ids = state.next_pos[:, None] + torch.arange(T, device=input_ids.device)  # (B, T)
    state.key_mask[:, start:S] = True
    if state.lean:
        mask = _mask(state, start, T)
        slots = torch.arange(start, S, device=input_ids.device)
        logits = gpt_forward(model, input_ids, position_ids, state.cache, slots, mask, S, last_only)
    else:
        attention_mask = state.key_mask[:, :S].long() if state.padded else None
        logits = model(
            input_ids, attention_mask=attention_mask, kv_cache=state.cache, position_ids=position_ids
        ).logits
        if last_only:
            logits = logits[:, -1:]
    state.length = S
    state.next_pos += T
    return logits


def _mask(state: DecodeState, start: int, T: int) -> torch.Tensor | None:
    """The (B | 1, 1, T, S) boolean mask for T queries at slots [start, start + T), or None if all may attend."""
    S = start + T
    if not state.padded and T == 1:
        return None  # one new token attends every real slot before it
    device = state.key_mask.device
    q = torch.arange(start, S, device=device)[:, None]  # (T, 1)
    k = torch.arange(S, device=device)[None, :]  # (1, S)
    causal = (k <= q)[None, None]  # (1, 1, T, S)
    if not state.padded:
        return causal
    keys = state.key_mask[:, None, None, :S]  # (B, 1, 1, S)
    # A padding query would attend nothing (softmax of all -inf is NaN): let it see itself.
    return (causal & keys) | (k == q)[None, None]


def prefill(
    model: nn.Module, state: DecodeState, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Run the (left-padded) prompts input_ids (B, T) with attention_mask (B, T) of 1/0 -> next logits (B, V)."""
    B, T = input_ids.shape
    if state.length:
        raise DanluError("prefill needs an empty decoding state; make a new one with new_state()")
    _check_room(state, T)
    real = attention_mask.bool()
    state.padded = not bool(real.all())
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T): padding does not count
    state.key_mask[:, :T] = real
    if state.lean:
        slots = torch.arange(T, device=input_ids.device)
        mask = _mask(state, 0, T)
        logits = gpt_forward(model, input_ids, position_ids, state.cache, slots, mask, T, last_only=True)
    else:
        logits = model(
            input_ids,
            attention_mask=attention_mask if state.padded else None,
            kv_cache=state.cache,
            position_ids=position_ids,
        ).logits
    state.length = T
    state.next_pos = position_ids[:, -1] + 1
    return logits[:, -1].float()


def decode_one(model: nn.Module, state: DecodeState, tok: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, tok (B,), and return the next logits (B, V) in fp32."""
    if state.decode_fn is None:
        return forward_tokens(model, state, tok[:, None])[:, -1].float()
    _check_room(state, 1)
    slot = torch.tensor([state.length], device=tok.device)
    key_mask = state.key_mask  # (B, L)
    cpu = tok.device.type == "cpu"
    if cpu:
        # No CUDA graph to keep shapes fixed for: attend only the filled slots, their number a dynamic
        # dimension so one compiled step serves every length (SmolLM2, 144 of 256 slots: 3% faster steps),
        # with attention written out for inductor (on CUDA SDPA's kernels serve one query well).
        key_mask = key_mask[:, : state.length + 1]  # (B, S)
        torch._dynamo.mark_dynamic(key_mask, 1)
    args = (model, state.cache, key_mask, tok[:, None], state.next_pos[:, None], slot, cpu)
    if state.guards_checked:
        # The same model, buffers and dtypes as the call before (only S grows, and it is symbolic), so
        # dynamo's guards (one per weight: ~0.4 ms of a 23 ms CPU step for SmolLM2) can only pass again:
        # check just those that tell the compiled variants apart (other models, batch sizes, cache sizes).
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            logits = state.decode_fn(*args)
    else:
        logits = state.decode_fn(*args)
        state.guards_checked = True
    state.length += 1
    state.next_pos += 1
    return logits.to(torch.float32, copy=True)  # the graph's output buffer is overwritten by the next replay


def reorder(state: DecodeState, index: torch.Tensor) -> None:
    """Row i continues from old row index[i] (beam search)."""
    state.cache.reorder(index)
    state.key_mask.copy_(state.key_mask.index_select(0, index))
    state.next_pos = state.next_pos.index_select(0, index)


def rollback(state: DecodeState, length: int) -> None:
    """Forget every slot from `length` on (rejected speculative tokens); they are overwritten later."""
    drop = state.length - length
    if drop < 0:
        raise ValueError(f"cannot roll a state of length {state.length} forward to {length}")
    state.key_mask[:, length:] = False
    state.next_pos -= drop
    state.length = length
    if not state.lean:
        if not hasattr(state.cache, "seq_len"):
            raise DanluError("this model's KV cache cannot be rolled back (no seq_len); use a danlu GPT")
        state.cache.seq_len = length
