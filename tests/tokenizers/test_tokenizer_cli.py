"""`danlu tokenizer train | encode | inspect` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
from tok_corpus import make_corpus

from danlu.cli import main
from danlu.tokenizers.base import Tokenizer


def test_train_encode_inspect(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("\n".join(make_corpus(800, seed=2)), encoding="utf-8")
    with open(tmp_path / "b.jsonl", "w", encoding="utf-8") as f:
        for line in make_corpus(300, seed=3):
            f.write(json.dumps({"text": line}, ensure_ascii=False) + "\n")
    out = tmp_path / "tok"
    inputs = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]  # space-separated, as every list flag
    assert (
        main(["tokenizer", "train", "--input", *inputs, "--vocab-size", "600", "--out", str(out), "--quiet"])
        == 0
    )
    assert "vocab 600" in capsys.readouterr().out
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 600

    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--json", "the city 你好 <|im_end|>"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ids"] == tok.encode("the city 你好 <|im_end|>")
    assert shown["pieces"][-1] == "<|im_end|>" and len(shown["pieces"]) == len(shown["ids"])

    assert main(["tokenizer", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vocab size:  600" in text and "<|im_start|>=1" in text and "eos=<|endoftext|>" in text


def test_cli_errors_exit_2(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello world", encoding="utf-8")
    args = [
        "tokenizer",
        "train",
        "--input",
        str(tmp_path / "a.txt"),
        "--vocab-size",
        "10",
        "--out",
        str(tmp_path / "t"),
    ]
    assert main(args) == 2
    assert "at least 259" in capsys.readouterr().err
    assert main(["tokenizer", "inspect", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    args = [
        "tokenizer",
        "train",
        "--input",
        str(tmp_path / "missing.txt"),
        "--vocab-size",
        "300",
        "--out",
        "x",
    ]
    assert main(args) == 2
    assert "missing.txt" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_train_other_kinds(kind, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("\n".join(make_corpus(400, seed=2)), encoding="utf-8")
    out = tmp_path / kind
    args = [
        "tokenizer",
        "train",
        "--input",
        str(tmp_path / "a.txt"),
        "--vocab-size",
        "400",
        "--out",
        str(out),
    ]
    assert main([*args, "--kind", kind, "--quiet"]) == 0
    tok = Tokenizer.load(out)
    assert tok.kind == kind and tok.vocab_size <= 400
    assert main(["tokenizer", "inspect", str(out)]) == 0
    assert f"kind:        {kind}" in capsys.readouterr().out
