"""Supervised fine-tuning (SFT): next-token prediction on demonstrations, with the loss on the reply only.

InstructGPT's first step (notes 000 §InstructGPT, step 1): "prompts and human-written answers are concatenated
and the pretrained model is fine-tuned on them; to GPT it is the same next-word prediction as pretraining".
The one difference we keep from pretraining is the loss mask: the prompt tokens get label -100, so the model
is taught to *answer*, not to write questions (loss = −Σ_{t ∈ response} log p(x_t | x_<t) / #response tokens).

Records (danlu.data.formats, kind "sft"): Alpaca {"instruction", "input", "output"} or {"messages": [...]}.
Both are rendered with the tokenizer's chat template (ChatML), the way `danlu chat` and `danlu eval` prompt:

    <|im_start|>user\\n{instruction}\\n\\n{input}<|im_end|>\\n<|im_start|>assistant\\n{output}<|im_end|>\\n<|endoftext|>
    ^---------------------- label -100 (prompt) ------------------------------^ ^------ trained --------------^

Each prompt segment is encoded on its own, exactly as generation encodes a prompt, so training and inference
see the same ids. The trailing <|endoftext|> is trained too, so plain `danlu.generate` stops by itself.

Packing (optional) concatenates several examples into one row of `block_size` tokens to waste no compute on
padding; the rows still mask every prompt. Examples in a packed row may attend to earlier ones (as in TRL's
packing): cheap, and harmless when each reply depends only on its own prompt. Not harmless for memorising
facts: a packed record is learned after other records, at other positions, than a question asked alone
(experiments/README.md, SmolLM2: exact match 0.80 packed vs 1.00 unpacked at the same training loss).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.data.formats import sft_messages, sft_prompt
from danlu.errors import DanluError
from danlu.tune.lora import finish_lora, merged_copy, save_adapter, wrap_lora

IGNORE = -100


# The one SFT prompt formatter lives with the record schemas; these names stay for existing callers.
record_messages = sft_messages
prompt_text = sft_prompt


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # input_ids where trained, IGNORE (-100) on prompt tokens


def encode_messages(messages: list[dict[str, str]], tokenizer: Any, max_len: int | None = None) -> SFTExample:
    """Token ids and labels of a chat: every assistant turn is trained, everything else is masked."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the part of the rendered chat already encoded
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not upto.startswith(before):
            raise DanluError("the chat template does not render a chat as a growing prefix; SFT needs one")
        prompt_ids = tokenizer.encode(before[len(done) :])
        reply_ids = tokenizer.encode(upto[len(before) :])
        ids += prompt_ids + reply_ids
        labels += [IGNORE] * len(prompt_ids) + reply_ids
        done = upto
    if tokenizer.eos_token_id is not None:  # end of the whole conversation: generation stops here
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    if max_len is not None and len(ids) > max_len:
        ids, labels = ids[:max_len], labels[:max_len]
    return SFTExample(ids, labels)


def encode_records(records: list[dict], tokenizer: Any, max_len: int) -> list[SFTExample]:
    """Encode validated SFT records; an example whose reply is cut off entirely by max_len is an error."""
    out = []
    for i, r in enumerate(records):
        ex = encode_messages(sft_messages(r), tokenizer, max_len)
        if all(label == IGNORE for label in ex.labels[1:]):
            raise DanluError(
                f"SFT record {i + 1}: the prompt alone is {len(ex.input_ids)}+ tokens, so nothing of the reply "
                f"fits in block_size={max_len}; raise --block-size or shorten the prompt"
            )
        out.append(ex)
    return out


def pack_examples(examples: list[SFTExample], block_size: int, seed: int = 0) -> list[SFTExample]:
    """Greedy packing in a shuffled order: consecutive examples fill rows of at most block_size tokens."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    rows: list[SFTExample] = []
    cur = SFTExample([], [])
    for i in order:
        ex = examples[i]
        if cur.input_ids and len(cur.input_ids) + len(ex.input_ids) > block_size:
            rows.append(cur)
            cur = SFTExample([], [])
        cur = SFTExample(cur.input_ids + ex.input_ids, cur.labels + ex.labels)
    if cur.input_ids:
        rows.append(cur)
    return rows


def collate(examples: list[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. No attention mask is needed: with right padding and a causal mask,
    real tokens never see the pads, and the pads' labels are -100 (so the fast is_causal kernel is used)."""
    T = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": input_ids, "labels": labels}


