"""`danlu data clean`: Unicode normalisation, filters, exact and near-duplicate removal, with a report.

Each document goes through the rules in this order and is dropped by the first that rejects it:

    empty            nothing but whitespace after normalisation
    too_short        fewer than --min-chars characters;  too_long: more than --max-chars
    repetition       share of character 10-grams that already occurred earlier in the document above
                     --max-repetition (Gopher's "duplicate n-gram" filter, Rae et al. 2021, App. A, on characters
                     so that it works for Chinese, which has no spaces)
    symbols          share of punctuation/symbol characters (Unicode categories P*, S*) above --max-symbols
    language         dominant script not among --languages (en: Latin letters, zh: Han characters); a document
                     with no letters at all has no script and is dropped when --languages is given
    exact_duplicate  same text as an earlier kept document (blake2b of the normalised text, whitespace collapsed)
    near_duplicate   MinHash (Broder 1997) LSH match with an earlier kept document: estimated Jaccard similarity
                     of their shingle sets >= --near-threshold. Shingles are 3 consecutive words, a Han character
                     counting as a word, so Chinese and English are treated alike. `datasketch` does the hashing
                     and the banding; the first document of a group is kept, in corpus order.

Output: OUT/clean.jsonl ({"text"} records, for `danlu data prepare`), OUT/report.json and OUT/report.md with the
documents, characters (and tokens, with --tokenizer) kept and dropped per rule and a few examples of each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import regex

from danlu.data.sources import expand_inputs, iter_batches, parse_batch
from danlu.errors import DanluError
from danlu.fileio import atomic_write_text
from danlu.flags import option

RULES = (
    "empty", "too_short", "too_long", "repetition", "symbols", "language", "exact_duplicate", "near_duplicate",
)  # fmt: skip
EXAMPLES = 3
# A Han character alone, or a run of anything else but white space (the `regex` module knows the Han script).
_WORD = regex.compile(r"\p{Han}|[^\s\p{Han}]+")
_HAN = regex.compile(r"\p{Han}")
_SPACES = re.compile(r"\s+")


@dataclass
class CleanOptions:
    """What `clean` keeps; the fields with help text are `danlu data clean`'s flags (`danlu.flags.option`)."""

    normalize: str = option("NFKC", "Unicode normal form applied first", choices=("NFKC", "NFC", "none"))
    min_chars: int = option(20, "drop documents shorter than this many characters")
    max_chars: int = option(1_000_000, "drop documents longer than this many characters")
    max_repetition: float = option(0.6, "drop documents whose share of repeated lines/n-grams exceeds this")
    max_symbols: float = option(0.3, "drop documents whose share of symbol characters exceeds this")
    # () keeps every script; ("en", "zh") keeps Latin- and Han-dominant text
    languages: tuple[str, ...] = option((), "keep only documents in these scripts: en, zh (none given: all)")
    exact_dedup: bool = option(True, "drop exact duplicates (--no-exact-dedup keeps them)")
    near_dedup: bool = option(True, "drop near duplicates (--no-near-dedup keeps them)")
    near_threshold: float = option(
        0.5, "MinHash Jaccard similarity at which two documents are near duplicates"
    )
    num_perm: int = option(128, "MinHash permutations per document")
    field: str = option("text", "text field of .jsonl records / column of .parquet files")
    txt_docs: str = option(
        "file",
        "a .txt file is one document (file) or documents split at blank lines (blank)",
        choices=("file", "blank"),
    )

    def check(self) -> None:
        if self.normalize not in ("NFC", "NFKC", "none"):
            raise DanluError(f"--normalize must be NFC, NFKC or none, got {self.normalize!r}")
        if not 0 < self.near_threshold < 1:
            raise DanluError(f"--near-threshold must be in (0, 1), got {self.near_threshold}")
        bad = [lang for lang in self.languages if lang not in ("en", "zh")]
        if bad:
            raise DanluError(f"--languages knows en and zh (by script), not {', '.join(bad)}")
        if not 16 <= self.num_perm <= 1024:
            raise DanluError(f"--num-perm must be between 16 and 1024, got {self.num_perm}")


