"""Training byte-level BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword
Units"): repeatedly merge the most frequent adjacent pair of symbols.

How it stays fast in pure Python:
  1. Pre-tokenize every text once and count unique words (`Counter`); merges work on the unique words,
     each weighted by its count, never on the raw text again.
  2. Keep `pair_counts` (pair -> weighted count) and `where` (pair -> ids of the words containing it).
     A merge only visits the words that contain its pair and updates the counts of the pairs around
     each occurrence, instead of recounting every pair of the corpus (the naive O(corpus) per merge).
  3. Pick the best pair from a heap with lazy invalidation: counts of existing pairs only go down, so a
     popped entry whose stored count is stale is pushed back with the true count; the first popped entry
     whose count is current is the true maximum.

Order of merges (the tie-break), chosen to equal Hugging Face `tokenizers`' BpeTrainer, checked by
experiment (tests/tokenizers/test_bpe_train_parity.py): the highest count wins; among equal counts the
pair with the smaller (left id, right id) wins, where ids are: special tokens first (0..k-1), then the
256 bytes ordered by their printable GPT-2 character, then merged tokens in creation order. Training
stops when the vocabulary reaches vocab_size or the best count is below min_frequency. A merge whose
result already exists as a token (reachable by two different splits) adds a merge rule but no new id.

Special-token strings inside training texts are cut out before counting (Hugging Face counts them as
ordinary text; we do not want merges like "<|" + "im").
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from danlu.errors import DanluError
from danlu.tokenizers.pretokenize import BYTE_TO_CHAR, PreTokenizer, bytes_to_token


def check_vocab_size(vocab_size: int, n_specials: int) -> None:
    """A byte-level vocabulary needs the 256 byte tokens plus the specials."""
    minimum = 256 + n_specials
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise DanluError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE needs the 256 byte tokens plus "
            f"{n_specials} special tokens, so at least {minimum}; use a vocab size of {minimum} or more"
        )


def count_words(texts: Iterable[str], pre_tokenizer: PreTokenizer, specials: list[str]) -> Counter[str]:
    """Count pre-tokenized words over all texts, special-token strings removed."""
    special_re = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True) if s))
    counts: Counter[str] = Counter()
    n_texts = 0
    for text in texts:
        if not isinstance(text, str):
            raise DanluError(f"training texts must be strings; text {n_texts} is {type(text).__name__}")
        n_texts += 1
        for piece in special_re.split(text) if specials else [text]:
            if piece:
                counts.update(pre_tokenizer(piece))
    if not counts:
        raise DanluError(
            f"cannot train a tokenizer on an empty corpus ({n_texts} texts, all empty or only special "
            "tokens); pass a file or texts with some content"
        )
    return counts


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    specials: list[str],
    min_frequency: int = 2,
    show_progress: bool = False,
    pattern: str | None = None,
    pre_tokenizer: PreTokenizer | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn (vocab, merges) as byte-level strings; see the module docstring for the exact rules."""
    check_vocab_size(vocab_size, len(specials))
    if pre_tokenizer is None:
        pre_tokenizer = PreTokenizer.from_pattern(pattern) if pattern else PreTokenizer.from_pattern()
    counts = count_words(texts, pre_tokenizer, specials)
    merges_ids, id_bytes = learn_merges(counts, vocab_size - len(specials), min_frequency, show_progress)
    k = len(specials)
    vocab = {s: i for i, s in enumerate(specials)}
    for sym, data in enumerate(id_bytes):
        vocab[bytes_to_token(data)] = sym + k
    merges = [(bytes_to_token(id_bytes[a]), bytes_to_token(id_bytes[b])) for a, b in merges_ids]
    return vocab, merges


