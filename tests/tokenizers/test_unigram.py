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
