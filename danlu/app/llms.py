"""Model wrappers: one small protocol (`invoke`, `stream`, `batch`) over a local danlu model, any
OpenAI-compatible HTTP endpoint, and a scripted fake for tests.

Notes 003 §LangChain: a wrapper connects to a model (OpenAI, Hugging Face, ...), offers a fake LLM for tests,
caching, usage records and streaming. Here they are a few visible parts, not a class tower:

    llm = LocalLLM.from_path("runs/demo/sft/checkpoint", cache=MemoryCache(), usage=UsageTracker())
    llm.invoke("What is 3 + 4?")                       # a str prompt is sent as is
    llm.invoke([{"role": "user", "content": "Hi"}])    # chat messages go through the chat template
    for piece in llm.stream("Once upon"): ...
    llm.batch(["a", "b"])                              # one batched generate (or concurrent HTTP calls)
    remote.chat(messages, tools=[...], tool_choice="auto")  # OpenAILLM: native tool calls (a ChatReply)

A prompt is a `str` or a list of chat messages. Options are danlu's generation option names
(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty,
no_repeat_ngram_size, num_beams, length_penalty, stop, seed); a wrapper's defaults are the visible dict
`llm.options`, and per-call keyword arguments override them. Every prompt that reaches a model is appended to
`llm.sent`, and printed when `verbose=True`: nothing is hidden.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from danlu.app.cache import Cache, cache_key
from danlu.app.usage import UsageTracker
from danlu.errors import DanluError

Prompt = str | list[dict[str, str]]

# The defaults every wrapper starts from (greedy, short): visible, and overridable per wrapper or per call.
DEFAULT_OPTIONS: dict[str, Any] = {"max_new_tokens": 128, "temperature": 0.0}


class LLM(Protocol):
    name: str

    def invoke(self, prompt: Prompt, **options: Any) -> str: ...

    def stream(self, prompt: Prompt, **options: Any) -> Iterator[str]: ...

    def batch(self, prompts: list[Prompt], **options: Any) -> list[str]: ...


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ChatReply:
    """A chat answer that may call tools: content (None when the model only called tools), tool_calls in
    OpenAI's format ([{"id", "type": "function", "function": {"name", "arguments": JSON text}}])."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str


def render_prompt(prompt: Prompt) -> str:
    """A readable form of a prompt, for `verbose` and logs."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in prompt)


def load_local(path: Any, device: str = "cpu") -> tuple[Any, Any]:
    """`(model, tokenizer)` from a checkpoint dir or a .gguf file (its tokenizer is read from the same file)."""
    from pathlib import Path

    from danlu.models import checkpoints

    model, tokenizer = checkpoints.load(path, device=device)
    if tokenizer is None and Path(path).suffix == ".gguf":
        from danlu.tokenizers.base import Tokenizer

        tokenizer = Tokenizer.load(path)
    if tokenizer is None:
        raise DanluError(f"{path} has no tokenizer.json; save the model together with its tokenizer")
    return model, tokenizer


class BaseLLM:
    """The plumbing every wrapper shares: default options, cache, usage, the log of prompts sent.

    A subclass implements `_complete(prompts, options) -> list[Completion]` (one batched call) and
    `_stream(prompt, options)` yielding text pieces and, last, one `Completion` with the token counts."""

    def __init__(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        cache: Cache | None = None,
        usage: UsageTracker | None = None,
        verbose: bool = False,
    ) -> None:
        self.name = name
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.cache, self.usage, self.verbose = cache, usage, verbose
        self.sent: list[Prompt] = []  # every prompt that reached the model, in order

    # --- what a subclass provides ---------------------------------------------------------------------
    def _complete(self, prompts: list[Prompt], options: dict[str, Any]) -> list[Completion]:
        raise NotImplementedError

    def _stream(self, prompt: Prompt, options: dict[str, Any]) -> Iterator[str | Completion]:
        raise NotImplementedError

    # --- the protocol ---------------------------------------------------------------------------------
    def _log(self, prompt: Prompt) -> None:
        self.sent.append(prompt)
        if self.verbose:
            print(
                f"----- prompt to {self.name} -----\n{render_prompt(prompt)}\n-----",
                file=sys.stdout,
                flush=True,
            )

    def _cached(self, prompt: Prompt, options: dict[str, Any]) -> tuple[str | None, str | None]:
        if self.cache is None:
            return None, None
        key = cache_key(prompt, self.name, options)
        hit = self.cache.get(key)
        if hit is not None and self.usage is not None:
            self.usage.record_cache_hit(self.name)
        return key, hit

    def _done(self, key: str | None, c: Completion) -> None:
        if self.usage is not None:
            self.usage.record(self.name, c.prompt_tokens, c.completion_tokens)
        if key is not None:
            self.cache.set(key, c.text)

    def invoke(self, prompt: Prompt, **options: Any) -> str:
        """The model's completion of one prompt."""
        return self.batch([prompt], **options)[0]

    def batch(self, prompts: list[Prompt], **options: Any) -> list[str]:
        """Completions of several prompts; cache misses go to the model together in one batched call."""
        opts = {**self.options, **options}
        out: list[str | None] = [None] * len(prompts)
        keys: list[str | None] = [None] * len(prompts)
        todo = []
        for i, p in enumerate(prompts):
            keys[i], out[i] = self._cached(p, opts)
            if out[i] is None:
                todo.append(i)
        if todo:
            for i in todo:
                self._log(prompts[i])
            for i, c in zip(todo, self._complete([prompts[i] for i in todo], opts)):
                self._done(keys[i], c)
                out[i] = c.text
        return out  # type: ignore[return-value]

    def stream(self, prompt: Prompt, **options: Any) -> Iterator[str]:
        """Yield the completion piece by piece; usage is recorded and the cache filled when it ends."""
        opts = {**self.options, **options}
        key, hit = self._cached(prompt, opts)
        if hit is not None:
            yield hit
            return
        self._log(prompt)
        for item in self._stream(prompt, opts):
            if isinstance(item, Completion):
                self._done(key, item)
            elif item:
                yield item

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, options={self.options})"


