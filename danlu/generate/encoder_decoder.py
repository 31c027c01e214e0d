"""The seq2seq Transformer (models/seq2seq.py) as a stepping backend of the one decoding engine: the encoder
runs once per source, then the decoder steps one token at a time from its start token, with its self-attention
KV cache and the memory's cross-attention keys and values (computed once, copied with the beams).

`translate_ids` decodes a batch of sources with the engine's loops: greedy (`search.decode_steps`) or beam
search (`search.beam_hypotheses`), ranked by GNMT's length penalty ((5 + n) / 6)^alpha, as "Attention Is
All You Need" §6.1 (beam 4, alpha 0.6; Wu et al. 2016). Notation: B sources, S source length, V vocab.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.generate.search import beam_hypotheses, decode_steps
from danlu.models.seq2seq import Transformer
from danlu.nn.attention import padding_mask


class Seq2SeqStepper:
    """`search.Stepper` for an encoder-decoder: `start` encodes the sources and feeds the decoder's start token."""

    def __init__(self, model: Transformer, max_new_tokens: int) -> None:
        self.model, self.max_new_tokens = model, max_new_tokens

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Source ids and mask (B, S) -> logits of the first target token (B, V)."""
        m, B = self.model, input_ids.shape[0]
        self.memory_kv = m.memory_kv(
            m.encode(input_ids, attention_mask)
        )  # per layer (B, n_head, S, head_size)
        self.memory_mask = padding_mask(attention_mask)  # (B, 1, 1, S)
        self.cache = m.new_kv_cache(B, self.max_new_tokens)
        bos = torch.full((B,), m.config.bos_token_id, dtype=torch.long, device=input_ids.device)
        return self.step(bos)

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        logits = self.model.decode(tok[:, None], self.memory_kv, self.memory_mask, self.cache)
        return logits[:, -1].float()  # (B, V)

    def reorder(self, index: torch.Tensor) -> None:
        """Row i continues old row index[i]: the decoder's cache, the memory and its mask (any row count)."""
        self.cache.reorder(index)  # KVCache.reorder selects new buffers, so the row count may change
        self.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)

    expand = reorder


@torch.inference_mode()
def translate_ids(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    opts: GenerationOptions,
) -> list[list[int]]:
    """Each source's output ids, without the end-of-sequence id: greedy when opts.num_beams is 1, beam search
    otherwise. Sources (B, S) with their mask (None: no padding). max_new_tokens is capped by block_size."""
    cfg = model.config
    if opts.do_sample:
        raise DanluError("translation decodes greedily or with beams; use temperature=0")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    N = min(opts.max_new_tokens, cfg.block_size)
    stepper = Seq2SeqStepper(model, N)
    B = input_ids.shape[0]
    start = torch.full((B, 1), cfg.bos_token_id, dtype=torch.long, device=input_ids.device)
    history = (start, torch.ones_like(start))  # what the decoder has written: its start token
    stop_ids = [cfg.eos_token_id]
    opts = replace(opts, max_new_tokens=N)
    if opts.num_beams > 1:
        hyps = beam_hypotheses(
            stepper, history, opts, stop_ids, prompt=(input_ids, mask), finish_at_length=False
        )
        rows = [h.token_ids for h in hyps]
    else:
        steps = decode_steps(None, input_ids, mask, opts, stop_ids, stepper=stepper, history_ids=history)
        cols = [tok for tok, _ in steps]
        rows = torch.stack(cols, 1).tolist() if cols else [[] for _ in range(B)]
    return [r[: r.index(cfg.eos_token_id)] if cfg.eos_token_id in r else r for r in rows]


def greedy_decode(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
) -> list[list[int]]:
    """The most likely next token at each step; each row stops at EOS (not included)."""
    return translate_ids(model, input_ids, attention_mask, GenerationOptions(max_new_tokens=max_new_tokens))


def beam_decode(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    beam_size: int = 4,
    max_new_tokens: int = 64,
    length_penalty: float = 0.6,
) -> list[list[int]]:
    """Beam search with GNMT's length penalty (the paper's §6.1: beam 4, alpha = 0.6)."""
    opts = GenerationOptions(
        max_new_tokens=max_new_tokens, num_beams=beam_size, length_penalty=length_penalty,
        length_penalty_form="gnmt",
    )  # fmt: skip
    return translate_ids(model, input_ids, attention_mask, opts)
