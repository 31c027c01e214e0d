"""`danlu serve`: an OpenAI-compatible HTTP server with continuous batching and a web chat page.

    api.py         create_app(model, tokenizer, ServeConfig, embedder) -> FastAPI: the routes and OpenAI errors
    batching.py    Batcher: a worker thread decoding concurrent requests together: rows join and leave a slot
                   batch between steps (continuous, generate/continuous.py) or run as static batches
    prompting.py   chat_plan (the checked history), generation_options, choice_options
    tools.py       tool calls and response_format: the model's own template, grammar-constrained calls
    replies.py     a chat reply back to OpenAI's message / stream deltas (text or tool_calls)
    schemas.py     the request bodies (strict pydantic) and APIError
    config.py      ServeConfig: every default and limit
    server.py      BodyLimit 413, HostCheck 421, the connection guards, serve(...) (uvicorn), BackgroundServer
    static/        index.html, the chat page

The `danlu serve` command is danlu/cli/serve.py (also `python -m danlu.serve`).

Needs the `serve` extra: pip install 'danlu[serve]' (fastapi, uvicorn, httpx).
"""
