"""Bad input, for every tokenizer kind: each is a clear DanluError or a documented behaviour."""

from __future__ import annotations

import json

import pytest

from danlu.cli import main
from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer
from danlu.tokenizers.bpe import BPETokenizer
from danlu.tokenizers.unigram import UnigramTokenizer
from danlu.tokenizers.wordpiece import WordPieceTokenizer

KINDS = {"bpe": BPETokenizer, "wordpiece": WordPieceTokenizer, "unigram": UnigramTokenizer}


@pytest.fixture(scope="module")
def tokenizers(corpus) -> dict[str, Tokenizer]:
    return {kind: cls.train(corpus[:800], 500) for kind, cls in KINDS.items()}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_empty_text_and_ids(tokenizers, kind):
    tok = tokenizers[kind]
    assert tok.encode("") == [] and tok.decode([]) == "" and tok.encode_batch([]) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_non_text_input_and_bad_ids(tokenizers, kind):
    tok = tokenizers[kind]
    with pytest.raises(DanluError, match="expects a str"):
        tok.encode(b"caf\xc3\xa9 \xff")  # bytes (maybe invalid UTF-8) are not text: decode them first
    with pytest.raises(DanluError, match="out of range"):
        tok.decode([0, tok.vocab_size + 5])
    with pytest.raises(DanluError, match="integer token ids"):
        tok.decode(["seven"])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unknown_special_looking_strings_are_plain_text(tokenizers, kind):
    tok = tokenizers[kind]
    ids = tok.encode("<|not_a_special|> hi")
    # (characters never seen in training may become the unknown token, which is not a role token)
    assert not set(ids) & (set(tok.special_tokens.values()) - {tok.unk_token_id})
    if kind == "bpe":  # byte-level: everything round-trips
        assert tok.decode(ids) == "<|not_a_special|> hi"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_vocab_below_alphabet(kind):
    with pytest.raises(DanluError, match="vocab.size|below the alphabet"):
        KINDS[kind].train(["abcdefghijklmnopqrstuvwxyz 你好世界"], 20)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_truncated_tokenizer_json(tokenizers, kind, tmp_path):
    tokenizers[kind].save(tmp_path)
    file = tmp_path / "tokenizer.json"
    file.write_text(file.read_text()[:-200])
    with pytest.raises(DanluError, match=str(file).replace("\\", "\\\\") + ".*truncated"):
        Tokenizer.load(tmp_path)


def test_roles_must_exist_and_files_must_be_objects(tmp_path):
    vocab = {"a": 0, "b": 1}
    with pytest.raises(DanluError, match="eos token '<eos>'"):
        UnigramTokenizer([("<unk>", 0.0), ("a", -1.0)], {"<unk>": 0}, eos_token="<eos>")
    (tmp_path / "tokenizer.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DanluError, match="JSON object"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": vocab}}))
    with pytest.raises(DanluError, match="unknown token"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DanluError, match="not UTF-8"):
        Tokenizer.load(tmp_path)


def test_cli_reports_bad_corpus(tmp_path, capsys):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe bad")
    (tmp_path / "empty.txt").write_bytes(b"")
    for name in ("bad.txt", "empty.txt"):
        args = [
            "tokenizer",
            "train",
            "--input",
            str(tmp_path / name),
            "--vocab-size",
            "300",
            "--out",
            str(tmp_path / "o"),
        ]
        assert main(args) == 2
        assert name in capsys.readouterr().err
