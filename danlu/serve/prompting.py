"""From a request to what the engine takes: the plan of a chat (`chat_plan`: its prompt, and for tools and
response_format the schema it is decoded under, danlu/serve/tools.py), the generation options of any request
(`generation_options`, with the server's visible defaults in `ServeConfig`) and of each of its n choices
(`choice_options`).

Earlier tool calls in the history (assistant `tool_calls`, `tool` results) are checked (`chat_messages`): their
arguments must be a JSON object and each tool result must answer an earlier call, else the request is a 400
naming the message.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.serve import tools
from danlu.serve.config import LOOPBACK_HOSTS, MIN_SAMPLING_TEMPERATURE, ServeConfig  # noqa: F401 (re-exported)
from danlu.serve.schemas import SEED_MAX, SEED_MIN, APIError, ChatRequest, Sampling
from danlu.serve.tools import ChatPlan


def _text(content: Any, where: str) -> str | None:
    if content is None:
        return None
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise APIError(
                400, f"{where}[{j}] is a {part.type!r} part; danlu serves text only", param=f"{where}[{j}]"
            )
        parts.append(part.text)
    return "".join(parts)


def _arguments(raw: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise APIError(
            400, f"{where} is not valid JSON ({e}): {raw[:80]!r}", param=where, code="invalid_tool_call"
        ) from e
    if not isinstance(value, dict):
        raise APIError(
            400, f"{where} must be a JSON object, got {raw[:80]!r}", param=where, code="invalid_tool_call"
        )
    return value


def chat_messages(req: ChatRequest) -> list[dict[str, Any]]:
    """The history as OpenAI-shaped dicts (text content, "developer" as "system"), its tool calls checked:
    arguments a JSON object naming a declared tool, every tool result answering an earlier call (its `name`
    filled in from that call, for templates that print it)."""
    declared = {t.function.name for t in req.tools or []}
    calls: dict[str, str] = {}  # call id -> function name
    out: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        message["content"] = _text(m.content, f"messages[{i}].content")
        if m.tool_calls:
            if m.role != "assistant":
                raise APIError(
                    400,
                    f"messages[{i}] has tool_calls but role {m.role!r}; only assistant messages call tools",
                    param=f"messages[{i}]",
                )
            message["tool_calls"] = []
        for j, call in enumerate(m.tool_calls or []):
            _arguments(call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
            if declared and call.function.name not in declared:
                raise APIError(
                    400,
                    f"messages[{i}].tool_calls[{j}] calls {call.function.name!r}, which is not among the tools {sorted(declared)}",
                    param=f"messages[{i}].tool_calls[{j}].function.name",
                    code="invalid_tool_call",
                )
            calls[call.id] = call.function.name
            message["tool_calls"].append({"id": call.id, "type": "function", "function": {
                "name": call.function.name, "arguments": call.function.arguments}})  # fmt: skip
        if m.role == "tool":
            if not m.tool_call_id:
                raise APIError(
                    400,
                    f"messages[{i}] is a tool result without tool_call_id",
                    param=f"messages[{i}].tool_call_id",
                )
            if m.tool_call_id not in calls:
                raise APIError(
                    400,
                    f"messages[{i}].tool_call_id {m.tool_call_id!r} answers no earlier tool call",
                    param=f"messages[{i}].tool_call_id",
                    code="invalid_tool_call",
                )
            message["tool_call_id"], message["name"] = m.tool_call_id, m.name or calls[m.tool_call_id]
        elif m.name is not None:
            message["name"] = m.name
        out.append(message)
    return out


def chat_plan(tokenizer: Any, req: ChatRequest) -> ChatPlan:
    """The prompt of a chat request and how its reply is decoded and returned (tools, response_format):
    danlu.serve.tools.chat_plan over the checked history."""
    return tools.chat_plan(tokenizer, req, chat_messages(req))


def generation_options(
    req: Sampling, prompt_tokens: int, block: int, tokenizer: Any, config: ServeConfig, chat: bool, param: str
) -> GenerationOptions:
    """The engine options for a request, checked against the context and the engine's ranges (the object the
    batcher groups by and the engine decodes with):
    every unset field takes the engine's default, except temperature (ServeConfig.default_temperature) and
    max_tokens (ServeConfig.default_max_tokens, capped by the room left in the context)."""
    if prompt_tokens > config.max_prompt_tokens:
        raise APIError(
            400,
            f"the prompt is {prompt_tokens} tokens; this server takes at most {config.max_prompt_tokens}; "
            "shorten it",
            param=param,
            code="context_length_exceeded",
        )
    room = block - prompt_tokens
    if room < 1:
        raise APIError(
            400,
            f"the prompt is {prompt_tokens} tokens but the model's context is {block}; shorten it",
            param=param,
            code="context_length_exceeded",
        )
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if max_tokens is None:
        max_tokens = min(config.default_max_tokens, room)
    elif max_tokens > room:
        raise APIError(
            400,
            f"max_tokens={max_tokens} plus the {prompt_tokens}-token prompt exceeds the model's context of {block} "
            f"tokens; use max_tokens <= {room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if req.n > config.max_n:
        raise APIError(
            400, f"n={req.n} is too large; this server returns at most {config.max_n} choices", param="n"
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > config.max_stop or not all(stop):
        raise APIError(
            400, f"stop must be up to {config.max_stop} non-empty strings, got {stop!r}", param="stop"
        )
    if req.num_beams is not None and req.num_beams > config.max_num_beams:
        raise APIError(
            400,
            f"num_beams={req.num_beams} is too large; this server searches at most {config.max_num_beams} beams",
            param="num_beams",
        )
    temperature = config.default_temperature if req.temperature is None else req.temperature
    if 0 < temperature < MIN_SAMPLING_TEMPERATURE:
        temperature = 0.0
    opts: dict[str, Any] = {"max_new_tokens": max_tokens, "temperature": temperature, "stop": stop}
    for name in ("top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
                 "no_repeat_ngram_size", "num_beams", "length_penalty", "length_penalty_form", "seed"):  # fmt: skip
        value = getattr(req, name)
        if value is not None:
            opts[name] = value
    if req.min_tokens is not None:
        opts["min_new_tokens"] = req.min_tokens
    if req.logit_bias:
        opts["logit_bias"] = req.logit_bias
    if chat and tokenizer.end_of_turn_ids:
        opts["stop_token_ids"] = tokenizer.end_of_turn_ids
    try:
        return GenerationOptions.from_kwargs(**opts)
    except DanluError as e:
        raise APIError(400, str(e), param=_named_option(str(e))) from e


def _named_option(message: str) -> str | None:
    """The option a DanluError from GenerationOptions names first (its messages start with the name)."""
    name = message.split(" ", 1)[0].split("=", 1)[0]
    return name if name.isidentifier() else None


def choice_options(options: GenerationOptions, n: int) -> list[GenerationOptions]:
    """The options of each of n choices: a seeded sampling request samples choice i with seed + i, so the n
    choices differ while choice 0 is what the same request with n=1 returns."""
    if options.seed is None or not options.temperature:
        return [options] * n
    span = SEED_MAX - SEED_MIN + 1  # seed + i wraps around within the range the seed was checked in
    return [options] + [
        replace(options, seed=(options.seed + i - SEED_MIN) % span + SEED_MIN) for i in range(1, n)
    ]
