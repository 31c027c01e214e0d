"""Hosting the API: the request-level guards (BodyLimit 413, HostCheck 421, SafeJSON), the connection-level
guards (`GuardedH11Protocol`: a header timeout and a connection cap, which uvicorn lacks), `serve` (uvicorn in
the foreground) and `BackgroundServer` (uvicorn in a thread on a free 127.0.0.1 port, for tests, benchmarks and
notebooks). Every limit is a `ServeConfig` field; docs/SECURITY.md lists them with their defaults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import h11
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from danlu.errors import DanluError
from danlu.serve.schemas import APIError, ErrorBody

# The error replies every route may give, for the OpenAPI document (what they mean: danlu/serve/api.py).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "a bad value or an unsupported field",
        401: "a missing or wrong API key (when the server has one)",
        404: "an unknown model",
        405: "a method the route does not take (the Allow header lists those it does)",
        413: "a body over the size limit",
        421: "a Host header this server does not answer to (DNS-rebinding defence)",
        422: "a field of the wrong type or out of its range",
        503: "too many rows in flight, too many connections, or the server is stopping; retry shortly",
    }.items()
}


class SafeJSON(JSONResponse):
    """JSONResponse that cannot fail on text it echoes: a lone surrogate (legal in JSON, not in UTF-8) comes
    out escaped instead of raising UnicodeEncodeError in the middle of an error reply."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace"
        )


def _error_reply(error: APIError, headers: dict[str, str] | None = None) -> SafeJSON:
    return SafeJSON(error.body(), status_code=error.status, headers=headers)


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
            return await _error_reply(_too_large(int(length), self.max_bytes))(scope, receive, send)
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


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port: b"Localhost:8000" -> "localhost", b"[::1]:80" -> "::1"."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class HostCheck:
    """ASGI middleware: 421 unless the Host header names one of `allowed` (None: any).

    A server on 127.0.0.1 is reachable from a web page the user opens: DNS rebinding points the page's own
    domain at 127.0.0.1, and the browser then sends that domain as Host. Answering only to the loopback names
    (the default when bound to loopback) turns those requests away."""

    def __init__(self, app: Any, allowed: tuple[str, ...] | list[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed is None else {h.lower().strip("[]") for h in allowed}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.allowed is not None and scope["type"] in ("http", "websocket"):
            header = dict(scope.get("headers") or []).get(b"host", b"")
            name = host_name(header)
            if name not in self.allowed:
                error = APIError(
                    421,
                    f"this server does not answer to Host {header.decode('latin-1')[:100]!r}; it answers to "
                    f"{sorted(self.allowed)} (start it with --allowed-hosts to add names)",
                    code="host_not_allowed",
                )
                return await _error_reply(error)(scope, receive, send)
        await self.app(scope, receive, send)


_OVER_CAP = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the two connection limits it lacks (read in uvicorn 0.54's
    h11_impl.py: its keep-alive timer starts only after a response, and any received byte cancels it).

    - header timeout: from the moment a connection opens, or a kept-alive one receives the first byte of its
      next request, the request line and headers must be complete within `header_timeout` seconds, else the
      connection is closed (an idle or slow-header socket holds nothing for long);
    - connection cap: at `max_connections` open ones, a new connection first evicts the oldest one still
      waiting for its request's headers (an idle or slow-header socket: holding many of them must not lock out
      clients that do ask something); only when every connection has a request in progress does the new one
      get a fixed 503 and close, before any parsing (uvicorn's own limit_concurrency answers only once the
      headers are in, and counts idle sockets as much as busy ones).
    The class attributes are set per server by `guarded_protocol`."""

    header_timeout: float = 10.0
    max_connections: int = 512

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_since = time.monotonic()  # when this connection began waiting for a request's headers
        if len(self.connections) > self.max_connections:
            self._evict_one_waiting()
        if len(self.connections) > self.max_connections:
            body = json.dumps(
                APIError(
                    503,
                    f"this server already holds {self.max_connections} connections; retry shortly",
                    type="server_error",
                    code="too_many_connections",
                ).body()
            ).encode()
            transport.write(_OVER_CAP % (len(body), body))
            transport.close()
            return
        self._start_header_timer()

    def _waiting(self) -> bool:
        """No request in progress: idle, or still receiving a request line and headers."""
        busy = self.cycle is not None and not self.cycle.response_complete
        return not busy and self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _evict_one_waiting(self) -> None:
        waiting = [
            c
            for c in self.connections
            if c is not self and isinstance(c, GuardedH11Protocol) and c._waiting()
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c._waiting_since)
            oldest.transport.close()
            self.connections.discard(oldest)  # closing completes on a later loop turn; count it gone now

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.close()  # no response: the client never finished asking

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # bytes of a new request: its headers are now on the clock
            if self._header_timer is None:
                self._waiting_since = time.monotonic()
            self._start_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._stop_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)


def guarded_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """A GuardedH11Protocol class with these limits (uvicorn takes a protocol class, not an instance)."""
    if header_timeout <= 0 or max_connections < 1:
        raise DanluError(
            f"bad connection limits: header_timeout={header_timeout} (> 0 s), max_connections={max_connections} "
            "(>= 1)"
        )
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


def raise_fd_limit(max_connections: int) -> int:
    """Raise this process's open-file limit towards its hard limit so max_connections sockets fit, and return
    the connection cap that does fit (each connection is one descriptor; 64 are kept for files and logs)."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - 64))


def uvicorn_config(app: Any, config: Any, log_level: str = "info", **kwargs: Any) -> Any:
    """uvicorn.Config for `app` with the connection limits of a ServeConfig applied."""
    import uvicorn

    cap = raise_fd_limit(config.max_connections)
    if cap < config.max_connections:
        logging.getLogger("danlu.serve").warning(
            "max_connections lowered from %d to %d to fit the open-file limit", config.max_connections, cap
        )
    return uvicorn.Config(
        app,
        log_level=log_level,
        http=guarded_protocol(config.header_timeout_s, cap),
        timeout_keep_alive=config.keep_alive_timeout_s,
        **kwargs,
    )


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run `app` (from `api.create_app`, its ServeConfig in app.state.config) until interrupted. The caller
    builds the app, so this module (below api.py, which uses its guards) never imports api.py."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, app.state.config, host=host, port=port)).run()


class BackgroundServer:
    """uvicorn serving `app` on 127.0.0.1 from a thread, on a free port (tests, benchmarks, notebooks), with
    the connection limits of the app's ServeConfig (app.state.config).

    with BackgroundServer(create_app(model, tokenizer)) as url:   # "http://127.0.0.1:PORT"
        ...
    """

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import socket
        import threading

        import uvicorn

        from danlu.serve.prompting import ServeConfig

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        state = getattr(app, "state", None)
        config = getattr(state, "config", None) or ServeConfig()
        uv = uvicorn_config(app, config, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(uv)
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
