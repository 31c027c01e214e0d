"""The one Sequence walk of tokenizer.json components (danlu/tokenizers/components.py): a Sequence nested in a
Sequence, and an empty one, read as Hugging Face `tokenizers` reads them, for all three kinds."""

from __future__ import annotations

import json

import pytest
from tokenizers import decoders, normalizers, pre_tokenizers

from danlu.errors import DanluError
from danlu.tokenizers.decoders import Decoder
from danlu.tokenizers.normalize import Normalizer
from danlu.tokenizers.pretokenize import PreTokenizer

TEXTS = ["  Héllo  Wörld 42! ", "", "it's 10 o'clock, ok?", "中文123，日本語"]


def test_nested_sequences_match_hf():
    hf_norm = normalizers.Sequence(
        [normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()]), normalizers.Lowercase()]
    )
    hf_pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits()]),
            pre_tokenizers.Sequence([]),
            pre_tokenizers.Punctuation(),
        ]
    )
    norm, pre = (
        Normalizer(json.loads(hf_norm.__getstate__())),
        PreTokenizer(json.loads(hf_pre.__getstate__())),
    )
    for text in TEXTS:
        assert norm(text) == hf_norm.normalize_str(text), text
        assert pre(text) == [p for p, _ in hf_pre.pre_tokenize_str(text)], text
    hf_dec = decoders.Sequence(
        [decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback()]), decoders.Fuse()]
    )
    dec = Decoder(json.loads(hf_dec.__getstate__()))
    for tokens in (["\u2581Hi", "<0x41>", "\u2581there"], ["<0xE4>", "<0xBD>", "<0xA0>"], []):
        assert dec(tokens) == hf_dec.decode(tokens), tokens


def test_the_config_is_kept_and_unknown_types_inside_a_sequence_are_refused():
    config = {
        "type": "Sequence",
        "normalizers": [{"type": "Sequence", "normalizers": [{"type": "Lowercase"}]}],
    }
    assert Normalizer(config).config is config and Normalizer(config)("AbC") == "abc"
    assert not Normalizer(None) and not PreTokenizer({"type": "Sequence", "pretokenizers": []})
    for make, parts, kind in ((Normalizer, "normalizers", "normalizer"), (PreTokenizer, "pretokenizers",
                              "pre_tokenizer"), (Decoder, "decoders", "decoder")):  # fmt: skip
        nested = {"type": "Sequence", parts: [{"type": "Sequence", parts: [{"type": "Nope"}]}]}
        with pytest.raises(DanluError, match=f"unsupported {kind} type 'Nope'"):
            make(nested)
