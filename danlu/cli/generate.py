"""`danlu generate` (one prompt, streamed) and `danlu chat` (an interactive conversation).

The flags are the `GenerationOptions` fields with dashes (`--top-p` is `top_p`), the same names and the same
defaults as `danlu.generate(...)` and the server: greedy unless `--temperature` is given.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """The GenerationOptions fields as flags, with their defaults, help and ranges (`danlu.flags`): the same
    names and the same defaults as `danlu.generate(...)` and the server."""
    from danlu.flags import add_dataclass_flags
    from danlu.generate.options import GenerationOptions

    add_dataclass_flags(p, GenerationOptions)
    p.add_argument(
        "--logit-bias",
        nargs="*",
        action="extend",
        default=[],
        metavar="ID=BIAS",
        help="add BIAS (in [-100, 100]) to token ID's logit, e.g. 50256=-100",
    )
    p.add_argument(
        "--json-schema",
        default=None,
        metavar="FILE",
        help='the output must satisfy this JSON Schema file (grammar-constrained; {"type": "object"}: any object)',
    )
    p.add_argument(
        "--draft-model",
        default=None,
        help="checkpoint of a small model: speculative decoding (or --draft ngram)",
    )
    p.add_argument("--amateur-model", default=None, help="checkpoint of a weak model: contrastive decoding")
    add_decoding_path_args(p)


def add_decoding_path_args(p: argparse.ArgumentParser) -> None:
    """--quantize and --compile/--no-compile: unset, the fastest measured path (`generate/fast_path.py`)."""
    from danlu.generate.fast_path import QUANTIZE_CHOICES

    p.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="auto",
        help="weights: int8 / int4 quantise them, gguf decodes a GGUF's Q8_0/Q4_0/Q4_1 blocks as stored; "
        "auto = gguf for such a file on CPU, else none",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the decode step (a CUDA graph on CUDA, fused C++ on CPU; the first call compiles); "
        "default: on for models of 50M+ parameters and for quantised GGUF blocks",
    )


def generation_options(args: argparse.Namespace) -> dict:
    """The keyword arguments for `danlu.generate` / `danlu.stream` from parsed flags (models not included)."""
    from danlu.errors import DanluError
    from danlu.generate.options import GenerationOptions

    opts = {f.name: getattr(args, f.name) for f in fields(GenerationOptions) if hasattr(args, f.name)}
    bias = {}
    for item in args.logit_bias:
        tok, sep, value = item.partition("=")
        try:
            bias[int(tok)] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise DanluError(f"--logit-bias takes ID=BIAS, e.g. 50256=-100; got {item!r}") from None
    opts["logit_bias"] = bias
    if getattr(args, "json_schema", None) is not None:
        from danlu.generate.grammar import read_schema_file

        opts["json_schema"] = read_schema_file(args.json_schema)
    return opts


def check_generation_args(args: argparse.Namespace) -> None:
    """Every generation flag checked together (e.g. --num-beams with sampling) before a model is loaded."""
    from danlu.generate.options import GenerationOptions

    GenerationOptions.from_kwargs(**generation_options(args))


def register(sub) -> None:
    from danlu.flags import heavy

    p = sub.add_parser("generate", help="continue a prompt with a model (streams to stdout)")
    p.add_argument("--model", required=True, help="checkpoint folder (danlu or Hugging Face)")
    p.add_argument("prompt", help="the text to continue (before a list flag such as --stop, or after --)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="send the prompt as a user turn through the chat template (default for chat models)",
    )
    mode.add_argument(
        "--raw",
        dest="chat",
        action="store_false",
        help="continue the prompt text as it is (default for models without a chat template)",
    )
    add_generation_args(p)
    heavy(p, run_generate, validate=check_generation_args)

    c = sub.add_parser(
        "chat", help="talk with a model in the terminal (streams tokens; /exit or Ctrl-D ends)"
    )
    c.add_argument("--model", required=True, help="checkpoint folder (danlu or Hugging Face)")
    c.add_argument("--system", default=None, help="system message")
    add_generation_args(c)
    heavy(c, run_chat, validate=check_generation_args)


def _load(args):
    """The model, its tokenizer and the extra keyword arguments (draft / amateur model, compile)."""
    import danlu
    from danlu.errors import DanluError

    model, tokenizer = danlu.load(args.model, device=args.device)
    if tokenizer is None:
        raise DanluError(f"{args.model} has no tokenizer.json; save the model together with its tokenizer")
    from danlu.generate.fast_path import choose_decoding

    if args.draft_model:
        extra = {"draft_model": danlu.load(args.draft_model, device=args.device)[0]}
    else:
        extra = {}
    if args.amateur_model:
        extra["amateur_model"] = danlu.load(args.amateur_model, device=args.device)[0]
    choice = choose_decoding(model, args.model, args.quantize, args.compile)
    print(choice.message, file=sys.stderr)
    model, extra["compile"] = choice.model, choice.compile
    return model, tokenizer, extra


def is_chat_model(tokenizer) -> bool:
    """Whether `tokenizer` came with a chat template of its own (tokenizer_config.json or GGUF metadata).
    danlu's tokenizers without one fall back to ChatML for `danlu chat`, but may belong to a base model that was
    never taught it, so those continue raw text unless --chat is given."""
    from danlu.tokenizers.base import CHATML_TEMPLATE

    return tokenizer.chat_template != CHATML_TEMPLATE


def run_generate(args: argparse.Namespace) -> int:
    import danlu

    model, tokenizer, extra = _load(args)
    chat = is_chat_model(tokenizer) if args.chat is None else args.chat
    how = "--chat" if args.chat else "--raw" if args.chat is False else "default for this model; --raw/--chat"
    if chat:  # a chat model answers a user turn; given bare text it often ends at once (an empty line)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], add_generation_prompt=True
        )
        print(f"generate: chat mode, the prompt is a user turn of the chat template ({how})", file=sys.stderr)
    else:
        prompt = args.prompt
        print(f"generate: raw mode, continuing the prompt text ({how})", file=sys.stderr)
    # quantize="none": _load's choose_decoding already chose (and said) the path; danlu.stream must not redo it
    for piece in danlu.stream(model, tokenizer, prompt, **generation_options(args), **extra, quantize="none"):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from danlu.generate.chat_repl import chat_loop

    model, tokenizer, extra = _load(args)
    return chat_loop(model, tokenizer, {**generation_options(args), **extra}, system=args.system)
