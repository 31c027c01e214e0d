"""T5's span corruption, tested on its defining properties (Raffel et al. 2020, §3.1.4)."""

import random
import statistics

import pytest

from danlu.errors import DanluError
from danlu.train.objectives import fill_sentinels, random_segments, span_corruption

SENTINELS = list(range(10_000, 10_800))  # ids no ordinary token uses


def _spans(source, target):
    """The hidden spans' lengths, read from the target (between consecutive sentinels)."""
    lengths, current = [], None
    for t in target:
        if t in SENTINELS:
            if current is not None:
                lengths.append(current)
            current = 0
        else:
            current += 1
    return lengths


def test_rate_and_mean_span_length_on_a_long_input():
    ids = list(range(4000))
    source, target = span_corruption(ids, SENTINELS, random.Random(0))
    lengths = _spans(source, target)
    assert sum(lengths) / len(ids) == pytest.approx(0.15, abs=0.005)  # 15% of the tokens hidden
    assert statistics.mean(lengths) == pytest.approx(3.0, abs=0.05)  # in spans of mean length 3
    assert statistics.pstdev(lengths) > 1.0 and min(lengths) >= 1  # random lengths, not all 3
    n_spans = len(lengths)
    assert target.count(SENTINELS[n_spans]) == 1  # the closing sentinel
    # each span is one sentinel in the input, in order, and nothing else of the input changes
    assert [t for t in source if t in SENTINELS] == SENTINELS[:n_spans]
    assert len(source) == len(ids) - sum(lengths) + n_spans
    assert len(target) == sum(lengths) + n_spans + 1
    # spans never touch: two sentinels are never neighbours in the input
    assert all(not (a in SENTINELS and b in SENTINELS) for a, b in zip(source, source[1:]))


def test_filling_the_sentinels_back_gives_the_input():
    rng = random.Random(3)
    for n in (2, 3, 7, 20, 101, 500):
        ids = [rng.randrange(1000) for _ in range(n)]
        source, target = span_corruption(ids, SENTINELS, rng)
        assert source != ids and target[0] == SENTINELS[0]
        assert fill_sentinels(source, target, SENTINELS) == ids


def test_short_input_counts():
    # 11 tokens at density 0.2, mean span 1.5: round(2.2) = 2 tokens hidden in round(2 / 1.5) = 1 span
    ids = list(range(11))
    source, target = span_corruption(
        ids, SENTINELS, random.Random(0), noise_density=0.2, mean_span_length=1.5
    )
    assert _spans(source, target) == [2]
    assert len(source) == 10 and target[0] == SENTINELS[0] and target[-1] == SENTINELS[1] and len(target) == 4
    assert fill_sentinels(source, target, SENTINELS) == ids


def test_deterministic_by_seed():
    ids = list(range(300))
    a = span_corruption(ids, SENTINELS, random.Random(7))
    assert a == span_corruption(ids, SENTINELS, random.Random(7))
    assert a != span_corruption(ids, SENTINELS, random.Random(8))


def test_too_few_sentinels_and_bad_settings_are_clear_errors():
    with pytest.raises(DanluError, match="sentinel ids"):
        span_corruption(list(range(400)), SENTINELS[:5], random.Random(0))
    with pytest.raises(DanluError, match="noise_density"):
        span_corruption([1, 2, 3], SENTINELS, random.Random(0), noise_density=1.5)
    with pytest.raises(DanluError, match="mean_span_length"):
        span_corruption([1, 2, 3], SENTINELS, random.Random(0), mean_span_length=0.5)
    assert span_corruption([5], SENTINELS, random.Random(0)) == ([5], [])  # nothing to hide in one token


def test_random_segments_are_positive_and_sum():
    rng = random.Random(0)
    for _ in range(50):
        parts = random_segments(30, 7, rng)
        assert len(parts) == 7 and sum(parts) == 30 and min(parts) >= 1
    with pytest.raises(DanluError):
        random_segments(3, 4, rng)


# ------------------------------------------------------------------------------------------- the seq2seq recipe
TEXTS = ["Zovelan is a city in Ropa. It lies by the Deva River.", "佐维兰是一座城市。", "3 + 4 = 7"] * 5


def test_tokenizer_sentinels_follow_the_four_specials():
    from danlu.recipes.seq2seq import check_tokenizer, sentinel_ids, train_tokenizer

    plain = train_tokenizer(TEXTS, vocab_size=300)
    tok = train_tokenizer(TEXTS, vocab_size=300, n_sentinels=8)
    assert check_tokenizer(tok) == check_tokenizer(plain) == {"<pad>": 0, "<s>": 1, "</s>": 2, "<mask>": 3}
    assert sentinel_ids(tok) == list(range(4, 12)) and sentinel_ids(plain) == []
    ids = tok.encode("Zovelan is a city.")
    assert not set(ids) & set(sentinel_ids(tok))  # ordinary text never produces a sentinel
    assert tok.decode(ids[:2] + [4] + ids[2:], skip_special_tokens=True) == tok.decode(ids)


def test_t5_noise_keeps_the_end_of_sequence_on_both_sides():
    from danlu.recipes.seq2seq import t5_noise

    sentinels = list(range(4, 12))
    ids = list(range(100, 140)) + [2]  # 40 tokens and </s>
    source, target = t5_noise(sentinels)(ids, random.Random(0))
    assert source[-1] == target[-1] == 2 and 2 not in source[:-1] + target[:-1]
    assert fill_sentinels(source[:-1], target[:-1], sentinels) == ids[:-1]


def test_t5_pretraining_needs_sentinels(tmp_path):
    from danlu.recipes.seq2seq import denoise_pretrain, new_model, train_tokenizer
    from danlu.train.loop import TrainConfig

    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = new_model(tok, n_layer=1, n_embd=32, n_head=2, block_size=32)
    cfg = TrainConfig(max_steps=1, batch_size=2, block_size=32, device="cpu", show_progress=False)
    with pytest.raises(DanluError, match="sentinel tokens"):
        denoise_pretrain(model, tok, TEXTS, tmp_path, cfg, objective="t5")
    with pytest.raises(DanluError, match="unknown denoising objective"):
        denoise_pretrain(model, tok, TEXTS, tmp_path, cfg, objective="ul2")
