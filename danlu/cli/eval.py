"""`danlu eval`: score a predictions file, or evaluate a model on the embedded world.

    danlu eval --predictions preds.jsonl --task classification|detection|text --out DIR
    danlu eval --model CKPT --world WORLD_DIR --out DIR
    danlu eval --task qa|pass@k|preference --predictions FILE --out DIR
    danlu eval --task mc --model CKPT --data ITEMS.jsonl [--num-fewshot 5] --out DIR
    danlu eval --task knowledge --model CKPT --world WORLD_DIR --out DIR

All write DIR/eval.json (and PNG plots). The JSONL layouts are documented in `danlu.eval.files` and
`danlu.eval.tasks` (note 002's kinds: multiple choice, question answering, execution, preference).
"""

from __future__ import annotations

import argparse
from typing import Any

from danlu.errors import DanluError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score predictions (classification, detection, text) or a model on the world",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--predictions", help="predictions JSONL (layouts: see danlu/eval/files.py)")
    p.add_argument(
        "--task",
        choices=["classification", "detection", "text", "mc", "qa", "pass@k", "preference", "knowledge"],
        help="what to score (layouts: danlu/eval/files.py, danlu/eval/tasks.py)",
    )
    p.add_argument("--data", default=None, help="--task mc: the multiple-choice items JSONL")
    p.add_argument("--num-fewshot", type=int, default=0, help="--task mc: few-shot examples per item")
    p.add_argument("--seed", type=int, default=1234, help="--task mc: seed of the few-shot draw")
    p.add_argument(
        "--pass-at", type=int, nargs="+", default=[1], metavar="K", help="--task pass@k: the k values"
    )
    p.add_argument(
        "--models", nargs="+", default=None, help="--task preference: the only model names allowed"
    )
    p.add_argument("--out", required=True, help="output directory for eval.json and the plots")
    p.add_argument("--box-format", choices=["xyxy", "xywh"], default="xyxy", help="detection boxes")
    p.add_argument(
        "--bleu-tokenize",
        choices=["13a", "zh", "none"],
        default="13a",
        help="BLEU tokenizer (zh for Chinese)",
    )
    p.add_argument("--rouge-tokenizer", choices=["default", "zh"], default="default", help="ROUGE tokenizer")
    p.add_argument("--model", help="checkpoint to evaluate on a world directory (with --world)")
    p.add_argument("--world", help="world directory written by `danlu world`")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length for exact match / BLEU")
    p.add_argument(
        "--limit", type=int, default=None, help="at most this many records per world file (none: all)"
    )
    from danlu.flags import heavy

    heavy(p, handle_eval, validate=check_eval_args)


def check_eval_args(args: argparse.Namespace) -> None:
    """The flag combinations and paths, checked before a model is loaded."""
    from pathlib import Path

    from danlu.eval import tasks

    if args.task in tasks.TASKS:
        need = {"mc": ("model", "data"), "knowledge": ("model", "world")}.get(args.task, ("predictions",))
        missing = [f"--{n}" for n in need if not getattr(args, n)]
        if missing:
            raise DanluError(f"--task {args.task} needs {' and '.join(missing)}")
        if args.num_fewshot < 0 or min(args.pass_at) < 1:
            raise DanluError(
                f"--num-fewshot must be >= 0 and --pass-at >= 1, got {args.num_fewshot}, {args.pass_at}"
            )
        for n in need:
            if n != "model" and not Path(getattr(args, n)).exists():
                raise DanluError(f"no such file or folder: {getattr(args, n)}")
        return
    if args.model or args.world:
        if not (args.model and args.world):
            raise DanluError("--model and --world go together: pass both (or use --predictions and --task)")
        if args.predictions:
            raise DanluError("pass either --predictions or --model/--world, not both")
        paths = [args.model, args.world]
    elif not args.predictions or not args.task:
        raise DanluError(
            "pass --predictions FILE and --task classification|detection|text (or --model and --world)"
        )
    else:
        paths = [args.predictions]
    if args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        raise DanluError(
            f"--max-new-tokens and --limit must be >= 1, got {args.max_new_tokens}, {args.limit}"
        )
    for path in paths:
        if not Path(path).exists():
            raise DanluError(f"no such file or folder: {path}")


def _print_metrics(metrics: dict[str, Any], indent: str = "  ") -> None:
    for name, value in metrics.items():
        if isinstance(value, float):
            print(f"{indent}{name}: {value:.4f}")
        elif isinstance(value, dict) and any(isinstance(v, float) for v in value.values()):
            print(
                f"{indent}{name}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in value.items() if isinstance(v, float))
            )


def handle_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.out)
    from danlu.eval import tasks

    if args.task in tasks.TASKS:
        model = tokenizer = None
        if args.task in tasks.MODEL_TASKS:
            import danlu

            model, tokenizer = danlu.load(args.model, device=args.device)
            if tokenizer is None:
                raise DanluError(
                    f"{args.model} has no tokenizer.json; --task {args.task} needs the tokenizer"
                )
        result = tasks.run_task(args.task, out, args.data if args.task == "mc" else args.predictions, model,
                                tokenizer, num_fewshot=args.num_fewshot, seed=args.seed, ks=args.pass_at,
                                models=args.models, world=args.world, limit=args.limit)  # fmt: skip
        print(f"{args.task}: {result['n']} records")
    elif args.model or args.world:
        if not (args.model and args.world):
            raise DanluError("--model and --world go together: pass both (or use --predictions and --task)")
        if args.predictions:
            raise DanluError("pass either --predictions or --model/--world, not both")
        import danlu
        from danlu.eval.world_eval import evaluate_model

        model, tokenizer = danlu.load(args.model)
        if hasattr(model, "to"):
            model = model.to(args.device)
        result = evaluate_model(
            model, tokenizer, args.world, out, max_new_tokens=args.max_new_tokens, limit=args.limit
        )
    else:
        if not args.predictions or not args.task:
            raise DanluError(
                "pass --predictions FILE and --task classification|detection|text (or --model and --world)"
            )
        from danlu.eval.files import score_file

        options: dict[str, Any] = {}
        if args.task == "detection":
            options["box_format"] = args.box_format
        elif args.task == "text":
            options.update(bleu_tokenize=args.bleu_tokenize, rouge_tokenizer=args.rouge_tokenizer)
        result = score_file(args.task, args.predictions, out, **options)
        print(f"{args.task}: {result['n']} records")
    _print_metrics(result["metrics"])
    for note in result.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {out / 'eval.json'}" + "".join(f", {name}" for name in result["plots"]))
    return 0
