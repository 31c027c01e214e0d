"""Unigram: Viterbi encoding checked against Hugging Face `tokenizers` on models it trained, and
danlu's own SentencePiece-style trainer."""

from __future__ import annotations

import json
import math

import pytest
from tok_corpus import make_corpus, random_strings
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer
from danlu.tokenizers.pretokenize import PreTokenizer
from danlu.tokenizers.unigram import UnigramTokenizer
from danlu.tokenizers.unigram_train import digamma


def hf_unigram(corpus: list[str], byte_fallback: bool) -> HFTokenizer:
    hf = HFTokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    if byte_fallback:
        hf.normalizer = normalizers.NFKC()
    trainer = trainers.UnigramTrainer(
        vocab_size=700, special_tokens=["<unk>", "<|endoftext|>"], unk_token="<unk>", show_progress=False
    )
    hf.train_from_iterator(corpus, trainer)
    if byte_fallback:  # add the 256 byte pieces and switch byte_fallback on, as SentencePiece models do
        data = json.loads(hf.to_str())
        data["model"]["byte_fallback"] = True
        data["model"]["vocab"] += [[f"<0x{b:02X}>", -30.0] for b in range(256)]
        data["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, data["decoder"]]}
        hf = HFTokenizer.from_str(json.dumps(data))
    return hf


@pytest.mark.parametrize("byte_fallback", [False, True])
def test_hf_trained_unigram_parity(corpus, tmp_path, byte_fallback):
    hf = hf_unigram(corpus, byte_fallback)
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = Tokenizer.load(tmp_path / "tokenizer.json")
    assert isinstance(ours, UnigramTokenizer) and ours.vocab_size == hf.get_vocab_size()
    lines = make_corpus(800, seed=5) + random_strings(300, seed=2)
    lines += ["<|endoftext|>hello world", "  two  spaces ", "", "unseen ✈ character ✈✈ run"]
    for line in lines:
        ids = ours.encode(line)
        assert ids == hf.encode(line).ids, repr(line)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False), repr(line)
    assert hf.token_to_id("<unk>") in ours.encode("✈✈ x") or byte_fallback


def test_viterbi_and_unknown_fusing():
    pieces = [("<unk>", 0.0), ("▁", -2.0), ("a", -3.0), ("b", -3.0), ("ab", -4.0), ("▁ab", -7.0), ("c", -5.0)]
    tok = UnigramTokenizer(pieces, {"<unk>": 0})
    assert [tok.id_to_token(i) for i in tok.encode("ab")] == ["▁", "ab"]  # -6 beats "▁ab" (-7) and ▁ a b (-8)
    assert tok.encode("a xyz c") == [1, 2, 1, 0, 1, 6]  # "xyz" is one fused unknown
    assert tok.decode(tok.encode("ab c")) == "ab c"


def test_train_round_trip_and_hf_reads_it(corpus, tmp_path):
    tok = UnigramTokenizer.train(corpus[:1500], 600)
    assert tok.vocab_size == 600 and tok.special_tokens["<unk>"] == 0 and tok.eos_token_id == 1
    scores = [s for _, s in tok.pieces[4:]]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    assert len(tok.encode(" the teacher")) == 2  # frequent words are single pieces
    for line in corpus[:200]:
        assert tok.decode(tok.encode(line)) == line
    tok.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.load(tmp_path)
    for line in make_corpus(300, seed=4):
        assert hf.encode(line).ids == tok.encode(line) == loaded.encode(line)


def test_digamma():
    # psi(1) = -gamma, psi(x + 1) = psi(x) + 1/x
    assert math.isclose(digamma(1.0), -0.5772156649015329, rel_tol=1e-10)
    assert math.isclose(digamma(10.5), digamma(9.5) + 1 / 9.5, rel_tol=1e-12)


def test_errors():
    with pytest.raises(DanluError, match="below the alphabet"):
        UnigramTokenizer.train(["abcdefghij"], 8)
    with pytest.raises(DanluError, match="empty corpus"):
        UnigramTokenizer.train([""], 100)
    with pytest.raises(DanluError, match="unk_id"):
        UnigramTokenizer([("a", -1.0)], {}, unk_id=5)


