"""`danlu rag index DIR`, `danlu rag ask "question"`: retrieval-augmented answers over a folder of notes;
`danlu agent "question"`: a ReAct agent with a calculator (and a search tool over a store).

danlu rag index notes/ --store rag.sqlite          # split .txt/.md files, embed the chunks, store them
danlu rag ask "What is X?" --store rag.sqlite       # the best chunks (no model given: retrieval only)
danlu rag ask "What is X?" --model runs/demo/sft/checkpoint   # ... and a model's answer citing them
danlu agent "What is 17 * 23?" --model CKPT --verbose           # every prompt sent is printed
"""

from __future__ import annotations

import argparse
import json
import sys


def _llm_args(a: argparse.ArgumentParser) -> None:
    """Where the answering model comes from: a local checkpoint or an OpenAI-compatible endpoint."""
    from danlu.generate.options import GenerationOptions

    a.add_argument("--model", default=None, help="a local checkpoint (or .gguf) to answer with")
    a.add_argument(
        "--endpoint",
        default=None,
        help="an OpenAI-compatible base URL to answer with, e.g. http://127.0.0.1:8000/v1",
    )
    a.add_argument("--endpoint-model", default=None, help="the model id at --endpoint")
    a.add_argument(
        "--max-new-tokens",
        type=int,
        default=GenerationOptions().max_new_tokens,
        help="most tokens per model reply",
    )


def register(sub) -> None:
    from danlu.flags import heavy

    p = sub.add_parser("rag", help="index a folder of documents and answer questions from it")
    rag = p.add_subparsers(dest="rag_command", metavar="SUBCOMMAND")
    rag.required = True

    i = rag.add_parser("index", help="split, embed and store the .txt/.md files of a folder")
    i.add_argument("folder", help="folder of .txt / .md files (searched recursively)")
    i.add_argument("--store", default="rag.sqlite", help="vector store file (created or extended)")
    i.add_argument("--chunk-size", type=int, default=500, help="characters per chunk")
    i.add_argument("--chunk-overlap", type=int, default=50, help="characters shared by neighbouring chunks")
    i.add_argument(
        "--embeddings",
        default="auto",
        help="'hashing', 'minilm' (the packaged all-MiniLM-L6-v2), a BERT checkpoint path, or 'auto' (minilm if installed)",
    )
    heavy(i, run_index, device=False, validate=_check_index)

    a = rag.add_parser(
        "ask", help="retrieve the best chunks for a question, and answer it with a model if given"
    )
    a.add_argument("question", help="the question")
    a.add_argument("--store", default="rag.sqlite", help="vector store file (`danlu rag index`)")
    a.add_argument("--k", type=int, default=3, help="chunks shown to the model")
    a.add_argument(
        "--retriever",
        choices=["hybrid", "vector", "bm25", "mmr"],
        default="hybrid",
        help="how chunks are found",
    )
    _llm_args(a)
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.add_argument("--verbose", action="store_true", help="print the prompt sent to the model")
    heavy(a, run_ask, validate=_check_ask)

    g = sub.add_parser(
        "agent",
        help="answer a question with a ReAct agent using a calculator (and a retriever with --store)",
        description="ReAct (Yao et al. 2023): the model writes Thought / Action / Action Input, the agent runs "
        "the tool and appends its Observation, until the model writes a Final Answer (danlu/app/agents.py).",
    )
    g.add_argument("question", help="the question")
    _llm_args(g)
    g.add_argument(
        "--store", default=None, help="a vector store (`danlu rag index`): adds a `search` tool over it"
    )
    g.add_argument("--k", type=int, default=3, help="passages the search tool returns")
    g.add_argument("--max-steps", type=int, default=6, help="most Thought/Action rounds before giving up")
    g.add_argument(
        "--chat", action="store_true", help="send chat messages (for chat models and endpoints), not one text"
    )
    g.add_argument("--json", action="store_true", help="print the answer and every step as JSON")
    g.add_argument("--verbose", action="store_true", help="print every prompt sent and every model output")
    heavy(g, run_agent, validate=_check_agent)


def _check_index(args: argparse.Namespace) -> None:
    from pathlib import Path

    from danlu.errors import DanluError

    if not Path(args.folder).is_dir():
        raise DanluError(f"no such folder: {args.folder}")
    if args.chunk_size < 1 or not 0 <= args.chunk_overlap < args.chunk_size:
        raise DanluError(
            f"--chunk-size must be >= 1 and --chunk-overlap in [0, chunk size), got {args.chunk_size}, "
            f"{args.chunk_overlap}"
        )


def _check_llm(args: argparse.Namespace) -> None:
    from pathlib import Path

    from danlu.errors import DanluError

    if args.model and args.endpoint:
        raise DanluError("give --model or --endpoint, not both")
    if args.endpoint and not args.endpoint_model:
        raise DanluError("--endpoint needs --endpoint-model (the model id the server serves)")
    if args.model and not Path(args.model).exists():
        raise DanluError(f"no such model: {args.model}")
    if args.max_new_tokens < 1 or args.k < 1:
        raise DanluError(f"--max-new-tokens and --k must be >= 1, got {args.max_new_tokens}, {args.k}")


def _check_store(store: str) -> None:
    from pathlib import Path

    from danlu.errors import DanluError

    if not Path(store).is_file():
        raise DanluError(
            f"no vector store at {store}; build one with `danlu rag index FOLDER --store {store}`"
        )


