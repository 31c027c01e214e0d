"""`danlu reward`, `danlu dpo`, `danlu ppo`, `danlu grpo`: the alignment stages from the command line.

danlu reward --model runs/sft/checkpoint --data runs/demo/world --out runs/rm
danlu dpo    --model runs/sft/checkpoint --data runs/demo/world --out runs/dpo
danlu ppo    --model runs/sft/checkpoint --reward-model runs/rm/checkpoint --data runs/demo/world --out runs/ppo
danlu grpo   --model runs/sft/checkpoint --data runs/demo/world --out runs/grpo
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path


def add_online_args(p: argparse.ArgumentParser, cls) -> None:
    """The fields of a PPO / GRPO config as --flags (`danlu.flags`, help from the fields); the device comes from
    `heavy`. The online trainers keep no checkpoint and run fp32 and eager: no --ckpt-interval, --dtype, --compile."""
    from danlu.flags import add_dataclass_flags

    add_dataclass_flags(p, cls, skip=("device", "ckpt_interval", "dtype", "compile"))


def config_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _load_policy(path: str):
    import danlu
    from danlu.errors import DanluError

    model, tokenizer = danlu.load(path)
    if tokenizer is None:
        raise DanluError(f"{path} has no tokenizer.json; alignment needs the model's tokenizer beside it")
    return model.train(), tokenizer


def _comparisons(paths: list[str], world_file: str) -> list[dict]:
    """Preference pairs or rankings (each line validated as the kind it looks like)."""
    from danlu.data.formats import read_jsonl, validate_record
    from danlu.errors import DanluError

    out: list[dict] = []
    for p in map(Path, paths):
        if p.is_dir():
            if not (p / world_file).is_file():
                raise DanluError(f"{p} is a folder without {world_file}; pass a world folder or JSONL files")
            p = p / world_file
        for i, r in enumerate(read_jsonl(p)):
            out.append(
                validate_record("ranking" if "responses" in r else "preference", r, f"{p} line {i + 1}")
            )
    return out


def _prompts(paths: list[str], world_file: str) -> list[str]:
    """Prompts from preference records ("prompt") or SFT records (instruction + input)."""
    from danlu.data.formats import read_jsonl, sft_messages
    from danlu.errors import DanluError

    out = []
    for p in map(Path, paths):
        p = p / world_file if p.is_dir() else p
        for i, r in enumerate(read_jsonl(p)):
            if isinstance(r.get("prompt"), str) and r["prompt"].strip():
                out.append(r["prompt"])
            elif isinstance(r.get("instruction"), str):
                out.append(sft_messages(r)[0]["content"])  # the user turn, as SFT formats it
            else:
                raise DanluError(
                    f"{p} line {i + 1}: needs a 'prompt' (or an 'instruction') to ask the policy"
                )
    return out


def _check_train(args: argparse.Namespace) -> None:
    from danlu.cli.train import check_paths, train_config_from_args

    train_config_from_args(args)
    check_paths(args.model, what="model")
    check_paths(*args.data, *(args.eval_data or []), what="data file or folder")


def _check_dpo(args: argparse.Namespace) -> None:
    from danlu.cli.tune import check_merge_arg, lora_from_args

    _check_train(args)
    lora_from_args(args)
    check_merge_arg(args)


def _check_online(cls):
    def check(args: argparse.Namespace) -> None:
        from danlu.cli.train import check_paths

        config_from_args(cls, args)
        check_paths(
            args.model, *([args.reward_model] if getattr(args, "reward_model", None) else []), what="model"
        )
        check_paths(*args.data, *(args.eval_data or []), what="data file or folder")
        if getattr(args, "lora", False):
            from danlu.cli.tune import lora_from_args

            lora_from_args(args)
        from danlu.cli.tune import check_merge_arg

        check_merge_arg(args)

    return check


def register(sub) -> None:
    from danlu.align.configs import GRPOConfig, PPOConfig
    from danlu.cli.train import add_overwrite_arg, add_train_args
    from danlu.cli.tune import add_lora_args, add_merge_arg
    from danlu.flags import heavy

    r = sub.add_parser("reward", help="train a reward model on preference pairs / rankings")
    r.add_argument("--model", required=True, help="decoder to start from (usually the SFT model)")
    r.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="world folder (preference_train.jsonl) or JSONL files (pairs or rankings)",
    )
    r.add_argument(
        "--eval-data", nargs="+", default=None, help="held-out comparisons (world: preference_test)"
    )
    r.add_argument("--out", required=True, help="output folder: checkpoint/, metrics.jsonl, plots")
    add_overwrite_arg(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--no-likelihood-feature",
        action="store_true",
        help="the plain InstructGPT head only (see danlu.align.reward)",
    )
    add_train_args(r, max_steps=100, batch_size=32, block_size=96, lr=3e-5, warmup_steps=10, eval_interval=50,
                   eval_batches=4, weight_decay=0.0)  # fmt: skip
    heavy(r, run_reward, validate=_check_train)

    d = sub.add_parser("dpo", help="direct preference optimisation on preference pairs")
    d.add_argument("--model", required=True, help="the SFT model (also the frozen reference)")
    d.add_argument(
        "--data", required=True, nargs="+", help="world folder (preference_train.jsonl) or JSONL files"
    )
    d.add_argument(
        "--eval-data", nargs="+", default=None, help="held-out pairs (world: preference_test.jsonl)"
    )
    d.add_argument(
        "--out", required=True, help="output folder: checkpoint/ (with --lora: adapter/), metrics, plots"
    )
    add_overwrite_arg(d)
    d.add_argument(
        "--loss",
        default="dpo",
        choices=("dpo", "ipo", "kto", "orpo", "simpo"),
        help="preference loss (danlu.align.losses): dpo, ipo (Azar et al. 2023), kto (Ethayarajh et al. 2024: "
        "chosen = desirable, rejected = undesirable), orpo (Hong et al. 2024) or simpo (Meng et al. 2024); "
        "orpo and simpo need no reference",
    )
    d.add_argument(
        "--beta",
        type=float,
        default=None,
        help="β: strength of the implicit KL constraint (none: 0.1; ORPO's λ: 0.1; SimPO's β: 2.0)",
    )
    d.add_argument("--gamma", type=float, default=1.0, help="SimPO's target reward margin γ")
    d.add_argument("--desirable-weight", type=float, default=1.0, help="KTO's λ_D on desirable answers")
    d.add_argument("--undesirable-weight", type=float, default=1.0, help="KTO's λ_U on undesirable answers")
    d.add_argument("--sft-weight", type=float, default=0.0, help="weight of an NLL term on chosen answers")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    add_lora_args(d)
    add_merge_arg(d)
    add_train_args(d, max_steps=60, batch_size=16, block_size=96, lr=5e-5, warmup_steps=6, eval_interval=20,
                   eval_batches=4, weight_decay=0.0, decay="constant")  # fmt: skip
    heavy(d, run_dpo, validate=_check_dpo)

    p = sub.add_parser("ppo", help="RLHF-PPO: actor/critic against a reward model, KL to the reference")
    p.add_argument("--model", required=True, help="the SFT model: actor and frozen reference")
    p.add_argument("--reward-model", required=True, help="a `danlu reward` checkpoint: reward and critic")
    p.add_argument(
        "--data", required=True, nargs="+", help="world folder (preference_train prompts) or JSONL"
    )
    p.add_argument("--eval-data", nargs="+", default=None, help="held-out prompts (world: preference_test)")
    p.add_argument(
        "--out", required=True, help="output folder: checkpoint/ (with --lora: adapter/), metrics, plots"
    )
    add_overwrite_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_lora_args(p)
    add_merge_arg(p)
    add_online_args(p, PPOConfig)
    heavy(p, run_ppo, validate=_check_online(PPOConfig))

    g = sub.add_parser("grpo", help="GRPO with the world's verifiable reward (arithmetic, facts)")
    g.add_argument("--model", required=True, help="the SFT model: policy and frozen reference")
    g.add_argument(
        "--data", required=True, nargs="+", help="world folder (sft_train.jsonl) or SFT JSONL with 'answer'"
    )
    g.add_argument("--eval-data", nargs="+", default=None, help="held-out records (world: sft_test.jsonl)")
    g.add_argument(
        "--kinds", nargs="+", default=["arith"], metavar="KIND", help="record kinds to train and evaluate on"
    )
    g.add_argument("--out", required=True, help="output folder: checkpoint/, metrics, plots")
    add_overwrite_arg(g)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_online_args(g, GRPOConfig)
    heavy(g, run_grpo, validate=_check_online(GRPOConfig))


def _eval_paths(args: argparse.Namespace, name: str) -> list[str]:
    """--eval-data, else the --data folders that hold `name` (a world folder's held-out split)."""
    return args.eval_data or [d for d in args.data if (Path(d) / name).is_file()]


def run_reward(args: argparse.Namespace) -> int:
    from danlu.align.reward import pairwise_accuracy, train_reward_model
    from danlu.cli.train import check_out, train_config_from_args

    check_out(args)
    model, tokenizer = _load_policy(args.model)
    train_records = _comparisons(args.data, "preference_train.jsonl")
    eval_paths = _eval_paths(args, "preference_test.jsonl")
    eval_records = _comparisons(eval_paths, "preference_test.jsonl") if eval_paths else None
    rm, summary = train_reward_model(model, tokenizer, train_records, args.out, train_config_from_args(args),
                                     eval_records=eval_records, likelihood_feature=not args.no_likelihood_feature)  # fmt: skip
    if eval_records:
        summary["heldout"] = pairwise_accuracy(rm, tokenizer, eval_records)
    print(json.dumps(summary, indent=2))
    print(f"reward model: {Path(args.out) / 'checkpoint'}")
    return 0


def run_dpo(args: argparse.Namespace) -> int:
    from danlu.align.dpo import dpo
    from danlu.cli.train import RUN_OUTPUTS, check_out, train_config_from_args
    from danlu.cli.tune import lora_from_args, print_lora_result, save_merged

    check_out(args, (*RUN_OUTPUTS, "adapter", "merged"))
    model, tokenizer = _load_policy(args.model)
    train_records = _comparisons(args.data, "preference_train.jsonl")
    eval_paths = _eval_paths(args, "preference_test.jsonl")
    eval_records = _comparisons(eval_paths, "preference_test.jsonl") if eval_paths else None
    _, summary = dpo(model, tokenizer, train_records, args.out, train_config_from_args(args), beta=args.beta,
                     eval_records=eval_records, lora=lora_from_args(args), sft_weight=args.sft_weight,
                     loss=args.loss, gamma=args.gamma, desirable_weight=args.desirable_weight,
                     undesirable_weight=args.undesirable_weight, base_name=args.model)  # fmt: skip
    if args.lora and args.merge:
        save_merged(model, tokenizer, args)
    print(json.dumps(summary, indent=2))
    if args.lora:  # the adapter is the result (OUT/adapter), as with `danlu sft --lora`; no implicit merge
        print_lora_result(args)
    else:
        print(f"checkpoint: {Path(args.out) / 'checkpoint'}")
    return 0


def run_ppo(args: argparse.Namespace) -> int:
    from danlu.align.configs import PPOConfig
    from danlu.align.ppo import ppo
    from danlu.align.reward import RewardModel
    from danlu.cli.train import RUN_OUTPUTS, check_out
    from danlu.cli.tune import lora_from_args, print_lora_result, save_merged
    from danlu.models.checkpoints import save_model
    from danlu.tune.sft import prompt_text

    check_out(args, (*RUN_OUTPUTS, "adapter", "merged"))
    actor, tokenizer = _load_policy(args.model)
    reward_model = RewardModel.load(args.reward_model)
    critic = RewardModel.load(args.reward_model)

    def chat(prompts: list[str]) -> list[str]:
        return [prompt_text({"instruction": q, "output": ""}, tokenizer) for q in prompts]

    train_prompts = chat(_prompts(args.data, "preference_train.jsonl"))
    eval_paths = _eval_paths(args, "preference_test.jsonl")
    eval_prompts = chat(_prompts(eval_paths, "preference_test.jsonl")) if eval_paths else None
    summary = ppo(actor, critic, reward_model, tokenizer, train_prompts, args.out, config_from_args(PPOConfig, args),
                  eval_prompts=eval_prompts, lora=lora_from_args(args), show_progress=not args.quiet,
                  base_name=args.model)  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.lora:  # the adapter is the result (OUT/adapter), as with `danlu sft --lora`; no implicit merge
        if args.merge:
            save_merged(actor, tokenizer, args)
        print_lora_result(args)
        return 0
    save_model(actor, Path(args.out) / "checkpoint", tokenizer=tokenizer)
    print(f"checkpoint: {Path(args.out) / 'checkpoint'}")
    return 0


def run_grpo(args: argparse.Namespace) -> int:
    from danlu.align.configs import GRPOConfig
    from danlu.align.grpo import grpo
    from danlu.cli.train import check_out
    from danlu.cli.tune import read_records
    from danlu.models.checkpoints import save_model

    check_out(args)
    policy, tokenizer = _load_policy(args.model)
    from danlu.flags import split_list

    kinds = set(split_list(args.kinds, "--kinds"))
    train_records = [
        r
        for r in read_records(args.data, "sft", "sft_train.jsonl")
        if r.get("kind", "") in kinds or not kinds
    ]
    eval_paths = _eval_paths(args, "sft_test.jsonl")
    eval_records = None
    if eval_paths:
        eval_records = [
            r for r in read_records(eval_paths, "sft", "sft_test.jsonl") if r.get("kind", "") in kinds
        ]
    summary = grpo(policy, tokenizer, train_records, args.out, config_from_args(GRPOConfig, args),
                   eval_records=eval_records, show_progress=not args.quiet)  # fmt: skip
    save_model(policy, Path(args.out) / "checkpoint", tokenizer=tokenizer)
    print(json.dumps(summary, indent=2))
    print(f"checkpoint: {Path(args.out) / 'checkpoint'}")
    return 0
