"""Hosting the API: the request-size middleware, `serve` (uvicorn in the foreground) and `BackgroundServer`
(uvicorn in a thread on a free 127.0.0.1 port, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from danlu.errors import DanluError
from danlu.serve.schemas import APIError


class BodyLimit:
    """ASGI middleware: 413 for a body over max_bytes, by Content-Length or while it streams in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse(_too_large(int(length), self.max_bytes).body(), status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, _too_large(seen, self.max_bytes).message)
            return message

        await self.app(scope, limited, send)


def _too_large(size: int, limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is {size}+ bytes; this server accepts at most {limit}",
        code="request_too_large",
    )


def _too_large(size: int, limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is {size}+ bytes; this server accepts at most {limit}",
        code="request_too_large",
    )


def serve(
    model: Any,
    tokenizer: Any,
    config: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    embedder: Any = None,
) -> None:
    """Run the server until interrupted."""
    import uvicorn

    from danlu.serve.api import create_app

    uvicorn.run(create_app(model, tokenizer, config, embedder), host=host, port=port, log_level="info")


class BackgroundServer:
    """uvicorn serving `app` on 127.0.0.1 from a thread, on a free port (tests, benchmarks, notebooks).

    with BackgroundServer(create_app(model, tokenizer)) as url:   # "http://127.0.0.1:PORT"
        ...
    """

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise DanluError("the background server did not start within 30 s")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
