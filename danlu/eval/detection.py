"""Object-detection metrics: box IoU, matching by confidence, per-class AP, mAP@0.5 and mAP@[0.5:0.95].

Notes 000 §置信度/IOU/AP、mAP: a predicted box counts as a true positive when its confidence passes the threshold
and its IoU = |A ∩ B| / |A ∪ B| with a ground-truth box passes the IoU threshold; AP is the area under the PR
curve of one class, mAP the mean over classes. The details follow the COCO evaluation (pycocotools
`COCOeval`, area range "all", maxDets 100), and the tests check parity with pycocotools to 1e-6:

1. per image and class, keep the `max_dets` most confident predictions;
2. match them in order of descending confidence: each takes the still-unmatched ground-truth box with the
   highest IoU, if that IoU >= the threshold (ties go to the later ground-truth box, as in pycocotools);
   a prediction without a match is a false positive;
3. per class, pool all images, sort by confidence, and sweep: recall = TP / n_gt, precision = TP / (TP + FP);
4. AP = mean over 101 recall levels r = 0, 0.01, ..., 1 of the best precision at recall >= r;
5. mAP@0.5 averages the per-class AP at IoU 0.5; mAP@[0.5:0.95] averages over classes and the ten IoU
   thresholds 0.5, 0.55, ..., 0.95. Classes without ground truth are left out.

Not done (not needed for a single "all" area range): crowd annotations, per-size area ranges.

Box formats: "xyxy" = (x1, y1, x2, y2) corners with x2 >= x1, y2 >= y1; "xywh" = (x, y, width, height), COCO's.
Notation: N predictions, M (or G) ground-truth boxes, T IoU thresholds, R recall levels, K classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from danlu.errors import DanluError
from danlu.eval._checks import check_same_length, check_scores, to_numpy
from danlu.eval.classification import interpolated_precision

BoxFormat = Literal["xyxy", "xywh"]

# COCO's thresholds, built the way pycocotools builds them so that the floats are identical.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_LEVELS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def check_boxes(name: str, boxes: Any, box_format: BoxFormat = "xyxy") -> Any:
    """Validate an (N, 4) array or tensor of boxes: finite, and x2 >= x1, y2 >= y1 (or w, h >= 0).

    Returns float64 numpy for numpy/list input, a floating tensor (same device) for torch input.
    """
    if box_format not in ("xyxy", "xywh"):
        raise DanluError(f"box_format: {box_format!r} is not 'xyxy' or 'xywh'")
    if _is_torch(boxes):
        b = boxes if boxes.is_floating_point() else boxes.double()
        if b.numel() == 0:
            b = b.reshape(0, 4)
        shape, host = tuple(b.shape), b.detach().cpu().numpy()  # host copy only for the checks below
    else:
        b = to_numpy(name, boxes).astype(np.float64)
        if b.size == 0:
            b = b.reshape(0, 4)
        shape, host = b.shape, b
    if len(shape) != 2 or shape[1] != 4:
        raise DanluError(f"{name}: expected boxes of shape (N, 4), got {shape}")
    if not np.isfinite(host).all():
        i = int(np.argwhere(~np.isfinite(host))[0][0])
        raise DanluError(f"{name}: box {i} = {host[i].tolist()} is not finite")
    if box_format == "xyxy":
        bad = (host[:, 2] < host[:, 0]) | (host[:, 3] < host[:, 1])
        rule = "x2 >= x1 and y2 >= y1 for (x1, y1, x2, y2) boxes; pass box_format='xywh' for (x, y, w, h)"
    else:
        bad = (host[:, 2] < 0) | (host[:, 3] < 0)
        rule = "width and height >= 0 for (x, y, w, h) boxes"
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DanluError(f"{name}: box {i} = {host[i].tolist()} is invalid: need {rule}")
    return b


def box_iou(boxes1: Any, boxes2: Any, box_format: BoxFormat = "xyxy") -> Any:
    """Pairwise IoU = |A ∩ B| / |A ∪ B| (notes 000 §IOU), shape (N, M); numpy in, numpy out; torch in, torch out.

    Two boxes whose union has zero area (both degenerate) get IoU 0.
    """
    a, b = check_boxes("boxes1", boxes1, box_format), check_boxes("boxes2", boxes2, box_format)
    if _is_torch(a) != _is_torch(b):
        raise DanluError("boxes1 and boxes2: pass both as numpy arrays or both as torch tensors")
    if _is_torch(a):
        import torch

        maximum, minimum, zeros = torch.maximum, torch.minimum, torch.zeros_like
        b = b.to(device=a.device, dtype=torch.promote_types(a.dtype, b.dtype))
    else:
        maximum, minimum, zeros = np.maximum, np.minimum, np.zeros_like
    if box_format == "xywh":
        # Areas from the given width and height (not from x2 - x1) so the floats match pycocotools exactly.
        area_a, area_b = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]  # (N,), (M,)
        a_lo, a_hi, b_lo, b_hi = a[:, :2], a[:, :2] + a[:, 2:], b[:, :2], b[:, :2] + b[:, 2:]
    else:
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # (N,)
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (M,)
        a_lo, a_hi, b_lo, b_hi = a[:, :2], a[:, 2:], b[:, :2], b[:, 2:]
    lo = maximum(a_lo[:, None, :], b_lo[None, :, :])  # (N, M, 2) top-left of the intersection
    hi = minimum(a_hi[:, None, :], b_hi[None, :, :])  # (N, M, 2) bottom-right
    wh = hi - lo
    wh = wh * (wh > 0)  # empty intersection -> 0 (works for numpy and torch alike)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter  # (N, M)
    iou = zeros(inter)
    positive = union > 0
    iou[positive] = inter[positive] / union[positive]
    return iou


def _scores_or_empty(name: str, scores: Any) -> np.ndarray:
    """Validated scores; an empty list is allowed here (an image may have no predictions)."""
    if to_numpy(name, scores).size == 0:
        return np.zeros(0)
    return check_scores(name, scores)


def _greedy_match(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Matched ground-truth index for each prediction at each threshold, (T, N), -1 for none.

    `iou` is (N, G) with predictions already sorted by descending confidence: a more confident prediction
    claims its ground truth first, and each ground truth is matched at most once.
    """
    N, G = iou.shape
    T = len(thresholds)
    match = np.full((T, N), -1, dtype=np.int64)
    if G == 0:
        return match
    # pycocotools caps the threshold just below 1 so that IoU == 1.0 matches at threshold 1.0.
    thr = np.minimum(thresholds, 1 - 1e-10)
    taken = np.zeros((T, G), dtype=bool)
    rows = np.arange(T)
    for d in range(N):
        cand = np.where(taken, -1.0, iou[d][None, :])  # (T, G) IoUs with the free ground truths
        best = G - 1 - np.argmax(cand[:, ::-1], axis=1)  # (T,) last index among equal maxima
        ok = cand[rows, best] >= thr
        match[ok, d] = best[ok]
        taken[rows[ok], best[ok]] = True
    return match


