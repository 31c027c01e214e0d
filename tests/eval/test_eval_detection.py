"""Detection metrics: IoU and COCO mAP parity with pycocotools on generated detections, matching, bad input."""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from danlu.errors import DanluError
from danlu.eval.detection import box_iou, evaluate_detections, match_detections


def _random_xywh(rng, n):
    return np.c_[rng.uniform(0, 50, (n, 2)), rng.uniform(1, 30, (n, 2))]


def _xywh_to_xyxy(b):
    return np.c_[b[:, :2], b[:, :2] + b[:, 2:]]


def test_box_iou_matches_pycocotools_numpy_and_torch():
    rng = np.random.default_rng(0)
    for _ in range(100):
        a = _random_xywh(rng, int(rng.integers(1, 8)))
        near = a + rng.normal(0, 3, a.shape) * [1, 1, 0.2, 0.2]  # overlapping boxes, IoU spread over (0, 1)
        near[:, 2:] = np.abs(near[:, 2:])
        b = np.r_[near, _random_xywh(rng, int(rng.integers(0, 4)))]
        expected = coco_mask.iou(a.tolist(), b.tolist(), [0] * len(b))  # (N, M), pycocotools' bbox IoU
        np.testing.assert_allclose(box_iou(a, b, box_format="xywh"), expected, atol=1e-12)
        np.testing.assert_allclose(box_iou(_xywh_to_xyxy(a), _xywh_to_xyxy(b)), expected, atol=1e-9)
        t = box_iou(torch.tensor(_xywh_to_xyxy(a)), torch.tensor(_xywh_to_xyxy(b)))
        assert isinstance(t, torch.Tensor) and t.shape == (len(a), len(b))
        np.testing.assert_allclose(t.numpy(), expected, atol=1e-9)


def test_box_iou_known_values():
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [2, 2, 4, 4], [0, 0, 2, 2], [5, 5, 5, 5]])
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0.0, 1.0, 0.0]])
    # both degenerate: union 0 -> IoU 0, not NaN
    assert box_iou(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]]))[0, 0] == 0.0
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


def test_match_detections_by_descending_confidence():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    preds = np.array([[0, 0, 10, 9], [0, 0, 10, 10], [20, 20, 30, 31], [50, 50, 60, 60]])
    scores = np.array([0.6, 0.9, 0.5, 0.8])
    # the 0.9 box claims gt 0 first, so the 0.6 box (also on gt 0) is a false positive
    np.testing.assert_array_equal(match_detections(preds, scores, gt), [-1, 0, 1, -1])
    # at IoU 0.95 the slightly-off box no longer matches
    np.testing.assert_array_equal(match_detections(preds, scores, gt, iou_threshold=0.95), [-1, 0, -1, -1])


def _generate(rng, n_images, n_classes, max_dets=10):
    gts, preds = [], []
    for i in range(n_images):
        G, N = int(rng.integers(0, 6)), int(rng.integers(0, max_dets))
        gb, gl = _random_xywh(rng, G), rng.integers(1, n_classes + 1, G)
        pb = _random_xywh(rng, N)
        if G:  # most predictions are jittered copies of a ground-truth box, so IoUs cover the thresholds
            src, near = rng.integers(0, G, N), rng.random(N) < 0.7
            pb[near] = gb[src[near]] + rng.normal(0, 2, (int(near.sum()), 4)) * [1, 1, 0.3, 0.3]
            pb[:, 2:] = np.abs(pb[:, 2:]) + 0.5
        pl = (
            np.where(rng.random(N) < 0.8, gl[src] if G else 1, rng.integers(1, n_classes + 1, N)) if N else []
        )
        gts.append({"image_id": i + 1, "boxes": gb, "labels": gl})
        preds.append(
            {"image_id": i + 1, "boxes": pb, "labels": np.asarray(pl, dtype=int), "scores": rng.random(N)}
        )
    return gts, preds


