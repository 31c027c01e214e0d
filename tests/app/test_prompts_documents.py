"""Prompt templates check their variables; splitters keep chunks within size, overlapping, covering the text;
loaders read text and markdown folders."""

import random
from collections import Counter

import pytest

from danlu.app.loaders import Document, load_folder, world_fact_documents
from danlu.app.prompts import ChatTemplate, FewShotTemplate, PromptTemplate
from danlu.app.splitters import split_documents, split_recursive, split_tokens
from danlu.errors import DanluError


def test_prompt_template_checks_variables():
    t = PromptTemplate("Question: {question}\nContext: {context}\nAnswer in {{braces}}:")
    assert t.input_variables == ["question", "context"]
    assert (
        t.partial(context="none").format(question="Why?")
        == "Question: Why?\nContext: none\nAnswer in {braces}:"
    )
    with pytest.raises(DanluError, match=r"needs \['context'\]"):
        t.format(question="Why?")
    with pytest.raises(DanluError, match="has no variables"):
        t.format(question="a", context="b", extra="c")
    with pytest.raises(DanluError, match="not a plain variable"):
        PromptTemplate("{a.b}")


def test_few_shot_and_chat_templates():
    shots = FewShotTemplate(
        examples=[{"q": "1 + 1", "a": "2"}, {"q": "2 + 3", "a": "5"}],
        example=PromptTemplate("Q: {q}\nA: {a}"),
        suffix=PromptTemplate("Q: {q}\nA:"),
        prefix="Answer with a number.",
    )
    assert (
        shots.format(q="4 + 4") == "Answer with a number.\n\nQ: 1 + 1\nA: 2\n\nQ: 2 + 3\nA: 5\n\nQ: 4 + 4\nA:"
    )
    with pytest.raises(DanluError, match="example 0 lacks"):
        FewShotTemplate([{"q": "x"}], PromptTemplate("{q} {a}"), PromptTemplate("{q}"))
    chat = ChatTemplate([("system", "You are {persona}."), ("user", "{question}")])
    assert chat.format_messages(persona="terse", question="Hi?") == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi?"},
    ]
    with pytest.raises(DanluError, match="missing"):
        chat.format_messages(persona="terse")
    with pytest.raises(DanluError, match="role"):
        ChatTemplate([("wizard", "x")])


@pytest.mark.parametrize("seed", range(20))
def test_recursive_splitter_properties(seed):
    rng = random.Random(seed)
    words = [
        "Zovelan",
        "is",
        "a",
        "city.",
        "佐维兰是一座城市。",
        "\n",
        "\n\n",
        "supercalifragilisticexpialidocious",
        "x",
    ]
    text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 300)))
    size, overlap = rng.randint(10, 120), 0
    overlap = rng.randint(0, size - 1)
    chunks = split_recursive(text, size, overlap)
    assert all(0 < len(c) <= size for c in chunks)
    assert all(c in text for c in chunks)
    # Nothing is lost: every non-space character of the text is in the chunks at least as often.
    need, have = Counter("".join(text.split())), Counter("".join("".join(c.split()) for c in chunks))
    assert all(have[ch] >= n for ch, n in need.items())
    if overlap == 0:
        assert have == need  # and without overlap nothing is repeated


def test_recursive_splitter_prefers_paragraphs_and_overlaps():
    text = "First paragraph here.\n\nSecond paragraph is here.\n\nThird one."
    assert split_recursive(text, 30, 0) == [
        "First paragraph here.",
        "Second paragraph is here.",
        "Third one.",
    ]
    words = " ".join(f"w{i}" for i in range(40))
    chunks = split_recursive(words, 30, 10)
    for a, b in zip(chunks, chunks[1:]):
        assert a.split()[-1] in b.split()  # the next chunk starts with the tail of the previous one
    with pytest.raises(DanluError, match="chunk_overlap"):
        split_recursive("x", 10, 10)


def test_token_splitter(local_model):
    _, tokenizer = local_model
    text = "Zovelan is a city in Ropa. " * 20
    chunks = split_tokens(text, tokenizer, chunk_size=16, chunk_overlap=4)
    ids = [tokenizer.encode(c) for c in chunks]
    assert all(len(x) <= 16 for x in ids)
    assert (
        "".join(
            tokenizer.decode(tokenizer.encode(text)[i : i + 12])
            for i in range(0, len(tokenizer.encode(text)), 12)
        )
        == text
    )
    assert chunks[0] == tokenizer.decode(tokenizer.encode(text)[:16])
    assert chunks[1] == tokenizer.decode(tokenizer.encode(text)[12:28])


def test_loaders_and_split_documents(tmp_path, world):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Zovelan\n\nZovelan is a country.\n", encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text("Deva is a city. " * 10, encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    docs = load_folder(tmp_path)
    assert [d.metadata["source"] for d in docs] == [str(tmp_path / "a.md"), str(tmp_path / "sub" / "b.txt")]
    assert docs[0].metadata["title"] == "Zovelan"
    chunks = split_documents(docs, lambda t: split_recursive(t, 60, 20))
    for c in chunks:
        source = next(d for d in docs if d.metadata["source"] == c.metadata["source"])
        assert source.text[c.metadata["start"] :].startswith(c.text)
    with pytest.raises(DanluError, match="no files"):
        load_folder(tmp_path / "sub", suffixes=(".md",))
    facts = world_fact_documents(world)
    assert len(facts) == 2 * len(world.fact_records()) and isinstance(facts[0], Document)
