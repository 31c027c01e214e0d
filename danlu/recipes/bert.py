"""Training BERT on the world: MLM + NSP pretraining on its text, then fine-tuning a sequence classifier on its
labelled sentences; `stage_bert` for `danlu demo`.

Inputs are `[CLS] A [SEP] B [SEP]` with token types 0 for A (and its [SEP]) and 1 for B (Devlin et al. 2019,
§3, Figure 2). The tokenizer is a byte-level BPE with BERT's special tokens (any danlu tokenizer that has
[PAD] [UNK] [CLS] [SEP] [MASK] works, WordPiece included).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification
from danlu.recipes.context import DemoContext
from danlu.recipes.specials import require_specials, train_bpe
from danlu.train.loop import TrainConfig, train
from danlu.train.objectives import mask_tokens, nsp_pairs

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a document: lines, cut after . ! ? (then a space) and after 。！？."""
    return [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line) if s.strip()]


def train_tokenizer(texts: list[str], vocab_size: int = 2048, show_progress: bool = False):
    """A byte-level BPE with [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0..4."""
    return train_bpe(
        texts, vocab_size, SPECIALS, show_progress, pad_token="[PAD]", unk_token="[UNK]", eos_token="[SEP]"
    )


def special_ids(tokenizer: Any) -> dict[str, int]:
    """The ids of BERT's five special tokens; a DanluError names any the tokenizer lacks."""
    return require_specials(tokenizer, SPECIALS, "BERT", "danlu.recipes.bert.train_tokenizer")


def encode_pair(tokenizer: Any, a: str, b: str | None, max_len: int) -> tuple[list[int], list[int]]:
    """([CLS] A [SEP] (B [SEP]), token types); A and B are cut, longest first, to fit max_len."""
    ids = special_ids(tokenizer)
    x, y = tokenizer.encode(a), tokenizer.encode(b) if b is not None else []
    room = max_len - (3 if b is not None else 2)
    while len(x) + len(y) > room:  # BERT's truncation: trim the longer segment
        if len(x) >= len(y):
            x.pop()
        else:
            y.pop()
    input_ids = [ids["[CLS]"], *x, ids["[SEP]"]]
    types = [0] * len(input_ids)
    if b is not None:
        input_ids += [*y, ids["[SEP]"]]
        types += [1] * (len(y) + 1)
    return input_ids, types


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), T), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (x, t) in enumerate(rows):
        input_ids[i, : len(x)], token_type_ids[i, : len(x)] = torch.tensor(x), torch.tensor(t)
        attention_mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def pretraining_batches(
    tokenizer: Any, docs: dict[str, list[list[str]]], batch_size: int, max_len: int, seed: int
):
    """batch_fn for MLM + NSP: fresh sentence pairs and fresh masks at every step (dynamic masking, as
    RoBERTa; the original BERT fixed the masks once), a pure function of (split, step, micro)."""
    ids = special_ids(tokenizer)
    specials = torch.tensor(sorted(ids.values()))

    def batch_fn(split: str, step: int, micro: int) -> dict[str, torch.Tensor]:
        s = (seed * 1_000_003 + step) * 131 + micro + (0 if split == "train" else 7)
        pairs = nsp_pairs(docs[split], random.Random(s), n_pairs=batch_size)
        batch = pad_batch([encode_pair(tokenizer, a, b, max_len) for a, b, _ in pairs], ids["[PAD]"])
        g = torch.Generator().manual_seed(s)
        special = torch.isin(batch["input_ids"], specials)
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"],
            ids["[MASK]"],
            tokenizer.vocab_size,
            special,
            generator=g,
            random_token_low=len(SPECIALS),
        )
        batch["next_sentence_label"] = torch.tensor([label for _, _, label in pairs])
        return batch

    return batch_fn


