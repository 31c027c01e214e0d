"""Classification metrics: confusion matrix, OA, AA, precision / recall / F1, PR curve, AP and mAP.

Definitions follow notes 000 §1 (模型评价指标) and notes 002 §评测/分类任务; where a formula leaves a case open
(an empty class, tied scores) we do what scikit-learn does, and the tests check parity with it to 1e-9.

Notation: n examples, K classes. For one class c, taken as "positive" (one-vs-rest):
    TP = predicted c and truly c, FP = predicted c but not c, FN = truly c but predicted otherwise.

- confusion matrix M (K, K): M[i, j] = number of examples of true class i predicted as class j (rows = truth).
- OA (overall accuracy) = trace(M) / n = (TP + TN) / (TP + TN + FP + FN) in the binary case (notes 000).
- AA (average accuracy) = mean over classes of the per-class recall TP / (TP + FN). For two classes it is the
  notes' (TP / (TP + FN) + TN / (TN + FP)) / 2, because the negative class's recall is TN / (TN + FP).
  Classes with no true example are left out of the mean (scikit-learn's `balanced_accuracy_score`).
- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 P R / (P + R) = 2 TP / (2 TP + FP + FN).
  A ratio whose denominator is zero (a class never predicted, or never present) is defined as 0.0, like
  scikit-learn's `zero_division=0`.
- PR curve: sweep the decision threshold from the highest score down (notes 000 §PR曲线); each distinct
  score is one point.
- AP: area under the PR curve. "step" (default) is AP = Σ_n (R_n - R_{n-1}) P_n over the thresholds, as
  scikit-learn's `average_precision_score`; "11" and "101" interpolate: mean over recall levels r of
  max{P(r') : r' >= r}, at r = 0, 0.1, ..., 1 (PASCAL VOC 2007) or r = 0, 0.01, ..., 1 (COCO).
- mAP: the mean of the per-class (one-vs-rest) APs (notes 000 §AP、mAP).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from danlu.errors import DanluError
from danlu.eval._checks import check_labels, check_same_length, check_scores

Average = Literal["micro", "macro", "weighted"] | None
Interpolation = Literal["step", "11", "101"]


# ---------------------------------------------------------------------------------------------------------
# labels and the confusion matrix


def infer_labels(y_true: Sequence[Any], y_pred: Sequence[Any]) -> list[Any]:
    """The sorted union of the labels seen in `y_true` and `y_pred` (the default label order everywhere)."""
    t, p = check_labels("y_true", y_true), check_labels("y_pred", y_pred)
    if (t.dtype.kind in "USO") != (p.dtype.kind in "USO"):
        # np.concatenate would silently turn 1 into "1"; mixing is almost always a bug in the caller.
        raise DanluError(
            f"y_true holds {t.dtype} labels but y_pred holds {p.dtype} labels; use the same type for both "
            f"(e.g. all strings or all integers)"
        )
    try:
        return np.unique(np.concatenate([t, p])).tolist()
    except TypeError as e:
        raise DanluError(f"y_true / y_pred: labels cannot be sorted ({e}); pass `labels` explicitly") from e


def _label_indices(name: str, values: np.ndarray, labels: list[Any]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values.tolist()):
        j = index.get(v)
        if j is None:
            raise DanluError(
                f"{name}: label {v!r} at index {i} is not in labels {labels}; add it to `labels` "
                f"or fix the example"
            )
        out[i] = j
    return out


def _resolve(y_true: Any, y_pred: Any, labels: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Validated (true indices, predicted indices, labels)."""
    t, p = check_labels("y_true", y_true), check_labels("y_pred", y_pred)
    check_same_length(y_true=t, y_pred=p)
    if labels is None:
        labels = infer_labels(t, p)
    else:
        labels = list(np.asarray(labels).tolist()) if not isinstance(labels, list) else list(labels)
        if len(labels) == 0:
            raise DanluError("labels: is empty; pass the class labels or None to infer them")
        if len(set(labels)) != len(labels):
            raise DanluError(f"labels: contains duplicates {labels}; each class must appear once")
    return _label_indices("y_true", t, labels), _label_indices("y_pred", p, labels), labels


def confusion_matrix(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None
) -> np.ndarray:
    """Counts M[i, j] of examples with true label `labels[i]` predicted as `labels[j]`; shape (K, K), int64.

    `labels` fixes the order (and may contain classes absent from the data); by default it is
    `infer_labels(y_true, y_pred)`. A label outside `labels` is an error (scikit-learn silently drops it).
    """
    t, p, labels = _resolve(y_true, y_pred, labels)
    return _count_pairs(t, p, len(labels))


