"""`danlu serve`: an OpenAI-compatible HTTP API over a danlu model (FastAPI + uvicorn).

    GET  /v1/models              the served model (and the embedding model, if any)
    POST /v1/completions         text completion; stream=true sends server-sent events
    POST /v1/chat/completions    chat (the tokenizer's chat template); stream, stream_options.include_usage, tools,
                                 response_format (grammar-constrained JSON; danlu/serve/tools.py)
    POST /v1/embeddings          sentence embeddings from an encoder checkpoint (--embeddings)
    GET  /                       a web chat page that streams answers
    GET  /health, GET /usage     liveness and batching figures; token usage per model
    /tokenizer_info, /tokenize, /detokenize   the served tokenizer, as vLLM serves it (serve/tokenize.py)

Every generation goes through the Batcher (danlu/serve/batching.py): concurrent requests are decoded together.
Errors are OpenAI's JSON ({"error": {"message", "type", "param", "code"}}) with the status that fits:
400 bad value or unsupported field, 401 bad API key, 404 unknown model or route, 405 wrong method (with Allow),
413 body too large, 421 Host not allowed, 422 wrong field type or value out of range, 503 too many rows in
flight; the OpenAPI document (/openapi.json) lists them all. The defaults and limits the server applies are the
fields of `ServeConfig` (docs/SECURITY.md). Tokenizing and rendering chat templates run in worker threads, so
a long prompt never stalls the event loop, and a request whose client went away stops decoding.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from danlu.app.usage import UsageTracker
from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.serve import logprobs as lps  # log-probs, shaped as OpenAI does
from danlu.serve.batching import Batcher, Overloaded, Row, RowEvent
from danlu.serve.prompting import ServeConfig, chat_plan, choice_options, generation_options
from danlu.serve.replies import ReplyStream, reply_message
from danlu.serve.schemas import APIError, ChatRequest, CompletionRequest, EmbeddingRequest
from danlu.serve.server import ERROR_RESPONSES, BodyLimit, HostCheck, SafeJSON
from danlu.serve.tokenize import add_tokenizer_routes, prompt_list

# The two generation routes answer JSON, or server-sent events with stream=true: each event's data is one JSON
# chunk, and the last one is "[DONE]" (OpenAPI 3.1: the schema of an event stream describes one event).
SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}
STREAMED = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}}

STATIC = Path(__file__).parent / "static"
GONE = -1  # the row index of the event that says the client hung up


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def create_app(
    model: Any, tokenizer: Any, config: ServeConfig | None = None, embedder: Any = None
) -> FastAPI:
    """The FastAPI application serving `model` (with its tokenizer) and, optionally, an embedder
    (danlu.app.embeddings.BertEmbeddings or anything with name, dim, embed_documents)."""
    config = config or ServeConfig()
    if tokenizer is None:
        raise DanluError("serving needs the model's tokenizer; load a checkpoint saved with tokenizer.json")
    model.eval()
    batcher = Batcher(
        model, tokenizer, config.max_batch_size, config.max_wait_ms, config.max_rows_in_flight,
        scheduler=config.scheduler, kv_cache_tokens=config.kv_cache_tokens,
        prefill_chunk=config.prefill_chunk_tokens, prefix_cache_tokens=config.prefix_cache_tokens,
    )  # fmt: skip
    usage = UsageTracker()
    block = model.config.block_size
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(
        title="danlu",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        default_response_class=SafeJSON,
        responses=ERROR_RESPONSES,
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(HostCheck, allowed=config.allowed_hosts)  # added last: runs first
    generated_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with the served model ids as the enum of every `model` (any other is a 404)."""
        if app.openapi_schema is None:
            doc = generated_openapi()
            schemas = doc["components"]["schemas"]
            for name in ("ChatRequest", "CompletionRequest"):
                schemas[name]["properties"]["model"]["enum"] = [config.model_name]
            if embedder is not None:
                schemas["EmbeddingRequest"]["properties"]["model"]["enum"] = [embedder.name]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.batcher, app.state.usage, app.state.config = batcher, usage, config

    # ---- errors ------------------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def on_api_error(request: Request, e: APIError) -> JSONResponse:
        return SafeJSON(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        bad_json = next((x for x in errors if x.get("type") == "json_invalid"), None)
        if bad_json is not None:
            ctx = bad_json.get("ctx") or {}
            err = APIError(
                400,
                f"the request body is not valid JSON ({ctx.get('error', bad_json.get('msg'))})",
                code="invalid_json",
            )
            return SafeJSON(err.body(), status_code=400)
        first = errors[0]
        if first.get("type") == "invalid_unicode":
            where = (first.get("ctx") or {}).get("where", "body")
            err = APIError(400, str(first.get("msg")), param=where, code="invalid_unicode")
            return SafeJSON(err.body(), status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        got = repr(first.get("input"))[:80]
        err = APIError(422, f"{where}: {first.get('msg')} (got {got})", param=where, code=first.get("type"))
        return SafeJSON(err.body(), status_code=422)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, e: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        message = e.detail if e.status_code != 404 else f"no route {request.method} {request.url.path}"
        err = APIError(e.status_code, str(message), code=codes.get(e.status_code))
        return SafeJSON(err.body(), status_code=e.status_code, headers=e.headers)  # 405 keeps its Allow

    @app.exception_handler(Exception)
    async def on_crash(request: Request, e: Exception) -> JSONResponse:
        err = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
        return SafeJSON(err.body(), status_code=500)

    async def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(token.encode(), config.api_key.encode()):
            raise APIError(
                401,
                "missing or incorrect API key; send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
            )

    # ---- helpers -----------------------------------------------------------------------------------------
    def check_model(name: str, embeddings: bool = False) -> None:
        want = getattr(embedder, "name", None) if embeddings else config.model_name
        if name != want:
            served = [config.model_name] + ([embedder.name] if embedder is not None else [])
            what = "embedding model" if embeddings else "model"
            hint = "" if not embeddings or embedder is not None else " (start the server with --embeddings)"
            raise APIError(
                404,
                f"the {what} {name!r} does not exist here; served: {served}{hint}",
                param="model",
                code="model_not_found",
            )

    async def encode(text: str) -> list[int]:
        """The prompt's tokens, in a worker thread (a 1 MB prompt takes seconds); the batcher decodes from
        them, so a prompt is tokenised once."""
        return await run_in_threadpool(tokenizer.encode, text)

    def check_rows(n: int, prompts: int) -> None:
        if n > config.max_n:
            raise APIError(
                400, f"n={n} is too large; this server returns at most {config.max_n} choices", param="n"
            )
        rows = n * prompts
        if rows > config.max_rows_per_request:
            raise APIError(
                400,
                f"this request asks for {rows} completions (n x prompts); this server decodes at most "
                f"{config.max_rows_per_request} per request; send fewer prompts or a smaller n",
                param="prompt" if prompts > 1 else "n",
            )

    def submit(specs: list[tuple[str, GenerationOptions, list[int]]]) -> tuple[asyncio.Queue, list[Row]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emitter(index: int) -> Callable[[RowEvent], None]:
            def emit(event: RowEvent) -> None:
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (index, event))
                except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                    pass

            return emit

        rows = [Row(p, o, len(ids), emitter(i), prompt_ids=ids) for i, (p, o, ids) in enumerate(specs)]
        try:
            batcher.submit(rows)
        except Overloaded as e:
            raise APIError(
                503, f"the server is busy ({e}); retry shortly", type="server_error", code="overloaded"
            ) from e
        return events, rows

    def failure(e: BaseException) -> APIError:
        if isinstance(e, Overloaded):
            return APIError(503, str(e), type="server_error", code="overloaded")
        if isinstance(e, DanluError):
            return APIError(400, str(e))
        return APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")

    async def events_of(events: asyncio.Queue, rows: list[Row]) -> AsyncIterator[tuple[int, RowEvent]]:
        """Each row's events until every row is done; an error event raises."""
        remaining = set(range(len(rows)))
        try:
            while remaining:
                index, event = await events.get()
                if index == GONE:
                    return
                if index not in remaining:
                    continue
                if event.error is not None:
                    raise failure(event.error)
                if event.done:
                    remaining.discard(index)
                yield index, event
        finally:
            for r in rows:  # the client left or an error ended this request: stop decoding its rows
                r.cancelled = True

    async def cancel_on_disconnect(request: Request, events: asyncio.Queue, rows: list[Row]) -> None:
        """Mark the rows cancelled as soon as the client hangs up (the body is read: the next message the
        server gives is http.disconnect, when the client goes away or after the response), and wake the
        collector: cancelled rows send no final event."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for r in rows:
            r.cancelled = True
        events.put_nowait((GONE, RowEvent()))

    async def collect(request: Request, events: asyncio.Queue, rows: list[Row]) -> list[tuple]:
        """Every row's (text, finish reason, tokens, Completion); if the client leaves first, its rows stop
        decoding."""
        watcher = asyncio.create_task(cancel_on_disconnect(request, events, rows))
        texts = [""] * len(rows)
        finals: list[RowEvent] = [RowEvent()] * len(rows)
        try:
            async for i, ev in events_of(events, rows):
                texts[i] += ev.piece
                if ev.done:
                    finals[i] = ev
        finally:
            watcher.cancel()
        return [
            (t, f.finish_reason or "stop", f.completion_tokens, f.completion) for t, f in zip(texts, finals)
        ]

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    # ---- routes ------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    @app.get("/metrics")  # the same figures where monitoring looks for them: batching, prefix-cache hit rate
    async def health() -> dict[str, Any]:
        return {
            "status": "ok" if batcher.alive else "stopped",
            "model": config.model_name,
            "batching": {**batcher.stats.to_dict(), "rows_in_flight": batcher.in_flight},
        }

    @app.get("/usage", dependencies=[Depends(check_key)])
    async def get_usage() -> dict[str, Any]:
        return {name: u.to_dict() for name, u in usage.by_model.items()}

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": started, "owned_by": "danlu"}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict[str, Any]:
        names = [config.model_name] + ([embedder.name] if embedder is not None else [])
        return {"object": "list", "data": [model_card(n) for n in names]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(check_key)])
    async def get_model(name: str) -> dict[str, Any]:
        if name != config.model_name and name != getattr(embedder, "name", None):
            check_model(name)
        return model_card(name)

    @app.post("/v1/completions", dependencies=[Depends(check_key)], responses=STREAMED)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        check_model(req.model)
        if req.suffix is not None:
            raise APIError(400, "suffix is not supported by danlu serve; leave it out", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(
                400,
                f"best_of={req.best_of} is not supported by danlu serve (it would rank {req.best_of} samples "
                f"by log-probability); leave it out or set it equal to n={req.n}",
                param="best_of",
            )
        k, decode = lps.completion_logprobs(req), req.max_tokens != 0  # max_tokens 0 (with echo): only score
        prompts = prompt_list(tokenizer, req.prompt)
        check_rows(req.n, len(prompts))
        checked = req if decode else req.model_copy(update={"max_tokens": 1})
        specs = []
        for p, given in prompts:
            ids = given if given is not None else await encode(p)
            opts = generation_options(checked, len(ids), block, tokenizer, config, chat=False, param="prompt")
            specs += [(p, o, ids) for o in choice_options(lps.with_top_logprobs(opts, k), req.n)]
        scored = [[] for _ in specs]  # the prompt's tokens with their log-probs (echo)
        if req.echo and k is not None:
            scored = await run_in_threadpool(lps.score_prompts, model, [ids for _, _, ids in specs], k)

        def legacy(tokens: list, ids: list[int] | tuple = (), start: int = 0) -> dict[str, Any] | None:
            return None if k is None else lps.legacy_logprobs(tokenizer, tokens, ids, start)

        events, rows = submit(specs) if decode else (asyncio.Queue(), [])
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        prompt_tokens = sum(len(ids) for _, _, ids in specs[:: req.n])

        def chunk(i: int, text: str, finish: str | None, logprobs: Any = None) -> dict[str, Any]:
            choice = {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
            return {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [choice]}  # fmt: skip

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def stream() -> AsyncIterator[str]:
                completion_tokens, offsets = 0, [0] * len(specs)
                for i, (p, _, ids) in enumerate(specs if req.echo else []):
                    offsets[i] = len(p)
                    yield sse(chunk(i, p, None if decode else "length", legacy(scored[i], ids)))
                try:
                    async for i, ev in events_of(events, rows):
                        if ev.piece or ev.scored:
                            yield sse(chunk(i, ev.piece, None, legacy(list(ev.scored), (), offsets[i])))
                            offsets[i] += len(ev.piece)
                        if ev.done:
                            completion_tokens += ev.completion_tokens
                            yield sse(chunk(i, "", ev.finish_reason))
                except APIError as e:
                    yield sse(e.body())
                    return
                usage.record(config.model_name, prompt_tokens, completion_tokens)
                if include_usage:
                    counts = _usage(prompt_tokens, completion_tokens)
                    yield sse({**chunk(0, "", None), "choices": [], "usage": counts})
                yield "data: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream")
        results = await collect(request, events, rows) if decode else [("", "length", 0, None)] * len(specs)
        completion_tokens = sum(r[2] for r in results)
        usage.record(config.model_name, prompt_tokens, completion_tokens)
        choices = []
        for i, (text, reason, _, done) in enumerate(results):
            lp = legacy(scored[i] + (lps.completion_scored(done) if done is not None else []), specs[i][2])
            choices.append({"text": (specs[i][0] if req.echo else "") + text, "index": i, "logprobs": lp,
                            "finish_reason": reason})  # fmt: skip
        return {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}  # fmt: skip

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)], responses=STREAMED)
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        check_model(req.model)
        k = lps.chat_top_logprobs(req)  # None: no log-probs asked
        check_rows(req.n, 1)
        plan = await run_in_threadpool(chat_plan, tokenizer, req)  # templates and schemas may take a while
        prompt = plan.prompt
        ids = await encode(prompt)
        opts = generation_options(req, len(ids), block, tokenizer, config, chat=True, param="messages")
        opts = plan.constrain(lps.with_top_logprobs(opts, k))  # tools, response_format: tools.py
        events, rows = submit([(prompt, o, ids) for o in choice_options(opts, req.n)])
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        prompt_tokens = len(ids)

        def logprobs_of(scored: Any) -> dict[str, Any] | None:
            return None if k is None else {"content": lps.chat_content(tokenizer, scored), "refusal": None}

        def chunk(i: int, delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> dict[str, Any]:
            choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "system_fingerprint": None, "choices": [choice]}  # fmt: skip

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def stream() -> AsyncIterator[str]:
                completion_tokens = 0
                replies = [ReplyStream(plan) for _ in range(req.n)]  # text or tool-call deltas
                for i in range(req.n):
                    yield sse(chunk(i, {"role": "assistant", "content": ""}, None))
                try:
                    async for i, ev in events_of(events, rows):
                        lp = logprobs_of(ev.scored) if ev.piece or ev.scored else None
                        for delta, delta_lp in replies[i].feed_scored(ev.piece, lp):
                            yield sse(chunk(i, delta, None, delta_lp))
                        if ev.done:
                            completion_tokens += ev.completion_tokens
                            last, reason = replies[i].close(ev.finish_reason or "stop")
                            for delta in last:
                                yield sse(chunk(i, delta, None))
                            yield sse(chunk(i, {}, reason))
                except APIError as e:
                    yield sse(e.body())
                    return
                usage.record(config.model_name, prompt_tokens * req.n, completion_tokens)
                if include_usage:
                    final = {
                        **chunk(0, {}, None),
                        "choices": [],
                        "usage": _usage(prompt_tokens * req.n, completion_tokens),
                    }
                    yield sse(final)
                yield "data: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream")
        results = await collect(request, events, rows)
        completion_tokens = sum(r[2] for r in results)
        usage.record(config.model_name, prompt_tokens * req.n, completion_tokens)
        choices = []
        for i, (text, reason, _, done) in enumerate(results):
            message, reason = reply_message(text, reason, plan)  # text, or tool_calls (replies.py)
            lp = logprobs_of(lps.completion_scored(done)) if done is not None else None
            choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": reason})
        return {"id": rid, "object": "chat.completion", "created": created, "model": req.model,
                "system_fingerprint": None, "choices": choices,
                "usage": _usage(prompt_tokens * req.n, completion_tokens)}  # fmt: skip

    add_tokenizer_routes(app, tokenizer, block, check_model, check_key)

    @app.post("/v1/embeddings", dependencies=[Depends(check_key)])
    async def embeddings(req: EmbeddingRequest) -> Any:
        check_model(req.model, embeddings=True)
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or not all(texts):
            raise APIError(
                400, "input must be a non-empty string or a list of non-empty strings", param="input"
            )
        if len(texts) > config.max_embedding_inputs:
            raise APIError(
                400, f"{len(texts)} inputs; at most {config.max_embedding_inputs} per request", param="input"
            )
        if req.dimensions is not None and req.dimensions != embedder.dim:
            raise APIError(
                400,
                f"dimensions={req.dimensions}: this model's embeddings have {embedder.dim}",
                param="dimensions",
            )
        counter = getattr(embedder, "count_tokens", lambda t: len(t.split()))
        tokens = await run_in_threadpool(lambda: [counter(t) for t in texts])
        limit = getattr(embedder, "max_length", None)
        for i, n in enumerate(tokens):
            if limit is not None and n > limit:
                raise APIError(
                    400,
                    f"input[{i}] is {n} tokens; the encoder takes at most {limit}; split it",
                    param="input",
                    code="context_length_exceeded",
                )
        vectors = np.asarray(await run_in_threadpool(embedder.embed_documents, texts), dtype=np.float32)
        data = []
        for i, v in enumerate(vectors):
            value: Any = (
                base64.b64encode(v.astype("<f4").tobytes()).decode()
                if req.encoding_format == "base64"
                else v.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage.record(embedder.name, sum(tokens), 0)
        return {"object": "list", "data": data, "model": req.model,
                "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}}  # fmt: skip

    return app
