"""Pretraining objectives beyond next-token prediction: BERT's MLM and NSP, and BART's five noise functions.

Notation: B batch, T time.

- Causal LM (GPT): `danlu.models.gpt.causal_lm_loss`, re-exported here.
- Masked LM (Devlin et al. 2019, §3.1): choose 15% of the (non-special) tokens; of those, 80% become [MASK],
  10% a random token, 10% stay; predict the original token at the chosen positions only.
- Next-sentence prediction: sentence B follows A half of the time, and is a random sentence otherwise.
- Denoising (BART, Lewis et al. 2020, §2.2): corrupt a document, reconstruct it with a seq2seq model. The noises
  are token masking, token deletion, text infilling (spans of Poisson(λ=3) length, each replaced by ONE mask,
  0-length spans insert a mask), sentence permutation and document rotation.
- Span corruption (T5, Raffel et al. 2020, §3.1.4 and §3.3.4): 15% of the tokens, in spans of mean length 3,
  each span replaced in the input by its own sentinel; the target is each sentinel followed by the span it
  hid, closed by one more sentinel. The target is short (~15% of the tokens plus the sentinels), so a step
  costs the decoder far less than BART's full reconstruction.
The noise functions take and return plain lists of token ids and draw from a `random.Random`, so they are
easy to test on their defining property and deterministic given a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from danlu.errors import DanluError
from danlu.models.gpt import causal_lm_loss

__all__ = [
    "causal_lm_loss",
    "mask_tokens",
    "nsp_pairs",
    "token_masking",
    "token_deletion",
    "poisson_span_length",
    "text_infilling",
    "sentence_permutation",
    "document_rotation",
    "random_segments",
    "span_corruption",
    "fill_sentinels",
]


# ------------------------------------------------------------------------------------------- BERT
def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    special_mask: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    random_token_low: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (corrupted input_ids, labels), both (B, T); labels are -100 where nothing is predicted.

    special_mask (B, T) is True where a token must never be chosen ([CLS], [SEP], padding). Random
    replacements are drawn from [random_token_low, vocab_size) (pass the first ordinary id to skip specials).
    """
    if not 0 < mlm_probability < 1:
        raise DanluError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    g = generator
    probs = torch.full(input_ids.shape, mlm_probability)
    if special_mask is not None:
        probs.masked_fill_(special_mask.bool().cpu(), 0.0)
    chosen = torch.bernoulli(probs, generator=g).bool().to(input_ids.device)  # (B, T)
    labels = input_ids.masked_fill(~chosen, -100)
    corrupted = input_ids.clone()
    u = torch.rand(input_ids.shape, generator=g).to(input_ids.device)  # one draw decides the 80/10/10 split
    to_mask = chosen & (u < 0.8)
    to_random = (
        chosen & (u >= 0.8) & (u < 0.9)
    )  # and u >= 0.9 keeps the token (the model must still predict it)
    corrupted[to_mask] = mask_token_id
    randoms = torch.randint(random_token_low, vocab_size, input_ids.shape, generator=g).to(input_ids.device)
    corrupted[to_random] = randoms[to_random]
    return corrupted, labels


def nsp_pairs(
    documents: Sequence[Sequence[str]], rng: random.Random, n_pairs: int | None = None
) -> list[tuple[str, str, int]]:
    """(sentence A, sentence B, label) pairs: label 0 when B is the sentence after A in its document (50%),
    1 when B is a random sentence from another document (Hugging Face's convention for `next_sentence_label`).
    """
    docs = [list(d) for d in documents if len(d) >= 2]
    if len(docs) < 2:
        raise DanluError("next-sentence pairs need at least two documents of two or more sentences")
    n_pairs = n_pairs or sum(len(d) - 1 for d in docs)
    pairs = []
    for _ in range(n_pairs):
        d = rng.randrange(len(docs))
        i = rng.randrange(len(docs[d]) - 1)
        if rng.random() < 0.5:
            pairs.append((docs[d][i], docs[d][i + 1], 0))
        else:
            other = rng.randrange(len(docs) - 1)
            other += other >= d  # any document but this one
            pairs.append((docs[d][i], rng.choice(docs[other]), 1))
    return pairs


# ------------------------------------------------------------------------------------------- BART noise
def _check_p(p: float, name: str) -> None:
    if not 0 <= p <= 1:
        raise DanluError(f"{name} must be in [0, 1], got {p}")


def token_masking(ids: Sequence[int], p: float, mask_id: int, rng: random.Random) -> list[int]:
    """Each token becomes [MASK] with probability p (BERT-style, without the 10/10 split). Length is kept."""
    _check_p(p, "masking probability")
    return [mask_id if rng.random() < p else t for t in ids]


def token_deletion(ids: Sequence[int], p: float, rng: random.Random) -> list[int]:
    """Each token is removed with probability p: the model must also find *where* input is missing."""
    _check_p(p, "deletion probability")
    return [t for t in ids if rng.random() >= p]


