"""`danlu generate` (one prompt, streamed) and `danlu chat` (an interactive conversation).

The flags are the `GenerationOptions` fields with dashes (`--top-p` is `top_p`), the same names as
`danlu.generate(...)` and the server.
"""

from __future__ import annotations

import argparse
import sys

# (option, type, help); defaults come from GenerationOptions so the CLI and the library never disagree.
_OPTIONS: list[tuple[str, type, str]] = [
    ("max_new_tokens", int, "most tokens to generate"),
    ("min_new_tokens", int, "end-of-text is forbidden before this many tokens"),
    ("temperature", float, "0 = greedy; higher = more random"),
    ("top_k", int, "sample from the k most likely tokens; 0 = off"),
    ("top_p", float, "nucleus sampling mass in (0, 1]; 1 = off"),
    ("min_p", float, "drop tokens below min_p x the top probability; 0 = off"),
    ("repetition_penalty", float, "CTRL penalty on tokens already in the text; 1 = off"),
    ("presence_penalty", float, "subtract this once from every generated token's logit, in [-2, 2]"),
    ("frequency_penalty", float, "subtract this x count from every generated token's logit, in [-2, 2]"),
    ("no_repeat_ngram_size", int, "never repeat an n-gram of this size; 0 = off"),
    ("num_beams", int, "beam search with this many beams; 1 = off"),
    ("length_penalty", float, "beam score / length^alpha; > 1 favours longer outputs"),
    ("seed", int, "sampling seed"),
    ("contrastive_alpha", float, "contrastive decoding plausibility cutoff (with --amateur-model)"),
    ("num_draft_tokens", int, "speculative decoding: draft tokens per round (with --draft-model)"),
]


def add_generation_args(p: argparse.ArgumentParser, temperature: float = 0.8) -> None:
    """The same option names as `danlu.generate(...)` and the server."""
    from danlu.generate.options import GenerationOptions

    defaults = GenerationOptions()
    for name, kind, help_text in _OPTIONS:
        default = temperature if name == "temperature" else getattr(defaults, name)
        if name == "max_new_tokens":
            default = 128
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=help_text)
    p.add_argument(
        "--early-stopping", action="store_true", help="beam search: stop once num_beams have ended"
    )
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--logit-bias",
        action="append",
        default=[],
        metavar="ID=BIAS",
        help="add BIAS to token ID (repeatable)",
    )
    p.add_argument("--draft-model", default=None, help="checkpoint of a small model: speculative decoding")
    p.add_argument("--amateur-model", default=None, help="checkpoint of a weak model: contrastive decoding")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None, help="weight-only quantisation")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step (a CUDA graph on CUDA, fused C++ on CPU; the first call compiles)",
    )


def generation_options(args: argparse.Namespace) -> dict:
    """The keyword arguments for `danlu.generate` / `danlu.stream` from parsed flags (models not included)."""
    from danlu.errors import DanluError

    opts = {name: getattr(args, name) for name, _, _ in _OPTIONS}
    opts.update(stop=args.stop, early_stopping=args.early_stopping)
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
    return opts


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a model (streams to stdout)")
    p.add_argument("--model", required=True, help="checkpoint folder (danlu or Hugging Face)")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--device", default="cpu")
    add_generation_args(p)
    p.set_defaults(func=run_generate)

    c = sub.add_parser(
        "chat", help="talk with a model in the terminal (streams tokens; /exit or Ctrl-D ends)"
    )
    c.add_argument("--model", required=True, help="checkpoint folder (danlu or Hugging Face)")
    c.add_argument("--system", default=None, help="system message")
    c.add_argument("--device", default="cpu")
    add_generation_args(c, temperature=0.7)
    c.set_defaults(func=run_chat)


def _load(args):
    """The model, its tokenizer and the extra keyword arguments (draft / amateur model, compile)."""
    import danlu
    from danlu.errors import DanluError

    model, tokenizer = danlu.load(args.model, device=args.device)
    if tokenizer is None:
        raise DanluError(f"{args.model} has no tokenizer.json; save the model together with its tokenizer")
    extra = {"compile": args.compile}
    if args.compile:
        print(
            "--compile: the first reply waits for torch.compile (about a minute on a CPU the first time, "
            "seconds once its cache on disk holds the step)",
            file=sys.stderr,
        )
    if args.draft_model:
        extra["draft_model"] = danlu.load(args.draft_model, device=args.device)[0]
    if args.amateur_model:
        extra["amateur_model"] = danlu.load(args.amateur_model, device=args.device)[0]
    if args.quantize:
        from danlu.generate.quantize import quantize_model

        model = quantize_model(model, bits=8 if args.quantize == "int8" else 4)
    return model, tokenizer, extra


def run_generate(args: argparse.Namespace) -> int:
    import danlu

    model, tokenizer, extra = _load(args)
    for piece in danlu.stream(model, tokenizer, args.prompt, **generation_options(args), **extra):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from danlu.generate.chat_repl import chat_loop

    model, tokenizer, extra = _load(args)
    return chat_loop(model, tokenizer, {**generation_options(args), **extra}, system=args.system)
