"""`danlu demo` stages after pretraining: SFT -> reward model -> DPO (default), PPO and GRPO (with --stages).

Each `stage_*(ctx)` takes the DemoContext of danlu.recipes.demo, trains from the models earlier stages left in
`ctx.state` ("model": the pretrained GPT, then "sft_model", "reward_model", ...), evaluates on the world's held-out
files, appends a report section and returns its metrics. A stage whose inputs are missing runs the stage it needs
first (so `--stages ppo` also trains SFT and the reward model). Sizes are chosen so the whole
`danlu demo --stages all` stays under 20 minutes on 2 CPU cores; `--device cuda` makes every stage faster.

Optional flags (see `add_demo_args`): --sft-steps, --reward-steps, --dpo-steps, --ppo-steps, --grpo-steps.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from danlu.mdtext import code_span
from danlu.recipes.context import DemoContext

STAGE_DEFAULTS = {"sft_steps": 300, "reward_steps": 100, "dpo_steps": 60, "ppo_steps": 40, "grpo_steps": 200}


def add_demo_args(p: Any) -> None:
    """The alignment stages' knobs as `danlu demo` flags (optional: the stages fall back to STAGE_DEFAULTS)."""
    for name, value in STAGE_DEFAULTS.items():
        stage = name.removesuffix("_steps")
        p.add_argument(
            "--" + name.replace("_", "-"), type=int, default=value, help=f"steps of the {stage} stage"
        )


def _arg(ctx: DemoContext, name: str) -> Any:
    return getattr(ctx.args, name, None) or STAGE_DEFAULTS[name]


def _records(ctx: DemoContext, stem: str) -> list[dict]:
    from danlu.data.formats import read_jsonl

    return read_jsonl(Path(ctx.state["world_dir"]) / f"{stem}.jsonl")


def _train_config(ctx: DemoContext, **kw: Any) -> Any:
    from danlu.train.loop import TrainConfig

    base = dict(
        device=ctx.args.device, seed=ctx.args.seed, show_progress=not ctx.args.quiet, weight_decay=0.0
    )
    return TrainConfig(**{**base, **kw})


def _ensure(ctx: DemoContext, key: str, stage: str) -> Any:
    """ctx.state[key], running `stage` first (and recording its metrics) when an earlier run did not."""
    if key not in ctx.state:
        ctx.say(f"== {stage} (needed first)")
        ctx.metrics[stage] = STAGE_FUNCTIONS[stage](ctx)
    return ctx.state[key]


def _em_table(rows: dict[str, dict[str, float]], kinds: list[str]) -> str:
    head = "| model | " + " | ".join(kinds) + " |\n|---|" + "---:|" * len(kinds) + "\n"
    return head + "".join(
        f"| {name} | " + " | ".join(f"{em.get(k, float('nan')):.3f}" for k in kinds) + " |\n"
        for name, em in rows.items()
    )


def _plot_stages(ctx: DemoContext) -> None:
    """Exact match per kind for every evaluated model so far: stages.png beside report.md."""
    from danlu.plots import plot_grouped_bars

    rows: dict[str, dict[str, float]] = ctx.state.get("em_by_model", {})
    if rows:
        kinds = ["fact", "fact_heldout", "arith", "translate", "overall"]
        plot_grouped_bars(rows, kinds, ctx.out / "stages.png", "exact match (held-out)")


def _evaluate(ctx: DemoContext, name: str, model: Any) -> dict[str, Any]:
    from danlu.tune.evaluate import evaluate_sft

    result = evaluate_sft(model, ctx.state["tokenizer"], _records(ctx, "sft_test"))
    ctx.state.setdefault("em_by_model", {})[name] = result["exact_match"]
    _plot_stages(ctx)
    return result


def _r(x: float) -> float:
    return round(float(x), 4)


