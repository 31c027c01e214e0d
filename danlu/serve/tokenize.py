"""The served tokenizer over HTTP, as vLLM serves it, and prompts given as token ids.

    GET  /tokenizer_info   {"eos_token", "bos_token", "pad_token", "chat_template", "model_max_length", ...}
    POST /tokenize         {"prompt", "add_special_tokens"} -> {"tokens", "count", "max_model_len"}
    POST /detokenize       {"tokens"} -> {"prompt"}

lm-evaluation-harness's `local-completions` model looks for exactly these (its tokenizer_backend "auto" picks
"remote" when /tokenizer_info and /tokenize answer), so it scores with the server's own tokenizer and needs no
download: the context/continuation split it computes is the one the server scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool

from danlu.serve.schemas import APIError, DetokenizeRequest, TokenizeRequest


def check_ids(tokenizer: Any, ids: list[int], param: str) -> None:
    """Every id is one of the tokenizer's, else a 400 naming the field."""
    n = tokenizer.vocab_size
    bad = next((t for t in ids if t >= n), None)
    if bad is not None:
        raise APIError(400, f"{param}: token id {bad} is out of range (valid ids: 0..{n - 1})", param=param)


def prompt_list(tokenizer: Any, prompt: Any) -> list[tuple[str, list[int] | None]]:
    """A completions `prompt` (a text, texts, token ids or lists of them) as (text, ids or None) per prompt;
    None: the text is to be tokenised. Empty prompts are a 400."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    out: list[tuple[str, list[int] | None]] = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            out.append((p, None))
            continue
        check_ids(tokenizer, p, "prompt" if len(prompt) == 1 else f"prompt[{i}]")
        out.append((tokenizer.decode(p), list(p)))
    if not out or any(not text and ids is None for text, ids in out):
        raise APIError(
            400, "prompt must be a non-empty string or a list of non-empty strings", param="prompt"
        )
    return out


def add_tokenizer_routes(
    app: FastAPI, tokenizer: Any, block_size: int, check_model: Callable[[str], None], check_key: Any
) -> None:
    """/tokenizer_info, /tokenize and /detokenize on app (the API key applies as on every other route)."""

    def special(token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.id_to_token(token_id)

    @app.get("/tokenizer_info", dependencies=[Depends(check_key)])
    async def tokenizer_info() -> dict[str, Any]:
        template = getattr(tokenizer, "chat_template", None)
        return {
            "tokenizer_class": type(tokenizer).__name__,
            "eos_token": special(tokenizer.eos_token_id),
            "bos_token": special(tokenizer.bos_token_id),
            "pad_token": special(tokenizer.pad_token_id),
            "chat_template": template if isinstance(template, str) else None,
            "model_max_length": block_size,
            "vocab_size": tokenizer.vocab_size,
        }

    @app.post("/tokenize", dependencies=[Depends(check_key)])
    async def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        if req.model is not None:
            check_model(req.model)
        ids = await run_in_threadpool(tokenizer.encode, req.prompt, req.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": block_size}

    @app.post("/detokenize", dependencies=[Depends(check_key)])
    async def detokenize(req: DetokenizeRequest) -> dict[str, Any]:
        if req.model is not None:
            check_model(req.model)
        check_ids(tokenizer, req.tokens, "tokens")
        return {"prompt": await run_in_threadpool(tokenizer.decode, req.tokens)}
