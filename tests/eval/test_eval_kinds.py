"""The evaluation kinds of note 002: multiple choice, QA, execution (pass@k), preference ranking.

Each metric is checked against its reference: lm-evaluation-harness's own `process_results`, the SQuAD v1.1
definition written out independently, the closed-form binomial and a brute-force enumeration for pass@k,
scikit-learn's logistic regression for Bradley–Terry, and a plain loop for online Elo.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import string
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from danlu.errors import DanluError
from danlu.eval.choice import MCItem, evaluate_multiple_choice, fewshot_prompt, loglikelihoods, mc_metrics
from danlu.eval.execution import command_checker, evaluate_execution, mean_pass_at_k, pass_at_k
from danlu.eval.preference import bradley_terry, leaderboard, online_elo, plot_leaderboard, read_comparisons
from danlu.eval.qa import evaluate_qa, token_f1
from danlu.nn.logprobs import token_logprobs

# ----------------------------------------------------------------------------------------------- pass@k


def test_pass_at_k_equals_the_closed_form_on_random_counts():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 200)
        c, k = rng.randint(0, n), rng.randint(1, n)
        expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_brute_force_enumeration_on_small_counts():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                draws = list(itertools.combinations(range(n), k))
                brute = sum(any(samples[i] for i in d) for d in draws) / len(draws)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_evaluate_execution_with_a_command_checker(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(
        "import os, sys\nsys.exit(0 if sys.stdin.read().strip() == os.environ['DANLU_PROBLEM'] else 1)\n"
    )
    check = command_checker([sys.executable, str(script)])
    result = evaluate_execution(["7", "9"], [["7", "8", "7"], ["1", "2", "3"]], check, ks=(1, 2))
    assert result.num_correct == (2, 0)
    assert result.pass_at[1] == pytest.approx((2 / 3 + 0) / 2)
    assert result.pass_at[2] == pytest.approx((1.0 + 0) / 2)


def test_pass_at_k_bad_input():
    with pytest.raises(DanluError, match="k ≤ n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(DanluError, match="c:"):
        pass_at_k(3, 5, 1)
    with pytest.raises(DanluError, match="lengths differ"):
        mean_pass_at_k([3, 3], [1], 1)


# -------------------------------------------------------------------------------------------------- QA


def _official_squad_f1(prediction: str, ground_truth: str) -> float:
    """The SQuAD v1.1 evaluation script's definition, written out from its description."""

    def normalize(s: str) -> str:
        s = s.lower()
        s = "".join(ch for ch in s if ch not in set(string.punctuation))
        s = re.sub(r"\b(a|an|the)\b", " ", s)
        return " ".join(s.split())

    p, g = normalize(prediction).split(), normalize(ground_truth).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return (2 * precision * recall) / (precision + recall)


def test_token_f1_equals_the_squad_definition():
    examples = [
        ("The capital of Zorvia is Velmar.", "Velmar"),
        ("Velmar", "the city of Velmar"),
        ("an apple a day", "The apple"),
        ("", "Velmar"),
        ("red red blue", "red blue blue"),
    ]
    rng = random.Random(1)
    alphabet = "ab c.,!  The the an A"
    for _ in range(400):
        examples.append(
            (
                "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))),
                "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))),
            )
        )
    for pred, ref in examples:
        assert token_f1(pred, ref) == pytest.approx(_official_squad_f1(pred, ref), abs=1e-12), (pred, ref)


def test_evaluate_qa_takes_the_best_reference_and_handles_chinese():
    score = evaluate_qa(["Velmar", "a red cup"], [["Kest", "Velmar"], "the blue cup"])
    assert score.per_question_em == (1.0, 0.0)
    assert score.per_question_f1[1] == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    zh = evaluate_qa(["维尔马"], ["维尔马尔"], normalize="multilingual")
    assert zh.f1 == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    with pytest.raises(DanluError, match="normalize"):
        evaluate_qa(["a"], ["a"], normalize="nope")


# ---------------------------------------------------------------------------------------- preference


def _random_comparisons(seed: int, n: int = 300):
    rng = random.Random(seed)
    strength = {"alpha": 1.0, "beta": 0.3, "gamma": -0.2, "delta": -1.1}
    names = list(strength)
    out = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        p = 1 / (1 + math.exp(-(strength[a] - strength[b])))
        u = rng.random()
        out.append((a, b, "tie" if abs(u - p) < 0.05 else ("a" if u < p else "b")))
    return out


def test_bradley_terry_matches_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    records = _random_comparisons(0)
    comparisons = read_comparisons(records)
    ours = bradley_terry(comparisons)
    names = sorted(ours)
    col = {n: i for i, n in enumerate(names)}
    X, y, w = [], [], []
    for c in comparisons:  # a tie is half a win each way: two rows of weight ½
        row = np.zeros(len(names))
        row[col[c.model_a]], row[col[c.model_b]] = 1.0, -1.0
        for outcome, weight in ((1, c.score_a), (0, 1.0 - c.score_a)):
            if weight > 0:
                X.append(row)
                y.append(outcome)
                w.append(weight)
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000)
    lr.fit(np.array(X), np.array(y), sample_weight=np.array(w))
    coef = lr.coef_[0] - lr.coef_[0].mean()
    for n in names:
        assert ours[n] == pytest.approx(coef[col[n]], abs=1e-4)


