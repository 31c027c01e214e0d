"""ServeConfig: every default and limit of `danlu serve` in one dataclass (no web dependencies, so the CLI can
show the defaults in --help without fastapi installed). docs/SECURITY.md explains each limit."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import DanluError

SCHEDULERS = ("continuous", "static")  # serve/batching.py: rows join between steps, or batches run to the end

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the Host names a loopback-only server answers to
# Below this the engine's logits / temperature overflow float32 (1e-300 gave NaN probabilities); such a request
# is decoded greedily, the limit softmax(logits / T) tends to as T -> 0.
MIN_SAMPLING_TEMPERATURE = 1e-5


@dataclass
class ServeConfig:
    """Every default and limit the server applies (`danlu serve` flags set them; docs/SECURITY.md lists them)."""

    model_name: str = "danlu"  # the id clients put in "model"
    api_key: str | None = None  # None: no key needed
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    max_batch_size: int = (
        32  # sequences decoded together (a row of a beam search counts num_beams); 1 = sequential
    )
    max_wait_ms: float = 10.0  # how long a lone request waits for company (the static scheduler)
    # "continuous": rows join and leave the running batch between engine steps (serve/batching.py);
    # "static": a batch is gathered, then decoded to its end (the baseline of benchmarks/serve_load.py).
    scheduler: str = "continuous"
    kv_cache_tokens: int = 32768  # continuous: KV-cache slots x length at most; a row that does not fit waits
    prefill_chunk_tokens: int = (
        256  # continuous: prompt tokens prefilled per engine step (long prompts: chunks)
    )
    prefix_cache_tokens: int = 4096  # continuous: prompt-prefix keys/values kept for reuse (LRU); 0 = off
    max_rows_in_flight: int = 256  # rows waiting or decoding, all requests together; beyond it: 503
    max_rows_per_request: int = 16  # n x prompts of one request; beyond it: 400
    max_n: int = 8  # choices per request
    max_num_beams: int = 8  # beam width; each beam costs a decoding row and its KV cache
    max_prompt_tokens: int = 8192  # and never more than the model's context leaves room for
    max_stop: int = 16  # stop strings per request
    max_embedding_inputs: int = 2048
    default_max_tokens: int = 256  # when a request gives none (capped by the context left)
    default_temperature: float = (
        0.0  # for `temperature: null`; GenerationOptions' default (greedy), as the CLI
    )
    # Connections (applied by serve() and BackgroundServer, see server.py)
    header_timeout_s: float = 10.0  # a connection must finish a request's headers this soon after it starts
    keep_alive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 512  # open connections; beyond it a new one gets a bare 503 and is closed
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS  # Host header names accepted; None = any

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise DanluError(f"scheduler must be one of {list(SCHEDULERS)}, got {self.scheduler!r}")
        for name in ("kv_cache_tokens", "prefill_chunk_tokens"):
            if getattr(self, name) < 1:
                raise DanluError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prefix_cache_tokens < 0:
            raise DanluError(f"prefix_cache_tokens must be >= 0 (0 = off), got {self.prefix_cache_tokens}")
