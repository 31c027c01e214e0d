"""PresetConfig: the one from_name / to_dict / from_dict the GPT, BERT and seq2seq configs share (docs/DUPLICATES.md).

Pins what each of the three wrote for itself before: its own presets, its own words in the errors, a lossless
round trip through a dict, and a nested default (GPT's optional dicts) copied rather than shared."""

from __future__ import annotations

import dataclasses

import pytest

from danlu.errors import DanluError
from danlu.models import bert, gpt, seq2seq

CASES = [
    (gpt.GPTConfig, gpt, "model", "GPT config"),
    (bert.BertConfig, bert, "BERT", "BERT config"),
    (seq2seq.Seq2SeqConfig, seq2seq, "seq2seq", "seq2seq config"),
]


@pytest.mark.parametrize(("cls", "module", "kind", "what"), CASES)
def test_presets_are_the_defining_modules(cls, module, kind, what) -> None:
    assert cls.presets() is module.PRESETS
    for name, fields in module.PRESETS.items():
        cfg = cls.from_name(name)
        assert all(getattr(cfg, k) == v for k, v in fields.items()), name
    first = next(iter(module.PRESETS))
    assert cls.from_name(first, dropout=0.25).dropout == 0.25  # overrides win over the preset


@pytest.mark.parametrize(("cls", "module", "kind", "what"), CASES)
def test_errors_name_the_family(cls, module, kind, what) -> None:
    with pytest.raises(DanluError, match=rf"^unknown {kind} preset 'nope'; choose one of \[") as e:
        cls.from_name("nope")
    assert str(sorted(module.PRESETS)) in str(e.value)
    with pytest.raises(DanluError, match=rf"^{what} has unknown fields \['bogus'\]"):
        cls.from_dict({"bogus": 1})
    with pytest.raises(DanluError, match=rf"^the {what} should be a JSON object"):
        cls.from_dict([1, 2])


@pytest.mark.parametrize(("cls", "module", "kind", "what"), CASES)
def test_dict_round_trip(cls, module, kind, what) -> None:
    for name in module.PRESETS:
        cfg = cls.from_name(name)
        d = cfg.to_dict()
        assert d == dataclasses.asdict(cfg) and type(d) is dict
        assert cls.from_dict(d) == cfg
    assert not any(f.name in ("preset_kind", "config_name") for f in dataclasses.fields(cls))


def test_to_dict_copies_nested_values() -> None:
    cfg = gpt.GPTConfig.from_name("gemma2-tiny")
    d = cfg.to_dict()
    d["layer_types"].append("full")
    assert cfg.layer_types == ["sliding", "full"] * 2


@pytest.mark.parametrize(("cls", "module", "kind", "what"), CASES)
@pytest.mark.parametrize("name", ["vocab_size", "n_layer", "n_head", "n_embd"])
def test_a_size_below_one_is_refused_with_its_range(cls, module, kind, what, name) -> None:
    # one check for every config (config_checks.RANGES), where each config had its own "must be positive" list
    with pytest.raises(DanluError, match=rf"^bad {what}: {name} must be in \[1, \d+\], got 0"):
        cls.from_name(next(iter(module.PRESETS)), **{name: 0})
