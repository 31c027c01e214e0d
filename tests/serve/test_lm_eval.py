"""lm-evaluation-harness's `local-completions` model pointed at `danlu serve` scores a multiple-choice task
exactly as danlu scores it directly (danlu.eval.choice): the same per-choice log-likelihoods, so the same acc
and acc_norm.

Offline: the task is a local YAML (`dataset_path: json` over a local JSONL file, HF_DATASETS_OFFLINE=1), and
the tokenizer is the server's own: lm-eval's tokenizer_backend "auto" finds /tokenizer_info and /tokenize
(serve/tokenize.py) and tokenizes remotely, so nothing is downloaded and the context/continuation split it
computes is the server's. lm-eval sends token-id prompts (list[list[int]] with batch_size=2) with
echo=true, logprobs=1, max_tokens=1, and sums token_logprobs[ctxlen:-1]."""

from __future__ import annotations

import json

import pytest

from danlu.eval.choice import MCItem, evaluate_multiple_choice
from danlu.serve.api import ServeConfig, create_app
from danlu.serve.server import BackgroundServer

ITEMS = [
    {"query": "The capital of Hetoris is", "choices": ["Fadono", "a cat", "green"], "gold": 0},
    {"query": "Fido is a", "choices": ["dog", "year", "number"], "gold": 0},
    {"query": "Two plus two is", "choices": ["four", "seven"], "gold": 0},
    {"query": "Vilan likes to eat", "choices": ["rice", "stones", "clouds"], "gold": 1},
    {"query": "Pona walked to the", "choices": ["market", "sky"], "gold": 1},
]

TASK = """task: danlu_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: query
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def test_lm_eval_local_completions_matches_danlu_eval(tiny, tmp_path, monkeypatch):
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        pytest.fail("lm-eval is missing; install the dev extra: pip install -e '.[dev]'")

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    (tmp_path / "danlu_tiny_mc.yaml").write_text(TASK.format(data=data))
    model, tokenizer = tiny
    with BackgroundServer(create_app(model, tokenizer, ServeConfig(model_name="tiny-world"))) as url:
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=f"model=tiny-world,base_url={url}/v1/completions,num_concurrent=1,max_retries=1,"
            "batch_size=2",
            tasks=["danlu_tiny_mc"],
            task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
            log_samples=True,
        )
    theirs = out["results"]["danlu_tiny_mc"]
    samples = sorted(out["samples"]["danlu_tiny_mc"], key=lambda s: s["doc_id"])
    lls = [[resp[0][0] for resp in s["resps"]] for s in samples]
    ours = evaluate_multiple_choice(
        model, tokenizer, [MCItem(i["query"], tuple(i["choices"]), i["gold"]) for i in ITEMS]
    )
    for got, want in zip(lls, ours.loglikelihoods, strict=True):
        assert got == pytest.approx(want, abs=1e-3)
    assert theirs["acc,none"] == ours.acc
    assert theirs["acc_norm,none"] == ours.acc_norm