def _check_ask(args: argparse.Namespace) -> None:
    _check_llm(args)
    _check_store(args.store)


def _check_agent(args: argparse.Namespace) -> None:
    from danlu.errors import DanluError

    _check_llm(args)
    if not (args.model or args.endpoint):
        raise DanluError(
            "an agent needs a model: give --model CHECKPOINT or --endpoint URL --endpoint-model ID"
        )
    if args.max_steps < 1:
        raise DanluError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.store:
        _check_store(args.store)


def _llm(args: argparse.Namespace, options: dict, verbose: bool):
    """The answering model the flags name, or None."""
    if args.model:
        from danlu.app.llms import LocalLLM

        return LocalLLM.from_path(args.model, device=args.device, options=options, verbose=verbose)
    if args.endpoint:
        from danlu.app.llms import OpenAILLM

        return OpenAILLM(args.endpoint, args.endpoint_model, options=options, verbose=verbose)
    return None


def run_agent(args: argparse.Namespace) -> int:
    from danlu.app.agents import ReActAgent
    from danlu.app.tools import calculator, retriever_tool

    tools = [calculator]
    if args.store:
        from danlu.app.stores import VectorStore

        tools.append(retriever_tool(_retriever(VectorStore(args.store), "hybrid", args.k)))
    # The agent prints every prompt itself with --verbose; the LLM stays quiet so nothing shows twice.
    llm = _llm(args, {"max_new_tokens": args.max_new_tokens}, verbose=False)
    agent = ReActAgent(llm, tools, max_steps=args.max_steps, as_chat=args.chat, verbose=args.verbose)
    result = agent.run(args.question)
    if args.json:
        steps = [
            {
                "thought": s.thought,
                "action": s.action,
                "action_input": s.action_input,
                "observation": s.observation,
            }
            for s in result.steps
        ]
        print(json.dumps({"question": result.question, "answer": result.answer, "finished": result.finished,
                          "steps": steps}, ensure_ascii=False, indent=2))  # fmt: skip
    elif result.finished:
        print(result.answer)
    if not result.finished:
        print(
            f"no Final Answer after {args.max_steps} steps (--max-steps); --verbose shows them",
            file=sys.stderr,
        )
        return 1
    return 0


def _embeddings(choice: str):
    from danlu.app.embeddings import BertEmbeddings, HashingEmbeddings, default_embeddings

    if choice == "auto":
        return default_embeddings()
    if choice == "hashing":
        return HashingEmbeddings()
    return BertEmbeddings(None if choice == "minilm" else choice)


def run_index(args: argparse.Namespace) -> int:
    from danlu.app.loaders import load_folder
    from danlu.app.splitters import split_documents, split_recursive
    from danlu.app.stores import VectorStore

    docs = load_folder(args.folder)
    chunks = split_documents(docs, lambda t: split_recursive(t, args.chunk_size, args.chunk_overlap))
    store = VectorStore(args.store, _embeddings(args.embeddings))
    store.add(chunks)
    print(f"indexed {len(docs)} files as {len(chunks)} chunks into {args.store} "
          f"({len(store)} chunks in all, embeddings {store.embeddings.name})")  # fmt: skip
    return 0


def _retriever(store, kind: str, k: int):
    from danlu.app.retrieval import BM25Index, BM25Retriever, VectorRetriever, hybrid_retriever

    if kind == "hybrid":
        return hybrid_retriever(store, k=k)
    if kind == "bm25":
        return BM25Retriever(BM25Index.from_store(store), k=k)
    return VectorRetriever(store, k=k, mmr=kind == "mmr")


def run_ask(args: argparse.Namespace) -> int:

    from danlu.app.chains import RagChain
    from danlu.app.retrieval import score_label
    from danlu.app.stores import VectorStore

    store = VectorStore(args.store)
    retriever = _retriever(store, args.retriever, args.k)
    llm = _llm(args, {"max_new_tokens": args.max_new_tokens}, verbose=args.verbose)
    if llm is None:
        hits = retriever.retrieve(args.question)
        result = {"question": args.question, "answer": None, "sources": hits}
    else:
        answer = RagChain(retriever, llm).invoke(args.question)
        result = {"question": args.question, "answer": answer.answer, "sources": answer.cited}
    if args.json:
        # rank and cosine (query-chunk similarity, null when unknown) for readers; score: what the retriever
        # ranked by (for hybrid search the reciprocal-rank-fusion value, meaningful only as an order)
        sources = [
            {
                "id": h.id,
                "rank": n,
                "cosine": h.cosine,
                "score": h.score,
                "text": h.text,
                "metadata": h.metadata,
            }
            for n, h in enumerate(result["sources"], 1)
        ]
        print(json.dumps({**result, "sources": sources}, ensure_ascii=False, indent=2))
        return 0
    if result["answer"] is not None:
        print(result["answer"])
        print()
    elif not args.json:
        print("(no --model or --endpoint given: the best chunks only)", file=sys.stderr)
    for n, h in enumerate(result["sources"], 1):
        where = h.metadata.get("source", h.id)
        text = " ".join(h.text.split())  # one line per chunk: a hard-wrapped file keeps its line breaks
        print(f"[{n}] {where} ({score_label(h, n)})\n    {text[:300]}")
    return 0
