"""Evaluating a language model on the embedded world's held-out files (`danlu eval --model CKPT --world DIR`).

Reads what `danlu world` writes (danlu.data.world):
- pretrain_val.jsonl {"text"}                        -> perplexity (sliding window, token-weighted);
- sft_test.jsonl {"instruction", "input", "output", "kind", "answer"?, "lang"?}
                                                     -> exact match per kind ("fact", "fact_heldout", "arith",
                                                        "translate", ...) and overall, greedy decoding; the
                                                        full "output" and the bare "answer" both count;
  the "translate" records also give BLEU: "bleu_to_zh" ("lang": "en-zh", or a reference with Chinese
  characters; `zh` tokenizer) and "bleu_to_en" (the others, `13a`).
A missing file skips its metrics; if none is there, it is an error.

The model is used only through `model(input_ids).logits` and `danlu.generate.generate(model, tokenizer,
prompts, max_new_tokens=..., temperature=0.0) -> list[str]`. Prompts go through the tokenizer's chat template
(instruction, then a blank line and the input if there is one), the way SFT formats them; the answer is the
generated text up to its first newline, stripped.

Exact match and BLEU compare *replies*: a base model that was never instruction-tuned continues a prompt instead
of answering it and scores about 0 whatever it knows. `answer_format_notes` says so in `notes` (eval.json, and
the CLI prints them): it measures the probability the model gives the chat template's end-of-turn token right
after a correct answer — an instruction-tuned model puts most of its probability there, a base model that never
saw the token almost none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import regex

from danlu.data.formats import sft_messages, sft_prompt
from danlu.errors import DanluError
from danlu.eval import report
from danlu.fileio import write_jsonl

_HAN = regex.compile(r"\p{Han}")  # Chinese characters: tells EN->ZH from ZH->EN references

PERPLEXITY_FILE = "pretrain_val.jsonl"
SFT_TEST_FILE = "sft_test.jsonl"


def _read(path: Path, limit: int | None) -> list[dict[str, Any]]:
    from danlu.eval.files import read_jsonl

    rows = [obj for _, obj in read_jsonl(path)]
    return rows[:limit] if limit is not None else rows


def _into_chinese(record: dict[str, Any]) -> bool:
    """Whether a translation record asks for Chinese: its "lang" ("en-zh" / "zh-en") or, failing that,
    whether the reference contains Chinese characters."""
    lang = record.get("lang")
    if isinstance(lang, str) and "-" in lang:
        return lang.split("-")[-1] == "zh"
    return bool(_HAN.search(record["output"]))


# A model that never learned where a reply ends gives the end-of-turn token about the uniform 1/V (random
# weights) or less (pretraining pushes never-seen tokens down); an instruction-tuned one gives it orders of
# magnitude more (SmolLM2-135M-Instruct: 0.1 after the world's answers, 5000 times 1/V).
END_OF_TURN_FACTOR = 10.0  # the note when the mean probability is below END_OF_TURN_FACTOR / V
PROBE_RECORDS = 8


def end_of_turn_probability(
    model: Any, tokenizer: Any, records: list[dict[str, Any]]
) -> tuple[float, int] | None:
    """(mean probability, vocabulary size V): over a few records, the probability that the model ends its turn
    right after the gold answer (the token the chat template puts after an assistant message, e.g.
    `<|im_end|>`). None when the template gives no such token (no template, or one that does not render an
    assistant turn after the prompt)."""
    import torch

    if not hasattr(tokenizer, "apply_chat_template") or not hasattr(tokenizer, "encode"):
        return None
    window = _context_size(model)
    probs, V = [], 0
    for r in records[:PROBE_RECORDS]:
        turns = sft_messages(r)
        try:
            prefix = sft_prompt(r, tokenizer) + r["output"]
            full = tokenizer.apply_chat_template(turns, add_generation_prompt=False)
        except Exception:  # noqa: BLE001 - a template that cannot render a reply gives no probe, not an error
            return None
        if not isinstance(full, str) or not full.startswith(prefix) or len(full) == len(prefix):
            return None
        ids, full_ids = list(tokenizer.encode(prefix)), list(tokenizer.encode(full))
        if len(full_ids) <= len(ids) or full_ids[: len(ids)] != ids:
            return None
        end = full_ids[len(ids)]
        with torch.no_grad():
            logits = model(torch.tensor([ids[-window:]])).logits[0, -1]  # (V,)
        probs.append(torch.softmax(logits.float(), -1)[end].item())
        V = logits.shape[-1]
    return (sum(probs) / len(probs), V) if probs else None


def answer_format_notes(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], exact: dict[str, float]
) -> list[str]:
    """Why exact match / BLEU may mean nothing for this model, as sentences for the report (empty if none)."""
    if not hasattr(tokenizer, "apply_chat_template"):
        return [
            "the tokenizer has no chat template, so questions go in as plain text: exact match and BLEU are "
            "meaningful only for a model trained to answer in that format"
        ]
    probe = end_of_turn_probability(model, tokenizer, records)
    if probe is not None and probe[0] < END_OF_TURN_FACTOR / probe[1]:
        p, V = probe
        return [
            f"exact match and BLEU cannot be meaningful for this model: after a correct answer it gives the chat "
            f"template's end-of-turn token a probability of {p:.2g} (about {p * V:.2g}/V for its {V} tokens; an "
            "instruction-tuned model gives it thousands of times 1/V), so it looks like a base model that was "
            "never instruction-tuned: it continues prompts instead of answering them. Perplexity is the measure "
            "for it; fine-tune it first (`danlu sft`) to score answers"
        ]
    if exact and all(v == 0 for v in exact.values()):
        return [
            "exact match is 0 for every kind: if the model was never instruction-tuned (SFT), it continues "
            "prompts instead of answering them and this score says nothing about what it knows"
        ]
    return []


def sft_answers(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], max_new_tokens: int = 32, batch_size: int = 16,
    temperature: float = 0.0, seed: int | None = None,
    prompt_fn: Callable[[dict[str, Any], Any], str] | None = None,
) -> list[str]:  # fmt: skip
    """The model's reply to each SFT record: its prompt (`sft_prompt` unless prompt_fn) decoded greedily (or at
    `temperature`) up to the end of the turn, cut at the first newline and stripped. The one way every stage
    (`danlu eval`, the fine-tuning and alignment checks, GRPO's evaluation) asks a model for answers."""
    # Imported here: the eval package must not need generate to load.
    from danlu.generate.engine import generate

    make_prompt = prompt_fn or sft_prompt
    prompts = [make_prompt(r, tokenizer) for r in records]
    # A foreign tokenizer may not name its end of turn; end-of-text still stops and the newline cut applies.
    stops = list(getattr(tokenizer, "end_of_turn_ids", []))
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    options |= {"stop_token_ids": stops} if stops else {}
    options |= {"seed": seed} if seed is not None else {}
    out: list[str] = []
    was_training = getattr(model, "training", False)
    for start in range(0, len(prompts), batch_size):
        batch = generate(model, tokenizer, prompts[start : start + batch_size], **options)
        batch = [batch] if isinstance(batch, str) else batch
        out.extend(text.strip().split("\n")[0].strip() for text in batch)
    if was_training:
        model.train()
    return out


def exact_match_by_kind(records: list[dict[str, Any]], answers: list[str]) -> dict[str, float]:
    """{"overall": EM, kind: EM, ...} (kinds sorted); a record's accepted answers are its full gold output
    ("25岁。") and its bare answer ("25") when it has one."""
    from danlu.eval.text import exact_match

    accepted = [[r["output"]] + ([str(r["answer"])] if "answer" in r else []) for r in records]
    by_kind: dict[str, tuple[list[str], list[list[str]]]] = {}
    for r, answer, refs in zip(records, answers, accepted, strict=True):
        kind_preds, kind_refs = by_kind.setdefault(str(r.get("kind", "all")), ([], []))
        kind_preds.append(answer)
        kind_refs.append(refs)
    em = {kind: exact_match(p, refs) for kind, (p, refs) in sorted(by_kind.items())}
    return {"overall": exact_match(answers, accepted), **em}


def _context_size(model: Any, default: int = 256) -> int:
    config = getattr(model, "config", None)
    for name in ("block_size", "n_positions", "max_position_embeddings", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= 2:
            return value
    return default


def evaluate_model(
    model: Any,
    tokenizer: Any,
    world_dir: str | Path,
    out_dir: str | Path,
    max_new_tokens: int = 32,
    limit: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    prompt_fn: Callable[[dict[str, Any], Any], str] | None = None,
) -> dict[str, Any]:
    """Perplexity, exact match and BLEU of `model` on a world directory; writes OUT/eval.json (+ a bar plot).

    limit: at most this many records per file (for quick runs). max_length: the perplexity window
    (default: the model's context size from its config, else 256). prompt_fn(record, tokenizer) -> str
    overrides `sft_prompt`. Returns the dict written to eval.json; its "notes" say when a metric cannot be
    meaningful for this model (see `answer_format_notes`).
    """
    from danlu.eval.text import corpus_bleu, perplexity

    world_dir, out_dir = Path(world_dir), Path(out_dir)
    if not world_dir.is_dir():
        raise DanluError(f"world: {world_dir} is not a directory; create one with `danlu world --out DIR`")
    found = [name for name in (PERPLEXITY_FILE, SFT_TEST_FILE) if (world_dir / name).is_file()]
    if not found:
        raise DanluError(
            f"world: {world_dir} has neither {PERPLEXITY_FILE} nor {SFT_TEST_FILE}; is it a world directory?"
        )
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    plots = []

    if PERPLEXITY_FILE in found:
        texts = [
            row["text"]
            for row in _read(world_dir / PERPLEXITY_FILE, limit)
            if isinstance(row.get("text"), str)
        ]
        window = max_length or _context_size(model)
        ppl = perplexity(model, texts, max_length=window, stride=max(1, window // 2), tokenizer=tokenizer)
        metrics["perplexity"] = {
            "perplexity": ppl.perplexity,
            "nll": ppl.nll,
            "n_tokens": ppl.n_tokens,
            "window": window,
        }

    if SFT_TEST_FILE in found:
        records = _read(world_dir / SFT_TEST_FILE, limit)
        for i, r in enumerate(records):
            if not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
                raise DanluError(
                    f"{world_dir / SFT_TEST_FILE} record {i + 1}: needs string fields 'instruction' and 'output'"
                )
        answers = sft_answers(model, tokenizer, records, max_new_tokens, batch_size, prompt_fn=prompt_fn)
        metrics["exact_match"] = exact_match_by_kind(records, answers)
        em = {k: v for k, v in metrics["exact_match"].items() if k != "overall"}
        translations = [
            (a, r["output"], _into_chinese(r))
            for r, a in zip(records, answers, strict=True)
            if r.get("kind") == "translate"
        ]
        for name, to_zh in (("bleu_to_zh", True), ("bleu_to_en", False)):
            pairs = [(a, ref) for a, ref, zh in translations if zh == to_zh]
            if pairs:
                hyps, refs = zip(*pairs, strict=True)
                metrics[name] = corpus_bleu(list(hyps), list(refs), tokenize="zh" if to_zh else "13a").score
        notes += answer_format_notes(model, tokenizer, records, metrics["exact_match"])
        title = "Exact match by kind" + (" (see the note in eval.json)" if notes else "")
        plots.append(report.plot_bars(em, out_dir / "exact_match.png", title, "exact match", ylim=(0.0, 1.0)))
        samples = [
            {
                "instruction": r["instruction"],
                "input": r.get("input", ""),
                "reference": r["output"],
                "answer": a,
            }
            for r, a in zip(records[:20], answers[:20], strict=True)
        ]
        write_jsonl(out_dir / "samples.jsonl", report.jsonable(samples))

    result = {"world": str(world_dir), "metrics": metrics, "notes": notes, "plots": [p.name for p in plots]}
    report.write_json(result, out_dir / "eval.json")
    return result
