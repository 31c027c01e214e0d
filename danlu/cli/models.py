"""`danlu seq2seq train|translate` (the encoder-decoder Transformer) and `danlu bert pretrain|embed` (BERT)."""

from __future__ import annotations

import argparse
import json
import sys


def _check_seq2seq_train(args: argparse.Namespace) -> None:
    from danlu.cli.train import check_paths, check_preset
    from danlu.errors import DanluError

    check_preset(args.preset, "seq2seq")
    for name in ("vocab_size", "steps", "batch_size", "beam_size"):
        if getattr(args, name) <= 0:
            raise DanluError(f"--{_flag(name)} must be positive, got {getattr(args, name)}")
    if args.denoise_steps < 0 or not args.lr > 0:
        raise DanluError(f"--denoise-steps must be >= 0 and --lr > 0, got {args.denoise_steps}, {args.lr}")
    check_paths(args.data, *([args.test] if args.test else []), what="data file or folder")


def _check_translate(args: argparse.Namespace) -> None:
    from danlu.cli.train import check_paths
    from danlu.errors import DanluError

    if args.beam_size <= 0 or args.max_new_tokens <= 0:
        raise DanluError(
            f"--num-beams and --max-new-tokens must be positive, got {args.beam_size}, {args.max_new_tokens}"
        )
    check_paths(args.model, *([args.file] if args.file else []))


def _check_bert_train(args: argparse.Namespace) -> None:
    from danlu.cli.train import check_paths, check_preset
    from danlu.errors import DanluError

    check_preset(args.preset, "bert")
    for name in ("vocab_size", "steps", "finetune_steps"):
        if getattr(args, name) <= 0:
            raise DanluError(f"--{_flag(name)} must be positive, got {getattr(args, name)}")
    check_paths(args.data, what="world folder")


def _flag(dest: str) -> str:
    return {"steps": "max-steps", "beam_size": "num-beams"}.get(dest, dest.replace("_", "-"))


def register(sub) -> None:
    from danlu.cli.train import add_overwrite_arg
    from danlu.flags import heavy

    s = sub.add_parser("seq2seq", help="encoder-decoder Transformer: train on EN->ZH pairs, translate")
    s2 = s.add_subparsers(dest="seq2seq_command", metavar="SUBCOMMAND", required=True)

    t = s2.add_parser("train", help="train a translator (optional BART-style denoising first), report BLEU")
    t.add_argument(
        "--data", required=True, help='a world folder, or a JSONL file of {"source", "target"} records'
    )
    t.add_argument(
        "--eval-data",
        dest="test",
        default=None,
        help="JSONL pairs for BLEU (none: the world's seq2seq_test.jsonl)",
    )
    t.add_argument("--out", required=True, help="output folder: translate/checkpoint, metrics, loss.png")
    add_overwrite_arg(t)
    t.add_argument("--preset", default="transformer-tiny", help="model preset (danlu.models.seq2seq.PRESETS)")
    t.add_argument("--vocab-size", type=int, default=1536, help="size of the shared EN+ZH tokenizer")
    t.add_argument("--max-steps", dest="steps", type=int, default=300, help="translation training steps")
    t.add_argument("--denoise-steps", type=int, default=60, help="BART-style denoising steps first (0: none)")
    t.add_argument("--batch-size", type=int, default=64, help="sentence pairs per step")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    t.add_argument("--norm-first", action="store_true", help="pre-LN instead of the paper's post-LN")
    t.add_argument(
        "--num-beams",
        dest="beam_size",
        type=int,
        default=4,
        help="beams for the BLEU evaluation (1 = greedy)",
    )
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    heavy(t, run_seq2seq_train, validate=_check_seq2seq_train)

    r = s2.add_parser("translate", help="translate sentences with a trained seq2seq checkpoint")
    r.add_argument("--model", required=True, help="checkpoint folder (OUT/translate/checkpoint)")
    r.add_argument("text", nargs="*", help="sentences to translate")
    r.add_argument(
        "--file", default=None, help='JSONL of {"source"[, "target"]}: translate all (and score BLEU)'
    )
    r.add_argument(
        "--num-beams", dest="beam_size", type=int, default=4, help="beam search width (1 = greedy)"
    )
    r.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per translation")
    heavy(r, run_seq2seq_translate, validate=_check_translate)

    b = sub.add_parser(
        "bert", help="BERT: pretrain (MLM + NSP) and fine-tune on the world; sentence embeddings"
    )
    b2 = b.add_subparsers(dest="bert_command", metavar="SUBCOMMAND", required=True)
    bt = b2.add_parser(
        "train", help="pretrain on a world folder's text, fine-tune its classifier, report metrics"
    )
    bt.add_argument("--data", required=True, help="a world folder (`danlu world --out DIR`)")
    bt.add_argument("--out", required=True, help="output folder: pretrain/checkpoint, classify/checkpoint")
    add_overwrite_arg(bt)
    bt.add_argument("--preset", default="bert-tiny", help="model preset (danlu.models.bert.PRESETS)")
    bt.add_argument("--vocab-size", type=int, default=2048, help="WordPiece vocabulary size")
    bt.add_argument("--max-steps", dest="steps", type=int, default=800, help="MLM + NSP pretraining steps")
    bt.add_argument("--finetune-steps", type=int, default=400, help="classifier fine-tuning steps")
    bt.add_argument("--seed", type=int, default=0, help="random seed")
    bt.add_argument("--quiet", action="store_true", help="no progress bar")
    heavy(bt, run_bert_train, validate=_check_bert_train)

    be = b2.add_parser("embed", help="mean-pooled sentence embeddings; prints their cosine similarities")
    be.add_argument(
        "--model", required=True, help="a BERT folder (danlu or Hugging Face / sentence-transformers)"
    )
    be.add_argument("text", nargs="+", help="sentences")
    be.add_argument("--json", action="store_true", help="print the vectors as JSON instead")
    heavy(be, run_bert_embed, validate=lambda args: _check_paths_model(args.model))


