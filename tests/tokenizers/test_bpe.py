"""Byte-level BPE: round trips, special tokens, the two merge paths, errors, save/load, chat template."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer
from danlu.tokenizers.bpe import BPETokenizer

TRICKY = [
    "",
    " ",
    "\n\n\t  \r\n",
    "Hello, world!",
    "你好，世界！我喜欢吃苹果。",
    "mixed 中文 and English 123 + 456 = 579",
    "emoji 😀👍🏽🇨🇳👨‍👩‍👧 ❤️",
    "control \x00\x01\x1b[31m\x7f\x1c end",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "<|im_start<|im_end|>|>",
    "a" * 500,
    "𠀀𠀁 ² Ⅷ café naïve Straße",
]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_examples(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(list("ab 你好的<|>imstarendof_") + ["<|im_end|>", "😀"]), max_size=40).map(
        "".join
    )
)
def test_round_trip_near_specials(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_special_tokens_are_recognised_and_skippable(bpe):
    ids = bpe.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == bpe.special_tokens["<|im_start|>"] == 1
    assert ids[-1] == bpe.special_tokens["<|im_end|>"] == 2
    assert bpe.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert bpe.eos_token_id == bpe.pad_token_id == 0 and bpe.bos_token_id is None
    assert bpe.token_to_id("<|endoftext|>") == 0 and bpe.id_to_token(1) == "<|im_start|>"
    assert bpe.token_to_id("no such token") is None
    # Only complete special strings count.
    assert bpe.special_tokens["<|im_end|>"] not in bpe.encode("<|im_end|")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcdeh tonsl的是我你好,.😀")), min_size=2, max_size=200))
def test_short_and_long_merge_paths_agree(bpe, word):
    ids = [bpe._byte_ids[b] for b in word.encode()]
    assert bpe._merge_short(list(ids)) == bpe._merge_long(list(ids))


def test_long_word_work_is_linear(bpe):
    # A 90 kB one-word line: the heap merge pops at most (n - 1) initial pairs + 2 per merge done, so the
    # work is O(n log n) with no quadratic rescans, however long the line (a timing-free check).
    for line in ["the" * 30_000, "城市" * 15_000]:
        n = len(line.encode())
        ids = bpe.encode(line)  # the whole path: pre-tokenizer (one word), no caching of long words
        assert bpe.decode(ids) == line and line not in bpe._cache
        merges_done = n - len(ids)
        assert merges_done > n // 2
        assert bpe.last_merge_steps <= (n - 1) + 2 * merges_done


def test_encode_batch_and_cache(bpe, corpus):
    lines = corpus[:200]
    assert bpe.encode_batch(lines) == [bpe.encode(line) for line in lines]
    bpe._cache.clear()
    first = bpe.encode_batch(lines)
    assert bpe._cache and bpe.encode_batch(lines) == first


def test_train_learns_frequent_words(corpus):
    tok = BPETokenizer.train(corpus, 800)
    assert tok.vocab_size == 800
    assert len(tok.encode(" the")) == 1 and len(tok.encode("首都")) == 1
    # ids: specials, then the 256 bytes, then one id per merge
    # (byte order is that of the printable characters: "!" first, "Ń" = byte 0xAD last)
    assert tok.id_to_token(3) == "!" and tok.id_to_token(258) == "Ń" and tok.token_bytes(258) == b"\xad"
    assert len(tok.merges) == 800 - 259


def test_min_frequency_stops_training():
    tok = BPETokenizer.train(["abc abc xyz"], 1000, min_frequency=2)
    # Words "abc", " abc", " xyz": only (a, b) and then (ab, c) occur twice.
    assert [a + b for a, b in tok.merges] == ["ab", "abc"]
    assert tok.vocab_size == 259 + 2


def test_decode_invalid_utf8_uses_replacement_char(bpe):
    ids = bpe.encode("你")
    byte_ids = [bpe._byte_ids[b] for b in "你".encode()]
    assert bpe.decode(byte_ids) == "你"
    assert bpe.decode(byte_ids[:2]) == "\ufffd"  # a truncated 3-byte sequence is one U+FFFD
    assert bpe.decode(byte_ids[:2] + bpe.encode("a")) == "\ufffda"
    assert bpe.decode(ids) == "你"


def test_errors(bpe, tmp_path):
    with pytest.raises(DanluError, match=r"at least 259"):
        BPETokenizer.train(["some text"], 258)
    with pytest.raises(DanluError, match=r"at least 257"):
        BPETokenizer.train(["some text"], 100, special_tokens=["<eos>"])
    with pytest.raises(DanluError, match="empty corpus"):
        BPETokenizer.train([], 300)
    with pytest.raises(DanluError, match="empty corpus"):
        BPETokenizer.train(["", "<|endoftext|>"], 300)
    with pytest.raises(DanluError, match="out of range"):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(DanluError, match="out of range"):
        bpe.decode([-1])
    with pytest.raises(DanluError, match="str"):
        bpe.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(DanluError, match="not in this tokenizer"):
        bpe.id_to_token(10**6)


def test_save_load_round_trip(bpe, corpus, tmp_path):
    bpe.save(tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} == {"tokenizer.json", "tokenizer_config.json"}
    for path in [tmp_path / "tok", tmp_path / "tok" / "tokenizer.json"]:
        loaded = Tokenizer.load(path)
        assert isinstance(loaded, BPETokenizer)
        assert loaded.vocab_size == bpe.vocab_size and loaded.merges == bpe.merges
        assert loaded.encode_batch(corpus[:300]) == bpe.encode_batch(corpus[:300])
        assert loaded.eos_token_id == bpe.eos_token_id
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert (
        config["eos_token"] == config["pad_token"] == "<|endoftext|>"
        and "im_start" in config["chat_template"]
    )


def test_truncated_or_bad_tokenizer_json(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    file = tmp_path / "tok" / "tokenizer.json"
    text = file.read_text()
    file.write_text(text[: len(text) // 2])
    with pytest.raises(DanluError, match=r"tokenizer\.json.*truncated"):
        Tokenizer.load(tmp_path / "tok")
    data = json.loads(text)
    del data["model"]["vocab"]["Ġ"]
    file.write_text(json.dumps(data))
    with pytest.raises(DanluError, match=r"tokenizer\.json"):
        Tokenizer.load(file)
    data["model"] = {"type": "Mystery"}
    file.write_text(json.dumps(data))
    with pytest.raises(DanluError, match="Mystery"):
        Tokenizer.load(file)
    with pytest.raises(DanluError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing")
    with pytest.raises(DanluError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_chat_template_chatml(bpe):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of 中国?"},
        {"role": "assistant", "content": "北京"},
        {"role": "user", "content": ""},
    ]
    text = bpe.apply_chat_template(messages, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of 中国?<|im_end|>\n"
        "<|im_start|>assistant\n北京<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not bpe.apply_chat_template(messages[:1], add_generation_prompt=False).endswith("assistant\n")
    assert bpe.encode(text).count(bpe.special_tokens["<|im_start|>"]) == 5


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "list"),
        ([{"role": "user", "content": "a"}, "oops"], "message 1"),
        ([{"role": 7, "content": "a"}], "message 0 has role 7"),
        ([{"role": "user", "content": "a"}, {"role": "user"}], "no attribute 'content'"),
        ([{"role": "user", "content": 3}], "message 0"),
    ],
)
def test_chat_template_validation(bpe, messages, match):
    with pytest.raises(DanluError, match=match):
        bpe.apply_chat_template(messages)
