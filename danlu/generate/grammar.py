"""Structured output: decoding constrained by a JSON Schema, as one more logits processor.

Each step, a matcher per row says which token ids keep the text a prefix of some document the schema accepts;
every other token gets −inf before a token is picked (greedy or sampled), so the output always parses. The
end-of-text ids are allowed only once the document is complete. An output cut by max_new_tokens is the one
case that is not complete JSON (OpenAI's finish_reason "length").

The library is llguidance (Microsoft; what vLLM, SGLang and llama.cpp use): its Rust core compiles the schema
to a grammar and computes a step's mask over the whole vocabulary with an Earley parser walking a trie of the
tokens' bytes (a few tenths of a millisecond on SmolLM2's 49k tokens), and it needs no torch of its own. It
takes the tokenizer as the bytes of each token id, which danlu's byte-level BPE tokenizers give directly
(`token_bytes`). It is optional: `pip install danlu[grammar]`.

`{"type": "object"}` is any JSON object (OpenAI's `response_format={"type": "json_object"}`).
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import numpy as np
import torch

from danlu.errors import DanluError

MAX_SCHEMA_BYTES = 64 * 1024  # a schema is untrusted input: bounded before it is parsed or compiled
# Exactly Python's `json.dumps` spacing: llguidance's default (any run of whitespace between items) lets a
# model pad forever with newlines; as overrides, a schema's own "x-guidance" cannot turn that back on.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
INSTALL = "pip install danlu[grammar]"


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as e:
        raise DanluError(f"json_schema needs the llguidance library; install it with `{INSTALL}`") from e
    return llguidance


# ---- the schema -----------------------------------------------------------------------------------------------
def canonical_schema(schema: str | dict | bool) -> str:
    """The schema as canonical JSON text (no spaces; keys keep their order, since the order of "properties"
    is the order the fields are written in), so a schema given as text or as a dict compares equal.

    Accepts the JSON text or the parsed value (a dict, or True/False: any / no document). A text over
    MAX_SCHEMA_BYTES or that is not JSON is a DanluError naming json_schema and the position of the fault."""
    if isinstance(schema, str):
        size = len(schema.encode("utf-8"))
        if size > MAX_SCHEMA_BYTES:
            raise DanluError(f"json_schema is {size} bytes; the limit is {MAX_SCHEMA_BYTES} bytes")
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise DanluError(
                f"json_schema is not JSON: {e.msg} at line {e.lineno} column {e.colno}; "
                'give a JSON Schema such as {"type": "object"}'
            ) from None
    if not isinstance(schema, dict | bool):
        raise DanluError(
            f"json_schema must be a JSON object (a JSON Schema), got {type(schema).__name__}: "
            f"{str(schema)[:80]!r}"
        )
    try:
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DanluError(f"json_schema cannot be written as JSON: {e}") from None
    if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
        raise DanluError(f"json_schema is over the limit of {MAX_SCHEMA_BYTES} bytes")
    return text


def read_schema_file(path: str) -> str:
    """The text of a schema file (`--json-schema FILE`), bounded and checked to be JSON, errors naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCHEMA_BYTES + 1)
    except OSError as e:
        raise DanluError(f"--json-schema {path}: cannot read it ({e.strerror})") from None
    if len(data) > MAX_SCHEMA_BYTES:
        raise DanluError(f"--json-schema {path}: the file is over the limit of {MAX_SCHEMA_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        json.loads(text)
    except UnicodeDecodeError as e:
        raise DanluError(f"--json-schema {path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DanluError(
            f"--json-schema {path}: not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    return text


def compile_schema(schema: str, ll_tokenizer: Any = None) -> str:
    """The llguidance grammar of a canonical schema; a schema it cannot compile is a DanluError with its
    message (checked without a tokenizer when none is given, e.g. while options are validated)."""
    llg = _llguidance()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_LAYOUT)
        error = llg.LLMatcher.validate_grammar(grammar, ll_tokenizer)
    except (ValueError, RuntimeError) as e:
        error = str(e)
    if error:
        raise DanluError(f"json_schema cannot be compiled into a grammar: {error}")
    return grammar


# ---- the tokenizer, as llguidance sees it ---------------------------------------------------------------------
class _TokenTable:
    """What llguidance's TokenizerWrapper reads: bytes per id, specials, EOS/BOS, and an encoder."""

    def __init__(self, tokenizer: Any) -> None:
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.tokens = []
        for i in range(tokenizer.vocab_size):
            try:
                self.tokens.append(tokenizer.token_bytes(i))
            except DanluError:  # an id no token uses: empty, so no grammar ever allows it
                self.tokens.append(b"")
        # Specials (EOS, <|im_start|>, ...) are never JSON text: llguidance keeps them out of the byte trie.
        self.special_token_ids = sorted(getattr(tokenizer, "_special_ids", ()))
        self._tokenizer = tokenizer
        self._byte_ids = {t[0]: i for i, t in enumerate(self.tokens) if len(t) == 1}

    def __call__(self, data: bytes | str) -> list[int]:
        """Token ids of some text (llguidance tokenizes forced text with it)."""
        if isinstance(data, str):
            return self._tokenizer.encode(data)
        try:
            return self._tokenizer.encode(data.decode("utf-8"))
        except UnicodeDecodeError:  # not text: one byte token per byte
            return [self._byte_ids[b] for b in data if b in self._byte_ids]


_LL_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> LLTokenizer


def ll_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of a danlu tokenizer, built once per tokenizer (SmolLM2: ~0.5 s) and cached."""
    cached = _LL_TOKENIZERS.get(tokenizer)
    if cached is not None:
        return cached
    llg = _llguidance()
    if not hasattr(tokenizer, "token_bytes"):
        raise DanluError(
            f"json_schema needs a byte-level BPE tokenizer (bytes for every token id); this model's is "
            f"{getattr(tokenizer, 'kind', type(tokenizer).__name__)}"
        )
    if tokenizer.eos_token_id is None:
        raise DanluError(
            "json_schema needs a tokenizer with an end-of-text token (to end a complete document)"
        )
    result = llg.LLTokenizer(llg.TokenizerWrapper(_TokenTable(tokenizer)), n_vocab=tokenizer.vocab_size)
    _LL_TOKENIZERS[tokenizer] = result
    return result


# ---- the processor --------------------------------------------------------------------------------------------
class JsonConstraint:
    """A schema compiled for one tokenizer and model: `start(B)` gives the per-row state a decode loop keeps."""

    def __init__(self, tokenizer: Any, schema: str, vocab_size: int, stop_ids: list[int]) -> None:
        if not stop_ids:
            raise DanluError(
                "json_schema needs an end-of-text id to end a complete document; leave add_eos_stop on "
                "or give stop_token_ids"
            )
        self.ll_tokenizer = ll_tokenizer(tokenizer)
        self.grammar = compile_schema(schema, self.ll_tokenizer)
        self.vocab_size, self.stop_ids = vocab_size, list(stop_ids)
        self.eos = tokenizer.eos_token_id

    def start(self, B: int) -> JsonRows:
        llg = _llguidance()
        matchers = [llg.LLMatcher(self.ll_tokenizer, self.grammar, log_level=0) for _ in range(B)]
        for m in matchers:
            if m.is_error():
                raise DanluError(f"json_schema cannot be compiled into a grammar: {m.get_error()}")
        return JsonRows(self, matchers)


class JsonRows:
    """The matchers of a batch's rows: `apply` masks scores (B, V), `append` feeds each row its new token."""

    def __init__(self, constraint: JsonConstraint, matchers: list[Any]) -> None:
        self.c = constraint
        self.matchers = matchers
        self.finished = [False] * len(matchers)  # the row emitted a stop id: no more grammar
        n_words = (constraint.ll_tokenizer.vocab_size + 31) // 32
        self._bitmask = np.zeros((len(matchers), n_words), dtype=np.uint32)  # one bit per token id

    def allowed(self) -> np.ndarray:
        """(B, V) bool: the tokens each row may take next (every token for a finished row).

        numpy, one thread: on a CPU a step's few small tensor ops cost more in thread hand-offs than in work
        (SmolLM2 on a busy 2-core machine: ~20-60 ms per step for torch's 2-thread ops, < 1 ms in numpy)."""
        B, V, n_ll = len(self.matchers), self.c.vocab_size, self.c.ll_tokenizer.vocab_size
        live = [(m, b) for b, m in enumerate(self.matchers) if not self.finished[b]]
        # Straight into the buffer (llguidance.torch would import torch._dynamo: ~15 s); several rows in
        # parallel on llguidance's thread pool, one row on this thread (the hand-off costs more than its mask).
        row_bytes = self._bitmask.shape[1] * 4
        if len(live) == 1:
            m, b = live[0]
            m.unsafe_compute_mask_ptr(self._bitmask.ctypes.data + b * row_bytes, row_bytes)
        elif live:
            _executor().unsafe_compute_mask_ptr(live, self._bitmask.ctypes.data, row_bytes, B)
        # Bit j of little-endian word w is token 32·w + j.
        bits = np.unpackbits(self._bitmask.view(np.uint8), axis=1, count=n_ll, bitorder="little")  # (B, n_ll)
        allowed = np.zeros((B, V), dtype=np.bool_)
        n = min(V, n_ll)  # model rows past the tokenizer's ids (padded vocab) are never text
        allowed[:, :n] = bits[:, :n]
        if self.c.eos < V:
            allowed[:, self.c.eos] = False  # llguidance's EOS counts only if it is one of our stop ids
        stops = [s for s in self.c.stop_ids if s < V]
        for b, m in enumerate(self.matchers):
            if self.finished[b]:
                allowed[b] = True
            else:
                allowed[b, stops] = m.is_accepting()
        return allowed

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, V) with every token the grammar forbids at −inf. If the other processors left a row
        nothing the grammar allows (min_new_tokens holding back the end of a complete document, a banned
        n-gram), the grammar wins: that row picks among its allowed tokens alone."""
        allowed = self.allowed()
        if scores.device.type == "cpu":  # numpy, one thread (see `allowed`); a new array, scores untouched
            masked_np = np.where(allowed, scores.numpy(), np.float32("-inf"))
            dead = np.isneginf(masked_np).all(axis=1)  # (B,)
            if dead.any():
                masked_np[dead] = np.where(allowed[dead], np.float32(0), np.float32("-inf"))
            return torch.from_numpy(masked_np)
        allowed_t = torch.from_numpy(allowed).to(scores.device)
        masked = scores.masked_fill(~allowed_t, float("-inf"))
        dead_t = masked.amax(-1) == float("-inf")  # (B,)
        if bool(dead_t.any()):
            masked[dead_t] = torch.zeros_like(masked[dead_t]).masked_fill(~allowed_t[dead_t], float("-inf"))
        return masked

    def append(self, tok: torch.Tensor) -> None:
        """Feed each live row its new token, tok (B,)."""
        for b, t in enumerate(tok.tolist()):
            if self.finished[b]:
                continue
            if t in self.c.stop_ids:
                self.finished[b] = True
            elif not self.matchers[b].consume_token(t):
                raise DanluError(
                    f"json_schema: row {b} took token {t}, which the grammar forbids: "
                    f"{self.matchers[b].get_error()}"
                )

    def reorder(self, index: torch.Tensor) -> None:
        raise DanluError("json_schema does not work with beam search; use num_beams=1")


def json_constraint(tokenizer: Any, opts: Any, vocab_size: int, stop_ids: list[int]) -> JsonConstraint:
    """The constraint for opts.json_schema (canonical already: GenerationOptions wrote it out)."""
    return JsonConstraint(tokenizer, opts.json_schema, vocab_size, stop_ids)


_EXECUTOR: list[Any] = []


def _executor() -> Any:
    """One llguidance thread pool for every batch (it computes the rows' masks in parallel)."""
    if not _EXECUTOR:
        _EXECUTOR.append(_llguidance().LLExecutor())
    return _EXECUTOR[0]
