"""`danlu tokenizer train | encode | inspect`."""

from __future__ import annotations

import argparse
import json

from danlu.errors import DanluError

KINDS = ("bpe", "unigram", "wordpiece")
EXAMPLES = [
    "The capital of Atlantis is Coral City.",
    "亚特兰蒂斯的首都是珊瑚城。",
    "12 + 345 = 357",
    "<|im_start|>user\nHello! 你好 😀<|im_end|>",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train, use and inspect tokenizers")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    t = sub.add_parser(
        "train",
        help="train a tokenizer on .txt / .jsonl files",
        description="Train a tokenizer and save it as a Hugging Face tokenizer.json (+ tokenizer_config.json).",
    )
    t.add_argument(
        "--input",
        required=True,
        nargs="+",
        action="extend",
        metavar="FILE",
        help="training files, space-separated: .txt, or .jsonl with 'text'",
    )
    t.add_argument("--vocab-size", type=int, required=True, help="total ids, special tokens included")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--kind", default="bpe", choices=KINDS, help="tokenizer model (bpe: byte-level BPE)")
    t.add_argument(
        "--min-frequency", type=int, default=2, help="stop merging below this pair count (bpe, wordpiece)"
    )
    t.add_argument(
        "--special-tokens",
        nargs="*",
        default=None,
        metavar="TOKEN",
        help="special tokens, space-separated (none given: for bpe <|endoftext|> <|im_start|> <|im_end|>; "
        "wordpiece [PAD] [UNK] [CLS] [SEP] [MASK]; unigram <unk> and bpe's)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_checked(run_train))

    e = sub.add_parser("encode", help="print the ids and pieces of a text")
    e.add_argument("--tokenizer", required=True, help="tokenizer folder or tokenizer.json")
    e.add_argument("text", help="text to encode")
    e.add_argument("--json", action="store_true", help="print {'ids', 'pieces'} as JSON")
    e.set_defaults(func=run_encode)

    i = sub.add_parser("inspect", help="vocabulary size, special tokens and example splits")
    i.add_argument("tokenizer", help="tokenizer folder or tokenizer.json")
    i.set_defaults(func=run_inspect)


def _input_files(values: list[str]) -> list[str]:
    """The --input files; the old comma form (`a,b`) is still split, with a note, when no such file exists."""
    from pathlib import Path

    from danlu.flags import split_list

    files = [f for v in values for f in ([v] if Path(v).exists() else split_list([v], "--input"))]
    if not files:
        raise DanluError("--input names no file; give FILE [FILE ...]")
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise DanluError(f"no such input file: {missing[0]}")
    return files


def _checked(run):
    """Check every flag (files, vocabulary size) before any text is read."""

    def checked(args: argparse.Namespace) -> int:
        if args.vocab_size < 1 or args.min_frequency < 1:
            raise DanluError(
                f"--vocab-size and --min-frequency must be >= 1, got {args.vocab_size}, {args.min_frequency}"
            )
        args.input = _input_files(args.input)
        return run(args)

    checked.__wrapped__ = run
    return checked


def run_train(args: argparse.Namespace) -> int:
    from danlu.data.formats import read_texts

    texts: list[str] = []
    for file in _input_files(args.input):
        texts.extend(read_texts(file))
    specials = None
    if args.special_tokens is not None:
        from danlu.flags import split_list

        specials = split_list(args.special_tokens, "--special-tokens")
    progress = not args.quiet
    if args.kind == "bpe":
        from danlu.tokenizers.bpe import BPETokenizer

        tok = BPETokenizer.train(texts, args.vocab_size, specials, args.min_frequency, progress)
    elif args.kind == "wordpiece":
        from danlu.tokenizers.wordpiece import WordPieceTokenizer

        tok = WordPieceTokenizer.train(texts, args.vocab_size, specials, args.min_frequency, progress)
    elif args.kind == "unigram":
        from danlu.tokenizers.unigram import UnigramTokenizer

        tok = UnigramTokenizer.train(texts, args.vocab_size, specials, show_progress=progress)
    else:  # pragma: no cover - argparse limits the choices
        raise DanluError(f"unknown tokenizer kind {args.kind!r}; use one of {', '.join(KINDS)}")
    out = tok.save(args.out)
    n_chars = sum(len(t) for t in texts)
    print(
        f"trained {args.kind} tokenizer: vocab {tok.vocab_size} on {len(texts)} texts ({n_chars:,} chars) -> {out}"
    )
    if tok.vocab_size < args.vocab_size:
        print(f"note: stopped at {tok.vocab_size} < {args.vocab_size}: the corpus supports no more pieces")
    return 0


def piece_text(tok, token_id: int) -> str:
    """What a token stands for, readable: its text, or its raw bytes when they are not valid UTF-8 alone."""
    token_bytes = getattr(tok, "token_bytes", None)
    if token_bytes is None:
        return tok.id_to_token(token_id)
    data = token_bytes(token_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + " ".join(f"0x{b:02X}" for b in data) + ">"


def run_encode(args: argparse.Namespace) -> int:
    from danlu.tokenizers.base import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    ids = tok.encode(args.text)
    pieces = [piece_text(tok, i) for i in ids]
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
        return 0
    print(f"{len(ids)} tokens")
    print("ids:   ", ids)
    print("pieces:", pieces)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from danlu.tokenizers.base import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    print(f"kind:        {tok.kind}")
    print(f"vocab size:  {tok.vocab_size}")
    merges = getattr(tok, "merges", None)
    if merges is not None:
        print(f"merges:      {len(merges)}")
    roles = {"eos": tok.eos_token, "bos": tok.bos_token, "pad": tok.pad_token, "unk": tok.unk_token}
    print(
        "specials:    "
        + ", ".join(f"{s}={i}" for s, i in sorted(tok.special_tokens.items(), key=lambda x: x[1]))
    )
    print("roles:       " + ", ".join(f"{r}={t}" for r, t in roles.items() if t is not None))
    print("examples:")
    for text in EXAMPLES:
        ids = tok.encode(text)
        print(f"  {text!r} -> {len(ids)} tokens: {[piece_text(tok, i) for i in ids]}")
    return 0