def test_online_elo_matches_a_plain_loop():
    records = _random_comparisons(2, n=200)
    ratings = {}
    for a, b, winner in records:
        ra, rb = ratings.setdefault(a, 1000.0), ratings.setdefault(b, 1000.0)
        ea = 1 / (1 + 10 ** ((rb - ra) / 400))
        sa = {"a": 1.0, "b": 0.0, "tie": 0.5}[winner]
        ratings[a] = ra + 4 * (sa - ea)
        ratings[b] = rb + 4 * ((1 - sa) - (1 - ea))
    ours = online_elo(read_comparisons(records))
    assert ours.keys() == ratings.keys()
    for n in ratings:
        assert ours[n] == pytest.approx(ratings[n], abs=1e-9)


def test_leaderboard_orders_by_strength_and_plots(tmp_path):
    board = leaderboard(read_comparisons(_random_comparisons(3, n=400)), n_bootstrap=50, seed=0)
    assert board.models == ("alpha", "beta", "gamma", "delta")
    for m in board.models:
        assert board.lower[m] <= board.rating[m] <= board.upper[m]
    assert abs(sum(board.win_rate.values()) - 2.0) < 0.5  # four models, each about half its games
    path = plot_leaderboard(board, tmp_path / "leaderboard.png")
    assert path.stat().st_size > 1000


def test_preference_bad_input():
    with pytest.raises(DanluError, match="unknown model 'gpt-9'"):
        read_comparisons([("alpha", "gpt-9", "a")], models=["alpha", "beta"])
    with pytest.raises(DanluError, match="winner"):
        read_comparisons([("alpha", "beta", "both")])
    with pytest.raises(DanluError, match="itself"):
        read_comparisons([("alpha", "alpha", "tie")])
    with pytest.raises(DanluError, match="never lost"):
        bradley_terry(read_comparisons([("alpha", "beta", "a")] * 5))


# ----------------------------------------------------------------------------------- multiple choice


def test_acc_and_acc_norm_equal_lm_evaluation_harness(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    from lm_eval.api.task import ConfigurableTask

    rng = random.Random(0)
    docs = []
    for i in range(40):
        n = rng.randint(2, 5)
        choices = [
            "".join(rng.choice("abcde ") for _ in range(rng.randint(1, 12))).strip() or "x" for _ in range(n)
        ]
        docs.append({"q": f"question {i}", "choices": choices, "gold": rng.randrange(n)})
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    task = ConfigurableTask(
        config={
            "task": "danlu_mc",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{q}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{gold}}",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }
    )
    for doc in task.test_docs():
        lls = [-rng.uniform(0.1, 30.0) for _ in doc["choices"]]
        theirs = task.process_results(doc, [(ll, False) for ll in lls])
        ours = mc_metrics(lls, doc["choices"], doc["gold"])
        assert ours == {"acc": theirs["acc"], "acc_norm": theirs["acc_norm"]}


def test_loglikelihoods_equal_one_by_one_full_softmax(tokenizer, make_gpt):
    model = make_gpt("llama-tiny", seed=3).eval()
    requests = [
        ("The capital of", " Zorvia"),
        ("3 + 4 =", " 7"),
        ("尤萨有一个", "杯子。"),
        ("Velmar  ", "is red"),
    ]
    batched = loglikelihoods(model, tokenizer, requests, batch_size=3)
    for (context, continuation), (ll, greedy) in zip(requests, batched, strict=True):
        n_spaces = len(context) - len(context.rstrip(" "))
        ctx_text = context[: len(context) - n_spaces]
        whole = tokenizer.encode(context + continuation)
        n_ctx = len(tokenizer.encode(ctx_text))
        ids = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)  # (T-1, V)
        targets = ids[0, 1:]
        picked = logp[torch.arange(len(targets)), targets][n_ctx - 1 :]
        assert ll == pytest.approx(float(picked.sum()), abs=1e-4)
        assert greedy == bool((logp.argmax(-1)[n_ctx - 1 :] == targets[n_ctx - 1 :]).all())


def test_token_logprobs_equals_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    labels = torch.randint(0, 11, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1) * mask
    labels_with_ignore = labels.masked_fill(~mask, -100)
    assert torch.allclose(token_logprobs(logits, labels_with_ignore, mask), expected, atol=1e-6)


def test_evaluate_multiple_choice_and_fewshot_prompt(tokenizer, make_gpt):
    items = [
        MCItem(f"{a} + {b} =", (str(a + b), str(a + b + 1), str(a + b - 1)), 0)
        for a, b in [(1, 2), (3, 4), (2, 2)]
    ]
    prompt = fewshot_prompt(items[0], items, 2, random.Random(5))
    assert prompt.endswith("\n\n1 + 2 =") and prompt.count("\n\n") == 2 and "1 + 2 = 3" not in prompt
    result = evaluate_multiple_choice(make_gpt("llama-tiny"), tokenizer, items, num_fewshot=1, seed=0)
    assert len(result.loglikelihoods) == 3 and all(len(r) == 3 for r in result.loglikelihoods)
    assert 0.0 <= result.acc <= 1.0 and 0.0 <= result.acc_norm <= 1.0


def test_multiple_choice_bad_input():
    with pytest.raises(DanluError, match="at least 2 choices"):
        MCItem("q", ("only",), 0)
    with pytest.raises(DanluError, match="gold"):
        MCItem("q", ("a", "b"), 2)
    with pytest.raises(DanluError, match="few-shot"):
        fewshot_prompt(MCItem("q", ("a", "b"), 0), [], 1, random.Random(0))