def learn_merges(
    counts: Counter[str] | dict[str, int], n_symbols: int, min_frequency: int = 2, show_progress: bool = False
) -> tuple[list[tuple[int, int]], list[bytes]]:
    """The byte-level BPE merge loop on word counts.

    Symbols: 0..255 are the bytes in GPT-2 printable-character order, then merged tokens. Returns the
    merges as symbol pairs and the bytes of every symbol; stops at n_symbols symbols.
    """
    byte_order = sorted(range(256), key=lambda b: BYTE_TO_CHAR[b])
    table = bytes(byte_order.index(b) for b in range(256))  # byte -> its symbol
    id_bytes = [bytes([b]) for b in byte_order]
    words = [list(word.encode("utf-8").translate(table)) for word in counts]
    merges = merge_loop(
        words,
        list(counts.values()),
        id_bytes,
        lambda a, b: id_bytes[a] + id_bytes[b],
        n_symbols,
        min_frequency,
        show_progress,
    )
    return merges, id_bytes


def merge_loop(
    words: list[list[int]],
    freqs: list[int],
    symbols: list,
    combine,
    n_symbols: int,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> list[tuple[int, int]]:
    """Merge the most frequent adjacent pair until there are n_symbols symbols (see the module docstring).

    words are symbol-id lists with their counts in freqs; symbols[i] is the key of symbol i (bytes, or a
    string for WordPiece) and combine(a, b) the key of their merge; new symbols are appended to symbols
    (a merge whose key exists already reuses that symbol). Returns the merges in order.
    """
    kept = [(w, f) for w, f in zip(words, freqs) if len(w) > 1]  # single symbols have no pairs
    words, freqs = [w for w, _ in kept], [f for _, f in kept]
    key_to_sym = {key: s for s, key in enumerate(symbols)}
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        f = freqs[wi]
        for pair in zip(word, word[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)
    # Max-heap by count via negation; among equal counts heapq pops the smallest (a, b) first.
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=max(0, n_symbols - len(symbols)), desc="merges", unit="merge")
    merges: list[tuple[int, int]] = []
    while len(symbols) < n_symbols and heap:
        neg_count, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg_count:  # stale: the pair lost occurrences since it was pushed
            if count > 0:
                heapq.heappush(heap, (-count, a, b))
            continue
        if count < min_frequency:
            break
        key = combine(a, b)
        new = key_to_sym.get(key)
        if new is None:
            new = len(symbols)
            symbols.append(key)
            key_to_sym[key] = new
        merges.append((a, b))
        touched = _apply_merge(a, b, new, words, freqs, pair_counts, where)
        del pair_counts[(a, b)]
        for pair in touched:
            c = pair_counts[pair]
            if c > 0:
                heapq.heappush(heap, (-c, pair[0], pair[1]))
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    return merges


def _apply_merge(
    a: int,
    b: int,
    new: int,
    words: list[list[int]],
    freqs: list[int],
    pair_counts: defaultdict[tuple[int, int], int],
    where: defaultdict[tuple[int, int], set[int]],
) -> set[tuple[int, int]]:
    """Replace (a, b) by new in every word holding it, updating pair counts locally.

    Occurrences are merged left to right (so "a a a" with (a, a) gives "aa a"). For each one the pairs
    with the symbol before it (taken from the already-merged output, so back-to-back occurrences chain
    correctly) and the symbol after it lose a count, and the same neighbours paired with the new symbol
    gain one. Returns the pairs that gained (all contain the new symbol).
    """
    touched: set[tuple[int, int]] = set()
    for wi in where.pop((a, b), ()):
        w = words[wi]
        n = len(w)
        f = freqs[wi]
        out: list[int] = []
        i = 0
        changed = False
        while i < n:
            if w[i] == a and i + 1 < n and w[i + 1] == b:
                changed = True
                if out:
                    prev = out[-1]
                    pair_counts[(prev, a)] -= f
                    pair = (prev, new)
                    pair_counts[pair] += f
                    where[pair].add(wi)
                    touched.add(pair)
                if i + 2 < n:
                    nxt = w[i + 2]
                    pair_counts[(b, nxt)] -= f
                    pair = (new, nxt)
                    pair_counts[pair] += f
                    where[pair].add(wi)
                    touched.add(pair)
                out.append(new)
                i += 2
            else:
                out.append(w[i])
                i += 1
        if changed:
            words[wi] = out
    return touched