def match_detections(
    pred_boxes: Any,
    pred_scores: Any,
    gt_boxes: Any,
    iou_threshold: float = 0.5,
    box_format: BoxFormat = "xyxy",
) -> np.ndarray:
    """For one image and one class: the index of the ground-truth box each prediction matches, or -1.

    Predictions are taken by descending score (stable for ties); each takes the free ground truth with the
    highest IoU >= `iou_threshold`. The result is in the order of `pred_boxes`.
    """
    p = check_boxes("pred_boxes", to_numpy("pred_boxes", pred_boxes), box_format)
    g = check_boxes("gt_boxes", to_numpy("gt_boxes", gt_boxes), box_format)
    s = _scores_or_empty("pred_scores", pred_scores)
    check_same_length(pred_boxes=p, pred_scores=s)
    if not 0.0 <= iou_threshold <= 1.0:
        raise DanluError(f"iou_threshold: {iou_threshold} is outside [0, 1]")
    order = np.argsort(-s, kind="stable")
    sorted_match = _greedy_match(box_iou(p[order], g, box_format), np.array([iou_threshold]))[0]
    out = np.empty(len(p), dtype=np.int64)
    out[order] = sorted_match
    return out


# ---------------------------------------------------------------------------------------------------------
# dataset-level evaluation