def repetition_ratio(text: str, n: int = 10) -> float:
    """Share of character n-grams that repeat an earlier n-gram of the same text."""
    total = len(text) - n + 1
    if total <= 1:
        return 0.0
    seen: set[str] = set()
    repeats = 0
    for i in range(total):
        gram = text[i : i + n]
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / total


def symbol_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(unicodedata.category(c)[0] in "PS" for c in chars) / len(chars)


def dominant_script(text: str) -> str | None:
    """ "zh" (Han), "en" (Latin letters), "other" (letters of another script) or None (no letters)."""
    han = latin = other = 0
    for c in text:
        if _HAN.match(c):
            han += 1
        elif c.isalpha():
            if c.isascii() or "LATIN" in unicodedata.name(c, ""):
                latin += 1
            else:
                other += 1
    if not han + latin + other:
        return None
    # Compare by characters carried: a Han character holds about as much as a word of 3-4 Latin letters.
    score = {"zh": han * 3, "en": latin, "other": other}
    return max(score, key=score.get)


def shingles(text: str, k: int = 3) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < k:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + k]).encode("utf-8") for i in range(len(words) - k + 1)}


class Cleaner:
    """The rules over a stream of documents; `keep(text)` -> (normalised text or None, rule that dropped it)."""

    def __init__(self, opts: CleanOptions) -> None:
        opts.check()
        self.opts = opts
        self.exact: set[bytes] = set()
        self.lsh = None
        if opts.near_dedup:
            try:
                from datasketch import MinHashLSH
            except ImportError as e:
                raise DanluError("near-duplicate removal needs datasketch: pip install 'danlu[data]'") from e
            self.lsh = MinHashLSH(threshold=opts.near_threshold, num_perm=opts.num_perm)
        self.n_kept = 0

    def keep(self, text: str) -> tuple[str, str | None, Any]:
        o = self.opts
        if o.normalize != "none":
            text = unicodedata.normalize(o.normalize, text)
        if not text.strip():
            return text, "empty", None
        n = len(text)
        if n < o.min_chars:
            return text, "too_short", None
        if n > o.max_chars:
            return text, "too_long", None
        if repetition_ratio(text) > o.max_repetition:
            return text, "repetition", None
        if symbol_ratio(text) > o.max_symbols:
            return text, "symbols", None
        if o.languages and dominant_script(text) not in o.languages:
            return text, "language", None
        if o.exact_dedup:
            key = hashlib.blake2b(_SPACES.sub(" ", text).strip().encode("utf-8"), digest_size=16).digest()
            if key in self.exact:
                return text, "exact_duplicate", None
            self.exact.add(key)
        if self.lsh is not None:
            from datasketch import MinHash

            m = MinHash(num_perm=o.num_perm, seed=1)
            m.update_batch(list(shingles(text)))
            match = self.lsh.query(m)
            if match:
                return text, "near_duplicate", min(match)
            self.lsh.insert(self.n_kept, m)
        self.n_kept += 1
        return text, None, None


