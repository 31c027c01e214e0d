"""Pre-tokenization: the GPT-2 byte map and our Python translation of Oniguruma patterns, checked
against Hugging Face tokenizers' own Split pre-tokenizer."""

from __future__ import annotations

import pytest
from tok_corpus import random_strings
from tokenizers import Regex, pre_tokenizers

from danlu.errors import DanluError
from danlu.tokenizers.pretokenize import (
    BYTE_TO_CHAR,
    CHAR_TO_BYTE,
    DEFAULT_PATTERN,
    GPT2_PATTERN,
    PreTokenizer,
    compile_pattern,
    pretokenize,
    split_with_behavior,
)


def test_byte_map_is_a_printable_bijection():
    assert len(BYTE_TO_CHAR) == 256 and len(set(BYTE_TO_CHAR.values())) == 256
    assert all(not c.isspace() and c.isprintable() for c in BYTE_TO_CHAR.values())
    assert BYTE_TO_CHAR[ord(" ")] == "Ġ" and BYTE_TO_CHAR[ord("\n")] == "Ċ" and BYTE_TO_CHAR[ord("a")] == "a"
    assert all(CHAR_TO_BYTE[c] == b for b, c in BYTE_TO_CHAR.items())


@pytest.mark.parametrize("pattern", [DEFAULT_PATTERN, GPT2_PATTERN, r"\p{Lu}\p{Ll}*|\S|\s", r"\w+|[^\w\s]+"])
def test_pattern_matches_hf_split_exactly(pattern):
    hf = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    samples = random_strings(1500) + ["Hello world, it's 2024!  GPT模型很好。 x²Ⅷ١٢ a\x1c\x1fb\u0301 😀👍🏽"]
    for s in samples:
        assert pretokenize(s, pattern) == [p for p, _ in hf.pre_tokenize_str(s)], repr(s)


def test_default_pattern_splits_han_from_latin_and_digits():
    assert pretokenize("GPT模型 is 很好, 1234!") == [
        "GPT",
        "模型",
        " is",
        " 很好",
        ",",
        " ",
        "1",
        "2",
        "3",
        "4",
        "!",
    ]
    assert pretokenize("I'll see you  tomorrow\n") == ["I", "'ll", " see", " you", " ", " tomorrow", "\n"]


@pytest.mark.parametrize(
    "behavior", ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]
)
@pytest.mark.parametrize("invert", [False, True])
def test_split_behaviors_match_hf(behavior, invert):
    hf = pre_tokenizers.Split(Regex(r"[,.]|\s"), behavior=behavior, invert=invert)
    regex = compile_pattern(r"[,.]|\s")
    for s in ["a,b.c", ",,a  b,", "", "abc", ". . .x", "x,,,y.", " lead and trail "]:
        ours = split_with_behavior(regex, s, behavior.replace("_", ""), invert)
        assert ours == [p for p, _ in hf.pre_tokenize_str(s)], (s, behavior, invert)


def test_pre_tokenizer_pipeline_matches_hf():
    config = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    ours = PreTokenizer(config)
    hf = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    to_bytes = {c: b for c, b in CHAR_TO_BYTE.items()}
    for s in ["abc 123 def45", "  x 9 ", "你好123世界", "it's 10 o'clock"]:
        expected = [bytes(to_bytes[c] for c in p).decode() for p, _ in hf.pre_tokenize_str(s)]
        assert ours(s) == expected


def test_bad_patterns_raise_danlu_error():
    with pytest.raises(DanluError, match="Unicode property"):
        compile_pattern(r"\p{Nonsense}+")
    with pytest.raises(DanluError, match="cannot compile"):
        compile_pattern(r"(unclosed")
    with pytest.raises(DanluError, match="pre_tokenizer type"):
        PreTokenizer({"type": "NoSuchThing"})


def test_default_pattern_keeps_a_han_script_run_whole():
    """\\p{Han} is the Han script, not a list of ideograph blocks: the iteration mark 々 and the ideographic
    zero 〇 stay in their word, here and in Hugging Face's reading of the same pattern."""
    hf = pre_tokenizers.Split(Regex(DEFAULT_PATTERN), behavior="isolated")
    text = "GPT人々〇 and 2人"
    assert (
        pretokenize(text)
        == [p for p, _ in hf.pre_tokenize_str(text)]
        == ["GPT", "人々〇", " and", " ", "2", "人"]
    )
