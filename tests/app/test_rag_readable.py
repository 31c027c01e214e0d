"""RAG as a reader meets it: chunks made of whole sentences (English and Chinese, hard-wrapped as files are), and
scores that mean something (the cosine similarity of query and chunk, or a rank), never the raw ~0.03 values of
reciprocal rank fusion."""

import argparse
import json
import re

from danlu.app.embeddings import HashingEmbeddings
from danlu.app.loaders import Document
from danlu.app.retrieval import BM25Index, BM25Retriever, hybrid_retriever
from danlu.app.splitters import split_documents, split_recursive
from danlu.app.stores import Hit, VectorStore
from danlu.cli.app import register

EN = [
    "Zovelan is a small city on the northern coast of Ropa.",
    "Its harbour was built by fishermen three hundred years ago!",
    "Does anyone still fish there?",
    'The mayor said: "Only on Sundays."',
    "Most people now work in the 3.5 km long shipyard.",
    "Bonalen, the capital, lies two days to the south.",
    "Trains run between the two cities every hour.",
]
ZH = [
    "佐维兰是罗帕北部海岸的一座小城。",
    "港口是三百年前渔民建造的！",
    "现在还有人在那里打鱼吗？",
    "市长说：“只在星期天。”",
    "大多数人如今在造船厂工作。",
]


def wrap(text: str, width: int) -> str:
    """Hard-wrap as editors do: a line break every `width` characters, inside sentences too."""
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def squash(text: str) -> str:
    return "".join(text.split())


def test_sentences_split_in_english_and_chinese():
    from danlu.app.splitters import (
        split_sentences,
    )  # imported here: today's main lacks it, the others still run

    text = wrap(" ".join(EN), 37) + "\n\n" + "".join(ZH)
    sentences = split_sentences(text)
    assert "".join(sentences) == text
    assert [squash(s) for s in sentences] == [squash(s) for s in EN + ZH]


def test_chunks_hold_whole_sentences():
    for sentences, joiner, size, overlap in [(EN, " ", 130, 60), (ZH, "", 40, 18), (EN + ZH, " ", 100, 0)]:
        text = wrap(joiner.join(sentences), 29)  # line breaks in the middle of sentences
        chunks = split_recursive(text, size, overlap)
        whole = [squash(s) for s in sentences]
        runs = {"".join(whole[i:j]) for i in range(len(whole)) for j in range(i + 1, len(whole) + 1)}
        for chunk in chunks:
            assert len(chunk) <= size
            assert squash(chunk) in runs, f"cut mid-sentence: {chunk!r}"  # main cuts at the line breaks
        assert all(any(w in squash(c) for c in chunks) for w in whole)
        carried = 0
        for a, b in zip(chunks, chunks[1:]):  # the overlap: whole sentences of at most `overlap` characters
            last = next(w for w in reversed(whole) if squash(a).endswith(w))
            if squash(b).startswith(last):
                carried += 1
                assert len(last) <= overlap
        assert (carried > 0) == (overlap > 0)


def test_a_sentence_longer_than_a_chunk_is_still_cut():
    long = "This sentence goes on and on " * 10 + "until it ends."
    chunks = split_recursive(EN[0] + " " + long + " " + EN[1], 60, 10)
    assert chunks[0] == EN[0] and chunks[-1] == EN[1]
    assert all(len(c) <= 60 for c in chunks) and len(chunks) > 4
    assert squash("".join(chunks[1:-1])).startswith(squash(long)[:40])


def test_split_documents_offsets_still_point_at_the_chunks():
    doc = Document(wrap(" ".join(EN), 33), {"source": "z.md"})
    for c in split_documents([doc], lambda t: split_recursive(t, 90, 30)):
        assert doc.text[c.metadata["start"] :].startswith(c.text)


def store_with_facts() -> VectorStore:
    store = VectorStore(":memory:", HashingEmbeddings())
    store.add(EN + ZH, metadatas=[{"source": f"s{i}.md"} for i in range(len(EN + ZH))])
    return store


def test_hybrid_hits_carry_the_cosine_of_the_dense_retriever():
    from danlu.app.retrieval import score_label

    store = store_with_facts()
    question = "How often do trains run between the cities?"
    hits = hybrid_retriever(store, k=4).retrieve(question)
    exact = {h.id: h.score for h in store.search(question, k=len(store))}  # cosine of every chunk
    assert hits and all(h.cosine is not None and abs(h.cosine - exact[h.id]) < 1e-5 for h in hits)
    assert hits[0].score < 0.05  # the fusion value stays the internal order
    assert score_label(hits[0], 1) == f"cosine {exact[hits[0].id]:.3f}"
    bm25 = BM25Retriever(BM25Index.from_store(store), k=3).retrieve(question)
    assert [score_label(h, n) for n, h in enumerate(bm25, 1)] == ["rank 1", "rank 2", "rank 3"]
    assert score_label(Hit("a", "x", score=0.016), 2) == "rank 2"


def rag(*argv) -> int:
    parser = argparse.ArgumentParser(prog="danlu")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["rag", *map(str, argv)])
    return args.func(args)


def test_rag_ask_shows_cosine_scores(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "zovelan.md").write_text(wrap(" ".join(EN), 40) + "\n", encoding="utf-8")
    (notes / "zh.md").write_text("".join(ZH) + "\n", encoding="utf-8")
    store = tmp_path / "rag.sqlite"
    assert rag("index", notes, "--store", store, "--embeddings", "hashing", "--chunk-size", "120") == 0
    capsys.readouterr()
    assert rag("ask", "Who built the harbour of Zovelan?", "--store", store, "--k", "3") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 3
    for n, line in enumerate(lines, 1):
        assert re.fullmatch(rf"\[{n}\] .*\.md \(cosine -?[01]\.\d{{3}}\)", line), line
    assert rag("ask", "Who built the harbour of Zovelan?", "--store", store, "--k", "2", "--json") == 0
    sources = json.loads(capsys.readouterr().out)["sources"]
    assert [s["rank"] for s in sources] == [1, 2] and all(-1 <= s["cosine"] <= 1 for s in sources)
