"""`danlu demo --stages lab`: the experiments of `experiments/` as demo stages, one report section each.

Each experiment stays a script (`python experiments/x.py` runs it alone, with its own defaults); the lab group
loads the script from the source tree's `experiments/` folder (or $DANLU_EXPERIMENTS) by its path, so nothing in
danlu/ imports it as a module (tests/test_layering.py), and calls it on what the demo's earlier stages left on
disk: the world, the tokenizer, the pretrained, SFT and reward-model checkpoints. A script offers one of two
entries:

- `run(out_dir, quick=False, ...) -> dict` (the shape helpers agreed on for issue 21): called with the keyword
  arguments its signature names among `LabInputs`'s fields (quick=True unless `danlu demo --lab-full`); its
  dict may hold `section` (Markdown), `figure` / `figures` (paths) and `numbers` (what metrics.json records);
- `main(argv) -> int`, which writes OUT/<name>.json and PNGs: called with the lab's settings as flags.

Settings are the lab's small ones (LAB_EXPERIMENTS), chosen so the group fits 30 minutes on 2 CPU cores; each
script's own defaults are the larger runs its section of experiments/README.md reports. A script absent from the
tree (a source checkout without it, or an installed wheel, which ships no experiments/) or one that fails is
reported as such in its section and in metrics.json, and the group goes on.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from danlu.mdtext import code_span
from danlu.recipes.context import DemoContext

MAX_NUMBERS = 40  # numbers per experiment in metrics.json and its report table (the JSON beside it has all)
MAX_LIST = 12  # longer lists (curves, attention maps) stay in the experiment's own JSON
# the settings a run echoes back (they would fill MAX_NUMBERS before its results) and bulky arrays
SKIP_KEYS = {"config", "settings", "samples", "attention", "lens_grid"}


@dataclass(frozen=True)
class LabInputs:
    """What the demo hands an experiment: the folders earlier stages wrote, and the run's settings."""

    out_dir: Path
    model: Path  # the pretrained checkpoint
    world: Path
    tokenizer: Path
    sft_model: Path | None
    reward_model: Path | None
    seed: int
    device: str
    threads: int
    quick: bool


@dataclass(frozen=True)
class LabExperiment:
    name: str  # the script's stem in experiments/ (and the stage "lab_<name>")
    title: str
    argv: Callable[[LabInputs], list[str]]  # flags for a main(argv) script
    needs: tuple[str, ...] = ()  # demo stages whose checkpoints it reads ("sft", "reward")
    # extra keywords for a run(out_dir) script
    run_kwargs: Callable[[LabInputs], dict[str, Any]] | None = None


def _model_args(i: LabInputs) -> list[str]:
    return ["--model", str(i.model), "--world", str(i.world), "--out", str(i.out_dir), "--seed", str(i.seed)]


