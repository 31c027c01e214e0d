"""Reward over-optimisation on danlu's world: proxy and gold reward against KL (Gao et al. 2022's picture).

Gao, Schulman and Hilton (2022) trained a *proxy* reward model on labels of a *gold* one, optimised policies
against the proxy, and watched both along the way: the proxy rises steadily with KL(π ‖ π_ref) while the gold
reward rises, peaks and falls (Goodhart). Their functional forms, d = sqrt(KL) in nats:
best-of-n R(d) = d(α − βd), RL R(d) = d(α − β log d). Here the gold reward needs no model: the world's checker
(`danlu.data.world.reward`) says exactly whether an answer is right, so over-optimisation is measured, not
modelled.

    1. proxy: a reward model (the SFT model with a scalar head) trained for 16 steps on 256 of the world's
       preference pairs (`align.reward.train_reward_model`), so it is imperfect on held-out pairs (~0.75);
    2. PPO (`align.ppo`), GRPO (`align.grpo`, the proxy as its reward) and DPO (`align.dpo`, on pairs of the
       SFT model's own answers labelled by the proxy) start from the same SFT model with the same compute:
       `steps` policy updates of `samples` sampled answers each (DPO: samples / 2 pairs per update, all
       sampled from π_ref before training);
    3. at checkpoints, on held-out prompts: KL(π ‖ π_ref) of answers sampled at temperature 1
       (log π − log π_ref summed over each answer: per answer and per token), their proxy score and gold reward;
    4. best-of-n (n = 1, 2, 4, ..., 64) of the SFT model, picked by the proxy, as the baseline: its KL is
       exactly log n − (n − 1)/n (Stiennon et al. 2020; Gao et al. 2022 §2), its rewards are the
       unbiased estimate over all n-subsets of 64 samples per prompt.

    danlu demo --stages sft                         # runs/demo/sft/checkpoint and runs/demo/world
    python experiments/overopt.py --out runs/overopt

Without a checkpoint at --model the script first runs `danlu demo --stages sft` into OUT/demo. Writes
OUT/overopt.json (numbers, curves), OUT/overopt.png and OUT/overopt.md. On a busy machine run the methods in
parallel, one thread each, and collect them (each part trains the same seeded proxy):

    for m in ppo grpo dpo; do python experiments/overopt.py --out runs/oo_$m --methods $m --bon-max 1 & done
    python experiments/overopt.py --out runs/oo_bon --methods; wait
    python experiments/overopt.py --collect runs/oo_bon runs/oo_ppo runs/oo_grpo runs/oo_dpo --out runs/overopt

`run(out_dir, quick=True)` is the tiny setting of the tests; `danlu demo --stages lab` calls `run` with its
own SFT model.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling overopt_report.py
from overopt_report import markdown, plot, summarise  # noqa: E402

METHODS = ("ppo", "grpo", "dpo")


@dataclass
class Settings:
    rm_pairs: int = 256  # preference pairs the proxy sees: few, so it is imperfect
    rm_steps: int = 16  # of 16 pairs each: one pass over rm_pairs
    rm_lr: float = 3e-5
    rm_eval_pairs: int = 512  # held-out pairs its accuracy is measured on
    # the plain InstructGPT head (True: the proxy also reads its LM's mean log-likelihood, align.reward, which
    # acts as a KL penalty of its own: no method raised it, see experiments/README.md)
    likelihood_feature: bool = False
    steps: int = 48  # policy updates per method
    checkpoints: int = 6  # measurements along the way (plus step 0, the SFT model)
    # sampled answers per update (GRPO: samples / group_size prompts; DPO: samples / 2 pairs)
    samples: int = 32
    group_size: int = 8
    lr: float = 1e-4  # 3e-4: PPO and GRPO lowered the proxy (too large a step for 32 samples)
    kl_coef: float = 0.0  # PPO's per-token KL penalty and GRPO's β: 0, as Gao et al. (the KL is the x axis)
    dpo_beta: float = 0.1
    eval_prompts: int = 64  # held-out prompts (preference_test)
    eval_samples: int = 4  # answers per held-out prompt at each checkpoint
    bon_max: int = 64  # best-of-n up to n = bon_max (a power of 2)
    max_new_tokens: int = 24
    block_size: int = 96


QUICK = Settings(rm_pairs=16, rm_steps=2, rm_eval_pairs=8, steps=2, checkpoints=2, samples=4, group_size=2,
                 eval_prompts=3, eval_samples=2, bon_max=4, max_new_tokens=8, block_size=64)  # fmt: skip


def best_of_n_kl(n: int) -> float:
    """KL(π_bon ‖ π_ref) of best-of-n sampling in nats: log n − (n − 1)/n (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


def best_of_n(proxy: list[list[float]], gold: list[list[float]], ns: list[int]) -> list[dict[str, float]]:
    """The proxy and gold reward of best-of-n by the proxy, per n, averaged over prompts.

    proxy, gold: (prompts, N) scores of N samples per prompt. The expectation over every n-subset of the N
    samples, not one split: sorted by proxy ascending, the i-th sample (1-based) is the best of a random
    n-subset with probability C(i − 1, n − 1) / C(N, n)."""
    out = []
    for n in ns:
        p_sum = g_sum = 0.0
        for ps, gs in zip(proxy, gold):
            N = len(ps)
            if n > N:
                raise ValueError(f"best-of-{n} needs at least {n} samples per prompt, got {N}")
            order = sorted(range(N), key=lambda i: ps[i])
            total = math.comb(N, n)
            for rank, i in enumerate(order, start=1):
                w = math.comb(rank - 1, n - 1) / total
                p_sum, g_sum = p_sum + w * ps[i], g_sum + w * gs[i]
        out.append({"n": n, "kl": best_of_n_kl(n), "proxy": p_sum / len(proxy), "gold": g_sum / len(proxy)})
    return out


# ------------------------------------------------------------------------------------------- measuring
class Meter:
    """Samples answers to the held-out prompts and measures KL to the reference, proxy and gold reward."""

    def __init__(self, ref: Any, proxy: Any, tokenizer: Any, records: list[dict], s: Settings, seed: int):
        from danlu.tune.sft import prompt_text

        self.ref, self.proxy, self.tokenizer, self.records = ref, proxy, tokenizer, records
        self.s, self.seed = s, seed
        self.prompts = [prompt_text(r, tokenizer) for r in records]

    def rollouts(self, policy: Any, samples: int, seed: int) -> list[tuple[Any, list[dict]]]:
        """(rollout, its records) in chunks of at most 256 answers, `samples` consecutive rows per prompt."""
        from danlu.align.rollout import sample

        per = max(1, 256 // samples)
        out = []
        for start in range(0, len(self.prompts), per):
            chunk = self.prompts[start : start + per]
            r = sample(policy, self.tokenizer, chunk, self.s.max_new_tokens, temperature=1.0,
                       seed=seed + start, num_samples=samples)  # fmt: skip
            out.append((r, [rec for rec in self.records[start : start + per] for _ in range(samples)]))
        return out

    def scores(self, rollout: Any, records: list[dict]) -> tuple[list[float], list[float]]:
        from danlu.data.world import reward

        proxy = self.proxy(
            rollout.input_ids, rollout.attention_mask, rollout.position_ids, rollout.response_mask
        )
        return proxy.tolist(), [reward(rec, y) for rec, y in zip(records, rollout.texts)]

    def __call__(self, policy: Any) -> dict[str, float]:
        import torch

        from danlu.align.rollout import sequence_log_probs

        was_training = policy.training
        policy.eval()
        kl_seq, tokens, proxy, gold = [], [], [], []
        with torch.no_grad():
            # the same seed at every checkpoint: differences along a curve are the policy's, not the dice's
            for r, recs in self.rollouts(policy, self.s.eval_samples, self.seed):
                mask = r.action_mask
                kl = ((sequence_log_probs(policy, r) - sequence_log_probs(self.ref, r)) * mask).sum(1)  # (B,)
                kl_seq += kl.tolist()
                tokens += mask.sum(1).tolist()
                p, g = self.scores(r, recs)
                proxy, gold = proxy + p, gold + g
        policy.train(was_training)
        n = len(gold)
        g = sum(gold) / n
        return {"kl": sum(kl_seq) / n, "kl_per_token": sum(kl_seq) / max(1.0, sum(tokens)),
                "proxy": sum(proxy) / n, "gold": g, "gold_se": math.sqrt(max(g * (1 - g), 1e-12) / n),
                "answer_tokens": sum(tokens) / n}  # fmt: skip

    def best_of_n(self) -> list[dict[str, float]]:
        import torch

        N, proxy, gold = self.s.bon_max, [], []
        with torch.no_grad():
            for r, recs in self.rollouts(self.ref, N, self.seed + 1):
                p, g = self.scores(r, recs)
                proxy += [p[i : i + N] for i in range(0, len(p), N)]
                gold += [g[i : i + N] for i in range(0, len(g), N)]
        ns = [2**k for k in range(int(math.log2(N)) + 1)]
        return best_of_n(proxy, gold, ns)


# ------------------------------------------------------------------------------------------- the run
def run(
    out_dir: str | Path, quick: bool = False, sft_model: Any = None, tokenizer: Any = None,
    world_dir: str | Path | None = None, model_path: str | Path | None = None, seed: int = 0,
    device: str = "cpu", methods: tuple[str, ...] = METHODS, reuse: bool = False, log: Any = None,
    **overrides: Any,
) -> dict[str, Any]:  # fmt: skip
    """The experiment; returns {"numbers", "curves", "best_of_n", "figure", "markdown", "seconds",
    "cpu_seconds"}. sft_model/tokenizer/world_dir: the starting policy and the world (e.g. `danlu demo`'s);
    without them the model is loaded from model_path (default runs/demo/sft/checkpoint, built by
    `danlu demo --stages sft` into OUT/demo when missing). reuse: take a method's curve from
    OUT/METHOD/curve.json and best-of-n from OUT/best_of_n.json when runs of their own (in parallel) wrote
    them. overrides: fields of Settings. The markdown links the figure as OUT_NAME/overopt.png, for a
    report.md in OUT's parent (`danlu demo`'s folder)."""
    from danlu.align.reward import pairwise_accuracy, train_reward_model
    from danlu.data.formats import read_jsonl

    log = log or (lambda line: print(line, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = replace(QUICK if quick else Settings(), **overrides)
    wall0, cpu0 = time.time(), _cpu_seconds()
    if sft_model is None:
        sft_model, tokenizer, world_dir = _starting_model(out, model_path, world_dir, seed, log)
    sft_model = sft_model.to(device).eval()
    s = replace(s, block_size=min(s.block_size, sft_model.config.block_size))
    world_dir = Path(world_dir)
    train_pairs = read_jsonl(world_dir / "preference_train.jsonl")
    test_pairs = read_jsonl(world_dir / "preference_test.jsonl")

    # 1. the proxy: few pairs, few steps
    from danlu.train.loop import TrainConfig

    rm_cfg = TrainConfig(max_steps=s.rm_steps, batch_size=16, block_size=s.block_size, lr=s.rm_lr,
                         warmup_steps=0, decay="constant", eval_interval=s.rm_steps, eval_batches=1, seed=seed,
                         device=device, show_progress=False, weight_decay=0.0)  # fmt: skip
    import torch

    torch.manual_seed(seed)  # the head's random init (likelihood_feature=False): the same proxy in every run
    proxy, _ = train_reward_model(copy.deepcopy(sft_model).train(), tokenizer, train_pairs[: s.rm_pairs],
                                  out / "proxy_rm", rm_cfg, val_records=train_pairs[-16:],
                                  likelihood_feature=s.likelihood_feature)  # fmt: skip
    proxy.eval().requires_grad_(False)
    proxy_acc = pairwise_accuracy(proxy, tokenizer, test_pairs[: s.rm_eval_pairs])["pairwise_accuracy"]
    log(f"proxy reward model: {s.rm_steps} steps on {min(s.rm_pairs, len(train_pairs))} pairs, held-out "
        f"pairwise accuracy {proxy_acc:.3f}")  # fmt: skip

    # held-out prompts for every measurement; the training prompts (one record per distinct prompt)
    eval_records = _unique_prompts(test_pairs)[: s.eval_prompts]
    train_records = _unique_prompts(train_pairs)
    meter = Meter(sft_model, proxy, tokenizer, eval_records, s, seed)
    start = meter(sft_model)
    log(f"SFT: gold {start['gold']:.3f}, proxy {start['proxy']:.3f} on {len(eval_records)} held-out prompts")
    bon_file = out / "best_of_n.json"
    if reuse and bon_file.is_file():
        bon = json.loads(bon_file.read_text())
    else:
        bon = meter.best_of_n()
        bon_file.write_text(json.dumps(bon))
    log("best-of-n: " + ", ".join(f"n={b['n']} gold {b['gold']:.3f}" for b in bon))

    marks = sorted({max(1, round(s.steps * (k + 1) / s.checkpoints)) for k in range(s.checkpoints)})
    curves: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        saved = out / method / "curve.json"
        if reuse and saved.is_file():  # a run of this method alone (`--methods M`, in parallel) left it
            done = json.loads(saved.read_text())
            curves[method], seconds[method] = done["curve"], done["seconds"]
            log(f"{method}: reused {saved}")
        else:
            t0, cpu = time.time(), _cpu_seconds()
            curves[method] = optimise(method, sft_model, proxy, tokenizer, train_records, meter, start, marks,
                                      out / method, s, seed, device)  # fmt: skip
            seconds[method] = time.time() - t0
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"curve": curves[method], "seconds": seconds[method],
                                         "cpu_seconds": _cpu_seconds() - cpu}))  # fmt: skip
        curve = curves[method]
        peak = max(curve, key=lambda c: c["gold"])
        log(f"{method}: {seconds[method]:.0f} s; gold {curve[0]['gold']:.3f} -> peak {peak['gold']:.3f} at "
            f"KL {peak['kl']:.2f} nats (step {peak['step']}) -> {curve[-1]['gold']:.3f} at KL "
            f"{curve[-1]['kl']:.2f}; proxy {curve[0]['proxy']:.3f} -> {curve[-1]['proxy']:.3f}")  # fmt: skip

    return report(
        out, asdict(s), curves, bon, proxy_acc, seconds, time.time() - wall0, _cpu_seconds() - cpu0, log
    )


def report(out: Path, settings: dict, curves: dict, bon: list[dict], proxy_acc: float, seconds: dict,
           wall: float, cpu: float, log: Any) -> dict[str, Any]:  # fmt: skip
    """Numbers, figure and markdown of a run; written to OUT/overopt.json, .png and .md."""
    numbers = summarise(curves, bon, proxy_acc)
    numbers["seconds_per_method"] = {k: round(v, 1) for k, v in seconds.items()}
    figure = plot(curves, bon, out / "overopt.png")
    result = {"settings": settings, "numbers": numbers, "curves": curves, "best_of_n": bon,
              "figure": str(figure), "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}  # fmt: skip
    result["markdown"] = markdown(result, f"{out.name}/{figure.name}")
    (out / "overopt.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1)
    )
    (out / "overopt.md").write_text(result["markdown"], encoding="utf-8")
    log(
        f"wrote {out / 'overopt.json'} and {figure} in {result['seconds']:.0f} s ({result['cpu_seconds']:.0f} CPU-s)"
    )
    return result


def optimise(method: str, sft_model: Any, proxy: Any, tokenizer: Any, train_records: list[dict], meter: Meter,
             start: dict, marks: list[int], run_dir: Path, s: Settings, seed: int, device: str) -> list[dict]:  # fmt: skip
    """One method against the proxy from a copy of the SFT model, through danlu's trainer for it; the
    measurements at step 0 (`start`) and at each step in `marks`."""
    import torch

    from danlu.align.dpo import dpo
    from danlu.align.grpo import grpo
    from danlu.align.ppo import ppo
    from danlu.train.loop import TrainConfig

    policy = copy.deepcopy(sft_model).train()
    curve = [{"step": 0, **start}]

    def on_step(step: int, record: dict, policy: Any = policy, curve: list = curve) -> None:
        if step in marks:
            curve.append({"step": step, **meter(policy)})

    if method == "ppo":
        from danlu.align.configs import PPOConfig

        cfg = PPOConfig(max_steps=s.steps, batch_size=s.samples, minibatch_size=s.samples, ppo_epochs=1,
                        lr=s.lr, decay="constant", init_kl_coef=s.kl_coef, adaptive_kl=False,
                        max_new_tokens=s.max_new_tokens, eval_interval=0, seed=seed, device=device,
                        show_progress=False)  # fmt: skip
        ppo(policy, copy.deepcopy(proxy).requires_grad_(True).train(), proxy, tokenizer,
            [meter_prompt(r, tokenizer) for r in train_records], run_dir, cfg, ref=sft_model,
            on_step=on_step)  # fmt: skip
    elif method == "grpo":
        from danlu.align.configs import GRPOConfig

        cfg = GRPOConfig(max_steps=s.steps, prompts_per_step=max(1, s.samples // s.group_size),
                         group_size=s.group_size, inner_epochs=1, lr=s.lr, decay="constant", beta=s.kl_coef,
                         max_new_tokens=s.max_new_tokens, eval_interval=0, seed=seed, device=device,
                         show_progress=False)  # fmt: skip

        def proxy_reward(records: list[dict], rollout: Any) -> list[float]:
            with torch.no_grad():
                return proxy(rollout.input_ids, rollout.attention_mask, rollout.position_ids,
                             rollout.response_mask).tolist()  # fmt: skip

        grpo(policy, tokenizer, train_records, run_dir, cfg, ref=sft_model, show_progress=False,
             on_step=on_step, reward_fn=proxy_reward)  # fmt: skip
    elif method == "dpo":
        pairs = proxy_labelled_pairs(sft_model, proxy, tokenizer, train_records, s.steps * s.samples // 2,
                                     s, seed)  # fmt: skip
        cfg = TrainConfig(max_steps=s.steps, batch_size=max(1, s.samples // 2), block_size=s.block_size,
                          lr=s.lr, warmup_steps=0, decay="constant", eval_interval=s.steps, eval_batches=1,
                          seed=seed, device=device, show_progress=False, weight_decay=0.0)  # fmt: skip
        dpo(policy, tokenizer, pairs, run_dir, cfg, beta=s.dpo_beta, val_records=pairs[:4],
            on_step=on_step)  # fmt: skip
    else:
        raise ValueError(f"unknown method {method!r}; use {', '.join(METHODS)}")
    return curve


def meter_prompt(record: dict, tokenizer: Any) -> str:
    """The chat-formatted prompt every method and measurement uses for a record."""
    from danlu.tune.sft import prompt_text

    return prompt_text(record, tokenizer)


def _unique_prompts(pairs: list[dict]) -> list[dict]:
    """One SFT-style record per distinct prompt (its answer and kind for the gold reward), in file order."""
    seen: dict[str, dict] = {}
    for p in pairs:
        seen.setdefault(p["prompt"], {"instruction": p["prompt"], "input": "", "output": p["chosen"],
                                      "kind": p["kind"], "answer": p["answer"]})  # fmt: skip
    return list(seen.values())


def proxy_labelled_pairs(sft_model: Any, proxy: Any, tokenizer: Any, records: list[dict], n_pairs: int,
                         s: Settings, seed: int) -> list[dict]:  # fmt: skip
    """n_pairs preference pairs for DPO: two answers of the SFT model to a training prompt, the one the proxy
    scores higher chosen (identical or empty pairs dropped; prompts reused in order when there are too few)."""
    # as many prompts as pairs (cycling), not the whole training set: a pair costs two sampled answers
    records = [records[i % len(records)] for i in range(n_pairs)]
    meter = Meter(sft_model, proxy, tokenizer, records, s, seed + 2)
    pairs: list[dict] = []
    for attempt in range(8):
        import torch

        with torch.no_grad():
            for r, recs in meter.rollouts(sft_model, 2, seed + 2 + 1000 * attempt):
                p, _ = meter.scores(r, recs)
                for i in range(0, len(p), 2):
                    a, b = r.texts[i].strip(), r.texts[i + 1].strip()
                    if a and b and a != b:
                        hi, lo = (a, b) if p[i] >= p[i + 1] else (b, a)
                        pairs.append({"prompt": recs[i]["instruction"], "chosen": hi, "rejected": lo})
        if len(pairs) >= n_pairs:
            break
    if not pairs:
        raise RuntimeError("the SFT model gave no two different answers to any prompt: no DPO pairs")
    return (pairs * (n_pairs // len(pairs) + 1))[:n_pairs]


def collect(out_dir: str | Path, parts: list[Path], log: Any = print) -> dict[str, Any]:
    """One report from runs made in parallel (`--methods ppo`, `--methods grpo`, ... and one with the full
    --bon-max): every method's curve, the largest best-of-n, wall time the longest part's, CPU-s their sum
    (each part trained the same proxy: same seed, data and thread count give the same weights)."""
    runs = [json.loads((Path(p) / "overopt.json").read_text()) for p in parts]
    first = runs[0]["settings"]
    for r in runs[1:]:
        differ = {k for k, v in r["settings"].items() if v != first[k]} - {"bon_max"}
        if differ:
            raise ValueError(f"the runs to collect differ in {sorted(differ)}")
    curves = {m: c for r in runs for m, c in r["curves"].items()}
    seconds = {m: v for r in runs for m, v in r["numbers"]["seconds_per_method"].items()}
    bon = max((r["best_of_n"] for r in runs), key=len)
    accs = {r["numbers"]["proxy_heldout_pairwise_accuracy"] for r in runs}
    if len(accs) != 1:
        raise ValueError(f"the runs' proxies differ (held-out accuracies {sorted(accs)})")
    settings = first | {"bon_max": bon[-1]["n"]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wall, cpu = max(r["seconds"] for r in runs), sum(r["cpu_seconds"] for r in runs)
    return report(out, settings, curves, bon, accs.pop(), seconds, wall, cpu, log)


def _cpu_seconds() -> float:
    """CPU time of this process and of the children it waited for (the `danlu demo` run, if any)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _starting_model(out: Path, model_path: Any, world_dir: Any, seed: int, log: Any) -> tuple[Any, Any, Path]:
    """(SFT model, tokenizer, world folder): from model_path, else `danlu demo --stages sft` into OUT/demo."""
    import danlu

    model_path = Path(model_path or "runs/demo/sft/checkpoint")
    world_dir = Path(world_dir or model_path.parents[1] / "world")
    if not (model_path / "config.json").is_file():
        demo = out / "demo"
        log(f"no SFT checkpoint at {model_path}: running `danlu demo --stages sft --out {demo}` first")
        command = [sys.executable, "-m", "danlu", "demo", "--stages", "sft", "--out", str(demo), "--quiet",
                   "--seed", str(seed), "--device", "cpu", *(["--resume"] if demo.exists() else [])]  # fmt: skip
        subprocess.run(command, check=True)
        model_path, world_dir = demo / "sft" / "checkpoint", demo / "world"
    model, tokenizer = danlu.load(model_path)
    return model, tokenizer, world_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/overopt"))
    ap.add_argument(
        "--model", type=Path, default=None, help="the SFT checkpoint (default runs/demo/sft/checkpoint)"
    )
    ap.add_argument(
        "--world", type=Path, default=None, help="the world folder (default: beside the model's run)"
    )
    ap.add_argument("--quick", action="store_true", help="the tiny setting of the tests")
    ap.add_argument("--reuse", action="store_true", help="take curves OUT/METHOD/curve.json already written")
    ap.add_argument(
        "--collect", nargs="+", type=Path, metavar="RUN", help="no training: one report from these runs"
    )
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seed", type=int, default=0)
    # 1: on a shared machine a second thread spins at every barrier (10x slower here under load)
    ap.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    for f, v in asdict(Settings()).items():
        ap.add_argument(
            "--" + f.replace("_", "-"), type=type(v) if not isinstance(v, bool) else int, default=None
        )
    args = ap.parse_args(argv)

    if args.collect:
        collect(args.out, args.collect)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    overrides = {f: getattr(args, f) for f in asdict(Settings()) if getattr(args, f) is not None}
    if "likelihood_feature" in overrides:
        overrides["likelihood_feature"] = bool(overrides["likelihood_feature"])
    run(args.out, quick=args.quick, model_path=args.model, world_dir=args.world, seed=args.seed,
        methods=tuple(args.methods), reuse=args.reuse, **overrides)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