class LocalLLM(BaseLLM):
    """A danlu model in this process. Chat messages are rendered with the tokenizer's chat template and end at
    `<|im_end|>`; token counts are the engine's (the prompt's tokens and the tokens it generated)."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "local", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        if tokenizer is None:
            raise DanluError("LocalLLM needs a tokenizer; load a checkpoint saved with its tokenizer.json")
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def from_path(cls, path: str, device: str = "cpu", name: str | None = None, **kwargs: Any) -> LocalLLM:
        """Load a checkpoint (danlu, Hugging Face dir or .gguf) and wrap it; the name defaults to the path."""
        model, tokenizer = load_local(path, device=device)
        return cls(model, tokenizer, name=name or str(path), **kwargs)

    def _text_and_options(self, prompt: Prompt, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if isinstance(prompt, str):
            return prompt, options
        text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
        ends = self.tokenizer.end_of_turn_ids
        options = {**options, "stop_token_ids": [*options.get("stop_token_ids", []), *ends]}
        return text, options

    def _complete(self, prompts: list[Prompt], options: dict[str, Any]) -> list[Completion]:
        from danlu.generate.engine import run

        groups: dict[str, list[int]] = {}  # chat and raw prompts may need different stop ids
        rendered = [self._text_and_options(p, options) for p in prompts]
        for i, (_, opts) in enumerate(rendered):
            groups.setdefault(json.dumps(opts, sort_keys=True, default=str), []).append(i)
        out: list[Completion | None] = [None] * len(prompts)
        for idx in groups.values():
            opts = rendered[idx[0]][1]
            # the engine's counts: the prompt's tokens and the tokens generated (no re-tokenising of the text)
            for i, c in zip(idx, run(self.model, self.tokenizer, [rendered[i][0] for i in idx], **opts)):
                out[i] = Completion(c.text, c.prompt_tokens, c.completion_tokens)
        return out  # type: ignore[return-value]

    def _stream(self, prompt: Prompt, options: dict[str, Any]) -> Iterator[str | Completion]:
        from danlu.generate.engine import stream_completion

        text, opts = self._text_and_options(prompt, options)
        for item in stream_completion(self.model, self.tokenizer, text, **opts):
            if isinstance(item, str):
                yield item
            else:
                yield Completion(item.text, item.prompt_tokens, item.completion_tokens)


# danlu option name -> OpenAI field name; the others are sent under their own names (danlu serve reads them).
_OPENAI_NAMES = {"max_new_tokens": "max_tokens"}


class OpenAILLM(BaseLLM):
    """Any OpenAI-compatible endpoint (`danlu serve`, vLLM, OpenAI itself) over HTTP with httpx.

    A str prompt goes to /completions, chat messages to /chat/completions. Options beyond OpenAI's own
    (top_k, min_p, repetition_penalty, ...) are sent as extra body fields, as vLLM and danlu accept them."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_concurrency: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(kwargs.pop("name", model), **kwargs)
        try:
            import httpx
        except ImportError as e:
            raise DanluError("OpenAILLM needs httpx: pip install 'danlu[serve]'") from e
        self.base_url, self.model, self.max_concurrency = base_url.rstrip("/"), model, max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def _body(self, prompt: Prompt, options: dict[str, Any], stream: bool) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "stream": stream}
        for k, v in options.items():
            if k not in ("stop_token_ids", "add_eos_stop"):
                body[_OPENAI_NAMES.get(k, k)] = v
        if stream:
            body["stream_options"] = {"include_usage": True}
        if isinstance(prompt, str):
            return "/completions", {**body, "prompt": prompt}
        return "/chat/completions", {**body, "messages": prompt}

    def _check(self, response: Any) -> None:
        if response.status_code >= 400:
            response.read()
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise DanluError(f"{self.base_url} answered {response.status_code}: {message}")

    @staticmethod
    def _text(choice: dict[str, Any], chat: bool, delta: bool = False) -> str:
        if not chat:
            return choice.get("text") or ""
        return (choice.get("delta" if delta else "message") or {}).get("content") or ""

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one non-streamed request; the reply's JSON, or a DanluError saying what went wrong."""
        import httpx

        try:
            r = self.client.post(path, json=body)
        except httpx.HTTPError as e:
            raise DanluError(f"cannot reach {self.base_url}{path} ({e}); is the server running?") from e
        self._check(r)
        return r.json()

    def _complete_one(self, prompt: Prompt, options: dict[str, Any]) -> Completion:
        path, body = self._body(prompt, options, stream=False)
        data = self._post(path, body)
        usage = data.get("usage") or {}
        text = self._text(data["choices"][0], chat=not isinstance(prompt, str))
        return Completion(text, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    # The server calls tools natively (danlu serve: through the model's chat template, the arguments
    # constrained to each tool's schema): agents send `tools` instead of describing them in text.
    supports_tools = True

    def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        **options: Any,
    ) -> ChatReply:
        """One chat turn with OpenAI `tools` / `tool_choice`; the reply's text or tool calls. Not cached (a
        tool's result may change between calls); usage is recorded and the messages logged in `sent`."""
        path, body = self._body(messages, {**self.options, **options}, stream=False)
        if tools:
            body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        self._log(messages)
        data = self._post(path, body)
        choice, usage = data["choices"][0], data.get("usage") or {}
        if self.usage is not None:
            self.usage.record(self.name, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        message = choice.get("message") or {}
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict) and c.get("function")]
        return ChatReply(message.get("content"), calls, choice.get("finish_reason") or "stop")

    def _complete(self, prompts: list[Prompt], options: dict[str, Any]) -> list[Completion]:
        if len(prompts) == 1:
            return [self._complete_one(prompts[0], options)]
        # Concurrent requests, so a batching server (danlu serve) decodes them together.
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(lambda p: self._complete_one(p, options), prompts))

    def _stream(self, prompt: Prompt, options: dict[str, Any]) -> Iterator[str | Completion]:
        import httpx

        path, body = self._body(prompt, options, stream=True)
        chat, pieces, usage = not isinstance(prompt, str), [], {}
        try:
            with self.client.stream("POST", path, json=body) as r:
                self._check(r)
                for line in r.iter_lines():  # server-sent events: "data: {json}" lines, then "data: [DONE]"
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        piece = self._text(choice, chat, delta=True)
                        if piece:
                            pieces.append(piece)
                            yield piece
        except httpx.HTTPError as e:
            raise DanluError(f"cannot reach {self.base_url}{path} ({e}); is the server running?") from e
        yield Completion("".join(pieces), usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))