def _count_pairs(t: np.ndarray, p: np.ndarray, K: int) -> np.ndarray:
    # One bincount over the flattened (true, pred) pair index: O(n), no Python loop over classes.
    return np.bincount(t * K + p, minlength=K * K).reshape(K, K)  # (K, K)


def overall_accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """OA = correct / n = (TP + TN) / (TP + TN + FP + FN) (notes 000 §Overall Accuracy)."""
    t, p = check_labels("y_true", y_true), check_labels("y_pred", y_pred)
    check_same_length(y_true=t, y_pred=p)
    return float(np.mean(t == p))


def average_accuracy(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None
) -> float:
    """AA = mean per-class recall over the classes present in `y_true` (notes 000 §Average accuracy).

    Equals scikit-learn's `balanced_accuracy_score`, and (TP/(TP+FN) + TN/(TN+FP)) / 2 for two classes.
    """
    M = confusion_matrix(y_true, y_pred, labels)
    support = M.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(M)[present] / support[present]))


# ---------------------------------------------------------------------------------------------------------
# precision, recall, F1


@dataclass(frozen=True)
class PRF:
    """Precision, recall, F1 and support. Per-class arrays (ordered as `labels`) when `average` is None,
    floats otherwise (then `support` is the total number of examples)."""

    precision: np.ndarray | float
    recall: np.ndarray | float
    f1: np.ndarray | float
    support: np.ndarray | int
    labels: list[Any]


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0.0 where den == 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def precision_recall_f1(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None, average: Average = None
) -> PRF:
    """Precision, recall and F1 per class (`average=None`) or averaged (notes 000 §Recall/Precision/F1).

    - "macro": the plain mean of the per-class values (every class counts the same);
    - "micro": TP, FP, FN summed over classes first (for single-label data P = R = F1 = OA when every
      predicted label is in `labels`);
    - "weighted": the per-class values averaged with weights = support (true count).
    Empty denominators give 0.0 (zero_division=0). F1 = 2 TP / (2 TP + FP + FN), which is 2PR/(P+R).
    """
    if average not in (None, "micro", "macro", "weighted"):
        raise DanluError(f"average: {average!r} is not one of None, 'micro', 'macro', 'weighted'")
    t, p, labels = _resolve(y_true, y_pred, labels)
    M = _count_pairs(t, p, len(labels))
    tp = np.diag(M).astype(np.float64)
    fp = M.sum(axis=0) - tp  # predicted c, truly something else
    fn = M.sum(axis=1) - tp  # truly c, predicted something else
    support = M.sum(axis=1)
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    precision = _safe_divide(tp, tp + fp)
    recall = _safe_divide(tp, tp + fn)
    f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
    if average is None:
        return PRF(precision, recall, f1, support, list(labels))
    if average == "macro":
        precision, recall, f1 = precision.mean(), recall.mean(), f1.mean()
    elif average == "weighted":
        w = support / support.sum() if support.sum() > 0 else np.zeros_like(support, dtype=np.float64)
        precision, recall, f1 = (w * precision).sum(), (w * recall).sum(), (w * f1).sum()
    return PRF(float(precision), float(recall), float(f1), int(support.sum()), list(labels))


# ---------------------------------------------------------------------------------------------------------
# PR curve and average precision (binary: one class against the rest)


def _binary_targets(y_true: Any, y_score: Any, pos_label: Any) -> tuple[np.ndarray, np.ndarray]:
    t = check_labels("y_true", y_true)
    s = check_scores("y_score", y_score)
    check_same_length(y_true=t, y_score=s)
    values = np.unique(t).tolist()
    if len(values) > 2:
        raise DanluError(
            f"y_true: has {len(values)} distinct labels {values[:10]}; a PR curve / AP is binary: pass "
            f"y_true == label for one class against the rest, or use mean_average_precision"
        )
    if pos_label not in values and not set(values) <= {0, 1}:
        # e.g. string labels with the default pos_label=1: without this every AP would silently be 0
        raise DanluError(
            f"pos_label: {pos_label!r} does not occur in y_true (labels {values}); pass pos_label="
        )
    return (t == pos_label), s


