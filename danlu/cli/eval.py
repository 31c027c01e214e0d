"""`danlu eval`: score a predictions file, or evaluate a model on the embedded world.

    danlu eval --predictions preds.jsonl --task classification|detection|text --out DIR
    danlu eval --model CKPT --world WORLD_DIR --out DIR

Both write DIR/eval.json and PNG plots. The JSONL layouts are documented in `danlu.eval.files`.
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
    p.add_argument("--task", choices=["classification", "detection", "text"], help="what the predictions are")
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
    if args.model or args.world:
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
