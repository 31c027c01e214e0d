"""The RAG chain (question -> retriever -> prompt with numbered sources -> model -> answer with cited sources)
on the embedded world, and the `danlu rag index` / `danlu rag ask` commands."""

import argparse
import json
import re

import pytest

import danlu
from danlu.app.chains import RAG_PROMPT, LLMChain, RagChain, cited_sources, pipeline
from danlu.app.embeddings import HashingEmbeddings
from danlu.app.llms import FakeLLM, LocalLLM
from danlu.app.loaders import world_fact_documents
from danlu.app.prompts import PromptTemplate
from danlu.app.retrieval import hybrid_retriever
from danlu.app.stores import Hit, VectorStore
from danlu.cli.app import register
from danlu.errors import DanluError


def reader(prompt) -> str:
    """A fake model that answers with the first source it is shown, citing it."""
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    first = re.search(r"^\[1\] (.*)$", text, flags=re.M).group(1)
    return f"{first} [1]"


def test_rag_chain_answers_world_questions_citing_the_right_source(world):
    store = VectorStore(":memory:", HashingEmbeddings())
    store.add(world_fact_documents(world))
    chain = RagChain(hybrid_retriever(store, k=3, unique="source"), FakeLLM([reader], cycle=True))
    questions = [r for r in world.sft_records("test") if r["kind"] in ("fact", "fact_heldout")]
    in_top3 = answered = 0
    for r in questions:
        result = chain.invoke(r["instruction"])
        assert r["instruction"] in result.prompt[0]["content"] and len(result.sources) == 3
        in_top3 += any(r["answer"] in h.text for h in result.sources)
        answered += r["answer"] in result.answer and result.cited == result.sources[:1]
    assert in_top3 / len(questions) >= 0.9  # the right fact is among the 3 sources shown (recall@3)
    assert answered / len(questions) >= 0.75  # a reader of source [1] answers right, citing [1]


def test_cited_sources_and_prompt():
    hits = [Hit("a", "x"), Hit("b", "y"), Hit("c", "z")]
    assert [h.id for h in cited_sources("It is y [2], also [3, 1].", hits)] == ["b", "c", "a"]
    assert cited_sources("no citations", hits) == hits
    assert cited_sources("[9] is out of range", hits) == hits
    assert set(RAG_PROMPT.input_variables) == {"sources", "question"}
    with pytest.raises(DanluError, match="needs the variables"):
        RagChain(None, FakeLLM(["x"]), prompt=PromptTemplate("{question}"))


def test_llm_chain_and_pipeline():
    llm = FakeLLM([lambda p: p.upper()], cycle=True)
    shout = LLMChain(PromptTemplate("say {word}"), llm)
    run = pipeline(lambda s: {"loud": shout.invoke(word=s["word"])}, lambda s: {"n": len(s["loud"])})
    assert run({"word": "hi"}) == {"word": "hi", "loud": "SAY HI", "n": 6}
    assert LLMChain(PromptTemplate("say {word}"), llm, as_chat=True).render(word="x") == [
        {"role": "user", "content": "say x"}
    ]


def rag(*argv) -> int:
    parser = argparse.ArgumentParser(prog="danlu")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["rag", *map(str, argv)])
    return args.func(args)


def test_rag_commands(tmp_path, world, local_model, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    facts = world.fact_records()
    for subject in sorted({f["subject"] for f in facts})[:12]:
        lines = [f["en"] for f in facts if f["subject"] == subject]
        (notes / f"{subject}.md").write_text(f"# {subject}\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    store = tmp_path / "rag.sqlite"
    assert rag("index", notes, "--store", store, "--embeddings", "hashing", "--chunk-size", "120") == 0
    assert "indexed 12 files" in capsys.readouterr().out
    target = next(f for f in facts if f["subject"] == sorted({f["subject"] for f in facts})[3])
    question = target["en"].replace(".", "?")
    assert rag("ask", question, "--store", store, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answer"] is None and result["sources"][0]["metadata"]["source"].endswith(
        f"{target['subject']}.md"
    )
    model, tokenizer = local_model
    danlu.save(model, tokenizer, tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt"
    argv = ["ask", question, "--store", store, "--model", ckpt, "--k", "1", "--max-new-tokens", "5"]
    assert rag(*argv, "--verbose") == 0
    out = capsys.readouterr().out
    assert "Sources:\n[1] " in out and question in out  # --verbose shows the prompt that was sent
    llm = LocalLLM(model, tokenizer, options={"max_new_tokens": 5})
    expected = RagChain(hybrid_retriever(VectorStore(store), k=1), llm).invoke(question)
    assert rag(*argv) == 0
    assert capsys.readouterr().out.startswith(expected.answer + "\n\n[1] ")
    with pytest.raises(DanluError, match="no vector store"):
        rag("ask", "x", "--store", tmp_path / "missing.sqlite")