# The lab's settings. Estimated on 2 quiet cores from CPU seconds measured at these settings (the figures in
# experiments/README.md come from each script's larger defaults).
LAB_EXPERIMENTS: tuple[LabExperiment, ...] = (
    LabExperiment("sft_knowledge", "Does SFT inject knowledge?",
                  lambda i: [*_model_args(i), "--steps", "300", "--device", i.device]),
    LabExperiment("scaling", "Scaling: L(N, D) fitted and a held-out size predicted",
                  lambda i: ["--world", str(i.world), "--tokenizer", str(i.tokenizer), "--out", str(i.out_dir),
                             "--seed", str(i.seed), "--threads", str(i.threads)]),
    LabExperiment("icl", "In-context learning: k-shot prompting",
                  # what the report's settings line shows: run() is called, quick=True caps it at these
                  lambda i: ["--model", str(i.model), "--world", str(i.world), "--out", str(i.out_dir),
                             "--seed", str(i.seed), "--items", "8", "--max-new-tokens", "4"],
                  # lab_scaling's runs of their longest budget when it ran before (icl.py finds them: it alone
                  # knows scaling.py's folders), then the demo's own model
                  run_kwargs=lambda i: {"runs": i.out_dir.parent / "scaling", "models": [("demo", i.model)]}),
    LabExperiment("cot", "Chain of thought vs a direct answer",
                  lambda i: ["--model", str(i.model), "--out", str(i.out_dir), "--seed", str(i.seed),
                             "--max-steps", "300"]),
    LabExperiment("grpo_variants", "GRPO, DAPO and Dr. GRPO on held-out arithmetic",
                  lambda i: ["--model", str(i.sft_model), "--world", str(i.world), "--out", str(i.out_dir),
                             "--seed", str(i.seed), "--threads", str(i.threads), "--steps", "30"],
                  needs=("sft",)),
    LabExperiment("ppo_seeds", "PPO's gain over SFT, three seeds",
                  lambda i: ["--sft", str(i.sft_model), "--reward", str(i.reward_model), "--world", str(i.world),
                             "--out", str(i.out_dir), "--seeds", "0", "1", "2", "--threads", str(i.threads)],
                  needs=("sft", "reward")),
    LabExperiment("overopt", "Reward over-optimisation: proxy and gold reward against KL",
                  lambda i: ["--out", str(i.out_dir), "--model", str(i.sft_model), "--world", str(i.world)],
                  needs=("sft",),
                  # its run() takes a loaded model as sft_model: hand it the checkpoint's path instead
                  run_kwargs=lambda i: {"sft_model": None, "tokenizer": None, "model_path": i.sft_model,
                                        "world_dir": i.world}),
    LabExperiment("inside", "A look inside: logit lens and attention maps",
                  lambda i: [*_model_args(i), "--threads", str(i.threads)]),
    LabExperiment("decoding", "Decoding and repetition",
                  lambda i: [*_model_args(i), "--threads", str(i.threads), "--prompts", "50"]),
    LabExperiment("t5_vs_bart", "T5 span corruption vs BART denoising",
                  lambda i: ["--world", str(i.world), "--out", str(i.out_dir), "--seeds", str(i.seed),
                             "--threads", str(i.threads), "--n-layer", "2", "--n-embd", "64",
                             "--pretrain-steps", "200", "--finetune-steps", "100", "--test", "100"]),
)  # fmt: skip
EXPERIMENTS = {e.name: e for e in LAB_EXPERIMENTS}