def _cumulative_counts(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives accepted at each distinct threshold, thresholds descending.

    Sorting by score descending and cutting after each run of equal scores is the threshold sweep of notes
    000 §PR曲线: tied examples enter together, so a tie never yields a point that no threshold produces.
    """
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # (n_thresholds,)
    tps = np.cumsum(pos)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1) - tps
    return tps, fps, s[last_of_run]


def precision_recall_curve(
    y_true: Sequence[Any], y_score: Sequence[float], pos_label: Any = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) with thresholds increasing, as scikit-learn returns them.

    precision and recall have one more entry than thresholds: the last point is (P=1, R=0), the curve's
    start when nothing is predicted positive. With no positive in `y_true` recall is set to 1 everywhere
    (scikit-learn's convention; AP is then 0).
    """
    positive, scores = _binary_targets(y_true, y_score, pos_label)
    tps, fps, thresholds = _cumulative_counts(positive, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def interpolated_precision(
    recall: np.ndarray, precision: np.ndarray, recall_levels: np.ndarray
) -> np.ndarray:
    """max{precision at recall >= r} for each r in `recall_levels`, 0 where recall never reaches r.

    `recall` must be non-decreasing (points in order of decreasing threshold). Because of that, the max over
    recall >= r is the running max from the right (the precision "envelope") read at the first point with
    recall >= r: this is both PASCAL VOC's 11-point rule and COCO's 101-point rule (pycocotools `accumulate`).
    Recall is compared with the levels exactly, as pycocotools does (3/10 falls short of np.linspace's
    0.30000000000000004), so that COCO numbers are reproduced to the last digit.
    """
    values = np.zeros(len(recall_levels))
    if len(recall) == 0:
        return values
    envelope = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    idx = np.searchsorted(recall, recall_levels, side="left")
    reached = idx < len(recall)
    values[reached] = envelope[idx[reached]]
    return values


def interpolated_ap(recall: np.ndarray, precision: np.ndarray, recall_levels: np.ndarray) -> float:
    """The mean of `interpolated_precision` over the recall levels (11-point VOC or 101-point COCO AP)."""
    return float(interpolated_precision(recall, precision, recall_levels).mean())


RECALL_LEVELS = {"11": np.linspace(0.0, 1.0, 11), "101": np.linspace(0.0, 1.0, 101)}


def average_precision(
    y_true: Sequence[Any], y_score: Sequence[float], pos_label: Any = 1, interpolation: Interpolation = "step"
) -> float:
    """AP of scores for the class `pos_label` against the rest (notes 000 §AP、mAP).

    "step": Σ_n (R_n - R_{n-1}) P_n (scikit-learn's `average_precision_score`, no interpolation);
    "11" / "101": the interpolated means described in the module docstring. No positive example gives 0.0.
    """
    if interpolation not in ("step", "11", "101"):
        raise DanluError(f"interpolation: {interpolation!r} is not one of 'step', '11', '101'")
    positive, scores = _binary_targets(y_true, y_score, pos_label)
    tps, fps, _ = _cumulative_counts(positive, scores)
    if tps[-1] == 0:
        return 0.0
    precision, recall = tps / (tps + fps), tps / tps[-1]
    if interpolation == "step":
        return float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return interpolated_ap(recall, precision, RECALL_LEVELS[interpolation])


@dataclass(frozen=True)
class MeanAP:
    """mAP and the per-class APs it averages. `excluded` lists classes with no true example (left out)."""

    map: float
    per_class: dict[Any, float]
    excluded: list[Any]


def mean_average_precision(
    y_true: Sequence[Any],
    scores: Any,
    labels: Sequence[Any],
    interpolation: Interpolation = "step",
) -> MeanAP:
    """mAP: the mean over classes of the one-vs-rest AP of column k of `scores` (n, K) for `labels[k]`.

    Classes with no true example have no defined AP and are left out of the mean (as COCO does); they are
    listed in `excluded`. With every class present this equals scikit-learn's
    `average_precision_score(one_hot(y_true), scores, average="macro")`.
    """
    t = check_labels("y_true", y_true)
    s = check_scores("scores", scores, ndim=2)
    check_same_length(y_true=t, scores=s)
    labels = list(labels)
    if s.shape[1] != len(labels):
        raise DanluError(
            f"scores: has {s.shape[1]} columns but labels has {len(labels)} classes; pass one column per label"
        )
    _label_indices("y_true", t, labels)  # unknown labels are an error
    per_class, excluded = {}, []
    for k, label in enumerate(labels):
        if not np.any(t == label):
            excluded.append(label)
            continue
        per_class[label] = average_precision(t == label, s[:, k], pos_label=True, interpolation=interpolation)
    if not per_class:
        raise DanluError("y_true: no class in labels has a true example; mAP is undefined")
    return MeanAP(float(np.mean(list(per_class.values()))), per_class, excluded)