@dataclass(frozen=True)
class DetectionEvaluation:
    """COCO-style results. Arrays are indexed [threshold, recall level, class] like pycocotools' `eval`.

    precision: (T, R, K) interpolated precision at each recall level (NaN for classes without ground truth);
    recall: (T, K) the recall reached with all kept predictions; ap: (T, K) per-class AP at each threshold.
    """

    classes: list[Any]
    iou_thresholds: np.ndarray
    recall_levels: np.ndarray
    n_gt: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    ap: np.ndarray
    map: float  # mean over classes and thresholds: mAP@[0.5:0.95] with the default thresholds
    map_50: float  # NaN if 0.5 is not among the thresholds
    map_75: float

    def per_class(self) -> dict[Any, dict[str, float]]:
        """{class: {"ap": AP averaged over thresholds, "ap_50": ..., "ap_75": ..., "n_gt": ...}}."""
        i50, i75 = _threshold_index(self.iou_thresholds, 0.5), _threshold_index(self.iou_thresholds, 0.75)
        out = {}
        for k, c in enumerate(self.classes):
            out[c] = {
                "ap": float(np.mean(self.ap[:, k])),
                "ap_50": float(self.ap[i50, k]) if i50 is not None else float("nan"),
                "ap_75": float(self.ap[i75, k]) if i75 is not None else float("nan"),
                "n_gt": int(self.n_gt[k]),
            }
        return out


def _threshold_index(thresholds: np.ndarray, value: float) -> int | None:
    hits = np.flatnonzero(np.isclose(thresholds, value))
    return int(hits[0]) if len(hits) else None


def _read_images(
    name: str, records: Sequence[Mapping[str, Any]], with_scores: bool, box_format: BoxFormat
) -> dict:
    """{image_id: (boxes (n, 4), labels (n,), scores (n,) or None)} with every record validated."""
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise DanluError(f"{name}: expected a list of per-image dicts, got {type(records).__name__}")
    keys = ("image_id", "boxes", "labels") + (("scores",) if with_scores else ())
    images: dict[Any, tuple] = {}
    for i, rec in enumerate(records):
        where = f"{name}[{i}]"
        if not isinstance(rec, Mapping):
            raise DanluError(f"{where}: expected a dict with keys {list(keys)}, got {type(rec).__name__}")
        for key in keys:
            if key not in rec:
                raise DanluError(f"{where}: missing key {key!r} (each entry needs {', '.join(keys)})")
        image_id = rec["image_id"]
        if image_id in images:
            raise DanluError(
                f"{where}: image_id {image_id!r} appears twice; put all boxes of an image in one entry"
            )
        boxes = check_boxes(f"{where}.boxes", to_numpy(f"{where}.boxes", rec["boxes"]), box_format)
        labels = to_numpy(f"{where}.labels", rec["labels"]).reshape(-1)
        scores = None
        if with_scores:
            scores = _scores_or_empty(f"{where}.scores", rec["scores"])
            check_same_length(
                **{f"{where}.boxes": boxes, f"{where}.scores": scores, f"{where}.labels": labels}
            )
        else:
            check_same_length(**{f"{where}.boxes": boxes, f"{where}.labels": labels})
        images[image_id] = (boxes, labels, scores)
    return images


