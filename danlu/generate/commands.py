"""`danlu generate` (one prompt, streamed) and `danlu chat` (an interactive conversation)."""

from __future__ import annotations

import argparse
import sys


def add_generation_args(p: argparse.ArgumentParser, temperature: float = 0.8) -> None:
    """The same option names as `danlu.generate(...)` and the server."""
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)


def generation_options(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop=args.stop,
        seed=args.seed,
    )


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
    import danlu
    from danlu.errors import DanluError

    model, tokenizer = danlu.load(args.model, device=args.device)
    if tokenizer is None:
        raise DanluError(f"{args.model} has no tokenizer.json; save the model together with its tokenizer")
    return model, tokenizer


def run_generate(args: argparse.Namespace) -> int:
    import danlu

    model, tokenizer = _load(args)
    for piece in danlu.stream(model, tokenizer, args.prompt, **generation_options(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    import danlu

    model, tokenizer = _load(args)
    opts = generation_options(args)
    end = tokenizer.token_to_id("<|im_end|>")
    if end is not None:
        opts["stop_token_ids"] = [end]
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("danlu chat — /exit or Ctrl-D to leave, /reset to start over", file=sys.stderr)
    while True:
        try:
            user = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if user in ("/exit", "/quit"):
            return 0
        if user == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if not user:
            continue
        messages.append({"role": "user", "content": user})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        sys.stdout.write("bot> ")
        reply = ""
        for piece in danlu.stream(model, tokenizer, prompt, **opts):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply.strip()})