def experiments_dir() -> Path:
    """$DANLU_EXPERIMENTS, else the source tree's experiments/ beside the danlu package."""
    env = os.environ.get("DANLU_EXPERIMENTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "experiments"


def load_script(path: Path) -> ModuleType:
    """The script as a module of its own name, its folder on sys.path (scripts import their siblings)."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"danlu_lab_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling by name) look the module up while it runs
    spec.loader.exec_module(module)
    return module


def _inputs(ctx: DemoContext, exp: LabExperiment) -> LabInputs:
    import torch

    from danlu.recipes.align_stages import _ensure

    for stage, key in (("sft", "sft_model"), ("reward", "reward_model")):
        if stage in exp.needs:
            _ensure(ctx, key, stage)  # runs the stage first when this run has not (`--stages lab_ppo_seeds`)
    out = ctx.out / "lab" / exp.name
    out.mkdir(parents=True, exist_ok=True)
    ck = lambda stage: ctx.out / stage / "checkpoint"  # noqa: E731
    return LabInputs(
        out_dir=out, model=ck("pretrain"), world=ctx.out / "world", tokenizer=ctx.out / "tokenizer",
        sft_model=ck("sft") if "sft" in exp.needs else None,
        reward_model=ck("reward") if "reward" in exp.needs else None, seed=ctx.args.seed,
        device=ctx.args.device, threads=torch.get_num_threads(), quick=not getattr(ctx.args, "lab_full", False),
    )  # fmt: skip


def _call(module: ModuleType, exp: LabExperiment, inputs: LabInputs) -> dict[str, Any]:
    """Run one script by the entry it offers; returns its result dict (run) or its JSON (main)."""
    run = getattr(module, "run", None)
    if callable(run) and "out_dir" in inspect.signature(run).parameters:
        params = inspect.signature(run).parameters
        offered = {f.name: getattr(inputs, f.name) for f in fields(inputs)}
        offered |= exp.run_kwargs(inputs) if exp.run_kwargs else {}
        result = run(**{k: v for k, v in offered.items() if k in params})
        return dict(result) if isinstance(result, dict) else {}
    code = module.main(exp.argv(inputs))
    if code:
        raise RuntimeError(f"experiments/{exp.name}.py exited with status {code}")
    found = sorted(inputs.out_dir.glob("*.json"))
    main_json = inputs.out_dir / f"{exp.name}.json"
    path = main_json if main_json.is_file() else (found[0] if found else None)
    return json.loads(path.read_text(encoding="utf-8")) if path else {}


def flatten_numbers(obj: Any, prefix: str = "", limit: int = MAX_NUMBERS) -> dict[str, float]:
    """The finite numbers of a JSON result as {"a.b.c": x}, lists longer than MAX_LIST skipped, at most `limit`."""
    out: dict[str, float] = {}

    def walk(x: Any, key: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)):
            if math.isfinite(x):
                out[key] = round(x, 4) if isinstance(x, float) else x
        elif isinstance(x, dict):
            for k, v in x.items():
                if k not in SKIP_KEYS:
                    walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(x, list) and len(x) <= MAX_LIST:
            for n, v in enumerate(x):
                walk(v, f"{key}[{n}]")

    walk(obj, prefix)
    return out


def _figures(result: dict[str, Any], out_dir: Path) -> list[Path]:
    named = result.get("figures") or result.get("figure") or []
    named = [named] if isinstance(named, (str, Path)) else list(named)
    # the script's own figures (OUT/*.png) before its runs' curves (OUT/run/loss.png)
    paths = [Path(p) for p in named] or sorted(out_dir.glob("*.png")) or sorted(out_dir.rglob("*.png"))
    return [p for p in paths if p.is_file()][:4]


def _link(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # a figure the script wrote elsewhere: copy it beside the report
        import shutil

        target = root / "lab" / path.name
        shutil.copyfile(path, target)
        return target.relative_to(root).as_posix()


def _section(exp: LabExperiment, body: str) -> str:
    return f"## Lab: {exp.title} (`experiments/{exp.name}.py`)\n\n{body}"


def run_experiment(ctx: DemoContext, name: str) -> dict[str, Any]:
    """One lab stage: run experiments/<name>.py at the lab's settings, add its section, return its numbers."""
    exp = EXPERIMENTS[name]
    script = experiments_dir() / f"{name}.py"
    if not script.is_file():
        ctx.sections.append(_section(exp, f"Not run: {code_span(str(script))} is not in this tree (the lab "
                                     "stages run the scripts of a source checkout's `experiments/` folder, or of "
                                     "$DANLU_EXPERIMENTS).\n"))  # fmt: skip
        print(f"note: lab experiment {name} skipped: {script} does not exist", file=sys.stderr)
        return {"missing": True}
    inputs = _inputs(ctx, exp)
    import torch

    threads, t0, cpu0 = torch.get_num_threads(), time.perf_counter(), time.process_time()
    try:
        result = _call(load_script(script), exp, inputs)
    except (Exception, SystemExit) as e:  # one failing script must not cost the others' half hour
        ctx.sections.append(_section(exp, f"Failed: `{type(e).__name__}: {e}` (its output folder: "
                                     f"{code_span(str(inputs.out_dir))}).\n"))  # fmt: skip
        print(f"warning: lab experiment {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return {"failed": f"{type(e).__name__}: {e}"}
    finally:
        torch.set_num_threads(threads)  # the scripts set their own thread count
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    numbers = result.get("numbers") if isinstance(result.get("numbers"), dict) else result
    numbers = flatten_numbers(numbers)
    figures = [_link(p, ctx.out) for p in _figures(result, inputs.out_dir)]
    settings = " ".join(exp.argv(inputs)).replace(str(ctx.out) + "/", "")
    text = result.get("section") or result.get("markdown")
    body = (text.split("\n", 1)[1].lstrip() if str(text).startswith("#") else str(text)) if text else ""
    # The section's own image lines name the figure by the path the script wrote (absolute under --out): the
    # figures follow the settings line as links relative to report.md, so the folder can move.
    body = re.sub(r"\n{3,}", "\n\n", re.sub(r"^!\[[^\]]*\]\([^)]*\)[ \t]*$", "", body, flags=re.M)).strip()
    table = "| number | value |\n|---|---:|\n" + "".join(f"| `{k}` | {v} |\n" for k, v in numbers.items())
    ctx.sections.append(_section(exp, (
        f"{body}\n\n" if body else ""
    ) + f"Run here at the lab's settings ({code_span(settings)}), {seconds:.0f} s ({cpu:.0f} CPU seconds); what "
        f"the numbers mean, and the larger runs, are in `experiments/README.md`.\n\n"
        + "".join(f"![{exp.name}]({f})\n" for f in figures) + ("\n" + table if numbers else "")))  # fmt: skip
    return {"numbers": numbers, "figures": figures, "cpu_seconds": round(cpu, 1)}