def _pycocotools_stats(gts, preds):
    classes = sorted({int(c) for r in gts + preds for c in r["labels"]})
    dataset = {"images": [{"id": g["image_id"]} for g in gts], "categories": [{"id": c} for c in classes]}
    dataset["annotations"] = [
        {
            "id": j + 1,
            "image_id": g["image_id"],
            "category_id": int(c),
            "bbox": b.tolist(),
            "area": float(b[2] * b[3]),
            "iscrowd": 0,
        }
        for j, (g, b, c) in enumerate(
            (g, b, c) for g in gts for b, c in zip(g["boxes"], g["labels"], strict=True)
        )
    ]
    results = [
        {"image_id": p["image_id"], "category_id": int(c), "bbox": b.tolist(), "score": float(s)}
        for p in preds
        for b, c, s in zip(p["boxes"], p["labels"], p["scores"], strict=True)
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        E = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats


def test_coco_map_matches_pycocotools():
    rng = np.random.default_rng(1)
    checked = 0
    for case in range(220):
        many = case % 50 == 0  # a few cases with > 100 predictions per image and class: maxDets=100 applies
        gts, preds = _generate(
            rng, int(rng.integers(1, 3 if many else 6)), int(rng.integers(1, 4)), 160 if many else 10
        )
        if sum(len(g["labels"]) for g in gts) == 0 or sum(len(p["labels"]) for p in preds) == 0:
            continue
        stats = _pycocotools_stats(gts, preds)
        ours = evaluate_detections(preds, gts, box_format="xywh")
        # stats[0] = AP@[.5:.95], stats[1] = AP@.5, stats[2] = AP@.75 (area all, maxDets 100)
        assert ours.map == pytest.approx(stats[0], abs=1e-6), case
        assert ours.map_50 == pytest.approx(stats[1], abs=1e-6), case
        assert ours.map_75 == pytest.approx(stats[2], abs=1e-6), case
        assert stats[8] == pytest.approx(np.nanmean(ours.recall[:, ours.n_gt > 0]), abs=1e-6), case  # AR@100
        # the same boxes in xyxy give the same result
        xyxy = [{**p, "boxes": _xywh_to_xyxy(p["boxes"])} for p in preds]
        xyxy_gt = [{**g, "boxes": _xywh_to_xyxy(g["boxes"])} for g in gts]
        assert evaluate_detections(xyxy, xyxy_gt).map == pytest.approx(stats[0], abs=1e-6)
        checked += 1
    assert checked > 150


def test_perfect_detections_score_one_and_classes_without_gt_are_left_out():
    gts = [{"image_id": "a", "boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "labels": ["cat", "dog"]}]
    preds = [{"image_id": "a", "boxes": [[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 5, 5]], "scores": [0.9, 0.8, 0.1],
              "labels": ["cat", "dog", "owl"]}]  # fmt: skip
    result = evaluate_detections(preds, gts)
    assert result.map == 1.0 and result.map_50 == 1.0
    per_class = result.per_class()
    assert per_class["cat"]["ap"] == 1.0 and per_class["owl"]["n_gt"] == 0
    assert np.isnan(per_class["owl"]["ap"])


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: box_iou(np.array([[5, 0, 1, 1]]), np.zeros((1, 4))),
            r"boxes1: box 0 = \[5.0, 0.0, 1.0, 1.0\] is invalid",
        ),
        (lambda: box_iou(np.zeros((1, 4)), np.array([[0, 0, 1, -2]]), "xywh"), "boxes2: box 0"),
        (lambda: box_iou(np.zeros((1, 3)), np.zeros((1, 4))), r"boxes1: expected boxes of shape \(N, 4\)"),
        (lambda: box_iou(np.array([[0, 0, np.nan, 1]]), np.zeros((1, 4))), "boxes1: box 0 .* not finite"),
        (lambda: box_iou(np.zeros((1, 4)), np.zeros((1, 4)), "cxcywh"), "box_format"),
        (
            lambda: match_detections(np.zeros((2, 4)), [0.5], np.zeros((1, 4))),
            "pred_boxes has 2, pred_scores has 1",
        ),
        (lambda: match_detections(np.zeros((1, 4)), [np.nan], np.zeros((1, 4))), "pred_scores: contains nan"),
        (
            lambda: evaluate_detections(
                [{"image_id": 1, "boxes": [[0, 0, 1, 1]], "scores": [0.5], "labels": [1]}],
                [{"image_id": 2, "boxes": [[0, 0, 1, 1]], "labels": [1]}],
            ),
            "predictions: image_id 1 is not in ground_truths",
        ),
        (
            lambda: evaluate_detections(
                [{"image_id": 1, "boxes": [[0, 0, 1, 1]], "labels": [1]}],
                [{"image_id": 1, "boxes": [], "labels": []}],
            ),
            r"predictions\[0\]: missing key 'scores'",
        ),
        (
            lambda: evaluate_detections(
                [{"image_id": 1, "boxes": [[0, 0, 1, 1]], "scores": [0.5, 0.2], "labels": [1]}],
                [{"image_id": 1, "boxes": [[0, 0, 1, 1]], "labels": [1]}],
            ),
            r"predictions\[0\].boxes has 1, predictions\[0\].scores has 2",
        ),
        (
            lambda: evaluate_detections(
                [{"image_id": 1, "boxes": [[2, 0, 1, 1]], "scores": [0.5], "labels": [1]}],
                [{"image_id": 1, "boxes": [[0, 0, 1, 1]], "labels": [1]}],
            ),
            r"predictions\[0\].boxes: box 0",
        ),
        (
            lambda: evaluate_detections([], [{"image_id": 1, "boxes": [], "labels": []}]),
            "no ground-truth box at all",
        ),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(DanluError, match=match):
        call()
