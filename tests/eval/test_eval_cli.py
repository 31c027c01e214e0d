"""`danlu eval --predictions FILE --task ... --out DIR` writes eval.json and the plots, with the right values."""

import json

import numpy as np
import pytest
import sacrebleu
from sklearn import metrics as skm

from danlu.cli import main
from danlu.eval.detection import evaluate_detections

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_classification_file(tmp_path):
    rng = np.random.default_rng(0)
    names = ["cat", "dog", "fox"]
    y = rng.integers(0, 3, 80)
    probs = rng.random((80, 3)) + 0.8 * np.eye(3)[y]
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    rows = [
        {"label": names[t], "prediction": names[p], "scores": dict(zip(names, s.tolist(), strict=True))}
        for t, p, s in zip(y, pred, probs, strict=True)
    ]
    src = _write_jsonl(tmp_path / "preds.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", "--predictions", str(src), "--task", "classification", "--out", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    m = result["metrics"]
    y_true, y_pred = [names[i] for i in y], [names[i] for i in pred]
    assert result["task"] == "classification" and result["n"] == 80 and m["labels"] == names
    assert m["overall_accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["average_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=names).tolist()
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["per_class"]["dog"]["recall"] == pytest.approx(
        skm.recall_score(y_true, y_pred, labels=names, average=None)[1]
    )
    assert m["map"] == pytest.approx(skm.average_precision_score(np.eye(3)[y], probs, average="macro"))
    assert sorted(result["plots"]) == ["confusion_matrix.png", "pr_curves.png"]
    for name in result["plots"]:
        _assert_png(out / name)


def test_detection_file(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for image_id in range(6):
        gt = np.c_[rng.uniform(0, 50, (3, 2)), rng.uniform(0, 50, (3, 2)) + 60]  # xyxy
        boxes = gt + rng.normal(0, 4, gt.shape)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        rows.append({"image_id": image_id, "boxes": boxes.tolist(), "scores": rng.random(3).tolist(),
                     "labels": [1, 2, 1], "gt_boxes": gt.tolist(), "gt_labels": [1, 2, 1]})  # fmt: skip
    src = _write_jsonl(tmp_path / "det.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", "--predictions", str(src), "--task", "detection", "--out", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    expected = evaluate_detections(
        [{k: r[k] for k in ("image_id", "boxes", "scores", "labels")} for r in rows],
        [{"image_id": r["image_id"], "boxes": r["gt_boxes"], "labels": r["gt_labels"]} for r in rows],
    )
    assert 0 < expected.map < 1
    assert result["metrics"]["map"] == pytest.approx(expected.map)
    assert result["metrics"]["map_50"] == pytest.approx(expected.map_50)
    assert result["metrics"]["per_class"]["2"]["n_gt"] == 6
    _assert_png(out / "pr_curves.png")


def test_text_file(tmp_path):
    preds = ["The cat sat on the mat.", "A dog ran in the park today.", "猫坐在垫子上。"]
    refs = ["The cat sat on a mat.", ["The dog ran in the park.", "A dog runs in a park."], "猫坐在垫子上。"]
    src = _write_jsonl(
        tmp_path / "text.jsonl", [{"prediction": p, "reference": r} for p, r in zip(preds, refs, strict=True)]
    )
    out = tmp_path / "out"
    assert (
        main(
            ["eval", "--predictions", str(src), "--task", "text", "--out", str(out), "--bleu-tokenize", "zh"]
        )
        == 0
    )
    m = json.loads((out / "eval.json").read_text(encoding="utf-8"))["metrics"]
    streams = [[refs[0], refs[1][0], refs[2]], [refs[0], refs[1][1], refs[2]]]
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, streams, tokenize="zh").score, abs=1e-6)
    assert m["exact_match"] == pytest.approx(2 / 3)  # articles and punctuation are ignored
    assert 0 < m["rouge2"] < m["rouge1"] <= 1
    _assert_png(out / "sentence_bleu.png")


@pytest.mark.parametrize(
    "content, task, message",
    [
        ('{"label": "a", "prediction": "a"}\n{"label": "b"\n', "classification", "line 2: invalid JSON"),
        ('{"label": "a"}\n', "classification", "line 1: field 'prediction' is missing"),
        ('{"label": "a", "prediction": 1}\n', "classification", "mix strings and integers"),
        ('{"label": "a", "prediction": "a", "scores": {"a": NaN}}\n', "classification", "line 1: score nan"),
        ('{"prediction": "x", "reference": 3}\n', "text", "line 1: field 'reference' must be"),
        (
            '{"image_id": 1, "boxes": [[5, 0, 1, 1]], "scores": [1], "labels": [1], "gt_boxes": [], "gt_labels": []}\n',
            "detection",
            "predictions[0].boxes: box 0",
        ),  # fmt: skip
        ("\n\n", "text", "has no records"),
    ],
)
def test_bad_files_exit_2_with_a_message(tmp_path, capsys, content, task, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(content, encoding="utf-8")
    assert main(["eval", "--predictions", str(src), "--task", task, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_missing_arguments_exit_2(tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path)]) == 2
    assert "--predictions" in capsys.readouterr().err
    assert main(["eval", "--model", "ckpt", "--out", str(tmp_path)]) == 2
    assert "--world" in capsys.readouterr().err
