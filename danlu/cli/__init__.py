"""`danlu <command>`: one subcommand per stage of a model's life.

Each stage's subcommands live in a module of this package (danlu/cli/<stage>.py) with a `register(subparsers)`
function, so this file stays a thin router. Stages are imported lazily: `danlu --help` does not pay for torch.
A `DanluError` is printed as one line (`error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from danlu.errors import DanluError
from danlu.flags import Parser

# Modules that define `register(subparsers)`; the order is the order of `danlu --help`.
COMMAND_MODULES = [
    "danlu.cli.data",  # world
    "danlu.cli.tokenizers",  # tokenizer train / encode / inspect
    "danlu.cli.models",  # seq2seq train/translate, bert train/embed
    "danlu.cli.vision",  # vit, clip, diffusion
    "danlu.cli.export",  # export (GGUF, Hugging Face folder)
    "danlu.cli.train",  # pretrain
    "danlu.cli.tune",  # sft
    "danlu.cli.align",  # reward, ppo, dpo, grpo
    "danlu.cli.generate",  # generate, chat
    "danlu.cli.eval",  # eval
    "danlu.cli.serve",  # serve
    "danlu.cli.app",  # rag index / ask, agent
    "danlu.cli.demo",  # demo
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("danlu")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser; `danlu.flags.Parser` makes each `--help` show every default the same way."""
    parser = Parser(
        prog="danlu",
        description="丹炉 danlu: build, train, align, decode, evaluate and serve language models.",
    )
    parser.add_argument("--version", action="version", version=f"danlu {_version()}")
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


def _undecodable_argument(argv: list[str]) -> str | None:
    """The message for the first argument holding bytes that are not UTF-8, or None.

    Python decodes argv with surrogateescape: an undecodable byte becomes a lone surrogate, which would fail
    later, deep inside (printing it, writing it to JSON), as a traceback.
    """
    for i, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raw = arg.encode("utf-8", "surrogateescape")
            return (
                f"argument {i} ({raw!r}) is not valid UTF-8 text; pass UTF-8 (convert a file name or text "
                "with iconv, or rename the file)"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    bad = _undecodable_argument(argv)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        result = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
    except DanluError as e:  # raised while parsing (a type= check) or running; one line, never a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `danlu world | head`: the reader left; stop quietly, as cat and grep do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush of stdout must not fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
    except KeyboardInterrupt as e:  # a trainer's Ctrl-C says where its checkpoint is and how to resume
        from danlu.cli.train import interrupted_message

        print(interrupted_message(e, args, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
