"""`danlu rag index DIR` and `danlu rag ask "question"`: retrieval-augmented answers over a folder of notes.

danlu rag index notes/ --store rag.sqlite          # split .txt/.md files, embed the chunks, store them
danlu rag ask "What is X?" --store rag.sqlite       # the best chunks (no model given: retrieval only)
danlu rag ask "What is X?" --model runs/demo/sft/checkpoint   # ... and a model's answer citing them
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("rag", help="index a folder of documents and answer questions from it")
    rag = p.add_subparsers(dest="rag_command", metavar="SUBCOMMAND")
    rag.required = True

    i = rag.add_parser("index", help="split, embed and store the .txt/.md files of a folder")
    i.add_argument("folder")
    i.add_argument("--store", default="rag.sqlite", help="vector store file (created or extended)")
    i.add_argument("--chunk-size", type=int, default=500, help="characters per chunk")
    i.add_argument("--chunk-overlap", type=int, default=50)
    i.add_argument(
        "--embeddings",
        default="auto",
        help="'hashing', 'minilm' (the packaged all-MiniLM-L6-v2), a BERT checkpoint path, or 'auto' (minilm if installed)",
    )
    i.set_defaults(func=run_index)

    a = rag.add_parser(
        "ask", help="retrieve the best chunks for a question, and answer it with a model if given"
    )
    a.add_argument("question")
    a.add_argument("--store", default="rag.sqlite")
    a.add_argument("--k", type=int, default=3, help="chunks shown to the model")
    a.add_argument("--retriever", choices=["hybrid", "vector", "bm25", "mmr"], default="hybrid")
    a.add_argument("--model", default=None, help="a local checkpoint (or .gguf) to answer with")
    a.add_argument(
        "--endpoint",
        default=None,
        help="an OpenAI-compatible base URL to answer with, e.g. http://127.0.0.1:8000/v1",
    )
    a.add_argument("--endpoint-model", default=None, help="the model id at --endpoint")
    a.add_argument("--max-new-tokens", type=int, default=128)
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.add_argument("--verbose", action="store_true", help="print the prompt sent to the model")
    a.set_defaults(func=run_ask)


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
    from pathlib import Path

    from danlu.app.chains import RagChain
    from danlu.app.retrieval import score_label
    from danlu.app.stores import VectorStore
    from danlu.errors import DanluError

    if not Path(args.store).is_file():
        raise DanluError(
            f"no vector store at {args.store}; build one with `danlu rag index FOLDER --store {args.store}`"
        )
    if args.model and args.endpoint:
        raise DanluError("give --model or --endpoint, not both")
    store = VectorStore(args.store)
    retriever = _retriever(store, args.retriever, args.k)
    llm = None
    options = {"max_new_tokens": args.max_new_tokens}
    if args.model:
        from danlu.app.llms import LocalLLM

        llm = LocalLLM.from_path(args.model, options=options, verbose=args.verbose)
    elif args.endpoint:
        from danlu.app.llms import OpenAILLM

        if not args.endpoint_model:
            raise DanluError("--endpoint needs --endpoint-model (the model id the server serves)")
        llm = OpenAILLM(args.endpoint, args.endpoint_model, options=options, verbose=args.verbose)
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
