"""`danlu serve --model PATH`: the OpenAI-compatible server (see danlu/serve/api.py)."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with a web chat page")
    p.add_argument("--model", required=True, help="checkpoint folder (danlu or Hugging Face) or a .gguf file")
    p.add_argument("--name", default=None, help="the model id clients use (default: the folder name)")
    p.add_argument(
        "--embedding-model",
        default=None,
        help="BERT encoder checkpoint for /v1/embeddings, or 'minilm' for the packaged all-MiniLM-L6-v2",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set DANLU_API_KEY)"
    )
    p.add_argument(
        "--max-batch-size", type=int, default=32, help="requests decoded together (1 = one by one)"
    )
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for company")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000)
    p.add_argument("--default-max-tokens", type=int, default=256)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from danlu.errors import DanluError

    try:
        from danlu.serve.api import ServeConfig
        from danlu.serve.server import serve
    except ImportError as e:
        raise DanluError(f"danlu serve needs fastapi and uvicorn ({e}); pip install 'danlu[serve]'") from e
    from danlu.app.llms import load_local

    model, tokenizer = load_local(args.model, device=args.device)
    embedder = None
    if args.embedding_model:
        from danlu.app.embeddings import BertEmbeddings

        embedder = BertEmbeddings(
            None if args.embedding_model == "minilm" else args.embedding_model, device=args.device
        )
    path = Path(args.model)
    config = ServeConfig(
        model_name=args.name or (path.stem if path.is_file() else path.resolve().name),
        api_key=args.api_key or os.environ.get("DANLU_API_KEY") or None,
        max_body_bytes=args.max_body_bytes,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        default_max_tokens=args.default_max_tokens,
    )
    print(
        f"serving {config.model_name!r} on http://{args.host}:{args.port}  (web chat at /, API at /v1)",
        flush=True,
    )
    serve(model, tokenizer, config, host=args.host, port=args.port, embedder=embedder)
    return 0
