"""`danlu <command>`: one subcommand per stage of a model's life.

Each stage package owns its subcommands in a `commands.py` module with a `register(subparsers)` function,
so this file stays a thin router. Stages are imported lazily: `danlu --help` does not pay for torch.
A `DanluError` is printed as one line (`error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from danlu.errors import DanluError

# Modules that define `register(subparsers)`; the order is the order of `danlu --help`.
COMMAND_MODULES = [
    "danlu.data.commands",  # world
    "danlu.tokenizers.commands",  # tokenizer train / encode / inspect
    "danlu.models.commands",  # seq2seq train/translate, bert train/embed
    "danlu.models.vision_commands",  # vit, clip, diffusion
    "danlu.train.commands",  # pretrain
    "danlu.tune.commands",  # sft
    "danlu.align.commands",  # reward, ppo, dpo, grpo
    "danlu.generate.commands",  # generate, chat
    "danlu.eval.commands",  # eval
    "danlu.serve.commands",  # serve
    "danlu.app.commands",  # rag index / ask
    "danlu.demo",  # demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danlu",
        description="丹炉 danlu: build, train, align, decode, evaluate and serve language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except DanluError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a trainer's Ctrl-C says where its checkpoint is and how to resume
        from danlu.train.commands import interrupted_message

        print(interrupted_message(e, args, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
