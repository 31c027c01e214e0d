"""ServeConfig: every default and limit of `danlu serve` in one dataclass (no web dependencies, so the CLI can
show the defaults in --help without fastapi installed). docs/SECURITY.md explains each limit."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.flags import check_ranges, option

SCHEDULERS = ("continuous", "static")  # serve/batching.py: rows join between steps, or batches run to the end

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the Host names a loopback-only server answers to
# Below this the engine's logits / temperature overflow float32 (1e-300 gave NaN probabilities); such a request
# is decoded greedily, the limit softmax(logits / T) tends to as T -> 0.
MIN_SAMPLING_TEMPERATURE = 1e-5


@dataclass
class ServeConfig:
    """Every default and limit the server applies; docs/SECURITY.md lists them. The fields with help text are
    `danlu serve`'s flags (`danlu.flags.add_dataclass_flags`: help, default and range said once, here)."""

    model_name: str = option("danlu", cli=False)  # the id clients put in "model" (--name)
    api_key: str | None = option(None, cli=False)  # None: no key needed (--api-key or DANLU_API_KEY)
    # a row of a beam search counts num_beams
    max_batch_size: int = option(32, "requests decoded together (1 = one by one)", ge=1)
    max_wait_ms: float = option(10.0, "how long a request waits for company (static scheduler)", ge=0)
    # "continuous": rows join and leave the running batch between engine steps (serve/batching.py);
    # "static": a batch is gathered, then decoded to its end (the baseline of benchmarks/serve_load.py).
    scheduler: str = option(
        "continuous",
        "continuous: requests join and leave the running batch between steps; static: a gathered batch "
        "decodes to its end",
        choices=SCHEDULERS,
    )
    kv_cache_tokens: int = option(
        32768, "continuous: KV-cache room (rows x tokens); a request that does not fit waits", ge=1
    )
    prefill_chunk_tokens: int = option(
        256, "continuous: prompt tokens prefilled per step, so long prompts do not stall decoding", ge=1
    )
    prefix_cache_tokens: int = option(
        4096, "continuous: prompt-prefix keys/values kept for reuse (0 = off)", ge=0, hint="0 = off"
    )  # LRU
    max_body_bytes: int = option(1_000_000, "larger request bodies get a 413", ge=1)
    default_max_tokens: int = option(
        256, "max_tokens of a request that gives none (capped by the room left in the context)", ge=1
    )
    # The limits: each bounds what one client can make the server do (the `limits` group of `danlu serve`).
    max_num_beams: int = option(8, "widest beam search", ge=1)  # a beam costs a decoding row and its KV cache
    max_n: int = option(8, "choices per request", ge=1)
    max_rows_per_request: int = option(16, "completions one request may ask for, n x prompts", ge=1)
    max_rows_in_flight: int = option(
        256, "rows waiting or decoding, all requests together; beyond it 503", ge=1
    )
    max_prompt_tokens: int = option(8192, "longest prompt, besides the model's context", ge=1)
    max_stop: int = option(16, cli=False)  # stop strings per request
    max_embedding_inputs: int = option(2048, cli=False)
    # for `temperature: null`; GenerationOptions' default (greedy), as the CLI
    default_temperature: float = option(0.0, cli=False)
    # Connections (applied by serve() and BackgroundServer, see server.py)
    header_timeout_s: float = option(
        10.0, "seconds a connection has to send a request's headers", ge=0, flag="header_timeout"
    )
    keep_alive_timeout_s: float = option(
        5.0, "seconds an idle keep-alive connection stays open", ge=0, flag="keep_alive_timeout"
    )
    max_connections: int = option(
        512,
        "open connections; at the cap the oldest idle one is closed to make room, or if every one is busy the "
        "new one gets a bare 503",
        ge=1,
    )
    # Host header names accepted; None = any (--allowed-hosts, resolved by cli/serve.allowed_hosts)
    allowed_hosts: tuple[str, ...] | None = option(LOOPBACK_HOSTS, cli=False)

    def __post_init__(self) -> None:
        check_ranges(self)  # the flags' ranges hold for a config built in Python too


# The fields `danlu serve` shows under "limits" (the others are its main options).
LIMIT_FIELDS = ("max_num_beams", "max_n", "max_rows_per_request", "max_rows_in_flight", "max_prompt_tokens",
                "header_timeout_s", "keep_alive_timeout_s", "max_connections")  # fmt: skip