def clean(
    inputs: list[str | Path], out: str | Path, opts: CleanOptions | None = None, tokenizer=None
) -> dict:
    """Clean `inputs` into OUT/clean.jsonl; returns the report (also OUT/report.json and OUT/report.md)."""
    opts = opts or CleanOptions()
    cleaner = Cleaner(opts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = expand_inputs(inputs)
    counts = {r: {"documents": 0, "chars": 0, "tokens": 0} for r in ("kept", *RULES)}
    examples: dict[str, list] = {r: [] for r in RULES}
    kept_texts: list[str] = []  # only the first few, for near-duplicate examples
    tmp = out / ".clean.jsonl.tmp"
    n_docs = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for batch in iter_batches(files, opts.field, opts.txt_docs):
            for raw in parse_batch(batch):
                n_docs += 1
                text, rule, other = cleaner.keep(raw)
                c = counts[rule or "kept"]
                c["documents"] += 1
                c["chars"] += len(text)
                if tokenizer is not None:
                    c["tokens"] += len(tokenizer.encode(text))
                if rule is None:
                    f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    if len(kept_texts) < 10_000:
                        kept_texts.append(text)
                elif len(examples[rule]) < EXAMPLES:
                    ex = {"document": n_docs - 1, "text": _clip(text)}
                    if rule == "near_duplicate" and other is not None and other < len(kept_texts):
                        ex["similar_to"] = _clip(kept_texts[other])
                    examples[rule].append(ex)
    tmp.replace(out / "clean.jsonl")
    report = {
        "inputs": [str(p) for p in files],
        "options": asdict(opts),
        "documents": n_docs,
        "counts": counts,
        "examples": examples,
        "tokens_counted": tokenizer is not None,
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    atomic_write_text(out / "report.md", report_markdown(report))
    if counts["kept"]["documents"] == 0:
        dropped = ", ".join(f"{r} {counts[r]['documents']}" for r in RULES if counts[r]["documents"])
        raise DanluError(
            f"the corpus is empty after cleaning: all {n_docs} documents were dropped ({dropped or 'no documents'}); "
            f"see {out / 'report.md'} and loosen the filters (--min-chars, --max-repetition, --languages...)"
        )
    return report


def _clip(text: str, n: int = 160) -> str:
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= n else text[: n - 1] + "…"


def report_markdown(report: dict) -> str:
    counts, total = report["counts"], max(1, report["documents"])
    unit = "tokens" if report["tokens_counted"] else "chars"
    lines = [
        "# Cleaning report\n",
        f"{report['documents']:,} documents from {len(report['inputs'])} files.\n",
        f"| rule | documents | share | {unit} |",
        "|---|---:|---:|---:|",
    ]
    for rule in ("kept", *RULES):
        c = counts[rule]
        lines.append(f"| {rule} | {c['documents']:,} | {c['documents'] / total:.1%} | {c[unit]:,} |")
    for rule in RULES:
        if report["examples"][rule]:
            lines.append(f"\n## {rule}\n")
            for ex in report["examples"][rule]:
                lines.append(f"- document {ex['document']}: {ex['text']}")
                if "similar_to" in ex:
                    lines.append(f"  - similar to: {ex['similar_to']}")
    return "\n".join(lines) + "\n"


def add_clean_args(p: argparse.ArgumentParser) -> None:
    from danlu.flags import add_dataclass_flags

    p.add_argument(
        "--input", required=True, nargs="+", help="files, folders or globs (.txt, .jsonl, .parquet)"
    )
    p.add_argument("--out", required=True, help="output folder: clean.jsonl, report.md, report.json")
    p.add_argument(
        "--tokenizer", default=None, help="count tokens per rule with this tokenizer (else characters)"
    )
    add_dataclass_flags(p, CleanOptions, defaults={"languages": []})  # a list flag: `--languages en zh`


def run_clean_command(args: argparse.Namespace) -> int:
    tokenizer = None
    if args.tokenizer:
        from danlu.tokenizers.base import Tokenizer

        tokenizer = Tokenizer.load(args.tokenizer)
    names = [f.name for f in fields(CleanOptions)]
    opts = CleanOptions(**{**{n: getattr(args, n) for n in names}, "languages": tuple(args.languages)})
    report = clean(args.input, args.out, opts, tokenizer)
    print(Path(args.out, "report.md").read_text(encoding="utf-8").split("\n## ")[0].rstrip())
    print(
        f"clean documents: {Path(args.out) / 'clean.jsonl'}  (report: {report['documents']:,} documents read)"
    )
    return 0
