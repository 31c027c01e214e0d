"""Embeddings, the SQLite vector store (persistence, filters, delete, MMR, FAISS parity), BM25 against its
formula, reciprocal rank fusion, and retrieval on the embedded world: the right fact in the top 3 for >= 90% of
the held-out questions."""

import math

import numpy as np
import pytest

from danlu.app.embeddings import BertEmbeddings, HashingEmbeddings, words
from danlu.app.loaders import Document, world_fact_documents
from danlu.app.retrieval import (
    BM25Index,
    BM25Retriever,
    HybridRetriever,
    VectorRetriever,
    bm25_terms,
    hybrid_retriever,
    recall_at_k,
    reciprocal_rank_fusion,
)
from danlu.app.stores import Hit, VectorStore
from danlu.errors import DanluError


def world_questions(world, lang=None):
    """(question, id of the fact that answers it) for sft_test's fact questions (never seen in training)."""
    facts = world.fact_records()
    out = []
    for r in world.sft_records("test"):
        if r["kind"] not in ("fact", "fact_heldout") or (lang and r["lang"] != lang):
            continue
        q = r["instruction"]
        (fact,) = [
            f for f in facts
            if f["relation"] == r["relation"] and r["answer"] in (f["object"], f["object_zh"])
            and (f["subject"] in q or f["subject_zh"] in q)
        ]  # fmt: skip
        out.append((q, fact["id"]))
    return out


def test_hashing_embeddings():
    emb = HashingEmbeddings(dim=256)
    v = emb.embed_documents(
        ["The capital of Hetoris is Fadono.", "赫托丝的首都是法朵诺。", "Tofi is 25 years old."]
    )
    assert v.shape == (3, 256) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    q = emb.embed_query("What is the capital of Hetoris?")
    assert q @ v[0] > q @ v[2]
    assert np.array_equal(emb.embed_query("same text"), HashingEmbeddings(dim=256).embed_query("same text"))
    assert words("Zovelan是佐维兰!") == ["zovelan", "是", "佐", "维", "兰"]


def test_store_persists_filters_deletes(tmp_path):
    path = tmp_path / "store.sqlite"
    store = VectorStore(path, HashingEmbeddings())
    docs = [Document("Deva is a city in Ropa.", {"lang": "en", "topic": "city"}),
            Document("德瓦是罗帕的一座城市。", {"lang": "zh", "topic": "city"}),
            Document("Tofi likes to eat cheese.", {"lang": "en", "topic": "person"})]  # fmt: skip
    ids = store.add(docs)
    assert store.add(docs[:1]) == ids[:1] and len(store) == 3  # the same chunk twice is kept once
    reopened = VectorStore(path)  # the embedder is re-created from the name the store recorded
    hits = reopened.search("Which city is Deva?", k=2)
    assert hits[0].text == docs[0].text and hits[0].score > hits[1].score
    assert [h.metadata["lang"] for h in reopened.search("Deva", k=3, filter={"lang": "zh"})] == ["zh"]
    assert len(reopened.search("Deva", k=3, filter={"topic": ["person", "city"]})) == 3
    assert reopened.delete(filter={"topic": "person"}) == 1
    assert reopened.delete(ids=[ids[1]]) == 1 and len(VectorStore(path)) == 1
    with pytest.raises(DanluError, match="was built with embeddings"):
        VectorStore(path, HashingEmbeddings(dim=64))


def test_mmr_trades_relevance_for_diversity():
    store = VectorStore(":memory:", HashingEmbeddings())
    store.add(["Deva is a city in Ropa.", "Deva is a city in Ropa!", "Deva is a big city in Ropa.",
               "Deva has a river.", "Tofi lives in Deva."])  # fmt: skip
    plain = [h.text for h in store.search("Deva city Ropa", k=3)]
    diverse = [h.text for h in store.mmr("Deva city Ropa", k=3, fetch_k=5, lambda_mult=0.3)]
    assert plain[0] == diverse[0]
    assert sum("Ropa" in t for t in diverse) < sum("Ropa" in t for t in plain)
    assert [h.text for h in store.mmr("Deva city Ropa", k=3, lambda_mult=1.0)] == plain


