"""Normalizers and decoders read from tokenizer.json behave like Hugging Face's."""

from __future__ import annotations

import json

import pytest
from tok_corpus import random_strings
from tokenizers import decoders, normalizers

from danlu.errors import DanluError
from danlu.tokenizers.decoders import Decoder
from danlu.tokenizers.normalize import Normalizer

NORMALIZERS = [
    normalizers.NFKC(),
    normalizers.NFD(),
    normalizers.Lowercase(),
    normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]),
    normalizers.Strip(left=True, right=False),
    normalizers.Strip(),
    normalizers.Replace(" ", "\u2581"),
    normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]),
    normalizers.BertNormalizer(lowercase=False, strip_accents=True),
]


@pytest.mark.parametrize("hf", NORMALIZERS, ids=lambda n: type(n).__name__)
def test_normalizers_match_hf(hf):
    ours = Normalizer(json.loads(hf.__getstate__()))
    samples = ["  Héllo  Wörld  ", "", "ＡＢＣ ﬁ ① Å", "Ťhê qüíçk ḃrøwñ fox", "中文，日本語、한국어"]
    # StripAccents uses Hugging Face's older Unicode tables for recent marks: real text only.
    if b"StripAccents" not in hf.__getstate__():
        samples += random_strings(200, seed=1)
    for s in samples:
        assert ours(s) == hf.normalize_str(s), repr(s)


DECODERS = [
    decoders.Metaspace(),
    decoders.Metaspace(prepend_scheme="never"),
    decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    ),
]


@pytest.mark.parametrize("hf", DECODERS, ids=lambda d: type(d).__name__)
def test_decoders_match_hf(hf):
    ours = Decoder(json.loads(hf.__getstate__()))
    cases = [
        ["\u2581Hello", "\u2581world", "!"],
        ["\u2581", "\u2581a\u2581b", "c"],
        ["<0xE4>", "<0xBD>", "<0xA0>", "\u2581x"],  # a whole character from bytes
        ["<0xE4>", "<0xBD>", "y"],  # an incomplete one: U+FFFD per byte
        ["<0x41>"],
        [],
    ]
    for tokens in cases:
        assert ours(tokens) == hf.decode(tokens), tokens


def test_unknown_types_raise():
    with pytest.raises(DanluError, match="normalizer type"):
        Normalizer({"type": "Precompiled"})
    with pytest.raises(DanluError, match="decoder type"):
        Decoder({"type": "CTC"})