def poisson_span_length(lam: float, rng: random.Random) -> int:
    """A draw from Poisson(lam) (Knuth's multiplication method; lam is small, 3 in BART)."""
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def text_infilling(
    ids: Sequence[int], mask_ratio: float, mask_id: int, rng: random.Random, lam: float = 3.0
) -> list[int]:
    """Replace spans, of Poisson(lam) lengths, by a single [MASK] each until ~mask_ratio of the tokens are
    covered (BART masks 30%). A 0-length span inserts a [MASK]: the model learns how many tokens are missing.
    """
    _check_p(mask_ratio, "mask_ratio")
    n = len(ids)
    budget = round(n * mask_ratio)
    if budget == 0:
        return list(ids)
    starts: dict[int, int] = {}  # start position -> span length (0: a [MASK] inserted before ids[start])
    covered = [False] * (n + 1)

    def free(start: int, length: int) -> bool:
        # Spans never overlap and no insertion point falls inside a span, so each [MASK] is one span.
        if start in starts or covered[start]:
            return False
        return not any(covered[start : start + length]) and not any(
            j in starts for j in range(start, start + length)
        )

    n_masked = attempts = 0
    while n_masked < budget and attempts < 10 * n + 10:
        attempts += 1
        length = min(poisson_span_length(lam, rng), budget - n_masked)
        start = rng.randrange(n + 1 - length)
        if not free(start, length):
            continue
        starts[start] = length
        for j in range(start, start + length):
            covered[j] = True
        n_masked += length
    out: list[int] = []
    i = 0
    while i <= n:
        if i in starts:
            out.append(mask_id)
            if starts[i]:
                i += starts[i]
                continue
        if i < n:
            out.append(ids[i])
        i += 1
    return out


def sentence_permutation(
    ids: Sequence[int], sentence_end_ids: set[int] | Sequence[int], rng: random.Random
) -> list[int]:
    """Split the document after each sentence-ending token (full stops) and shuffle the sentences."""
    ends = set(sentence_end_ids)
    sentences: list[list[int]] = [[]]
    for t in ids:
        sentences[-1].append(t)
        if t in ends:
            sentences.append([])
    if not sentences[-1]:
        sentences.pop()
    rng.shuffle(sentences)
    return [t for s in sentences for t in s]


def document_rotation(ids: Sequence[int], rng: random.Random) -> list[int]:
    """Pick a token uniformly and rotate the document to start there: the model must find the true start."""
    if not ids:
        return []
    k = rng.randrange(len(ids))
    return list(ids[k:]) + list(ids[:k])


# ------------------------------------------------------------------------------------------- T5 span corruption
def random_segments(n_items: int, n_segments: int, rng: random.Random) -> list[int]:
    """n_items split into n_segments positive lengths, uniformly over the ways to do so (stars and bars:
    n_segments - 1 distinct cut points among the n_items - 1 gaps)."""
    if not 1 <= n_segments <= n_items:
        raise DanluError(f"cannot split {n_items} items into {n_segments} non-empty segments")
    cuts = sorted(rng.sample(range(1, n_items), n_segments - 1))
    bounds = [0, *cuts, n_items]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def span_corruption(
    ids: Sequence[int],
    sentinel_ids: Sequence[int],
    rng: random.Random,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> tuple[list[int], list[int]]:
    """T5's objective: (input, target). round(n · noise_density) tokens are hidden in
    round(that / mean_span_length) spans (at least one of each), placed as T5 does: the noise and the kept
    tokens are each cut into that many random positive segments, interleaved starting with kept text, so spans
    never touch. Span i becomes sentinel_ids[i] in the input; the target is sentinel_ids[0] span_0
    sentinel_ids[1] span_1 ... sentinel_ids[k] (the last sentinel closes the final span).

    "Thank you for inviting me to your party last week ." -> input "Thank you <X> me to your party <Y> week .",
    target "<X> for inviting <Y> last <Z>" (the paper's Figure 2). Needs k + 1 distinct sentinel ids."""
    _check_p(noise_density, "noise_density")
    if mean_span_length < 1:
        raise DanluError(f"mean_span_length must be >= 1, got {mean_span_length}")
    n = len(ids)
    n_noise = min(max(round(n * noise_density), 1), n - 1) if n >= 2 else 0
    if n_noise == 0:
        return list(ids), []
    n_spans = max(1, round(n_noise / mean_span_length))
    n_spans = min(n_spans, n - n_noise)  # each span needs a kept token before it
    if len(set(sentinel_ids)) < n_spans + 1 or len(sentinel_ids) < n_spans + 1:
        raise DanluError(
            f"span corruption of {n} tokens makes {n_spans} spans and needs {n_spans + 1} distinct sentinel ids, "
            f"got {len(set(sentinel_ids))}; add sentinels to the tokenizer (n_sentinels) or shorten the input"
        )
    noise_lengths = random_segments(n_noise, n_spans, rng)
    kept_lengths = random_segments(n - n_noise, n_spans, rng)
    source: list[int] = []
    target: list[int] = []
    i = 0
    for span, (kept, noise) in enumerate(zip(kept_lengths, noise_lengths)):
        source.extend(ids[i : i + kept])
        source.append(sentinel_ids[span])
        i += kept
        target.append(sentinel_ids[span])
        target.extend(ids[i : i + noise])
        i += noise
    target.append(sentinel_ids[n_spans])
    return source, target


def fill_sentinels(source: Sequence[int], target: Sequence[int], sentinel_ids: Sequence[int]) -> list[int]:
    """Invert `span_corruption`: each sentinel of the input replaced by the span that follows it in the
    target (what a model's output is checked against)."""
    sentinels = set(sentinel_ids)
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for t in target:
        if t in sentinels:
            current = spans.setdefault(t, [])
        elif current is not None:
            current.append(t)
    out: list[int] = []
    for t in source:
        out.extend(spans.get(t, []) if t in sentinels else [t])
    return out
