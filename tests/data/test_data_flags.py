"""`danlu data clean` / `danlu data prepare` flags come from CleanOptions' / PrepareOptions' fields (the one
flag generator, `danlu.flags`; docs/DUPLICATES.md). Pins what the hand-written flags did: the same names and
defaults, and every value reaching its options field."""

from __future__ import annotations

import argparse
import dataclasses

from danlu.cli.data import register_data
from danlu.data import clean as clean_module
from danlu.data import prepare as prepare_module
from danlu.data.clean import CleanOptions
from danlu.data.prepare import PrepareOptions
from danlu.flags import Parser


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="danlu")
    register_data(p.add_subparsers(dest="command"))
    return p


def _actions(p: argparse.ArgumentParser, command: str) -> dict[str, argparse.Action]:
    data = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    sub = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s: a for a in sub._actions for s in a.option_strings}


def test_clean_flags_are_the_options_fields() -> None:
    actions = _actions(_parser(), "clean")
    d = CleanOptions()
    for f in dataclasses.fields(CleanOptions):
        flag = "--" + f.name.replace("_", "-")
        want = list(d.languages) if f.name == "languages" else getattr(d, f.name)
        assert actions[flag].dest == f.name and actions[flag].default == want and actions[flag].help, flag
    # the old spellings still parse: --no-exact-dedup / --no-near-dedup
    assert {"--no-exact-dedup", "--no-near-dedup"} <= set(actions)
    assert actions["--normalize"].choices == ("NFKC", "NFC", "none")


def test_clean_values_reach_the_options(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_clean(inputs, out, opts, tokenizer):
        seen["opts"] = opts
        (tmp_path / "report.md").write_text("# report\n", encoding="utf-8")
        return {"documents": 0}

    monkeypatch.setattr(clean_module, "clean", fake_clean)
    args = _parser().parse_args(
        ["data", "clean", "--input", "x", "--out", str(tmp_path), "--normalize", "NFC", "--min-chars", "3",
         "--max-chars", "90", "--max-repetition", "0.5", "--max-symbols", "0.25", "--languages", "en", "zh",
         "--no-exact-dedup", "--no-near-dedup", "--near-threshold", "0.7", "--num-perm", "64",
         "--field", "body", "--txt-docs", "blank"]
    )  # fmt: skip
    assert clean_module.run_clean_command(args) == 0
    assert seen["opts"] == CleanOptions(
        normalize="NFC", min_chars=3, max_chars=90, max_repetition=0.5, max_symbols=0.25, languages=("en", "zh"),
        exact_dedup=False, near_dedup=False, near_threshold=0.7, num_perm=64, field="body", txt_docs="blank",
    )  # fmt: skip
    args = _parser().parse_args(["data", "clean", "--input", "x", "--out", str(tmp_path)])
    clean_module.run_clean_command(args)
    assert seen["opts"] == CleanOptions()


def test_prepare_flags_and_values(monkeypatch) -> None:
    actions = _actions(_parser(), "prepare")
    d = PrepareOptions()
    for f in dataclasses.fields(PrepareOptions):
        if f.name != "show_progress":  # that one is --quiet
            flag = "--" + f.name.replace("_", "-")
            assert actions[flag].dest == f.name and actions[flag].default == getattr(d, f.name), flag
    assert "--show-progress" not in actions and "--quiet" in actions
    seen = {}

    def fake_prepare(inputs, tokenizer, out, opts, overwrite=False):
        seen["opts"] = opts
        raise SystemExit(0)

    monkeypatch.setattr(prepare_module, "prepare", fake_prepare)
    monkeypatch.setattr("danlu.tokenizers.base.Tokenizer.load", staticmethod(lambda path: None))
    args = _parser().parse_args(
        ["data", "prepare", "--input", "x", "--tokenizer", "t", "--out", "o", "--field", "body", "--txt-docs",
         "blank", "--val-fraction", "0.1", "--shard-tokens", "99", "--dtype", "uint32", "--workers", "2", "--quiet"]
    )  # fmt: skip
    try:
        args.func(args)
    except SystemExit:
        pass
    assert seen["opts"] == PrepareOptions(
        field="body", txt_docs="blank", val_fraction=0.1, shard_tokens=99, dtype="uint32", workers=2,
        show_progress=False,
    )  # fmt: skip