def _check_paths_model(path: str) -> None:
    from danlu.cli.train import check_paths

    check_paths(path, what="model")


def run_seq2seq_train(args: argparse.Namespace) -> int:
    from danlu.cli.train import check_out
    from danlu.data.formats import read_jsonl
    from danlu.recipes.seq2seq import TranslatorOptions, train_translator

    check_out(args, ("denoise", "translate"))
    opts = TranslatorOptions(
        preset=args.preset, vocab_size=args.vocab_size, steps=args.steps, denoise_steps=args.denoise_steps,
        batch_size=args.batch_size, lr=args.lr, norm_first=args.norm_first, beam_size=args.beam_size,
        device=args.device, seed=args.seed, show_progress=not args.quiet,
    )  # fmt: skip
    test = read_jsonl(args.test, "seq2seq") if args.test else None
    result = train_translator(args.data, args.out, opts, test_records=test)
    print(json.dumps(result.summary, indent=2, ensure_ascii=False))
    print(f"checkpoint: {args.out}/translate/checkpoint")
    return 0


def _load_kind(path: str, device: str, kind: str):
    import danlu
    from danlu.errors import DanluError

    model, tokenizer = danlu.load(path, device=device)
    if type(model).__name__ not in kind.split("|"):
        raise DanluError(f"{path} holds a {type(model).__name__}, not a {kind.replace('|', ' or ')} model")
    if tokenizer is None:
        raise DanluError(f"{path} has no tokenizer.json; save the model together with its tokenizer")
    return model, tokenizer


def run_seq2seq_translate(args: argparse.Namespace) -> int:
    from danlu.data.formats import read_jsonl
    from danlu.errors import DanluError
    from danlu.recipes.seq2seq import check_tokenizer, translate

    model, tokenizer = _load_kind(args.model, args.device, "Transformer")
    check_tokenizer(tokenizer)
    records = read_jsonl(args.file, "seq2seq") if args.file else []
    sources = list(args.text) + [r["source"] for r in records]
    if not sources:
        raise DanluError("nothing to translate: give sentences as arguments or --file pairs.jsonl")
    out = translate(model, tokenizer, sources, beam_size=args.beam_size, max_new_tokens=args.max_new_tokens)
    for src, hyp in zip(sources, out):
        print(f"{src}\t{hyp}")
    if records:
        from danlu.eval.bleu import corpus_bleu

        bleu = corpus_bleu(out[len(args.text) :], [r["target"] for r in records], tokenize="zh")
        print(f"BLEU (zh) on {len(records)} pairs: {bleu.score:.2f}", file=sys.stderr)
    return 0


def run_bert_train(args: argparse.Namespace) -> int:
    from danlu.cli.train import check_out
    from danlu.recipes.bert import BertRunOptions, train_world_bert

    check_out(args, ("pretrain", "classify"))
    opts = BertRunOptions(
        preset=args.preset, vocab_size=args.vocab_size, steps=args.steps, finetune_steps=args.finetune_steps,
        device=args.device, seed=args.seed, show_progress=not args.quiet,
    )  # fmt: skip
    _, summary = train_world_bert(args.data, args.out, opts)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"checkpoints: {args.out}/pretrain/checkpoint, {args.out}/classify/checkpoint")
    return 0


def run_bert_embed(args: argparse.Namespace) -> int:
    from danlu.models.bert import embed

    model, tokenizer = _load_kind(
        args.model, args.device, "BertModel|BertForPreTraining|BertForSequenceClassification"
    )
    vectors = embed(model, tokenizer, list(args.text))
    if args.json:
        print(json.dumps([[round(x, 6) for x in v] for v in vectors.tolist()]))
        return 0
    sims = vectors @ vectors.T  # (N, N) cosines: the vectors are unit length
    for i, text in enumerate(args.text):
        print(" ".join(f"{x:6.3f}" for x in sims[i].tolist()) + f"  {text}")
    return 0
