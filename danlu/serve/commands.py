"""`danlu serve --model PATH`: the OpenAI-compatible server (see danlu/serve/api.py)."""

from __future__ import annotations

import argparse
import os

from danlu.serve.config import LOOPBACK_HOSTS, ServeConfig


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
    d = ServeConfig()
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    p.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens)
    limits = p.add_argument_group(
        "limits (each bounds what one client can make the server do; docs/SECURITY.md)"
    )
    limits.add_argument(
        "--max-num-beams", type=int, default=d.max_num_beams, help="widest beam search (default %(default)s)"
    )
    limits.add_argument(
        "--max-n", type=int, default=d.max_n, help="choices per request (default %(default)s)"
    )
    limits.add_argument(
        "--max-rows-per-request",
        type=int,
        default=d.max_rows_per_request,
        help="completions one request may ask for, n x prompts (default %(default)s)",
    )
    limits.add_argument(
        "--max-rows-in-flight",
        type=int,
        default=d.max_rows_in_flight,
        help="rows waiting or decoding, all requests together; beyond it 503 (default %(default)s)",
    )
    limits.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=d.max_prompt_tokens,
        help="longest prompt, besides the model's context (default %(default)s)",
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=d.header_timeout_s,
        help="seconds a connection has to send a request's headers (default %(default)s)",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=d.keep_alive_timeout_s,
        help="seconds an idle keep-alive connection stays open (default %(default)s)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="open connections; at the cap the oldest idle one is closed to make room, or if every one is "
        "busy the new one gets a bare 503 (default %(default)s)",
    )
    limits.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host header names to answer to, or '*' for any (default: the loopback names "
        "when bound to a loopback address, else any)",
    )
    p.set_defaults(func=run_serve)


def allowed_hosts(option: str | None, host: str) -> tuple[str, ...] | None:
    """The Host names to accept: the option's list ('*' = any), else the loopback names for a loopback bind."""
    import ipaddress

    if option is not None:
        names = tuple(h.strip() for h in option.split(",") if h.strip())
        return None if "*" in names else names
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return LOOPBACK_HOSTS + ((host,) if loopback and host not in LOOPBACK_HOSTS else ()) if loopback else None


def run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from danlu.errors import DanluError

    try:
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
        max_num_beams=args.max_num_beams,
        max_n=args.max_n,
        max_rows_per_request=args.max_rows_per_request,
        max_rows_in_flight=args.max_rows_in_flight,
        max_prompt_tokens=args.max_prompt_tokens,
        header_timeout_s=args.header_timeout,
        keep_alive_timeout_s=args.keep_alive_timeout,
        max_connections=args.max_connections,
        allowed_hosts=allowed_hosts(args.allowed_hosts, args.host),
    )
    print(
        f"serving {config.model_name!r} on http://{args.host}:{args.port}  (web chat at /, API at /v1)",
        flush=True,
    )
    if config.allowed_hosts is None:
        print(
            "answering to any Host name; name them with --allowed-hosts to refuse DNS-rebinding requests",
            flush=True,
        )
    serve(model, tokenizer, config, host=args.host, port=args.port, embedder=embedder)
    return 0
