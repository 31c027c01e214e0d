"""`danlu serve --model PATH`: the OpenAI-compatible server (see danlu/serve/api.py)."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with a web chat page")
    p.add_argument("--model", required=True, help="checkpoint folder (danlu or Hugging Face) or a .gguf file")
    p.add_argument("--name", default=None, help="the model id clients use (default: the folder name)")
    p.add_argument(
        "--embeddings",
        dest="embedding_model",
        default=None,
        help="BERT encoder checkpoint for /v1/embeddings, or 'minilm' for the packaged all-MiniLM-L6-v2",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set DANLU_API_KEY)"
    )
    p.add_argument(
        "--max-batch-size", type=int, default=32, help="requests decoded together (1 = one by one)"
    )
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for company")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger request bodies get a 413")
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        help="max_tokens of a request that gives none (capped by the room left in the context)",
    )
    from danlu.flags import heavy

    heavy(p, run_serve, validate=_check_serve_args)


def _check_serve_args(args: argparse.Namespace) -> None:
    from pathlib import Path

    from danlu.errors import DanluError

    if not 0 < args.port < 65536:
        raise DanluError(f"--port must be in 1..65535, got {args.port}")
    for name in ("max_batch_size", "max_body_bytes", "default_max_tokens"):
        if getattr(args, name) < 1:
            raise DanluError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_wait_ms < 0:
        raise DanluError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if not Path(args.model).exists():
        raise DanluError(f"no such model: {args.model}")


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
