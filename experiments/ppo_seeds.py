"""PPO's gain over SFT, seed by seed: does RLHF-PPO raise both the reward model's score and the gold reward?

InstructGPT's step 3 (notes 000/004) optimises a learned reward model under a KL penalty to the SFT model. On
danlu's world the reward model's target is known exactly: `danlu.data.world.reward` checks an answer against the
fact or sum it asks for (the gold, verifiable reward). For each seed the script starts PPO from the same SFT and
reward-model checkpoints with the `danlu demo --stages ppo` recipe (danlu.recipes.align_stages.ppo_config) and
measures, on held-out prompts (`preference_test.jsonl`), before and after:

- the reward-model score of sampled answers (temperature 1, `--samples` per prompt: what PPO maximises) and of
  greedy answers;
- the gold reward of the same answers (1 when the answer is right and not padded with guesses);
- the mean per-token KL(π ‖ π_SFT) on the sampled answers, against the recipe's bound.

The claim holds for a seed when both sampled scores rise and the KL stays under its bound.

    danlu demo --stages reward --out runs/demo            # runs/demo/sft/checkpoint, runs/demo/reward/checkpoint
    python experiments/ppo_seeds.py --sft runs/demo/sft/checkpoint --reward runs/demo/reward/checkpoint \\
        --world runs/demo/world --out runs/ppo_seeds

Without --sft the script first runs that demo into OUT/demo. Writes OUT/ppo_seeds.json and OUT/ppo_seeds.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path


def evaluate(actor, ref, reward_model, tokenizer, prompts: list[str], records: list[dict], max_new_tokens: int,
             samples: int, seed: int, batch_size: int = 64) -> dict[str, float]:  # fmt: skip
    """Reward-model score, gold reward and per-token KL of sampled answers; score and gold of greedy ones."""
    import torch

    from danlu.align.rollout import sample, sequence_log_probs
    from danlu.data.world import reward

    sums = {"score": 0.0, "gold": 0.0, "kl_per_token": 0.0, "greedy_score": 0.0, "greedy_gold": 0.0}
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk, recs = prompts[start : start + batch_size], records[start : start + batch_size]
            for k in range(samples + 1):  # k = samples: the greedy answers
                greedy = k == samples
                r = sample(actor, tokenizer, chunk, max_new_tokens, temperature=0.0 if greedy else 1.0,
                           seed=None if greedy else seed + 1000 * k + start)  # fmt: skip
                scores = reward_model(r.input_ids, r.attention_mask, r.position_ids, r.response_mask)
                gold = [reward(rec, text) for rec, text in zip(recs, r.texts, strict=True)]
                prefix = "greedy_" if greedy else ""
                sums[prefix + "score"] += float(scores.sum())
                sums[prefix + "gold"] += sum(gold)
                if not greedy:
                    kl = (sequence_log_probs(actor, r) - sequence_log_probs(ref, r)) * r.action_mask
                    sums["kl_per_token"] += float((kl.sum(1) / r.action_mask.sum(1).clamp(min=1)).sum())
    n = len(prompts)
    return {k: v / (n if k.startswith("greedy") else n * samples) for k, v in sums.items()}


def temperature_baseline(model, reward_model, tokenizer, prompts: list[str], records: list[dict], temperature: float,
                         max_new_tokens: int, seed: int, batch_size: int = 64) -> dict[str, float]:  # fmt: skip
    """What sharpening alone buys: the SFT model sampled at `temperature` < 1, its reward-model score, gold
    reward and exact per-token KL(π_T ‖ π_SFT) (π_T = softmax(logits / T), summed over the vocabulary)."""
    import torch
    import torch.nn.functional as F

    from danlu.align.rollout import sample
    from danlu.data.world import reward

    sums = {"score": 0.0, "gold": 0.0, "kl_per_token": 0.0}
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk, recs = prompts[start : start + batch_size], records[start : start + batch_size]
            r = sample(model, tokenizer, chunk, max_new_tokens, temperature=temperature, seed=seed + start)
            sums["score"] += float(
                reward_model(r.input_ids, r.attention_mask, r.position_ids, r.response_mask).sum()
            )
            sums["gold"] += sum(reward(rec, text) for rec, text in zip(recs, r.texts, strict=True))
            logits = model(r.input_ids, attention_mask=r.attention_mask, position_ids=r.position_ids).logits
            log_p = F.log_softmax(logits[:, :-1].float(), -1)  # (B, T - 1, V)
            log_q = F.log_softmax(logits[:, :-1].float() / temperature, -1)
            kl = (log_q.exp() * (log_q - log_p)).sum(-1) * r.action_mask  # (B, T - 1)
            sums["kl_per_token"] += float((kl.sum(1) / r.action_mask.sum(1).clamp(min=1)).sum())
    return {"temperature": temperature} | {k: v / len(prompts) for k, v in sums.items()}


def one_seed(
    args: argparse.Namespace, seed: int, sft_model, reward_model, tokenizer, train_prompts, eval_set
) -> dict:
    from dataclasses import replace

    from danlu.align.ppo import ppo
    from danlu.recipes.align_stages import ppo_config

    prompts, records = eval_set
    overrides = {k: v for k, v in (("lr", args.lr), ("init_kl_coef", args.init_kl_coef)) if v is not None}
    if args.whiten_scores:
        overrides["whiten_scores"] = True
    cfg = replace(ppo_config(args.steps, seed, "cpu"), eval_interval=args.steps, **overrides, **args.set)
    actor, critic = copy.deepcopy(sft_model).train(), copy.deepcopy(reward_model).train()
    t0 = time.time()
    before = evaluate(sft_model, sft_model, reward_model, tokenizer, prompts, records, cfg.max_new_tokens,
                      args.samples, seed)  # fmt: skip
    summary = ppo(actor, critic, reward_model, tokenizer, train_prompts, args.out / f"seed{seed}", cfg, ref=sft_model,
                  show_progress=False)  # fmt: skip
    after = evaluate(actor, sft_model, reward_model, tokenizer, prompts, records, cfg.max_new_tokens, args.samples,
                     seed)  # fmt: skip
    keys = ("lr", "init_kl_coef", "target_kl", "whiten_scores", *args.set)
    row = {"seed": seed, "config": {k: getattr(cfg, k) for k in dict.fromkeys(keys)},
           "before": before, "after": after, "kl_bound": cfg.kl_bound,
           "max_train_kl_per_token": summary.get("max_train_kl_per_token"), "ppo_seconds": summary["seconds"],
           "seconds": round(time.time() - t0, 1)}  # fmt: skip
    row["gain"] = {k: after[k] - before[k] for k in before}
    row["holds"] = (
        row["gain"]["score"] > 0 and row["gain"]["gold"] > 0 and after["kl_per_token"] < cfg.kl_bound
    )
    print(f"seed {seed}: score {before['score']:.3f} -> {after['score']:.3f}, gold {before['gold']:.3f} -> "
          f"{after['gold']:.3f}, greedy gold {before['greedy_gold']:.3f} -> {after['greedy_gold']:.3f}, KL/token "
          f"{after['kl_per_token']:.3f} (bound {cfg.kl_bound}), {row['seconds']:.0f} s"
          + ("" if row["holds"] else "  [does not hold]"), flush=True)  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft", type=Path, help="the SFT checkpoint (default: run `danlu demo` into OUT/demo)")
    ap.add_argument("--reward", type=Path, help="the reward-model checkpoint (with --sft)")
    ap.add_argument("--world", type=Path, help="the world folder (with --sft)")
    ap.add_argument("--out", type=Path, default=Path("runs/ppo_seeds"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="PPO rounds (default: the demo's)")
    # all of them (408 in the default world): at 128 one seed's gold difference carried a standard error of ~0.03
    ap.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts scored (default: all)")
    ap.add_argument("--samples", type=int, default=2, help="sampled answers per held-out prompt")
    ap.add_argument(
        "--merge", type=Path, nargs="+", help="no training: merge these runs' ppo_seeds.json into OUT"
    )
    ap.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: torch's)")
    # the recipe's knobs, to try a change before it goes into ppo_config (recorded in each seed's "config")
    ap.add_argument("--lr", type=float, help="actor learning rate (default: the demo's)")
    ap.add_argument("--init-kl-coef", type=float, help="initial beta (default: the demo's)")
    ap.add_argument("--whiten-scores", action="store_true", help="whiten the reward-model scores per rollout")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="any other PPOConfig field, e.g. --set ppo_epochs=4 target_kl=0.1")  # fmt: skip
    ap.add_argument("--figure", type=Path, help="also copy the figure here (docs/images/ppo_seeds.png)")
    ap.add_argument("--unseen-prompts", action="store_true",
                    help="train PPO only on preference_train prompts that are not sft_train instructions")  # fmt: skip
    ap.add_argument("--temperatures", type=float, nargs="*", default=[],
                    help="also score the SFT model sampled at these temperatures (sharpening alone, its exact KL)")  # fmt: skip
    args = ap.parse_args(argv)
    args.set = parse_overrides(args.set, ap)
    if args.merge:  # seeds run in parallel processes (one --seeds each): one summary of all
        runs = [json.loads((d / "ppo_seeds.json").read_text(encoding="utf-8")) for d in args.merge]
        args.out.mkdir(parents=True, exist_ok=True)
        head = {
            k: runs[0][k]
            for k in ("steps", "eval_prompts", "samples", "temperature_baseline")
            if k in runs[0]
        }
        write_summary(
            head | {"merged": [str(d) for d in args.merge]},
            [r for run in runs for r in run["seeds"]],
            args.out,
            args.figure,
        )
        return 0

    import torch

    import danlu
    from danlu.align.reward import RewardModel
    from danlu.data.formats import read_jsonl
    from danlu.recipes.align_stages import STAGE_DEFAULTS, ppo_config
    from danlu.tune.sft import prompt_text

    if args.threads:
        torch.set_num_threads(args.threads)
    args.steps = args.steps or STAGE_DEFAULTS["ppo_steps"]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sft is None:
        from danlu.cli import main as danlu_main

        demo = args.out / "demo"
        code = danlu_main(["demo", "--out", str(demo), "--stages", "reward", "--quiet", "--resume"])
        if code:
            return code
        args.sft, args.reward, args.world = (
            demo / "sft" / "checkpoint",
            demo / "reward" / "checkpoint",
            demo / "world",
        )
    if args.reward is None or args.world is None:
        ap.error("--reward and --world are required with --sft")
    sft_model, tokenizer = danlu.load(args.sft)
    sft_model.eval()
    reward_model = RewardModel.load(args.reward).eval()

    def chat(records: list[dict]) -> list[str]:
        return [prompt_text({"instruction": r["prompt"], "output": ""}, tokenizer) for r in records]

    test = read_jsonl(args.world / "preference_test.jsonl")[: args.eval_prompts]
    train = read_jsonl(args.world / "preference_train.jsonl")
    if args.unseen_prompts:  # only the prompts SFT never trained on, as the held-out ones are
        seen = {r["instruction"] for r in read_jsonl(args.world / "sft_train.jsonl")}
        train = [r for r in train if r["prompt"] not in seen]
        if not train:
            ap.error(
                f"every preference_train prompt of {args.world} is an sft_train instruction: drop --unseen-prompts"
            )
        print(f"{len(train)} training prompts SFT did not see", flush=True)
    train_prompts = chat(train)
    rows = [
        one_seed(args, s, sft_model, reward_model, tokenizer, train_prompts, (chat(test), test))
        for s in args.seeds
    ]
    head = {"steps": args.steps, "eval_prompts": len(test), "samples": args.samples}
    if args.temperatures:
        head["temperature_baseline"] = [
            temperature_baseline(
                sft_model,
                reward_model,
                tokenizer,
                chat(test) * args.samples,
                test * args.samples,
                t,
                ppo_config(1, 0, "cpu").max_new_tokens,
                seed=4242,
            )  # fmt: skip
            for t in args.temperatures
        ]
        for b in head["temperature_baseline"]:
            print(f"SFT at temperature {b['temperature']}: score {b['score']:.3f}, gold {b['gold']:.3f}, "
                  f"KL/token {b['kl_per_token']:.3f}")  # fmt: skip
    write_summary(head, rows, args.out, args.figure)
    return 0


def parse_overrides(items: list[str], ap: argparse.ArgumentParser) -> dict:
    """--set KEY=VALUE pairs -> {field: value}, each value parsed as the PPOConfig field's type."""
    from dataclasses import fields

    from danlu.align.configs import PPOConfig

    types = {f.name: type(f.default) for f in fields(PPOConfig)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in types or types[key] not in (bool, int, float, str):
            ap.error(f"--set takes KEY=VALUE with KEY a PPOConfig field, got {item!r}")
        kind = types[key]
        try:
            out[key] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
        except ValueError:
            ap.error(f"--set {key} needs a {kind.__name__}, got {text!r}")
    return out


def write_summary(head: dict, rows: list[dict], out: Path, figure: Path | None = None) -> dict:
    """OUT/ppo_seeds.json (the seeds' rows, each gain's mean, sd, min and max) and OUT/ppo_seeds.png."""
    summary = {**head, "seeds": rows}
    for key in ("score", "gold", "greedy_score", "greedy_gold", "kl_per_token"):
        gains = [r["gain"][key] for r in rows]
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        summary[f"gain_{key}"] = {
            "mean": statistics.mean(gains),
            "sd": sd,
            "min": min(gains),
            "max": max(gains),
        }
    summary["kl_per_token_after"] = max(r["after"]["kl_per_token"] for r in rows)
    summary["holds_every_seed"] = all(r["holds"] for r in rows)
    (out / "ppo_seeds.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    plot(rows, out / "ppo_seeds.png")
    if figure is not None:
        figure.parent.mkdir(parents=True, exist_ok=True)
        figure.write_bytes((out / "ppo_seeds.png").read_bytes())
    print(markdown_table(summary))
    g, s = summary["gain_gold"], summary["gain_score"]
    print(f"over {len(rows)} seeds: score {s['mean']:+.3f} ± {s['sd']:.3f}, gold {g['mean']:+.3f} ± {g['sd']:.3f}; "
          f"holds for every seed: {summary['holds_every_seed']}")  # fmt: skip
    print(f"wrote {out / 'ppo_seeds.json'} and {out / 'ppo_seeds.png'}")
    return summary


def markdown_table(summary: dict) -> str:
    """The seeds' before -> after rows and each gain's mean, sd, min and max, as experiments/README.md shows them."""
    rows = summary["seeds"]
    lines = ["| seed | RM score, SFT → PPO | gold, SFT → PPO | greedy gold | KL/token (bound) | PPO s | holds |",
             "|---:|---:|---:|---:|---:|---:|:---:|"]  # fmt: skip
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {r['seed']} | {b['score']:.3f} → {a['score']:.3f} | {b['gold']:.3f} → {a['gold']:.3f} | "
                     f"{b['greedy_gold']:.3f} → {a['greedy_gold']:.3f} | {a['kl_per_token']:.3f} ({r['kl_bound']}) | "
                     f"{r.get('ppo_seconds', float('nan')):.0f} | {'yes' if r['holds'] else 'no'} |")  # fmt: skip
    lines += ["", "| gain over SFT | mean | sd | min | max |", "|---|---:|---:|---:|---:|"]
    for key, label in (("score", "RM score (sampled)"), ("gold", "gold (sampled)"), ("greedy_score", "RM score (greedy)"),
                       ("greedy_gold", "gold (greedy)"), ("kl_per_token", "KL per token")):  # fmt: skip
        g = summary[f"gain_{key}"]
        lines.append(f"| {label} | {g['mean']:+.3f} | {g['sd']:.3f} | {g['min']:+.3f} | {g['max']:+.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, key, label in zip(axes, ("score", "gold", "kl_per_token"),
                              ("reward-model score (sampled)", "gold reward (sampled)", "KL per token"), strict=True):  # fmt: skip
        for i, r in enumerate(rows):
            ax.plot(
                [0, 1], [r["before"][key], r["after"][key]], "o-", color=f"C{i}", label=f"seed {r['seed']}"
            )
        if key == "kl_per_token":
            ax.axhline(rows[0]["kl_bound"], color="grey", ls="--", lw=1, label="bound")
        ax.set_xticks([0, 1], ["SFT", "PPO"])
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
