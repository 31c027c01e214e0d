"""The evaluation kinds of note 002 over files: what `danlu eval --task mc|qa|pass@k|preference|knowledge` runs.

One JSON object per line (blank lines skipped), as in `danlu.eval.files`. Layouts:

mc          {"query": "The capital of Zorvia is", "choices": ["Velmar.", "Tolin."], "gold": 0}   (with --model)
    scored by log-likelihood as lm-evaluation-harness does (`danlu.eval.choice`; target delimiter " ",
    --num-fewshot examples drawn from the file with --seed) -> acc, acc_norm.
qa          {"prediction": "Velmar", "references": ["Velmar", "the city of Velmar"]}   ("reference": one string)
    -> SQuAD v1.1 exact_match and token f1, each the best over the references (`danlu.eval.qa`).
pass@k      {"n": 10, "c": 3}   or   {"passed": [true, false, ...]}   (one problem per line)
    -> the unbiased pass@k (1 − C(n−c, k)/C(n, k), `danlu.eval.execution`) for each --pass-at K.
preference  {"model_a": "x", "model_b": "y", "winner": "a" | "b" | "tie"}
    -> Bradley–Terry ratings with bootstrap intervals, online Elo, win rates (`danlu.eval.preference`);
       with --models, a record naming another model is an error. Plot: leaderboard.png.
knowledge   no file: --model and --world (a `danlu world` folder) -> the world probe (`danlu.eval.world_probe`):
    multiple choice and greedy completion on held-in and held-out facts, and arithmetic.

Results go to OUT/eval.json: {"task", "data", "n", "metrics": {...}, "plots": [...]}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from danlu.errors import DanluError
from danlu.eval import report
from danlu.eval.files import read_jsonl

MODEL_TASKS = ("mc", "knowledge")
FILE_TASKS = ("mc", "qa", "pass@k", "preference")
TASKS = ("mc", "qa", "pass@k", "preference", "knowledge")


def _field(path: Any, number: int, obj: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise DanluError(f"{path} line {number}: field {name!r} is missing")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DanluError(f"{path} line {number}: field {name!r} should be {names}, got {value!r}"[:300])
    return value


def read_mc_items(path: str | Path) -> list:
    """MCItems from a JSONL file; a bad line (one choice, gold out of range) names the file and line."""
    from danlu.eval.choice import MCItem

    items = []
    for number, obj in read_jsonl(path):
        choices = _field(path, number, obj, "choices", list)
        try:
            items.append(MCItem(_field(path, number, obj, "query", str), tuple(choices), obj.get("gold")))
        except DanluError as e:
            raise DanluError(f"{path} line {number}: {e}") from None
    return items


def score_mc(model: Any, tokenizer: Any, path: str | Path, num_fewshot: int = 0, seed: int = 1234) -> dict:
    from danlu.eval.choice import evaluate_multiple_choice

    items = read_mc_items(path)
    if num_fewshot >= len(items):
        raise DanluError(
            f"--num-fewshot {num_fewshot}: {path} has only {len(items)} items to draw examples from"
        )
    r = evaluate_multiple_choice(model, tokenizer, items, num_fewshot=num_fewshot, seed=seed)
    return {"n": len(items), "acc": r.acc, "acc_norm": r.acc_norm}


def score_qa(path: str | Path) -> dict:
    from danlu.eval.qa import evaluate_qa

    predictions, references = [], []
    for number, obj in read_jsonl(path):
        predictions.append(_field(path, number, obj, "prediction", str))
        refs = obj.get("references", obj.get("reference"))
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not refs or not all(isinstance(x, str) for x in refs):
            raise DanluError(f"{path} line {number}: give 'references' (a list of strings) or 'reference'")
        references.append(refs)
    r = evaluate_qa(predictions, references)
    return {"n": len(predictions), "exact_match": r.exact_match, "f1": r.f1}


def score_pass_at_k(path: str | Path, ks: list[int]) -> dict:
    from danlu.eval.execution import mean_pass_at_k

    ns, cs = [], []
    for number, obj in read_jsonl(path):
        if "passed" in obj:
            passed = _field(path, number, obj, "passed", list)
            if not all(isinstance(p, bool) for p in passed):
                raise DanluError(f"{path} line {number}: 'passed' should be a list of true/false")
            ns.append(len(passed))
            cs.append(sum(passed))
        else:
            ns.append(_field(path, number, obj, "n", int))
            cs.append(_field(path, number, obj, "c", int))
    try:
        out: dict[str, Any] = {f"pass@{k}": mean_pass_at_k(ns, cs, k) for k in ks}
    except DanluError as e:
        raise DanluError(
            f"{path}: {e} (--pass-at {' '.join(map(str, ks))}; the fewest samples of a problem is {min(ns)})"
        ) from None
    return {"n": len(ns), **out}


def score_preference(
    path: str | Path, out_dir: Path, models: list[str] | None = None
) -> tuple[dict, list[Path]]:
    from danlu.eval.preference import leaderboard, plot_leaderboard, read_comparisons

    records = [obj for _, obj in read_jsonl(path)]
    try:
        board = leaderboard(read_comparisons(records, models))
    except DanluError as e:
        raise DanluError(f"{path}: {e}") from None
    metrics = {"n": len(records), "order": list(board.models), "rating": board.rating, "lower": board.lower,
               "upper": board.upper, "win_rate": board.win_rate, "online_elo": board.online_elo}  # fmt: skip
    return metrics, [plot_leaderboard(board, out_dir / "leaderboard.png")]


def score_knowledge(model: Any, tokenizer: Any, world_dir: str | Path, n_per_group: int = 200) -> dict:
    from danlu.data.world import build_world
    from danlu.eval.world_probe import probe_knowledge

    meta_file = Path(world_dir) / "world.json"
    try:
        meta = json.loads(meta_file.read_text())
        world = build_world(int(meta["seed"]), meta["size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DanluError(f"{meta_file}: not a world written by `danlu world` ({e})") from None
    probe = probe_knowledge(model, tokenizer, world, n_per_group=n_per_group).as_dict()
    n_items = probe.pop("n_items")
    return {"n": sum(n_items.values()), **probe}


def run_task(task: str, out_dir: str | Path, data: str | None = None, model: Any = None, tokenizer: Any = None,
             **options: Any) -> dict[str, Any]:  # fmt: skip
    """Score one task, write OUT/eval.json (and plots); returns what eval.json holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    if task == "mc":
        metrics = score_mc(model, tokenizer, data, options.get("num_fewshot", 0), options.get("seed", 1234))
    elif task == "qa":
        metrics = score_qa(data)
    elif task == "pass@k":
        metrics = score_pass_at_k(data, options.get("ks") or [1])
    elif task == "preference":
        metrics, plots = score_preference(data, out, options.get("models"))
    elif task == "knowledge":
        metrics = score_knowledge(model, tokenizer, options["world"], options.get("limit") or 200)
    else:
        raise DanluError(f"task: {task!r} is not one of {', '.join(TASKS)}")
    result = {
        "task": task,
        "data": data,
        "n": metrics.pop("n"),
        "metrics": metrics,
        "plots": [p.name for p in plots],
    }
    report.write_json(result, out / "eval.json")
    return result