def test_faiss_gives_the_exact_numpy_results(world):
    exact = VectorStore(":memory:", HashingEmbeddings())
    exact.add(world_fact_documents(world))
    fast = VectorStore(":memory:", HashingEmbeddings(), use_faiss=True)
    fast.add(world_fact_documents(world))
    for q, _ in world_questions(world)[:20]:
        every = {h.id: h.score for h in exact.search(q, k=len(exact))}
        a, b = exact.search(q, k=5), fast.search(q, k=5)
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)  # the same top scores
        assert all(
            math.isclose(every[h.id], h.score, abs_tol=1e-5) for h in b
        )  # ties may come in another order


def test_bm25_matches_its_formula():
    texts = ["the red fox jumps", "the lazy dog", "red red dog barks loudly", "佐维兰住在城市"]
    index = BM25Index(k1=1.2, b=0.75)
    index.add(texts)
    docs = [bm25_terms(t) for t in texts]
    avgdl = sum(map(len, docs)) / len(docs)

    def score(query, d):
        s = 0.0
        for t in set(bm25_terms(query)):
            n_t = sum(t in x for x in docs)
            idf = math.log(1 + (len(docs) - n_t + 0.5) / (n_t + 0.5))
            tf = d.count(t)
            s += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(d) / avgdl)) if tf else 0.0
        return s

    for query in ["red dog", "fox", "佐维兰", "nothing here"]:
        expected = sorted(
            ((score(query, d), i) for i, d in enumerate(docs) if score(query, d) > 0),
            key=lambda x: (-x[0], x[1]),
        )
        got = index.search(query, k=4)
        assert [h.text for h in got] == [texts[i] for _, i in expected]
        assert np.allclose([h.score for h in got], [s for s, _ in expected])


def test_reciprocal_rank_fusion():
    a = [Hit("x", "x"), Hit("y", "y"), Hit("z", "z")]
    b = [Hit("z", "z"), Hit("x", "x")]
    fused = reciprocal_rank_fusion([a, b], rrf_k=60)
    assert [h.id for h in fused] == ["x", "z", "y"]
    assert math.isclose(fused[0].score, 1 / 61 + 1 / 62)
    assert [h.id for h in reciprocal_rank_fusion([a, b], weights=[1, 3])][0] == "z"


def test_world_retrieval_recall(world, capsys):
    questions = world_questions(world)  # 50 English + 50 Chinese, none seen in training
    store = VectorStore(":memory:", HashingEmbeddings())
    store.add(world_fact_documents(world))
    bm25 = BM25Retriever(BM25Index.from_store(store), k=3, unique="source")
    hashing = VectorRetriever(store, k=3, unique="source")
    hybrid = hybrid_retriever(store, k=3, unique="source")
    recalls = {
        name: recall_at_k(r, questions)
        for name, r in [("bm25", bm25), ("hashing", hashing), ("hashing+bm25", hybrid)]
    }
    with capsys.disabled():
        print(f"\nrecall@3 on {len(questions)} held-out world questions: {recalls}")
    assert recalls["bm25"] >= 0.9 and recalls["hashing+bm25"] >= 0.9


def test_world_retrieval_with_minilm(world, capsys):
    """danlu's BERT on all-MiniLM-L6-v2: English questions over the English fact sentences (MiniLM was trained
    on English; see the hashing/BM25 test for Chinese)."""
    questions = world_questions(world, lang="en")
    store = VectorStore(":memory:", BertEmbeddings())
    store.add(world_fact_documents(world, langs=("en",)))
    vector = VectorRetriever(store, k=3)
    hybrid = HybridRetriever(
        [VectorRetriever(store, k=20), BM25Retriever(BM25Index.from_store(store), k=20)], k=3
    )
    recalls = {"minilm": recall_at_k(vector, questions), "minilm+bm25": recall_at_k(hybrid, questions)}
    with capsys.disabled():
        print(f"\nrecall@3 on {len(questions)} English held-out world questions: {recalls}")
    assert recalls["minilm"] >= 0.9 and recalls["minilm+bm25"] >= 0.9
