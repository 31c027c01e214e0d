"""From a request to what the engine takes: the prompt string of a chat (`chat_prompt`), the generation options
of any request (`generation_options`, with the server's visible defaults in `ServeConfig`) and of each of its n
choices (`choice_options`), and from a model's reply back to a tool call (`parse_tool_call`).

Tools (OpenAI function calling) are described to the model in a system message, `TOOLS_PROMPT`, visible here:
the model is asked to answer with one JSON object {"name": ..., "arguments": {...}} to call a tool. A reply that is
exactly such an object, naming a declared tool, is returned as `tool_calls` with finish_reason "tool_calls".
Earlier tool calls in the history (assistant `tool_calls`, `tool` results) are checked: their arguments must be
a JSON object and each tool result must answer an earlier call, else the request is a 400 naming the message.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from typing import Any

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.serve.config import LOOPBACK_HOSTS, MIN_SAMPLING_TEMPERATURE, ServeConfig  # noqa: F401 (re-exported)
from danlu.serve.schemas import SEED_MAX, SEED_MIN, APIError, ChatRequest, Sampling

TOOLS_PROMPT = (
    "You can call these tools:\n{tools}\n"
    'To call a tool, reply with only a JSON object: {{"name": "<tool name>", "arguments": {{...}}}}.'
)


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
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


def offered_tools(req: ChatRequest) -> dict[str, Any]:
    """The tools the model may call, by name, as tool_choice narrows them: "none" none, a named function only
    that one (which must be declared), "auto"/"required"/unset every declared tool."""
    tools = {t.function.name: t.function for t in req.tools or []}
    choice = req.tool_choice
    if choice is None or choice == "auto":
        return tools
    if choice == "none":
        return {}
    if not tools:
        raise APIError(
            400, f"tool_choice={_choice_text(choice)} needs tools; declare them in tools", param="tool_choice"
        )
    if choice == "required":
        return tools
    name = choice.function.name
    if name not in tools:
        raise APIError(
            400,
            f"tool_choice names the function {name!r}, which is not among the tools {sorted(tools)}",
            param="tool_choice.function.name",
        )
    return {name: tools[name]}


def _choice_text(choice: Any) -> str:
    return repr(choice) if isinstance(choice, str) else f"{{function: {choice.function.name!r}}}"


def chat_prompt(tokenizer: Any, req: ChatRequest) -> str:
    """The prompt string for a chat request (tools described first when given and not switched off)."""
    declared = {t.function.name for t in req.tools or []}
    tools = offered_tools(req)
    messages: list[dict[str, str]] = []
    if tools:
        lines = "\n".join(
            f"- {f.name}: {f.description or ''} parameters: {json.dumps(f.parameters or {}, ensure_ascii=False)}"
            for f in tools.values()
        )
        must = "" if req.tool_choice in (None, "auto") else "\nYou must call a tool in this reply."
        messages.append({"role": "system", "content": TOOLS_PROMPT.format(tools=lines) + must})
    call_ids: set[str] = set()
    for i, m in enumerate(req.messages):
        content = _text(m.content, f"messages[{i}].content")
        for j, call in enumerate(m.tool_calls or []):
            where = f"messages[{i}].tool_calls[{j}].function.arguments"
            if m.role != "assistant":
                raise APIError(
                    400,
                    f"messages[{i}] has tool_calls but role {m.role!r}; only assistant messages call tools",
                    param=f"messages[{i}]",
                )
            args = _arguments(call.function.arguments, where)
            if declared and call.function.name not in declared:
                raise APIError(
                    400,
                    f"messages[{i}].tool_calls[{j}] calls {call.function.name!r}, which is not among the tools {sorted(declared)}",
                    param=f"messages[{i}].tool_calls[{j}].function.name",
                    code="invalid_tool_call",
                )
            call_ids.add(call.id)
            content += json.dumps({"name": call.function.name, "arguments": args}, ensure_ascii=False)
        if m.role == "tool":
            if not m.tool_call_id:
                raise APIError(
                    400,
                    f"messages[{i}] is a tool result without tool_call_id",
                    param=f"messages[{i}].tool_call_id",
                )
            if m.tool_call_id not in call_ids:
                raise APIError(
                    400,
                    f"messages[{i}].tool_call_id {m.tool_call_id!r} answers no earlier tool call",
                    param=f"messages[{i}].tool_call_id",
                    code="invalid_tool_call",
                )
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as e:
        # a template that cannot render these messages: danlu.tokenizers.chat.ChatTemplateError (a DanluError)
        # or whatever else the template engine raises; the client sent the messages, so it is a 400
        raise APIError(
            400, f"cannot render the messages with the model's chat template: {e}", param="messages"
        ) from e


def parse_tool_call(text: str, req: ChatRequest) -> dict[str, Any] | None:
    """An OpenAI tool call when `text` is one JSON object {"name": <declared tool>, "arguments": {...}}."""
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    names = set(offered_tools(req))
    if not (
        isinstance(value, dict)
        and value.get("name") in names
        and isinstance(value.get("arguments", {}), dict)
    ):
        return None
    arguments = json.dumps(value.get("arguments", {}), ensure_ascii=False)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": value["name"], "arguments": arguments},
    }


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