# ------------------------------------------------------------------------------------------- SFT
def stage_sft(ctx: DemoContext) -> dict[str, Any]:
    from danlu.tune.sft import sft

    tok = ctx.state["tokenizer"]
    pretrained = ctx.state["model"]
    before = _evaluate(ctx, "pretrained", pretrained)
    model = copy.deepcopy(pretrained).train()
    steps = _arg(ctx, "sft_steps")
    cfg = _train_config(ctx, max_steps=steps, batch_size=32, block_size=128, lr=5e-4, warmup_steps=steps // 20,
                        eval_interval=max(1, steps // 4), eval_batches=4)  # fmt: skip
    result = sft(model, tok, _records(ctx, "sft_train"), ctx.out / "sft", cfg)
    ctx.state["sft_model"] = result.model
    after = _evaluate(ctx, "SFT", result.model)
    em0, em1 = before["exact_match"], after["exact_match"]
    kinds = ["fact", "fact_heldout", "arith", "translate", "overall"]
    # code spans: a reply may hold *, _, backticks or HTML that would otherwise render (danlu/mdtext.py)
    samples = "\n".join(f"- {code_span((s['prompt'] + ' ' + s['input']).strip())} → {code_span(s['reply'])} "
                         f"(gold: {code_span(s['reference'])})" for s in after["samples"][:6])  # fmt: skip
    ctx.sections.append(
        "## Supervised fine-tuning (SFT)\n\n"
        f"Full fine-tuning of the pretrained model on {result.summary['train_examples']:,} Alpaca records "
        "(`sft_train.jsonl`: questions about facts, arithmetic, EN↔ZH translation), chat template, loss on the reply "
        f"tokens only; {steps} steps in {result.summary['seconds']:.0f} s. Exact match on `sft_test.jsonl` "
        "(greedy; *fact*: unseen questions about facts stated in pretraining; *fact_heldout*: facts never seen at "
        "all):\n\n"
        + _em_table({"pretrained": em0, "SFT": em1}, kinds)
        + "\nSFT teaches the question→answer *format*; the knowledge it can retrieve is what pretraining stored: "
        "facts absent from pretraining stay unanswerable (see `experiments/sft_knowledge.py`).\n\n"
        f"![SFT loss](sft/loss.png) ![exact match by stage](stages.png)\n\n{samples}\n"
    )
    return {
        "steps": steps,
        "final_val_loss": _r(result.summary["final_val_loss"]),
        "em_fact_pretrained": _r(em0["fact"]),
        "em_fact": _r(em1["fact"]),
        "em_fact_heldout": _r(em1["fact_heldout"]),
        "em_arith": _r(em1["arith"]),
        "em_translate": _r(em1["translate"]),
        "em_overall": _r(em1["overall"]),
        "exact_match": {"pretrained": em0, "sft": em1},
    }


# ------------------------------------------------------------------------------------------- reward model
def stage_reward(ctx: DemoContext) -> dict[str, Any]:
    from danlu.align.reward import pairwise_accuracy, train_reward_model

    sft_model = _ensure(ctx, "sft_model", "sft")
    tok = ctx.state["tokenizer"]
    steps = _arg(ctx, "reward_steps")
    cfg = _train_config(ctx, max_steps=steps, batch_size=32, block_size=96, lr=3e-5, warmup_steps=steps // 10,
                        eval_interval=max(1, steps // 3), eval_batches=4)  # fmt: skip
    test_pairs = _records(ctx, "preference_test")
    rm, summary = train_reward_model(copy.deepcopy(sft_model).train(), tok, _records(ctx, "preference_train"),
                                     ctx.out / "reward", cfg)  # fmt: skip
    ctx.state["reward_model"] = rm
    acc = pairwise_accuracy(rm, tok, test_pairs)["pairwise_accuracy"]
    by_kind = {}
    for kind in sorted({r["rejected_kind"] for r in test_pairs if "rejected_kind" in r}):
        subset = [r for r in test_pairs if r.get("rejected_kind") == kind]
        by_kind[kind] = pairwise_accuracy(rm, tok, subset)["pairwise_accuracy"]
    rank_acc = pairwise_accuracy(rm, tok, _records(ctx, "ranking_test"))["pairwise_accuracy"]
    ctx.sections.append(
        "## Reward model\n\n"
        "The SFT model with its LM head replaced by a scalar head, trained on rankings of 4 answers (correct ≻ "
        "repetitive ≻ evasive ≻ wrong; each ranking gives all 6 pairs) with −log σ(r_better − r_worse), "
        f"{steps} steps in {summary['seconds']:.0f} s.\n\n"
        f"Held-out pairwise accuracy on `preference_test.jsonl`: **{acc:.3f}** "
        f"({', '.join(f'{k}: {v:.3f}' for k, v in by_kind.items())}); on all 6 pairs of `ranking_test.jsonl`: "
        f"{rank_acc:.3f}.\n\n![reward-model loss](reward/loss.png)\n"
    )
    return {"steps": steps, "pairwise_accuracy": _r(acc), "ranking_pairwise_accuracy": _r(rank_acc),
            "accuracy_by_rejected_kind": {k: _r(v) for k, v in by_kind.items()}}  # fmt: skip


# ------------------------------------------------------------------------------------------- DPO
def stage_dpo(ctx: DemoContext) -> dict[str, Any]:
    from danlu.align.dpo import dpo

    sft_model = _ensure(ctx, "sft_model", "sft")
    tok = ctx.state["tokenizer"]
    steps = _arg(ctx, "dpo_steps")
    beta, sft_weight = 0.1, 1.0
    cfg = _train_config(ctx, max_steps=steps, batch_size=16, block_size=96, lr=5e-5, warmup_steps=steps // 10,
                        eval_interval=max(1, steps // 3), eval_batches=4, decay="constant")  # fmt: skip
    policy, summary = dpo(copy.deepcopy(sft_model).train(), tok, _records(ctx, "preference_train"), ctx.out / "dpo",
                          cfg, beta=beta, eval_records=_records(ctx, "preference_test"), sft_weight=sft_weight)  # fmt: skip
    ctx.state["dpo_model"] = policy
    sft_em = ctx.state["em_by_model"]["SFT"]
    em = _evaluate(ctx, "DPO", policy)["exact_match"]
    b, a = summary["before"], summary["after"]
    ctx.sections.append(
        "## DPO\n\n"
        f"Direct preference optimisation of the SFT model on `preference_train.jsonl` (β = {beta}, {steps} steps, "
        f"{summary['seconds']:.0f} s; reference log-probs computed once), plus an NLL term on the chosen answers "
        f"(weight {sft_weight}): pure DPO lowers the chosen answers' likelihood too (only the margin is pushed "
        "up), which costs exact match; the NLL term holds it. On held-out pairs:\n\n"
        "| | SFT (π = π_ref) | DPO |\n|---|---:|---:|\n"
        f"| implicit-reward preference accuracy | {b['preference_accuracy']:.3f} | **{a['preference_accuracy']:.3f}** |\n"
        f"| likelihood preference accuracy (log π(y_c) > log π(y_r)) | {b['likelihood_accuracy']:.3f} | {a['likelihood_accuracy']:.3f} |\n"
        f"| mean reward margin β·Δ | {b['reward_margin']:.3f} | {a['reward_margin']:.3f} |\n"
        f"| exact match on sft_test (overall) | {sft_em['overall']:.3f} | {em['overall']:.3f} |\n\n"
        "![DPO loss](dpo/loss.png)\n"
    )
    return {
        "steps": steps,
        "preference_accuracy_sft": _r(b["preference_accuracy"]),
        "preference_accuracy": _r(a["preference_accuracy"]),
        "likelihood_accuracy_sft": _r(b["likelihood_accuracy"]),
        "likelihood_accuracy": _r(a["likelihood_accuracy"]),
        "reward_margin": _r(a["reward_margin"]),
        "em_overall_sft": _r(sft_em["overall"]),
        "em_overall": _r(em["overall"]),
        "exact_match": em,
    }


# ------------------------------------------------------------------------------------------- PPO
def ppo_config(steps: int, seed: int, device: str) -> Any:
    """The demo's PPO recipe (also experiments/ppo_seeds.py's): `steps` rounds of 32 rollouts, the actor's norm
    gains alone trained (lr 1e-2: 1,152 values, not 1M weights at 3e-5).

    Why the gains: over all weights, no setting tried (ten, experiments/README.md "PPO's gain over SFT") raised
    the gold reward on held-out prompts; the proxy score rose by as much as +0.10 while gold stayed put. On the
    gains alone, three seeds raised both (+0.154 ± 0.047 score, +0.060 ± 0.030 gold, KL ≤ 0.054 per token)."""
    from danlu.align.configs import PPOConfig

    return PPOConfig(max_steps=steps, batch_size=32, minibatch_size=16, ppo_epochs=2, lr=1e-2, critic_lr=3e-4,
                     actor_params="norms",
                     decay="constant", init_kl_coef=0.1, target_kl=0.05, kl_bound=0.2, eval_interval=max(1, steps // 5),
                     seed=seed, device=device)  # fmt: skip


def stage_ppo(ctx: DemoContext) -> dict[str, Any]:
    from danlu.align.ppo import ppo
    from danlu.tune.sft import prompt_text

    sft_model = _ensure(ctx, "sft_model", "sft")
    reward_model = _ensure(ctx, "reward_model", "reward")
    tok = ctx.state["tokenizer"]

    def chat(records: list[dict]) -> list[str]:
        return [prompt_text({"instruction": r["prompt"], "output": ""}, tok) for r in records]

    steps = _arg(ctx, "ppo_steps")
    cfg = ppo_config(steps, ctx.args.seed, ctx.args.device)
    actor, critic = copy.deepcopy(sft_model).train(), copy.deepcopy(reward_model).train()
    test = _records(ctx, "preference_test")
    eval_prompts = chat(test[:128])
    summary = ppo(actor, critic, reward_model, tok, chat(_records(ctx, "preference_train")), ctx.out / "ppo", cfg,
                  eval_prompts=eval_prompts, ref=sft_model, show_progress=not ctx.args.quiet)  # fmt: skip
    ctx.state["ppo_model"] = actor
    em = _evaluate(ctx, "PPO", actor)["exact_match"]
    s = summary
    ctx.sections.append(
        "## RLHF-PPO\n\n"
        "Actor from the SFT model, critic from the reward model, frozen reward and reference (SFT) models; "
        + (
            'PPO trains the actor\'s norm gains alone (`actor_params="norms"`: on all weights it raised the '
            "reward-model score but not the gold reward, experiments/README.md); "
            if cfg.actor_params == "norms"
            else ""
        )
        + f"per-token reward −β(log π − log π_ref) plus the reward-model score on the last token, GAE (γ = {cfg.gamma}, "
        f"λ = {cfg.lam}), clipped actor and critic losses, whitened advantages, adaptive β; {steps} steps of "
        f"{cfg.batch_size} rollouts in {s['seconds']:.0f} s.\n\n"
        f"On {len(eval_prompts)} held-out prompts, the policy's expected reward (mean reward-model score of answers "
        f"sampled at temperature 1, what PPO maximises) {s['eval_score_before']:.3f} → **{s['eval_score_after']:.3f}**, "
        f"while the mean per-token KL to the reference goes {s['eval_kl_before']:.3f} → {s['eval_kl_after']:.3f} nats "
        f"(bound {cfg.kl_bound}; largest on a training batch {s['max_train_kl_per_token']:.3f}). Greedy answers: "
        f"{s['eval_greedy_score_before']:.3f} → {s['eval_greedy_score_after']:.3f} (PPO sharpens the sampling "
        "distribution; what greedy decoding gets right is mostly bounded by what the model knows). Exact match on "
        f"sft_test: {em['overall']:.3f}.\n\n"
        "![PPO curves](ppo/ppo_curves.png)\n"
    )
    return {
        "steps": steps,
        "score_sft": _r(s["eval_score_before"]),
        "score": _r(s["eval_score_after"]),
        "greedy_score_sft": _r(s["eval_greedy_score_before"]),
        "greedy_score": _r(s["eval_greedy_score_after"]),
        "kl_per_token": _r(s["eval_kl_after"]),
        "max_train_kl_per_token": _r(s["max_train_kl_per_token"]),
        "kl_bound": cfg.kl_bound,
        "em_overall": _r(em["overall"]),
    }


# ------------------------------------------------------------------------------------------- GRPO
def arithmetic_pool(held_out: list[dict]) -> list[dict]:
    """Every arithmetic question the world can ask (both languages), minus the held-out test problems.

    GRPO needs prompts and a checker, not demonstrations, so it can practise on far more problems than
    sft_train holds (~1.5k vs 400): fresh problems teach arithmetic rather than a memorised answer list."""
    import re

    from danlu.data.world import lexicon as lex
    from danlu.data.world.tasks import arith_qa

    def key(text: str) -> tuple[str, ...]:
        m = re.search(r"(\d+) ([-+*]) (\d+)", text)
        return m.groups() if m else ()

    held = {key(r["instruction"]) for r in held_out}
    pool = []
    for op in lex.ARITH_OPS:
        for a in range(lex.ARITH_MAX[op] + 1):
            for b in range(lex.ARITH_MAX[op] + 1):
                if (op == "-" and a < b) or (
                    str(a),
                    op,
                    str(b),
                ) in held:  # the world asks no negative results
                    continue
                r = a + b if op == "+" else a - b if op == "-" else a * b
                for lang in ("en", "zh"):
                    qa = arith_qa(a, op, b, r, lang)
                    pool.append({"instruction": qa.prompt, "input": "", "output": qa.output, "kind": "arith",
                                 "answer": qa.answer, "lang": lang})  # fmt: skip
    return pool


def grpo_config(steps: int, seed: int, device: str, loss: str = "grpo", lr: float = 4e-5) -> Any:
    """The demo's GRPO recipe (also experiments/grpo_variants.py's, for every --loss): `steps` rounds of 16
    questions × G = 8 answers, 2 updates per round, at most 12 new tokens (an answer is 3–4 tokens).

    lr 4e-5, not higher: at 1e-4 the per-token KL reached 0.2–0.8 within 20 rounds and held-out accuracy did not
    move (0.22 → 0.20 GRPO, 0.18 DAPO at round 60): an update's noise grows as lr·√rounds, its signal as
    lr·rounds, so the smaller rate over more rounds is the one that transfers (experiments/README.md, GRPO).
    DAPO runs without the KL term, as its paper does; the others keep DeepSeekMath's β = 0.04 (RLOO: in the
    reward, and on-policy: one update per round)."""
    from danlu.align.configs import GRPOConfig

    return GRPOConfig(max_steps=steps, prompts_per_step=16, group_size=8, inner_epochs=1 if loss == "rloo" else 2,
                      lr=lr, decay="constant", beta=0.0 if loss == "dapo" else 0.04, max_new_tokens=12, loss=loss,
                      eval_interval=max(1, steps // 4), seed=seed, device=device)  # fmt: skip


def stage_grpo(ctx: DemoContext) -> dict[str, Any]:
    from danlu.align.grpo import grpo

    sft_model = _ensure(ctx, "sft_model", "sft")
    tok = ctx.state["tokenizer"]
    steps = _arg(ctx, "grpo_steps")
    test = [r for r in _records(ctx, "sft_test") if r["kind"] == "arith"]
    train = arithmetic_pool(test)
    cfg = grpo_config(steps, ctx.args.seed, ctx.args.device)
    policy = copy.deepcopy(sft_model).train()
    s = grpo(policy, tok, train, ctx.out / "grpo", cfg, eval_records=test, ref=sft_model,
             show_progress=not ctx.args.quiet)  # fmt: skip
    ctx.state["grpo_model"] = policy
    em = _evaluate(ctx, "GRPO", policy)["exact_match"]
    ctx.sections.append(
        "## GRPO with a verifiable reward\n\n"
        f"{cfg.group_size} sampled answers per arithmetic question, advantages normalised within each group, "
        f"KL to the SFT model (β = {cfg.beta}), reward 1 when the world's checker finds the exact result; {steps} "
        f"steps of {cfg.prompts_per_step} questions drawn from {len(train):,} problems (every problem the world "
        f"can pose except the {len(test)} held-out ones), {s['seconds']:.0f} s.\n\n"
        f"Held-out arithmetic (`sft_test`, greedy): verifiable-reward accuracy {s['eval_accuracy_before']:.3f} → "
        f"**{s['eval_accuracy_after']:.3f}**. Exact match overall: {em['overall']:.3f}.\n\n"
        "![GRPO curves](grpo/grpo_curves.png)\n"
    )
    return {"steps": steps, "arith_accuracy_sft": _r(s["eval_accuracy_before"]),
            "arith_accuracy": _r(s["eval_accuracy_after"]), "em_overall": _r(em["overall"])}  # fmt: skip


STAGE_FUNCTIONS = {
    "sft": stage_sft,
    "reward": stage_reward,
    "dpo": stage_dpo,
    "ppo": stage_ppo,
    "grpo": stage_grpo,
}
DEFAULT_ALIGN_STAGES = ["sft", "reward", "dpo"]
