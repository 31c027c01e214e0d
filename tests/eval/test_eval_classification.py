"""Classification metrics: parity with scikit-learn on randomised inputs, the notes' formulas, bad input."""

import numpy as np
import pytest
from sklearn import metrics as skm

from danlu.errors import DanluError
from danlu.eval.classification import (
    average_accuracy,
    average_precision,
    confusion_matrix,
    interpolated_ap,
    mean_average_precision,
    overall_accuracy,
    precision_recall_curve,
    precision_recall_f1,
)

# scikit-learn warns about zero divisions and absent classes, the very cases these tests exercise on purpose
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N_CASES = 300


def _random_case(rng: np.random.Generator):
    K = int(rng.integers(2, 6))
    n = int(rng.integers(1, 60))
    y_true = rng.integers(0, K, n)
    # mostly right, sometimes wrong, so every cell of the confusion matrix gets exercised
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, K, n))
    if rng.random() < 0.5:  # string labels too
        names = np.array(["cat", "dog", "fox", "owl", "yak"])
        y_true, y_pred = names[y_true], names[y_pred]
    return y_true, y_pred


def test_confusion_matrix_and_prf_match_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(N_CASES):
        y_true, y_pred = _random_case(rng)
        labels = None
        if rng.random() < 0.3:  # an explicit order, possibly with a class absent from the data
            labels = sorted(set(y_true) | set(y_pred))[::-1]
            labels = labels + (["zzz"] if isinstance(labels[0], str) else [99])
        np.testing.assert_array_equal(
            confusion_matrix(y_true, y_pred, labels), skm.confusion_matrix(y_true, y_pred, labels=labels)
        )
        for average in (None, "micro", "macro", "weighted"):
            ours = precision_recall_f1(y_true, y_pred, labels, average=average)
            p, r, f, s = skm.precision_recall_fscore_support(
                y_true, y_pred, labels=labels, average=average, zero_division=0
            )
            np.testing.assert_allclose(ours.precision, p, rtol=0, atol=1e-9)
            np.testing.assert_allclose(ours.recall, r, rtol=0, atol=1e-9)
            np.testing.assert_allclose(ours.f1, f, rtol=0, atol=1e-9)
            if average is None:
                np.testing.assert_array_equal(ours.support, s)
        assert overall_accuracy(y_true, y_pred) == pytest.approx(
            skm.accuracy_score(y_true, y_pred), abs=1e-12
        )
        assert average_accuracy(y_true, y_pred) == pytest.approx(
            skm.balanced_accuracy_score(y_true, y_pred), abs=1e-9
        )


def test_pr_curve_and_average_precision_match_sklearn():
    rng = np.random.default_rng(1)
    for case in range(N_CASES):
        n = int(rng.integers(2, 80))
        y = rng.integers(0, 2, n)
        if y.sum() == 0:
            y[0] = 1
        # rounding makes ties common: tied scores must enter the curve together
        scores = rng.random(n) + 0.5 * y
        if case % 2:
            scores = np.round(scores, 1)
        p, r, t = precision_recall_curve(y, scores)
        sp, sr, st = skm.precision_recall_curve(y, scores)
        np.testing.assert_allclose(p, sp, atol=1e-9)
        np.testing.assert_allclose(r, sr, atol=1e-9)
        np.testing.assert_allclose(t, st, atol=1e-12)
        assert average_precision(y, scores) == pytest.approx(skm.average_precision_score(y, scores), abs=1e-9)


def _interpolated_reference(y, scores, n_points):
    """The textbook rule, written independently: at each recall level r, the best precision among the
    thresholds whose recall is >= r. Recall is compared exactly with the level, as pycocotools does
    (so 3/10 = 0.3 does not reach linspace's level 0.30000000000000004)."""
    points = []
    for thr in np.unique(scores):
        predicted = scores >= thr
        tp = np.sum(predicted & (y == 1))
        points.append((tp / y.sum(), tp / predicted.sum()))
    levels = np.linspace(0, 1, n_points)
    return np.mean([max([p for r, p in points if r >= level], default=0.0) for level in levels])


def test_interpolated_ap_matches_textbook_rule():
    rng = np.random.default_rng(2)
    for case in range(100):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        y[0] = 1
        scores = np.round(rng.random(n) + 0.3 * y, 1 if case % 2 else 6)
        for n_points, name in ((11, "11"), (101, "101")):
            ours = average_precision(y, scores, interpolation=name)
            assert ours == pytest.approx(_interpolated_reference(y, scores, n_points), abs=1e-9)