class FakeLLM(BaseLLM):
    """A scripted model for tests: answers with `responses` in order (a str, or a function of the prompt).

    `calls` counts the generations that really ran (cache hits do not). Tokens are counted as whitespace-
    separated words. When the script runs out, a DanluError says so (or it starts over with cycle=True).
    Streaming yields one word (with its trailing space) at a time."""

    def __init__(
        self,
        responses: list[str | Callable[[Prompt], str]],
        name: str = "fake",
        cycle: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if not responses:
            raise DanluError("FakeLLM needs at least one scripted response")
        self.responses, self.cycle, self.calls = list(responses), cycle, 0

    def _next(self, prompt: Prompt) -> str:
        if self.calls >= len(self.responses) and not self.cycle:
            raise DanluError(
                f"FakeLLM {self.name!r} ran out of its {len(self.responses)} scripted responses; "
                "script more, or pass cycle=True"
            )
        r = self.responses[self.calls % len(self.responses)]
        self.calls += 1
        return r(prompt) if callable(r) else r

    @staticmethod
    def count(text: Prompt) -> int:
        return len(render_prompt(text).split())

    def _complete(self, prompts: list[Prompt], options: dict[str, Any]) -> list[Completion]:
        out = []
        for p in prompts:
            text = _apply_stops(self._next(p), options.get("stop") or [])
            out.append(Completion(text, self.count(p), self.count(text)))
        return out

    def _stream(self, prompt: Prompt, options: dict[str, Any]) -> Iterator[str | Completion]:
        text = _apply_stops(self._next(prompt), options.get("stop") or [])
        yield from re.findall(r"\s*\S+\s*|\s+", text)
        yield Completion(text, self.count(prompt), self.count(text))


def _apply_stops(text: str, stop: str | list[str]) -> str:
    """Cut text before the first stop string, as a real model's stop option does."""
    for s in [stop] if isinstance(stop, str) else stop:
        cut = text.find(s)
        if cut != -1:
            text = text[:cut]
    return text