@pytest.mark.parametrize(
    ("lines", "vocab_size"),
    [
        (make_corpus(1200, seed=7), 500),  # English-like words
        (random_strings(60, seed=3) + ["日本語の文章です。", "中文句子没有空格也能训练"] * 5, 700),
        (["aaaa aaab abab", "ab ab ab ba", "x"] * 3, 12),  # ties everywhere
    ],
)
def test_vectorised_trainer_matches_scalar_reference(lines, vocab_size):
    """The numpy trainer (one pass over all words per step) picks the same pieces with the same scores
    as the plain scalar loops it replaced (tests/tokenizers/unigram_scalar.py)."""
    from unigram_scalar import train_unigram as scalar_train

    from danlu.tokenizers.pretokenize import PreTokenizer
    from danlu.tokenizers.unigram import METASPACE
    from danlu.tokenizers.unigram_train import train_unigram

    specials = ["<unk>", "<|endoftext|>"]
    fast = train_unigram(lines, PreTokenizer(METASPACE), vocab_size, specials)
    slow = scalar_train(lines, PreTokenizer(METASPACE), vocab_size, specials)
    assert fast[:2] == slow[:2] and len(fast) == len(slow)
    fast_scores, slow_scores = dict(fast), dict(slow)
    assert fast_scores.keys() == slow_scores.keys()  # the same pieces ...
    for piece, score in slow_scores.items():  # ... with the same scores, up to summation order
        assert math.isclose(fast_scores[piece], score, rel_tol=1e-9, abs_tol=1e-12), piece
    # ranked alike: pieces whose scores differ by more than rounding come in the same order
    assert [p for p, _ in sorted(fast[2:], key=lambda x: (-round(x[1], 9), x[0]))] == [
        p for p, _ in sorted(slow[2:], key=lambda x: (-round(x[1], 9), x[0]))
    ]


def test_training_progress_names_each_step(corpus, capsys):
    UnigramTokenizer.train(corpus[:300], 300, show_progress=True)
    err = capsys.readouterr().err
    assert "Unigram EM" in err and "step=EM" in err and "step=prune" in err and "pieces=" in err
    assert "round" not in err and "step/s" in err


def test_encoder_and_trainer_share_one_viterbi(monkeypatch, corpus):
    """One home for the Viterbi recursion (issue 16): the encoder's segmentation and the trainer's pruning
    both run unigram_lattice._best_edges, and encoding a batch gives the same ids as one text at a time."""
    from danlu.tokenizers import unigram_lattice

    calls = []
    real = unigram_lattice._best_edges

    def counting(*args):
        calls.append(len(args[0].src))
        return real(*args)

    monkeypatch.setattr(unigram_lattice, "_best_edges", counting)
    tok = UnigramTokenizer.train(corpus[:300], 300)
    assert calls, "the trainer's pruning did not run the shared Viterbi"
    calls.clear()
    lines = corpus[300:340] + ["", "✈✈ unseen", "<|endoftext|>ab"]
    batch = tok.encode_batch(lines)
    assert len(calls) == 1  # the batch's new words: one lattice
    tok._cache.clear()
    assert [tok.encode(line) for line in lines] == batch
    assert len(calls) > 1


def test_ties_and_bad_scores():
    # "ab"+"c" and "a"+"bc" tie at -4: the path from the leftmost start into the last position wins, as in
    # Hugging Face tokenizers (a left-to-right scan keeping only strictly better scores)
    pieces = [("<unk>", 0.0), ("a", -2.0), ("b", -2.0), ("c", -2.0), ("ab", -2.0), ("bc", -2.0)]
    tok = UnigramTokenizer(pieces, {"<unk>": 0}, pre_tokenizer=PreTokenizer(None))
    assert tok.viterbi("abc") == [(1, 0, 1), (5, 1, 3)]
    hf = HFTokenizer(models.Unigram([(p, s) for p, s in pieces], unk_id=0))
    assert tok.encode("abc") == hf.encode("abc").ids
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(DanluError, match="finite log-probabilities"):
            UnigramTokenizer([("<unk>", 0.0), ("a", bad)], {"<unk>": 0})
    with pytest.raises(DanluError, match="expects a str"):
        tok.encode_batch(["abc", None])
