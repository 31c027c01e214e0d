"""Evaluation: classification, detection and text metrics, plots, and `danlu eval`.

- `danlu.eval.classification`: confusion matrix, OA, AA, precision / recall / F1, PR curve, AP, mAP
- `danlu.eval.detection`: box IoU, matching by confidence, COCO mAP@0.5 and mAP@[0.5:0.95]
- `danlu.eval.text`: BLEU (`danlu.eval.bleu`), ROUGE, perplexity, exact match, preference accuracy
- `danlu.eval.diversity`: distinct-n and the within-sample repetition rate of generated text
- `danlu.eval.report`: eval.json and PNG plots; `danlu.eval.files`: scoring a predictions JSONL
- `danlu.eval.world_eval`: a language model on the embedded world (perplexity, exact match, BLEU)
- `danlu.eval.choice`: multiple choice by log-likelihood (acc, acc_norm, few-shot), as lm-evaluation-harness
- `danlu.eval.qa`: SQuAD exact match and token F1; `danlu.eval.execution`: pass@k over checked samples
- `danlu.eval.preference`: win rates, online Elo, Bradley-Terry ratings with bootstrap intervals
- `danlu.eval.bootstrap`: a percentile bootstrap confidence interval for a mean over items (an accuracy)

The main functions are importable from here (`from danlu.eval import corpus_bleu`); they are loaded on
first use (PEP 562 `__getattr__`) so that `danlu --help`, which imports `danlu.cli.eval`, stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "danlu.eval.classification": [
        "average_accuracy",
        "average_precision",
        "confusion_matrix",
        "mean_average_precision",
        "overall_accuracy",
        "precision_recall_curve",
        "precision_recall_f1",
    ],
    "danlu.eval.detection": ["box_iou", "evaluate_detections", "match_detections"],
    "danlu.eval.text": [
        "corpus_bleu",
        "corpus_rouge",
        "exact_match",
        "perplexity",
        "preference_accuracy",
        "rouge",
        "sentence_bleu",
    ],
    "danlu.eval.diversity": ["distinct_n", "repetition_rate"],
    "danlu.eval.world_eval": ["evaluate_model"],
    "danlu.eval.choice": ["MCItem", "evaluate_multiple_choice", "loglikelihoods"],
    "danlu.eval.qa": ["evaluate_qa", "token_f1"],
    "danlu.eval.execution": ["evaluate_execution", "pass_at_k"],
    "danlu.eval.bootstrap": ["bootstrap_ci", "format_ci"],
    "danlu.eval.preference": ["bradley_terry", "leaderboard", "online_elo", "read_comparisons", "win_rates"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'danlu.eval' has no attribute {name!r}")
