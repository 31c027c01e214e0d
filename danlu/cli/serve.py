"""`danlu serve --model PATH`: the OpenAI-compatible server (see danlu/serve/api.py)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from typing import Any

from danlu.serve.config import LIMIT_FIELDS, LOOPBACK_HOSTS, ServeConfig


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
    from danlu.flags import add_dataclass_flags, heavy

    # ServeConfig's fields are the flags (help, default and range written there once); the limits get a group
    main_fields = tuple(f.name for f in fields(ServeConfig) if f.name not in LIMIT_FIELDS)
    add_dataclass_flags(p, ServeConfig, skip=LIMIT_FIELDS)
    limits = p.add_argument_group(
        "limits (each bounds what one client can make the server do; docs/SECURITY.md)"
    )
    add_dataclass_flags(limits, ServeConfig, skip=main_fields)
    limits.add_argument(
        "--allowed-hosts",
        nargs="+",
        default=None,
        metavar="HOST",
        help="Host header names to answer to, space-separated, or '*' for any (none given: the loopback "
        "names when bound to a loopback address, else any)",
    )
    heavy(p, run_serve, validate=_check_serve_args)


def _check_serve_args(args: argparse.Namespace) -> None:
    from pathlib import Path

    from danlu.errors import DanluError

    if not 0 < args.port < 65536:
        raise DanluError(f"--port must be in 1..65535, got {args.port}")
    serve_config_from_args(args)  # ServeConfig checks each flag's range
    if not Path(args.model).exists():
        raise DanluError(f"no such model: {args.model}")


def serve_config_from_args(args: argparse.Namespace, **given: Any) -> ServeConfig:
    """ServeConfig from the flags it generated (`given` sets the fields that have no flag of that name)."""
    flagged = {f.name for f in fields(ServeConfig) if f.metadata.get("cli") is not False}
    return ServeConfig(**{name: getattr(args, name) for name in flagged}, **given)


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
    config = serve_config_from_args(
        args,
        model_name=args.name or (path.stem if path.is_file() else path.resolve().name),
        api_key=args.api_key or os.environ.get("DANLU_API_KEY") or None,
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
