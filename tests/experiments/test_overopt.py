"""experiments/overopt.py at a tiny scale (a 2-layer GPT, two steps per method), and its best-of-n maths."""

import itertools
import json
import math
import random
from pathlib import Path

import pytest


def test_best_of_n_kl_is_the_exact_kl_of_best_of_n_over_many_equal_outcomes(script):
    """π_ref uniform over M outcomes with distinct rewards: best-of-n picks the i-th lowest with probability
    (i/M)^n − ((i−1)/M)^n; its KL to π_ref tends to log n − (n − 1)/n as M grows (Stiennon et al. 2020)."""
    overopt, M = script("overopt"), 20_000
    for n in (1, 2, 4, 16, 64):
        kl = 0.0
        for i in range(1, M + 1):
            p = (i / M) ** n - ((i - 1) / M) ** n
            if p > 0:
                kl += p * math.log(p * M)
        assert overopt.best_of_n_kl(n) == pytest.approx(kl, abs=2e-3)
    assert overopt.best_of_n_kl(1) == 0.0 and overopt.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)


def test_best_of_n_estimator_averages_the_best_of_every_subset(script):
    overopt, rng = script("overopt"), random.Random(0)
    proxy = [[rng.random() for _ in range(6)] for _ in range(3)]
    gold = [[float(rng.random() > 0.5) for _ in range(6)] for _ in range(3)]
    rows = overopt.best_of_n(proxy, gold, [1, 2, 4, 6])
    for row in rows:
        n, want_p, want_g = row["n"], 0.0, 0.0
        for ps, gs in zip(proxy, gold):
            subsets = list(itertools.combinations(range(6), n))
            best = [max(sub, key=lambda i: ps[i]) for sub in subsets]
            want_p += sum(ps[i] for i in best) / len(subsets) / len(proxy)
            want_g += sum(gs[i] for i in best) / len(subsets) / len(proxy)
        assert row["proxy"] == pytest.approx(want_p) and row["gold"] == pytest.approx(want_g)
        assert row["kl"] == pytest.approx(math.log(n) - (n - 1) / n)
    assert rows[0]["gold"] == pytest.approx(sum(map(sum, gold)) / 18)  # n = 1: the plain mean
    with pytest.raises(ValueError, match="best-of-8 needs at least 8"):
        overopt.best_of_n(proxy, gold, [8])


@pytest.fixture
def one_thread():
    """One PyTorch thread: on a shared 2-core machine a second one spins at every barrier (10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_overopt_pipeline_tiny(script, make_gpt, tokenizer, world_dir, tmp_path, one_thread):
    logged = []
    overopt = script("overopt")
    result = overopt.run(tmp_path / "overopt", quick=True, sft_model=make_gpt(), tokenizer=tokenizer,
                          world_dir=world_dir, log=logged.append)  # fmt: skip
    assert {"numbers", "curves", "best_of_n", "figure", "markdown", "seconds", "cpu_seconds"} <= set(result)
    s = result["settings"]
    assert set(result["curves"]) == {"ppo", "grpo", "dpo"}
    for curve in result["curves"].values():
        assert [c["step"] for c in curve] == [0, 1, 2]  # the SFT model, then each checkpoint
        assert curve[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # π = π_ref at step 0
        assert all(0 <= c["gold"] <= 1 and c["answer_tokens"] >= 1 for c in curve)
        assert curve[-1]["kl"] != curve[0]["kl"]  # the policy moved
    assert [b["n"] for b in result["best_of_n"]] == [1, 2, 4] and s["bon_max"] == 4
    assert [b["kl"] for b in result["best_of_n"]] == [0.0, math.log(2) - 0.5, math.log(4) - 0.75]
    for method, v in result["numbers"]["methods"].items():
        assert {"gold_peak", "peak_kl", "peak_kl_per_token", "peak_step", "peak_visible"} <= set(v)
        assert v["gold_peak"] == max(c["gold"] for c in result["curves"][method])
    assert Path(result["figure"]).stat().st_size > 0
    assert (
        result["markdown"].startswith("## Reward over-optimisation")
        and "overopt/overopt.png" in result["markdown"]
    )
    saved = json.loads((tmp_path / "overopt" / "overopt.json").read_text())
    assert saved["numbers"] == json.loads(json.dumps(result["numbers"]))
    assert any(line.startswith("proxy reward model:") for line in logged)
    # --collect (runs made in parallel) rebuilds the same report from the saved run
    again = overopt.collect(tmp_path / "collected", [tmp_path / "overopt"], log=logged.append)
    assert again["numbers"]["methods"] == saved["numbers"]["methods"] and Path(again["figure"]).is_file()