@torch.no_grad()
def pretraining_accuracy(model: BertForPreTraining, batch_fn, n_batches: int = 8) -> dict[str, float]:
    """MLM accuracy (argmax = original token at masked positions) and NSP accuracy on validation batches."""
    model.eval()
    device = next(model.parameters()).device
    hit = total = nsp_hit = nsp_total = 0
    for i in range(n_batches):
        batch = {k: v.to(device) for k, v in batch_fn("val", i, 0).items()}
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        chosen = batch["labels"] != -100
        hit += (out.logits.argmax(-1)[chosen] == batch["labels"][chosen]).sum().item()
        total += chosen.sum().item()
        nsp_hit += (out.nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum().item()
        nsp_total += len(batch["next_sentence_label"])
    return {"mlm_accuracy": hit / max(1, total), "nsp_accuracy": nsp_hit / max(1, nsp_total)}


def world_documents(texts: list[str]) -> list[list[str]]:
    return [s for s in (split_sentences(t) for t in texts) if len(s) >= 2]


def pretrain_bert(
    model: BertForPreTraining,
    tokenizer: Any,
    train_texts: list[str],
    val_texts: list[str],
    out_dir: str | Path,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """MLM + NSP pretraining; returns the loop's summary plus MLM / NSP accuracy on the validation text."""
    from danlu.models.checkpoints import save_model

    docs = {"train": world_documents(train_texts), "val": world_documents(val_texts)}
    batch_fn = pretraining_batches(tokenizer, docs, cfg.batch_size, cfg.block_size, cfg.seed)
    summary = train(
        model,
        batch_fn,
        cfg,
        out_dir,
        save_fn=lambda m, d: save_model(m, d, tokenizer=tokenizer),
        eval_fn=lambda m: pretraining_accuracy(m, batch_fn, n_batches=4),
    )
    return summary | pretraining_accuracy(model, batch_fn, n_batches=16)


def classifier_from(pretrained: nn.Module, labels: list[str]) -> BertForSequenceClassification:
    """A classifier whose encoder starts from a pretrained BERT (the fine-tuning recipe, §4)."""
    src = pretrained.config.to_dict() | {"num_labels": len(labels), "id2label": dict(enumerate(labels))}
    src["id2label"] = {str(k): v for k, v in src["id2label"].items()}
    clf = BertForSequenceClassification(BertConfig.from_dict(src))
    clf.bert.load_state_dict(pretrained.bert.state_dict())
    return clf


def classification_batches(
    tokenizer: Any, data: dict[str, list[tuple[str, int]]], batch_size: int, max_len: int, seed: int
):
    pad = special_ids(tokenizer)["[PAD]"]

    def batch_fn(split: str, step: int, micro: int) -> dict[str, torch.Tensor]:
        rng = random.Random((seed * 1_000_003 + step) * 131 + micro + (0 if split == "train" else 7))
        rows = [data[split][rng.randrange(len(data[split]))] for _ in range(batch_size)]
        batch = pad_batch([encode_pair(tokenizer, text, None, max_len) for text, _ in rows], pad)
        batch["labels"] = torch.tensor([label for _, label in rows])
        return batch

    return batch_fn


@torch.no_grad()
def classify(
    model: BertForSequenceClassification, tokenizer: Any, texts: list[str], max_len: int = 128
) -> list[int]:
    """Predicted class ids of texts."""
    model.eval()
    device = next(model.parameters()).device
    pad = special_ids(tokenizer)["[PAD]"]
    preds: list[int] = []
    for i in range(0, len(texts), 64):
        batch = pad_batch([encode_pair(tokenizer, t, None, max_len) for t in texts[i : i + 64]], pad)
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).logits
        preds += logits.argmax(-1).tolist()
    return preds


@dataclass
class FinetuneResult:
    model: BertForSequenceClassification
    summary: dict[str, Any]
    labels: list[str]


def finetune_classifier(
    pretrained: nn.Module,
    tokenizer: Any,
    train_records: list[dict],
    test_records: list[dict],
    out_dir: str | Path,
    cfg: TrainConfig,
) -> FinetuneResult:
    """Fine-tune on {"text", "label"} records; report accuracy and macro-F1 on test_records."""
    from danlu.eval.classification import precision_recall_f1
    from danlu.models.checkpoints import save_model

    labels = sorted({r["label"] for r in train_records})
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({r["label"] for r in test_records} - set(index))
    if unknown:
        raise DanluError(f"test labels {unknown} never occur in the training records; labels seen: {labels}")
    rows = [(r["text"], index[r["label"]]) for r in train_records]
    random.Random(cfg.seed).shuffle(rows)
    n_val = max(1, len(rows) // 10)
    data = {"train": rows[n_val:], "val": rows[:n_val]}
    model = classifier_from(pretrained, labels)
    batch_fn = classification_batches(tokenizer, data, cfg.batch_size, cfg.block_size, cfg.seed)
    summary = train(model, batch_fn, cfg, out_dir, save_fn=lambda m, d: save_model(m, d, tokenizer=tokenizer))
    preds = classify(model, tokenizer, [r["text"] for r in test_records], cfg.block_size)
    truth = [index[r["label"]] for r in test_records]
    prf = precision_recall_f1(truth, preds, labels=list(range(len(labels))), average="macro")
    accuracy = sum(p == t for p, t in zip(preds, truth)) / len(truth)
    return FinetuneResult(model, summary | {"accuracy": accuracy, "macro_f1": prf.f1}, labels)


# ------------------------------------------------------------------------------------------- the whole run
@dataclass
class BertRunOptions:
    preset: str = "bert-tiny"
    vocab_size: int = 2048
    steps: int = 800  # MLM + NSP pretraining steps
    finetune_steps: int = 400
    batch_size: int = 32
    block_size: int = 64
    lr: float = 1e-3
    finetune_lr: float = 1e-3
    tokenizer_texts: int = 3000  # documents the tokenizer is trained on
    device: str = "cpu"
    seed: int = 0
    show_progress: bool = True


def read_bert_data(data: str | Path) -> dict[str, list]:
    """Pretraining texts (train, val) and classification records (train, test) of a world folder."""
    from danlu.data.formats import read_jsonl, read_texts

    path = Path(data)
    names = [
        "pretrain_train.jsonl",
        "pretrain_val.jsonl",
        "classification_train.jsonl",
        "classification_test.jsonl",
    ]
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise DanluError(f"{path} lacks {missing}; pass a world folder (`danlu world --out DIR`)")
    return {
        "train_texts": read_texts(path / names[0]),
        "val_texts": read_texts(path / names[1]),
        "train_records": read_jsonl(path / names[2], "classification"),
        "test_records": read_jsonl(path / names[3], "classification"),
    }


def train_world_bert(
    data: str | Path, out_dir: str | Path, opts: BertRunOptions | None = None
) -> tuple[FinetuneResult, dict[str, Any]]:
    """Tokenizer, MLM + NSP pretraining, classifier fine-tuning on a world folder. -> (fine-tuned, summary)."""
    import time

    opts = opts or BertRunOptions()
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    d = read_bert_data(data)
    tokenizer = train_tokenizer(d["train_texts"][: opts.tokenizer_texts], opts.vocab_size)
    torch.manual_seed(opts.seed)
    model = BertForPreTraining(
        BertConfig.from_name(
            opts.preset, vocab_size=tokenizer.vocab_size, block_size=max(opts.block_size, 128)
        )
    )

    def config(steps: int, lr: float) -> TrainConfig:
        return TrainConfig(
            max_steps=steps, batch_size=opts.batch_size, block_size=opts.block_size, lr=lr,
            warmup_steps=max(1, steps // 10), eval_interval=max(1, steps // 5), eval_batches=4,
            weight_decay=0.01, beta2=0.98, device=opts.device, seed=opts.seed, show_progress=opts.show_progress,
        )  # fmt: skip

    p = pretrain_bert(
        model, tokenizer, d["train_texts"], d["val_texts"], out_dir / "pretrain", config(opts.steps, opts.lr)
    )
    t1 = time.perf_counter()
    ft = finetune_classifier(
        model,
        tokenizer,
        d["train_records"],
        d["test_records"],
        out_dir / "classify",
        config(opts.finetune_steps, opts.finetune_lr),
    )
    summary = {
        "params": sum(x.numel() for x in model.parameters()),
        "pretrain_steps": opts.steps,
        "pretrain_first_val_loss": p["first_val_loss"],
        "pretrain_final_val_loss": p["final_val_loss"],
        "mlm_accuracy": p["mlm_accuracy"],
        "nsp_accuracy": p["nsp_accuracy"],
        "pretrain_seconds": round(t1 - t0, 1),
        "finetune_steps": opts.finetune_steps,
        "accuracy": ft.summary["accuracy"],
        "macro_f1": ft.summary["macro_f1"],
        "test_records": len(d["test_records"]),
        "labels": ft.labels,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return ft, summary


def stage_bert(ctx: DemoContext) -> dict[str, Any]:
    """`danlu demo` stage: BERT pretrained (MLM + NSP) on the world's text, fine-tuned to classify its labelled
    sentences. Uses ctx.state["world_dir"]; writes ctx.out / "bert"."""
    opts = ctx.options(
        BertRunOptions, steps="bert_steps", finetune_steps="bert_finetune_steps", batch_size="bert_batch_size"
    )
    ft, s = train_world_bert(ctx.state["world_dir"], ctx.out / "bert", opts)
    ctx.state["bert"] = ft.model
    ctx.sections.append(
        "## BERT (encoder-only: MLM + NSP, then classification)\n\n"
        f"A {s['params'] / 1e6:.2f} M-parameter BERT pretrained for {s['pretrain_steps']} steps on the world's text "
        "(15% of tokens chosen: 80% [MASK], 10% random, 10% kept; next-sentence pairs half consecutive). "
        f"Validation loss {s['pretrain_first_val_loss']:.3f} → {s['pretrain_final_val_loss']:.3f}; "
        f"**MLM accuracy {s['mlm_accuracy']:.1%}**, NSP accuracy {s['nsp_accuracy']:.1%} on held-out text.\n\n"
        f"Fine-tuned {s['finetune_steps']} steps as a sentence classifier ({', '.join(s['labels'])}): on "
        f"{s['test_records']} held-out sentences accuracy {s['accuracy']:.1%}, **macro-F1 {s['macro_f1']:.3f}**.\n\n"
        "![pretraining loss](bert/pretrain/loss.png)\n"
    )
    keys = ("params", "mlm_accuracy", "nsp_accuracy", "pretrain_final_val_loss", "accuracy", "macro_f1")
    return {k: s[k] for k in keys}
