"""`danlu serve --model PATH`: the OpenAI-compatible server (see danlu/serve/api.py)."""

from __future__ import annotations

import argparse
import os
import sys

from danlu.serve.config import LOOPBACK_HOSTS, SCHEDULERS, ServeConfig


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with a web chat page")
    p.add_argument("--model", required=True, help="checkpoint folder (danlu or Hugging Face) or a .gguf file")
    p.add_argument("--name", default=None, help="the model id clients use (default: the folder name)")
    p.add_argument(
        "--quantize",
        choices=["auto", "none", "int8", "int4", "gguf"],
        default="auto",
        help="weights (see `danlu generate --help`); the server's batches run eagerly, so auto keeps float "
        "weights and int8 (fbgemm) is the fast eager choice",
    )
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
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a request waits for company (static scheduler)",
    )
    d = ServeConfig()
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=d.scheduler,
        help="continuous: requests join and leave the running batch between steps; static: a gathered batch "
        "decodes to its end",
    )
    p.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=d.kv_cache_tokens,
        help="continuous: KV-cache room (rows x tokens); a request that does not fit waits",
    )
    p.add_argument(
        "--prefill-chunk-tokens",
        type=int,
        default=d.prefill_chunk_tokens,
        help="continuous: prompt tokens prefilled per step, so long prompts do not stall decoding",
    )
    p.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=d.prefix_cache_tokens,
        help="continuous: prompt-prefix keys/values kept for reuse (0 = off)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=d.max_body_bytes, help="larger request bodies get a 413"
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=d.default_max_tokens,
        help="max_tokens of a request that gives none (capped by the room left in the context)",
    )
    limits = p.add_argument_group(
        "limits (each bounds what one client can make the server do; docs/SECURITY.md)"
    )
    limits.add_argument("--max-num-beams", type=int, default=d.max_num_beams, help="widest beam search")
    limits.add_argument("--max-n", type=int, default=d.max_n, help="choices per request")
    limits.add_argument(
        "--max-rows-per-request",
        type=int,
        default=d.max_rows_per_request,
        help="completions one request may ask for, n x prompts",
    )
    limits.add_argument(
        "--max-rows-in-flight",
        type=int,
        default=d.max_rows_in_flight,
        help="rows waiting or decoding, all requests together; beyond it 503",
    )
    limits.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=d.max_prompt_tokens,
        help="longest prompt, besides the model's context",
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=d.header_timeout_s,
        help="seconds a connection has to send a request's headers",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=d.keep_alive_timeout_s,
        help="seconds an idle keep-alive connection stays open",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="open connections; at the cap the oldest idle one is closed to make room, or if every one is "
        "busy the new one gets a bare 503",
    )
    limits.add_argument(
        "--allowed-hosts",
        nargs="+",
        default=None,
        metavar="HOST",
        help="Host header names to answer to, space-separated, or '*' for any (none given: the loopback "
        "names when bound to a loopback address, else any)",
    )
    from danlu.flags import heavy

    heavy(p, run_serve, validate=_check_serve_args)


def _check_serve_args(args: argparse.Namespace) -> None:
    from pathlib import Path

    from danlu.errors import DanluError

    if not 0 < args.port < 65536:
        raise DanluError(f"--port must be in 1..65535, got {args.port}")
    positive = ("max_batch_size", "max_body_bytes", "default_max_tokens", "max_num_beams", "max_n",
                "max_rows_per_request", "max_rows_in_flight", "max_prompt_tokens", "max_connections",
                "kv_cache_tokens", "prefill_chunk_tokens")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            raise DanluError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("max_wait_ms", "header_timeout", "keep_alive_timeout", "prefix_cache_tokens"):
        if getattr(args, name) < 0:
            raise DanluError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not Path(args.model).exists():
        raise DanluError(f"no such model: {args.model}")


def allowed_hosts(option: list[str] | str | None, host: str) -> tuple[str, ...] | None:
    """The Host names to accept: the option's list ('*' = any), else the loopback names for a loopback bind."""
    import ipaddress

    if option is not None:
        values = [option] if isinstance(option, str) else option
        names = tuple(h.strip() for v in values for h in v.split(",") if h.strip())
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
        from danlu.serve.api import create_app
        from danlu.serve.server import serve
    except ImportError as e:
        raise DanluError(f"danlu serve needs fastapi and uvicorn ({e}); pip install 'danlu[serve]'") from e
    from danlu.app.llms import load_local

    model, tokenizer = load_local(args.model, device=args.device)
    from danlu.generate.fast_path import choose_decoding

    choice = choose_decoding(model, args.model, args.quantize, compile=False)  # batches are not compiled
    model = choice.model
    note = choice.message.replace(
        " (--quantize, --compile/--no-compile to change)", " (--quantize to change)"
    )
    print(note, file=sys.stderr)
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
        scheduler=args.scheduler,
        kv_cache_tokens=args.kv_cache_tokens,
        prefill_chunk_tokens=args.prefill_chunk_tokens,
        prefix_cache_tokens=args.prefix_cache_tokens,
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
    serve(create_app(model, tokenizer, config, embedder), host=args.host, port=args.port)
    return 0
