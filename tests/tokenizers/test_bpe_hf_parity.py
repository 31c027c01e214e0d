"""Parity with Hugging Face `tokenizers`: the same merges from the same corpus, the same ids and text from
our saved tokenizer.json, and `transformers` renders our chat template identically."""

from __future__ import annotations

import json
import random

import pytest
from tok_corpus import make_corpus, random_strings
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from danlu.tokenizers.base import DEFAULT_SPECIALS
from danlu.tokenizers.bpe import BPETokenizer
from danlu.tokenizers.pretokenize import DEFAULT_PATTERN


def hf_train(texts: list[str], vocab_size: int, min_frequency: int = 2) -> HFTokenizer:
    """HF's BpeTrainer with danlu's pre-tokenizer layout (Split with our regex, then ByteLevel)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(DEFAULT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=DEFAULT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def parity_lines() -> list[str]:
    lines = make_corpus(400, seed=7) + random_strings(200, seed=3)
    lines += [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好！<|im_end|>\n<|endoftext|>",
        "   leading and trailing   ",
        "tabs\tand\nnewlines\r\n\n\nruns      of spaces",
        "numbers 3.14159 1,000,000 ２０２４ Ⅻ ½",
        "emoji 😀👍🏽🇨🇳👨‍👩‍👧 ❤️ and symbols ©®™ → ∑",
        "",
    ]
    return lines


@pytest.fixture(scope="module")
def world_texts() -> list[str]:
    from danlu.data.world import build_world

    return build_world(seed=0, size="tiny").pretrain_texts("train")


@pytest.mark.parametrize("source", ["mixed", "world"])
def test_same_merges_and_ids_as_hf_trainer(source, corpus, world_texts, tmp_path):
    texts = corpus if source == "mixed" else world_texts
    vocab_size = 1500 if source == "mixed" else 1200
    ours = BPETokenizer.train(texts, vocab_size)
    hf = hf_train(texts, vocab_size)
    model = json.loads(hf.to_str())["model"]
    assert [tuple(m) for m in model["merges"]] == ours.merges
    assert model["vocab"] == ours._vocab
    assert len(ours.merges) > 600  # a real run, not an early stop
    if source == "world":  # world texts are documents: compare their lines
        lines = [line for text in texts for line in text.split("\n")][:3000]
    else:
        lines = make_corpus(2000, seed=11)
    assert [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)] == ours.encode_batch(lines)


def test_hf_reads_our_tokenizer_json(bpe, tmp_path):
    bpe.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    lines = parity_lines()
    assert len(lines) >= 600
    for line in lines:
        ours = bpe.encode(line)
        assert hf.encode(line, add_special_tokens=False).ids == ours, repr(line)
        assert hf.encode(line).ids == bpe.encode(line, add_special_tokens=True)
        assert hf.decode(ours, skip_special_tokens=False) == bpe.decode(ours) == line
    assert hf.get_vocab_size() == bpe.vocab_size


def test_decode_of_arbitrary_ids_matches_hf(bpe, tmp_path):
    # Random id sequences include split multi-byte characters: both must replace them the same way.
    bpe.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(bpe.vocab_size) for _ in range(rng.randint(0, 12))]
        assert bpe.decode(ids) == hf.decode(ids, skip_special_tokens=False)
        assert bpe.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_transformers_loads_our_folder(bpe, tmp_path):
    from transformers import AutoTokenizer

    bpe.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.eos_token_id == bpe.eos_token_id and hf.pad_token_id == bpe.pad_token_id
    conversations = [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "You answer in Chinese."},
            {"role": "user", "content": "What is the capital?"},
            {"role": "assistant", "content": "首都是北京。"},
            {"role": "user", "content": "谢谢 😀"},
        ],
    ]
    for messages in conversations:
        for gen in (True, False):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert bpe.apply_chat_template(messages, add_generation_prompt=gen) == expected
            assert hf.encode(expected, add_special_tokens=False) == bpe.encode(expected)
