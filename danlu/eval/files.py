"""Scoring a predictions JSONL file: what `danlu eval --predictions FILE --task TASK --out DIR` runs.

One JSON object per line; blank lines are skipped. Layouts:

classification   {"label": "cat", "prediction": "dog", "scores": {"cat": 0.3, "dog": 0.6, "fox": 0.1}}
    `label` and `prediction` are strings or integers (the same type on every line). `scores` is optional
    (all lines or none); its keys are the class labels written as strings, one score per class, any scale
    (probabilities, logits). With scores we also report per-class AP, mAP and the PR curves.
    -> overall_accuracy, average_accuracy, per-class / macro / micro / weighted precision, recall, F1,
       confusion_matrix; [ap per class, map, map_11, map_101]. Plots: confusion_matrix.png, [pr_curves.png].

detection        {"image_id": 7, "boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...],
                  "gt_boxes": [[...], ...], "gt_labels": [...]}
    One line per image, predictions and ground truth side by side; every evaluated image needs a line
    (with empty lists if it has neither). Boxes are xyxy unless --box-format xywh.
    -> map (mAP@[0.5:0.95]), map_50, map_75, per-class ap / ap_50 / ap_75 / n_gt (COCO rules).
       Plot: pr_curves.png (IoU 0.5, COCO's 101-point interpolated curves).

text             {"prediction": "...", "reference": "..." or ["...", "..."]}
    -> bleu (corpus, sacrebleu-compatible), sentence_bleu_mean, rouge1 / rouge2 / rougeL (mean F),
       exact_match. Plot: sentence_bleu.png (histogram). --bleu-tokenize zh for Chinese references.

Results go to OUT/eval.json: {"task", "predictions", "n", "metrics": {...}, "plots": [...]}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import DanluError
from danlu.eval import report
from danlu.fileio import iter_jsonl_lines

TASKS = ("classification", "detection", "text")


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """[(line number, object)] for each non-blank line (`danlu.fileio.iter_jsonl_lines`); an empty file is an
    error."""
    rows = list(iter_jsonl_lines(path))
    if not rows:
        raise DanluError(f"{path}: has no records; write one JSON object per line")
    return rows


def _field(path: Path, number: int, obj: dict, key: str, layout: str) -> Any:
    if key not in obj:
        raise DanluError(f"{path} line {number}: field {key!r} is missing ({layout})")
    return obj[key]


# ---------------------------------------------------------------------------------------------------------


def score_classification(path: str | Path, out_dir: str | Path) -> tuple[dict, list[Path]]:
    from danlu.eval.classification import (
        average_accuracy,
        confusion_matrix,
        infer_labels,
        mean_average_precision,
        overall_accuracy,
        precision_recall_curve,
        precision_recall_f1,
    )

    path, out_dir = Path(path), Path(out_dir)
    layout = 'classification lines look like {"label": ..., "prediction": ..., "scores": {label: score}}'
    rows = read_jsonl(path)
    y_true, y_pred, score_rows = [], [], []
    for number, obj in rows:
        for key in ("label", "prediction"):
            value = _field(path, number, obj, key, layout)
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise DanluError(
                    f"{path} line {number}: field {key!r} must be a string or an integer, got {value!r}"
                )
        y_true.append(obj["label"])
        y_pred.append(obj["prediction"])
        if ("scores" in obj) != ("scores" in rows[0][1]):
            raise DanluError(f"{path} line {number}: 'scores' must be given on every line or on none")
        if "scores" in obj:
            if not isinstance(obj["scores"], dict):
                raise DanluError(f"{path} line {number}: field 'scores' must be an object {{label: score}}")
            score_rows.append((number, obj["scores"]))
    kinds = {type(v) for v in y_true + y_pred}
    if len(kinds) > 1:
        raise DanluError(f"{path}: labels mix strings and integers; write every label the same way")
    labels = infer_labels(y_true, y_pred)
    if score_rows:
        as_label = int if kinds == {int} else str
        try:
            score_labels = {as_label(k) for _, s in score_rows for k in s}
        except ValueError as e:
            raise DanluError(f"{path}: a 'scores' key is not one of the integer labels ({e})") from e
        labels = sorted(set(labels) | score_labels)
    M = confusion_matrix(y_true, y_pred, labels)
    per = precision_recall_f1(y_true, y_pred, labels)
    metrics: dict[str, Any] = {
        "n": len(rows),
        "labels": labels,
        "overall_accuracy": overall_accuracy(y_true, y_pred),
        "average_accuracy": average_accuracy(y_true, y_pred, labels),
        "per_class": {
            str(c): {
                "precision": per.precision[k],
                "recall": per.recall[k],
                "f1": per.f1[k],
                "support": per.support[k],
            }
            for k, c in enumerate(labels)
        },
    }
    for avg in ("macro", "micro", "weighted"):
        r = precision_recall_f1(y_true, y_pred, labels, average=avg)
        metrics[avg] = {"precision": r.precision, "recall": r.recall, "f1": r.f1}
    metrics["confusion_matrix"] = M
    plots = [report.plot_confusion_matrix(M, labels, out_dir / "confusion_matrix.png")]
    if score_rows:
        scores = np.zeros((len(score_rows), len(labels)))
        for i, (number, s) in enumerate(score_rows):
            for k, c in enumerate(labels):
                if str(c) not in s:
                    raise DanluError(
                        f"{path} line {number}: 'scores' has no entry for class {str(c)!r}; give one score per class"
                    )
                value = s[str(c)]
                if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                    raise DanluError(
                        f"{path} line {number}: score {value!r} for class {str(c)!r} is not a finite number"
                    )
                scores[i, k] = value
        mean_ap = mean_average_precision(y_true, scores, labels)
        metrics["ap"] = mean_ap.per_class
        metrics["map"] = mean_ap.map
        metrics["map_11"] = mean_average_precision(y_true, scores, labels, interpolation="11").map
        metrics["map_101"] = mean_average_precision(y_true, scores, labels, interpolation="101").map
        curves = {}
        for k, c in enumerate(labels):
            if c in mean_ap.per_class:
                precision, recall, _ = precision_recall_curve(
                    np.asarray(y_true) == c, scores[:, k], pos_label=True
                )
                curves[str(c)] = (recall, precision, mean_ap.per_class[c])
        plots.append(
            report.plot_pr_curves(curves, out_dir / "pr_curves.png", "Precision-recall (one class vs rest)")
        )
    return metrics, plots


def score_detection(
    path: str | Path, out_dir: str | Path, box_format: str = "xyxy"
) -> tuple[dict, list[Path]]:
    from danlu.eval.detection import evaluate_detections

    path, out_dir = Path(path), Path(out_dir)
    layout = 'detection lines look like {"image_id", "boxes", "scores", "labels", "gt_boxes", "gt_labels"}'
    predictions, ground_truths = [], []
    rows = read_jsonl(path)
    for number, obj in rows:
        for key in ("image_id", "boxes", "scores", "labels", "gt_boxes", "gt_labels"):
            _field(path, number, obj, key, layout)
        predictions.append({k: obj[k] for k in ("image_id", "boxes", "scores", "labels")})
        ground_truths.append(
            {"image_id": obj["image_id"], "boxes": obj["gt_boxes"], "labels": obj["gt_labels"]}
        )
    result = evaluate_detections(predictions, ground_truths, box_format=box_format)
    metrics = {
        "n": len(rows),
        "map": result.map,
        "map_50": result.map_50,
        "map_75": result.map_75,
        "per_class": result.per_class(),
    }
    i50 = int(np.flatnonzero(np.isclose(result.iou_thresholds, 0.5))[0])
    curves = {
        str(c): (result.recall_levels, result.precision[i50, :, k], result.ap[i50, k])
        for k, c in enumerate(result.classes)
        if result.n_gt[k] > 0
    }
    plots = [
        report.plot_pr_curves(
            curves, out_dir / "pr_curves.png", "Precision-recall at IoU 0.5 (COCO 101-point)"
        )
    ]
    return metrics, plots


def score_text(
    path: str | Path, out_dir: str | Path, bleu_tokenize: str = "13a", rouge_tokenizer: str = "default"
) -> tuple[dict, list[Path]]:
    from danlu.eval.text import corpus_bleu, corpus_rouge, exact_match, sentence_bleu

    path, out_dir = Path(path), Path(out_dir)
    layout = 'text lines look like {"prediction": "...", "reference": "..." or ["...", ...]}'
    predictions, references = [], []
    rows = read_jsonl(path)
    for number, obj in rows:
        pred, ref = (
            _field(path, number, obj, "prediction", layout),
            _field(path, number, obj, "reference", layout),
        )
        if not isinstance(pred, str):
            raise DanluError(f"{path} line {number}: field 'prediction' must be a string, got {pred!r}")
        if not (
            isinstance(ref, str) or (isinstance(ref, list) and ref and all(isinstance(r, str) for r in ref))
        ):
            raise DanluError(
                f"{path} line {number}: field 'reference' must be a string or a non-empty list of strings"
            )
        predictions.append(pred)
        references.append(ref)
    sentence = [
        sentence_bleu(p, r, tokenize=bleu_tokenize).score
        for p, r in zip(predictions, references, strict=True)
    ]
    metrics = {
        "n": len(rows),
        "bleu": corpus_bleu(predictions, references, tokenize=bleu_tokenize).score,
        "sentence_bleu_mean": float(np.mean(sentence)),
        **corpus_rouge(predictions, references, tokenizer=rouge_tokenizer),
        "exact_match": exact_match(predictions, references),
        "bleu_tokenize": bleu_tokenize,
        "rouge_tokenizer": rouge_tokenizer,
    }
    plots = [report.plot_histogram(sentence, out_dir / "sentence_bleu.png", "Sentence BLEU", "BLEU (0-100)")]
    return metrics, plots


def score_file(task: str, path: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Score `path` for `task`, write OUT/eval.json and the plots; returns what eval.json holds."""
    if task not in TASKS:
        raise DanluError(f"task: {task!r} is not one of {', '.join(TASKS)}")
    scorer = {"classification": score_classification, "detection": score_detection, "text": score_text}[task]
    metrics, plots = scorer(path, out_dir, **options)
    result = {
        "task": task,
        "predictions": str(path),
        "n": metrics.pop("n"),
        "metrics": metrics,
        "plots": [p.name for p in plots],
    }
    report.write_json(result, Path(out_dir) / "eval.json")
    return result
