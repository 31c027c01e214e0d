"""Tokenizer speed: danlu vs Hugging Face `tokenizers` (one thread) vs a naive BPE, in one run.

    python benchmarks/tokenizer_speed.py                 # 20 MB of world text, 8k vocab (a few minutes)
    python benchmarks/tokenizer_speed.py --mb 2 --vocab-size 2048

Measures, on the same corpus, vocabulary size, pre-tokenizer and special tokens:
  1. byte-level BPE training time: danlu vs HF's BpeTrainer (RAYON_NUM_THREADS=1);
  2. encoding throughput in MB/s of UTF-8 text: danlu's encode_batch vs HF's encode_batch of the same
     tokenizer.json (one thread), with the ids checked equal;
  3. Unigram training vs BPE training, both danlu, on the same --unigram-mb corpus and vocabulary
     (the goal: Unigram's EM and pruning within 10x of BPE's merges), then Unigram encoding of that
     corpus (cache cleared) vs HF's encode_batch of the same tokenizer.json, ids checked equal;
  4. danlu vs a straightforward BPE that recounts every pair after every merge (the textbook loop),
     on a smaller slice (--naive-mb, --naive-vocab) because the naive loop is quadratic in practice.
Each is one run (no repeats): expect some noise on a shared machine.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers is imported: one thread, a fair comparison
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

from danlu.tokenizers.base import DEFAULT_SPECIALS  # noqa: E402
from danlu.tokenizers.bpe import BPETokenizer  # noqa: E402
from danlu.tokenizers.pretokenize import DEFAULT_PATTERN, PreTokenizer  # noqa: E402
from danlu.tokenizers.unigram import UnigramTokenizer  # noqa: E402


def world_corpus(megabytes: float, seed: int = 0) -> list[str]:
    """At least `megabytes` of world pretraining documents, cut to that size."""
    from danlu.data.world import build_world

    multiplier = max(1, int(megabytes / 1.4) + 1)  # the "small" world is ~1.4 MB of training text
    texts, total = [], 0
    for text in build_world(seed, multiplier).pretrain_texts("train"):
        texts.append(text)
        total += len(text.encode("utf-8"))
        if total >= megabytes * 1e6:
            break
    return texts


def naive_bpe(texts: list[str], vocab_size: int, n_specials: int) -> list[tuple[bytes, bytes]]:
    """Textbook BPE: after every merge, count every adjacent pair of every word again."""
    pre = PreTokenizer.from_pattern(DEFAULT_PATTERN)
    counts = Counter(w for t in texts for w in pre(t))
    words = [([bytes([b]) for b in w.encode("utf-8")], c) for w, c in counts.items()]
    merges = []
    while 256 + n_specials + len(merges) < vocab_size:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for symbols, c in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += c
        if not pairs:
            break
        best, count = max(pairs.items(), key=lambda kv: kv[1])
        if count < 2:
            break
        merges.append(best)
        merged = best[0] + best[1]
        for k, (symbols, c) in enumerate(words):
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[k] = (out, c)
    return merges


def hf_train(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(DEFAULT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=DEFAULT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=20.0, help="corpus size in MB (default 20)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary (default 8192)")
    parser.add_argument("--naive-mb", type=float, default=0.5, help="corpus for the naive comparison")
    parser.add_argument("--naive-vocab", type=int, default=1024, help="vocabulary for the naive comparison")
    parser.add_argument("--unigram-mb", type=float, default=3.0, help="corpus for Unigram vs BPE (default 3)")
    args = parser.parse_args()

    from tokenizers import Tokenizer as HFTokenizer

    texts = world_corpus(args.mb)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"corpus: {len(texts)} world documents, {mb:.2f} MB; vocab {args.vocab_size}; one thread")

    ours, t_ours = timed(lambda: BPETokenizer.train(texts, args.vocab_size))
    hf, t_hf = timed(lambda: hf_train(texts, args.vocab_size))
    same_merges = [tuple(m) for m in __import__("json").loads(hf.to_str())["model"]["merges"]] == ours.merges

    with tempfile.TemporaryDirectory() as tmp:
        ours.save(tmp)
        hf_ours = HFTokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
    ours._cache.clear()
    ids_ours, e_ours = timed(lambda: ours.encode_batch(texts))
    enc_hf, e_hf = timed(lambda: hf_ours.encode_batch(texts, add_special_tokens=False))
    same_ids = [e.ids for e in enc_hf] == ids_ours

    uni_texts = world_corpus(args.unigram_mb)
    uni_mb = sum(len(t.encode("utf-8")) for t in uni_texts) / 1e6
    _, t_uni_bpe = timed(lambda: BPETokenizer.train(uni_texts, args.vocab_size))
    uni, t_uni = timed(lambda: UnigramTokenizer.train(uni_texts, args.vocab_size))
    with tempfile.TemporaryDirectory() as tmp:
        uni.save(tmp)
        hf_uni = HFTokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
    uni._cache.clear()
    ids_uni, e_uni = timed(lambda: uni.encode_batch(uni_texts))
    enc_hf_uni, e_hf_uni = timed(lambda: hf_uni.encode_batch(uni_texts, add_special_tokens=False))
    same_uni_ids = [e.ids for e in enc_hf_uni] == ids_uni

    small = world_corpus(args.naive_mb, seed=1)
    small_mb = sum(len(t.encode("utf-8")) for t in small) / 1e6
    _, t_small = timed(lambda: BPETokenizer.train(small, args.naive_vocab))
    _, t_naive = timed(lambda: naive_bpe(small, args.naive_vocab, len(DEFAULT_SPECIALS)))

    rows = [
        (
            f"BPE train {mb:.1f} MB, vocab {args.vocab_size}",
            "danlu",
            f"{t_ours:.2f} s",
            "HF tokenizers",
            f"{t_hf:.2f} s",
            t_ours / t_hf,
        ),
        (
            f"encode {mb:.1f} MB",
            "danlu",
            f"{mb / e_ours:.2f} MB/s",
            "HF tokenizers",
            f"{mb / e_hf:.2f} MB/s",
            e_ours / e_hf,
        ),
        (
            f"Unigram train {uni_mb:.1f} MB, vocab {args.vocab_size}",
            "danlu",
            f"{t_uni:.2f} s",
            "danlu BPE",
            f"{t_uni_bpe:.2f} s",
            t_uni / t_uni_bpe,
        ),
        (
            f"Unigram encode {uni_mb:.1f} MB",
            "danlu",
            f"{uni_mb / e_uni:.2f} MB/s",
            "HF tokenizers",
            f"{uni_mb / e_hf_uni:.2f} MB/s",
            e_uni / e_hf_uni,
        ),
        (
            f"BPE train {small_mb:.1f} MB, vocab {args.naive_vocab}",
            "danlu",
            f"{t_small:.2f} s",
            "naive recount",
            f"{t_naive:.2f} s",
            t_small / t_naive,
        ),
    ]
    print()
    print(f"{'task':<36} {'':<6} {'danlu':>12}   {'peer':<14} {'peer value':>12}   danlu/peer")
    for task, _, ours_value, peer, peer_value, ratio in rows:
        print(f"{task:<36} {'':<6} {ours_value:>12}   {peer:<14} {peer_value:>12}   {ratio:8.2f}x")
    print()
    print("danlu/peer: danlu's time over the peer's for the same work (lower is better; for encoding,")
    print("3.0x means danlu runs at 1/3 of the peer's MB/s)")
    print(f"same merges as HF: {same_merges}; same ids as HF: {same_ids}; same Unigram ids: {same_uni_ids}")


if __name__ == "__main__":
    main()