def epoch_batch_indices(n: int, B: int, seed: int, step: int, micro: int, grad_accum: int) -> list[int]:
    """Indices of micro-batch `micro` of optimizer step `step`: a fresh permutation of the n items per epoch,
    read in order, so every item is seen once per epoch and the batch is a pure function of its arguments."""
    start = (step * grad_accum + micro) * B
    perms: dict[int, list[int]] = {}
    out = []
    for k in range(start, start + B):
        epoch, pos = divmod(k, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(
                n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
            ).tolist()
        out.append(perms[epoch][pos])
    return out


def make_batch_fn(
    train: list[SFTExample], val: list[SFTExample], B: int, seed: int, grad_accum: int, pad_id: int
) -> Callable[[str, int, int], dict[str, torch.Tensor]]:
    """batch_fn(split, step, micro) for danlu.train.loop.train: training batches walk epochs of `train`;
    validation batch i is the i-th slice of `val` (fixed across evaluations)."""
    if not train or not val:
        raise DanluError("SFT needs at least one training and one validation example")

    def batch_fn(split: str, step: int, micro: int) -> dict[str, torch.Tensor]:
        if split == "train":
            idx = epoch_batch_indices(len(train), B, seed, step, micro, grad_accum)
            return collate([train[i] for i in idx], pad_id)
        start = (step * B) % len(val)
        return collate([val[(start + j) % len(val)] for j in range(min(B, len(val)))], pad_id)

    return batch_fn


def split_validation(
    records: list[dict], fraction: float = 0.05, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """A deterministic held-out slice of the training records for the validation loss."""
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(fraction * len(records))) if len(records) > 1 else 0
    val = [records[i] for i in order[:n_val]]
    train = [records[i] for i in order[n_val:]]
    return (train, val) if val else (records, records)


@dataclass
class SFTResult:
    model: nn.Module  # the fine-tuned model: a plain GPT (LoRA merged in memory) or a PTuningModel
    summary: dict[str, Any]
    checkpoint: Path | None  # a model folder: full SFT's OUT/checkpoint, or LoRA's OUT/merged if asked
    extras: dict[str, Path] = field(default_factory=dict)  # "adapter" / "prompt_encoder" folders


def sft(
    model: nn.Module,
    tokenizer: Any,
    train_records: list[dict],
    out_dir: str | Path,
    train_config: Any = None,
    val_records: list[dict] | None = None,
    lora: Any = None,
    ptuning: Any = None,
    packing: bool = False,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    resume: bool = False,
    base_name: str | None = None,
    merge: bool = False,
    save_dtype: torch.dtype | None = None,
) -> SFTResult:
    """Fine-tune `model` (a GPT, modified in place unless adapters are used) on SFT records.

    lora: a `danlu.tune.lora.LoRAConfig` to train only low-rank adapters. As PEFT and TRL do, the result is the
    adapter alone (OUT/adapter, PEFT's layout, `base_model_name_or_path` = `base_name`); OUT/checkpoint holds
    the training state (adapter, optimizer.pt, trainer_state.json), not a model. `merge=True` also writes the
    merged model to OUT/merged in `save_dtype` (default float32), as `danlu merge-lora` does. The returned model
    has the adapters merged in memory (for evaluating it at once).
    ptuning: a `danlu.tune.ptuning.PTuningConfig` to train only a prompt encoder (saved to OUT/prompt_encoder;
    the returned model is the PTuningModel wrapper). Full fine-tuning saves the model to OUT/checkpoint.
    """
    from danlu.models.checkpoints import save_model
    from danlu.train.loop import TrainConfig, train

    cfg = train_config or TrainConfig()
    out_dir = Path(out_dir)
    if lora is not None and ptuning is not None:
        raise DanluError("choose one of LoRA and P-tuning, not both")
    if resume and (lora is not None or ptuning is not None):
        raise DanluError("--resume is supported for full fine-tuning only; rerun without --resume")
    if val_records is None:
        train_records, val_records = split_validation(train_records, seed=cfg.seed)
    max_len = cfg.block_size
    if ptuning is not None:
        max_len -= ptuning.n_virtual  # the virtual tokens take positions of the context too
    train_ex = encode_records(train_records, tokenizer, max_len)
    val_ex = encode_records(val_records, tokenizer, max_len)
    if packing:
        train_ex = pack_examples(train_ex, max_len, cfg.seed)
    pad_id = tokenizer.pad_id
    batch_fn = make_batch_fn(train_ex, val_ex, cfg.batch_size, cfg.seed, cfg.grad_accum, pad_id)

    extras: dict[str, Path] = {}
    trained: nn.Module = model
    save_fn: Callable[[nn.Module, Path], None] | None
    wrap_lora(model, lora)  # a no-op without a LoRA config
    if lora is not None:

        def save_fn(m: nn.Module, d: Path) -> None:  # the training state's model part: the adapter only
            save_adapter(m, d, lora, base_model_name_or_path=base_name)

    elif ptuning is not None:
        from danlu.tune.ptuning import PTuningModel

        trained = PTuningModel(model, ptuning)
        save_fn = None
    else:

        def save_fn(m: nn.Module, d: Path) -> None:
            save_model(merged_copy(m), d, tokenizer=tokenizer)  # LoRA: a merged copy; training goes on

    summary = train(trained, batch_fn, cfg, out_dir, save_fn=save_fn, eval_fn=eval_fn, resume=resume)
    summary["train_examples"] = len(train_records)
    summary["train_rows"] = len(train_ex)
    summary["trainable_params"] = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    checkpoint: Path | None = out_dir / "checkpoint"
    adapter = finish_lora(model, lora, out_dir / "adapter", base_name)  # OUT/adapter, then merged in place
    if adapter is not None:
        extras["adapter"] = adapter
        extras["train_state"] = out_dir / "checkpoint"
        checkpoint = None
        if merge:
            dtype = save_dtype or torch.float32
            checkpoint = save_model(copy.deepcopy(model).to(dtype), out_dir / "merged", tokenizer=tokenizer)
    elif ptuning is not None:
        extras["prompt_encoder"] = trained.save(out_dir / "prompt_encoder")
        checkpoint = None
    trained.eval()
    return SFTResult(model=trained, summary=summary, checkpoint=checkpoint, extras=extras)