def test_interpolated_ap_known_values():
    # perfect ranking: precision 1 at every recall level
    assert interpolated_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), np.linspace(0, 1, 11)) == 1.0
    # recall never above 0.5: levels 0.6..1.0 score 0 -> 6/11
    assert interpolated_ap(np.array([0.5]), np.array([1.0]), np.linspace(0, 1, 11)) == pytest.approx(6 / 11)


def test_mean_average_precision_matches_sklearn_macro():
    rng = np.random.default_rng(3)
    for _ in range(100):
        K = int(rng.integers(2, 6))
        n = int(rng.integers(K, 60))
        y = np.r_[np.arange(K), rng.integers(0, K, n - K)]  # every class present
        scores = rng.random((n, K)) + 0.7 * np.eye(K)[y]
        result = mean_average_precision(y, scores, labels=list(range(K)))
        expected = skm.average_precision_score(np.eye(K)[y], scores, average="macro")
        assert result.map == pytest.approx(expected, abs=1e-9)
        assert result.excluded == []


def test_mean_average_precision_leaves_out_absent_classes():
    y = np.array([0, 0, 1, 1])
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.6, 0.4, 0.0]])
    result = mean_average_precision(y, scores, labels=[0, 1, 2])
    assert result.excluded == [2]
    assert set(result.per_class) == {0, 1}
    assert result.map == pytest.approx(
        np.mean([skm.average_precision_score(y == k, scores[:, k]) for k in (0, 1)])
    )


def test_average_accuracy_is_the_notes_binary_formula():
    rng = np.random.default_rng(4)
    for _ in range(50):
        y = rng.integers(0, 2, 30)
        y[:2] = [0, 1]
        pred = np.where(rng.random(30) < 0.7, y, 1 - y)
        tp = np.sum((pred == 1) & (y == 1))
        tn = np.sum((pred == 0) & (y == 0))
        fp = np.sum((pred == 1) & (y == 0))
        fn = np.sum((pred == 0) & (y == 1))
        notes_aa = (tp / (tp + fn) + tn / (tn + fp)) / 2  # notes 000 §Average accuracy
        notes_oa = (tp + tn) / (tp + tn + fp + fn)  # notes 000 §Overall Accuracy
        assert average_accuracy(y, pred) == pytest.approx(notes_aa, abs=1e-12)
        assert overall_accuracy(y, pred) == pytest.approx(notes_oa, abs=1e-12)


def test_empty_classes_give_zero():
    # class 2 is never predicted and never true: P = R = F1 = 0 (zero_division=0), documented
    r = precision_recall_f1([0, 1, 1], [0, 1, 0], labels=[0, 1, 2])
    assert r.precision[2] == 0.0 and r.recall[2] == 0.0 and r.f1[2] == 0.0
    # no positive at all: AP is 0 like scikit-learn
    assert average_precision([0, 0, 0], [0.1, 0.5, 0.3]) == 0.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: confusion_matrix([0, 1, 1], [0, 1]), "y_true has 3, y_pred has 2"),
        (lambda: overall_accuracy([], []), "y_true: is empty"),
        (lambda: confusion_matrix([0, 1, 5], [0, 1, 1], labels=[0, 1]), "y_true: label 5 at index 2"),
        (lambda: confusion_matrix([0, 1], [0, 7], labels=[0, 1]), "y_pred: label 7"),
        (lambda: confusion_matrix([0, 1], ["0", "1"]), "y_true holds"),
        (lambda: precision_recall_f1([0, 1], [0, 1], average="binary"), "average"),
        (lambda: average_precision([0, 1, 1], [0.2, float("nan"), 0.4]), r"y_score: contains nan at index 1"),
        (lambda: precision_recall_curve([0, 1], [0.2, 0.3, 0.4]), "y_true has 2, y_score has 3"),
        (lambda: average_precision([0, 1], [0.1, 0.9], interpolation="12"), "interpolation"),
        (lambda: mean_average_precision([0, 1], np.ones((2, 3)), labels=[0, 1]), "scores: has 3 columns"),
        (lambda: mean_average_precision([0, 3], np.ones((2, 2)), labels=[0, 1]), "y_true: label 3"),
        (lambda: confusion_matrix([0.0, float("nan")], [0.0, 1.0]), "y_true: contains NaN at index 1"),
        (lambda: average_precision(["cat", "dog"], [0.1, 0.9]), "pos_label: 1 does not occur in y_true"),
        (lambda: average_precision([0, 1, 2], [0.1, 0.9, 0.5]), "y_true: has 3 distinct labels"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(DanluError, match=match):
        call()