def evaluate_detections(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    box_format: BoxFormat = "xyxy",
    iou_thresholds: Sequence[float] | None = None,
    max_dets: int = 100,
) -> DetectionEvaluation:
    """COCO mAP of `predictions` against `ground_truths` (see the module docstring for the procedure).

    predictions: one dict per image {"image_id", "boxes" (N, 4), "scores" (N,), "labels" (N,)};
    ground_truths: one dict per image {"image_id", "boxes" (G, 4), "labels" (G,)}; list every evaluated image
    here, also those without objects (empty boxes). A prediction for an image missing from `ground_truths`
    is an error (pycocotools asserts the same).
    """
    thresholds = (
        COCO_IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, dtype=np.float64)
    )
    if thresholds.ndim != 1 or len(thresholds) == 0 or ((thresholds < 0) | (thresholds > 1)).any():
        raise DanluError(f"iou_thresholds: {iou_thresholds!r} must be a non-empty list of values in [0, 1]")
    if max_dets < 1:
        raise DanluError(f"max_dets: {max_dets} must be >= 1")
    gts = _read_images("ground_truths", ground_truths, False, box_format)
    preds = _read_images("predictions", predictions, True, box_format)
    for image_id in preds:
        if image_id not in gts:
            raise DanluError(
                f"predictions: image_id {image_id!r} is not in ground_truths; add it there "
                f"(with empty boxes if the image has no objects)"
            )
    try:
        image_ids = sorted(gts)
        classes = sorted({c for v in (*gts.values(), *preds.values()) for c in v[1].tolist()})
    except TypeError as e:
        raise DanluError(
            f"image_id / labels: values cannot be sorted ({e}); use one type (all int or all str)"
        ) from e
    n_gt = np.zeros(len(classes), dtype=np.int64)
    for _, labels, _ in gts.values():
        for k, c in enumerate(classes):
            n_gt[k] += int(np.sum(labels == c))
    if n_gt.sum() == 0:
        raise DanluError("ground_truths: there is no ground-truth box at all, so AP is undefined")

    T, R, K = len(thresholds), len(COCO_RECALL_LEVELS), len(classes)
    pooled_scores: list[list[np.ndarray]] = [[] for _ in range(K)]
    pooled_tp: list[list[np.ndarray]] = [[] for _ in range(K)]
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    for image_id in image_ids:  # image order, then confidence order: pycocotools' tie-breaking
        g_boxes, g_labels, _ = gts[image_id]
        p_boxes, p_labels, p_scores = preds.get(image_id, empty)
        for k, c in enumerate(classes):
            p_mask = p_labels == c
            if not p_mask.any():
                continue
            scores = p_scores[p_mask]
            order = np.argsort(-scores, kind="stable")[:max_dets]
            iou = box_iou(p_boxes[p_mask][order], g_boxes[g_labels == c], box_format)  # (N, G)
            pooled_scores[k].append(scores[order])
            pooled_tp[k].append(_greedy_match(iou, thresholds) >= 0)  # (T, N)

    precision = np.full((T, R, K), np.nan)
    recall = np.full((T, K), np.nan)
    for k in range(K):
        if n_gt[k] == 0:
            continue  # no ground truth: AP undefined, left out of mAP (pycocotools marks it -1)
        if not pooled_scores[k]:
            precision[:, :, k], recall[:, k] = 0.0, 0.0
            continue
        scores = np.concatenate(pooled_scores[k])
        order = np.argsort(-scores, kind="stable")
        tp = np.concatenate(pooled_tp[k], axis=1)[:, order]  # (T, N)
        tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)
        fp_cum = np.cumsum(~tp, axis=1, dtype=np.float64)
        rc = tp_cum / n_gt[k]  # (T, N)
        pr = tp_cum / (tp_cum + fp_cum)  # (T, N)
        for t in range(T):
            precision[t, :, k] = interpolated_precision(rc[t], pr[t], COCO_RECALL_LEVELS)
            recall[t, k] = rc[t, -1]
    ap = precision.mean(axis=1)  # (T, K)
    has_gt = n_gt > 0
    i50, i75 = _threshold_index(thresholds, 0.5), _threshold_index(thresholds, 0.75)
    return DetectionEvaluation(
        classes=classes,
        iou_thresholds=thresholds,
        recall_levels=COCO_RECALL_LEVELS,
        n_gt=n_gt,
        precision=precision,
        recall=recall,
        ap=ap,
        map=float(ap[:, has_gt].mean()),
        map_50=float(ap[i50, has_gt].mean()) if i50 is not None else float("nan"),
        map_75=float(ap[i75, has_gt].mean()) if i75 is not None else float("nan"),
    )
