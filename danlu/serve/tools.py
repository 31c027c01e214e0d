"""Tool calling and structured output for /v1/chat/completions: from a request to a `ChatPlan` (the prompt, the
JSON schema its reply is decoded under, how the reply becomes `message.tool_calls`), and back.

Tools are rendered through the model's own chat template when it supports them: the template gets the OpenAI
`tools` list, assistant `tool_calls` and `role: "tool"` results, as `transformers` passes them. Whether it does
is found by rendering a probe tool once per tokenizer (`call_syntax`): a template that never prints the probe's
name has no tool support, and only then is danlu's own visible system message `TOOLS_PROMPT` used (SmolLM2's
GGUF template is one: it prints only role and content).

How a template writes a call is learned from the same probe, an assistant turn calling the probe tool with
probe arguments: the text before the arguments is the call's opening (Hermes/Qwen `<tool_call>\\n{"name":
"f", "arguments": `, Phi-4 `<|tool_call|>{"name": "f", "arguments": `, DeepSeek-R1 `...<｜tool▁sep｜>f\\n```json\\n`).

tool_choice decides the decoding:
- a named function: the prompt ends with the template's opening of a call to that function (the assistant
  turn is prefilled up to the arguments), and decoding is constrained to the function's parameters schema
  (grammar.py's JSON mask); the template's closing text is implied, the reply is the arguments.
- "required": the prompt ends where the template starts a JSON call object and decoding is constrained to
  anyOf({"name": <const>, "arguments": <its parameters>}) over the tools (one tool: as a named function). A
  template whose call is not one JSON object with the name in it (DeepSeek's) gets danlu's JSON call object
  right after the generation prompt.
- "auto" is left unconstrained and parsed: a reply holding call objects naming offered tools (or the
  template's own call syntax) is returned as tool calls. Constraining only once a call starts would need a
  grammar with free text before it; parsing is simpler to read and keeps a plain answer untouched.
- "none": no tools offered; the reply is text (or JSON under response_format).

response_format json_object / json_schema constrains a text reply the same way (a forced tool call wins).
The reply goes back to OpenAI's message and stream deltas in danlu/serve/replies.py.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.serve.schemas import APIError, ChatRequest

TOOLS_PROMPT = (
    "You can call these tools:\n{tools}\n"
    'To call a tool, reply with only a JSON object: {{"name": "<tool name>", "arguments": {{...}}}}.'
)
PROBE_NAME = "danlu_probe_tool"
PROBE_ARG = "danlu_probe_argument"
PROBE_ARGS = {PROBE_ARG: 7}
_PROBE_ARGS_AT = re.compile(r'\{\s*"' + PROBE_ARG + '"')
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": PROBE_NAME,
        "description": "a probe",
        "parameters": {"type": "object"},  # PROBE_ARG only in the call: its listing must not match
    },
}
_PROBE_USER = [{"role": "user", "content": "danlu probe question"}]
_OBJECT_OPEN = re.compile(r'\{\s*"name"\s*:\s*"$')  # the text right before a name inside a JSON call object
_ARGS_KEY = re.compile(r'^"\s*,\s*"(\w+)"\s*:\s*$')  # the text from the name's end to the arguments' start


def _render(tokenizer: Any, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=generation_prompt)
    except Exception as e:
        # a template that cannot render these messages: danlu.tokenizers.chat.ChatTemplateError (a DanluError)
        # or whatever else the template engine raises; the client sent the messages, so it is a 400
        raise APIError(
            400, f"cannot render the messages with the model's chat template: {e}", param="messages"
        ) from e


# ---- how the template writes a call ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CallSyntax:
    """What rendering the probe taught about a template: native (it renders tools), arguments_as ("dict" or
    "str": the form of function.arguments it takes), between (text from a call's name to its arguments, None
    when the probe call could not be found), key (the arguments' key when a call is one JSON object
    {"name": ..., key: ...}, else None)."""

    native: bool
    arguments_as: str = "dict"
    between: str | None = '", "arguments": '
    key: str | None = "arguments"
    opening: str = ""  # the turn's text before a call's JSON object (or before its name): "<tool_call>\\n"


DANLU_SYNTAX = CallSyntax(native=False)  # TOOLS_PROMPT's {"name": ..., "arguments": {...}}
_SYNTAX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (template, CallSyntax)


def _probe_call(name: str, form: str) -> dict[str, Any]:
    arguments = PROBE_ARGS if form == "dict" else json.dumps(PROBE_ARGS)
    call = {"id": "call_danlu_probe", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def call_syntax(tokenizer: Any) -> CallSyntax:
    """The tokenizer's template's tool support, found by rendering a probe (cached per tokenizer and template)."""
    cached = _SYNTAX.get(tokenizer)
    if cached is not None and cached[0] is tokenizer.chat_template:
        return cached[1]
    syntax = _learn_syntax(tokenizer)
    _SYNTAX[tokenizer] = (tokenizer.chat_template, syntax)
    return syntax


def _learn_syntax(tokenizer: Any) -> CallSyntax:
    try:
        asked = tokenizer.apply_chat_template(_PROBE_USER, tools=[_PROBE_TOOL], add_generation_prompt=True)
    except Exception:
        return DANLU_SYNTAX
    if PROBE_NAME not in asked:
        return DANLU_SYNTAX
    for form in ("dict", "str"):
        try:
            text = tokenizer.apply_chat_template(
                _PROBE_USER + [_probe_call(PROBE_NAME, form)], tools=[_PROBE_TOOL]
            )
        except Exception:
            continue
        args = _PROBE_ARGS_AT.search(text)
        name_at = text.rfind(PROBE_NAME, 0, args.start()) if args else -1
        if name_at < 0:
            continue
        turn = min(len(os.path.commonprefix([asked, text])), name_at)  # where the assistant's turn starts
        before, between = text[turn:name_at], text[name_at + len(PROBE_NAME) : args.start()]
        key = _ARGS_KEY.match(between)
        is_object = _OBJECT_OPEN.search(before) is not None and key is not None
        opening = before[: _OBJECT_OPEN.search(before).start()] if is_object else before
        return CallSyntax(True, form, between, key.group(1) if is_object else None, opening)
    return CallSyntax(True, between=None, key=None)


# ---- the plan -------------------------------------------------------------------------------------------------
@dataclass
class ChatPlan:
    """prompt: the text to decode from. json_schema: the canonical schema the reply is constrained to, or None.
    call: "arguments" (the reply is the arguments of `name`), "object" (a JSON call object whose arguments
    are under `key`), "auto" (text, parsed for calls), or None (text)."""

    prompt: str
    json_schema: str | None = None
    json_param: str | None = None  # the request field the schema came from (named in errors)
    call: str | None = None
    name: str | None = None
    key: str = "arguments"
    offered: list[str] = field(default_factory=list)
    syntax: CallSyntax = DANLU_SYNTAX

    def constrain(self, opts: GenerationOptions) -> GenerationOptions:
        """opts with this plan's schema (a beam search or other refused combination is a 400 naming it)."""
        if self.json_schema is None:
            return opts
        try:
            return replace(opts, json_schema=self.json_schema)
        except DanluError as e:
            raise APIError(400, str(e), param=self.json_param) from e


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
        shown = repr(choice) if isinstance(choice, str) else f"{{function: {choice.function.name!r}}}"
        raise APIError(400, f"tool_choice={shown} needs tools; declare them in tools", param="tool_choice")
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


def parameters(function: Any) -> dict[str, Any]:
    return function.parameters if function.parameters is not None else {"type": "object", "properties": {}}


def _grammar_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llguidance") is not None


def _schema_text(
    schema: Any, param: str, tokenizer: Any = None, tokenizer_param: str | None = None, compile: bool = True
) -> str:
    """The canonical text of a JSON Schema from a request: checked against its metaschema (jsonschema) and
    compiled by llguidance (for the tokenizer when one is given; not when compile=False); any fault is a 400
    naming `param` (without llguidance installed, a 400 that says how to install it)."""
    import jsonschema

    from danlu.generate.grammar import canonical_schema, compile_schema, ll_tokenizer

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise APIError(400, f"{param} is not a valid JSON Schema: {e.message}", param=param) from e
    except Exception as e:  # a $schema naming no known draft, a recursion limit: not a usable schema either
        raise APIError(400, f"{param} is not a valid JSON Schema: {e}", param=param) from e
    ll = None
    if tokenizer is not None:
        try:
            ll = ll_tokenizer(tokenizer)
        except DanluError as e:
            message = f"{tokenizer_param} cannot be honoured by this model: {e}"
            raise APIError(400, message, param=tokenizer_param) from e
    try:
        text = canonical_schema(schema)
        if compile:
            compile_schema(text, ll)
    except DanluError as e:
        raise APIError(400, f"{param}: {e}", param=param) from e
    return text


def check_tools(req: ChatRequest) -> None:
    """Each declared tool's parameters must be a JSON Schema (that llguidance compiles, when it is installed:
    "auto" tool calls work without it); names must be unique."""
    compile = _grammar_installed()
    seen: set[str] = set()
    for i, t in enumerate(req.tools or []):
        if t.function.name in seen:
            raise APIError(
                400, f"tools[{i}] repeats the name {t.function.name!r}", param=f"tools[{i}].function.name"
            )
        seen.add(t.function.name)
        _schema_text(parameters(t.function), f"tools[{i}].function.parameters", compile=compile)


def _tool_list(tools: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for f in tools.values():
        spec = {"name": f.name, "parameters": parameters(f)}
        if f.description is not None:
            spec["description"] = f.description
        out.append({"type": "function", "function": spec})
    return out


def _call_object(name: str, key: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": name}, key: params},
            "required": ["name", key], "additionalProperties": False}  # fmt: skip


def chat_plan(tokenizer: Any, req: ChatRequest, messages: list[dict[str, Any]]) -> ChatPlan:
    """The plan of a chat request whose history is `messages` (OpenAI-shaped dicts, checked by prompting)."""
    check_tools(req)
    tools = offered_tools(req)
    syntax = call_syntax(tokenizer) if req.tools else DANLU_SYNTAX  # tool_choice none: history still native
    rendered = _messages_for(syntax, messages, tools, req)
    listed = _tool_list(tools) if tools and syntax.native else None
    prompt = _render(tokenizer, rendered, listed, True)
    plan = ChatPlan(prompt, offered=list(tools), syntax=syntax)
    forced = req.tool_choice not in (None, "auto", "none") and tools
    if not forced:
        plan.call = "auto" if tools else None
        return _with_response_format(plan, req, tokenizer)
    names = list(tools)
    index = {t.function.name: i for i, t in enumerate(req.tools or [])}
    if len(names) == 1:  # a named function, or "required" with one tool
        name = names[0]
        plan.call, plan.name = "arguments", name
        param = f"tools[{index[name]}].function.parameters"
        plan.json_schema = _schema_text(parameters(tools[name]), param, tokenizer, "tool_choice")
        plan.json_param = param
        cut = _cut_before_arguments(tokenizer, syntax, rendered, listed, name) if syntax.native else None
        plan.prompt = cut if cut is not None else prompt + '{"name": "' + name + '", "arguments": '
        return plan
    plan.call, plan.json_param = "object", "tools"
    cut = _cut_before_object(tokenizer, syntax, rendered, listed) if syntax.native and syntax.key else None
    plan.key = syntax.key if cut is not None else "arguments"
    schema = {"anyOf": [_call_object(n, plan.key, parameters(f)) for n, f in tools.items()]}
    plan.json_schema = _schema_text(schema, "tools", tokenizer, "tool_choice")
    plan.prompt = cut if cut is not None else prompt
    return plan


def _with_response_format(plan: ChatPlan, req: ChatRequest, tokenizer: Any) -> ChatPlan:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return plan
    if fmt.type == "json_object":
        schema, param = {"type": "object"}, "response_format"
    else:
        schema = fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {"type": "object"}
        param = "response_format.json_schema.schema"
    plan.json_schema = _schema_text(schema, param, tokenizer, "response_format")
    plan.json_param = param
    return plan


def _cut_before_arguments(
    tokenizer: Any, syntax: CallSyntax, messages: list, listed: list, name: str
) -> str | None:
    """The template's text up to the arguments of a call to `name` (the prompt of a forced call), or None."""
    text = _render(tokenizer, messages + [_probe_call(name, syntax.arguments_as)], listed, False)
    found = list(_PROBE_ARGS_AT.finditer(text))
    if not found or syntax.between is None:
        return None
    cut = text[: found[-1].start()]
    return cut if cut.endswith(name + syntax.between) else None


def _cut_before_object(tokenizer: Any, syntax: CallSyntax, messages: list, listed: list) -> str | None:
    """The template's text up to the JSON call object of an assistant call (the prompt of "required")."""
    text = _render(tokenizer, messages + [_probe_call(PROBE_NAME, syntax.arguments_as)], listed, False)
    found = list(_PROBE_ARGS_AT.finditer(text))
    if not found or syntax.between is None:
        return None
    name_at = found[-1].start() - len(syntax.between) - len(PROBE_NAME)
    if text[name_at : found[-1].start()] != PROBE_NAME + syntax.between:
        return None
    opening = _OBJECT_OPEN.search(text[:name_at])
    return text[: opening.start()] if opening else None


def _messages_for(
    syntax: CallSyntax, messages: list[dict[str, Any]], tools: dict[str, Any], req: ChatRequest
) -> list[dict[str, Any]]:
    """The history as the template takes it: native templates get tool_calls and tool results as they are
    (arguments as a dict, or as the JSON text when the template concatenates strings); others get each call
    written into the assistant's content as TOOLS_PROMPT's JSON object, after TOOLS_PROMPT's system message."""
    out: list[dict[str, Any]] = []
    if tools and not syntax.native:
        lines = "\n".join(
            f"- {f.name}: {f.description or ''} parameters: {json.dumps(parameters(f), ensure_ascii=False)}"
            for f in tools.values()
        )
        must = "" if req.tool_choice in (None, "auto") else "\nYou must call a tool in this reply."
        out.append({"role": "system", "content": TOOLS_PROMPT.format(tools=lines) + must})
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        if calls and syntax.native:
            m["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": c["function"]["arguments"]
                                   if syntax.arguments_as == "str" else json.loads(c["function"]["arguments"])}}
                for c in calls
            ]  # fmt: skip
        elif calls:
            written = "".join(
                json.dumps({"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])},
                           ensure_ascii=False) for c in calls
            )  # fmt: skip
            m["content"] = (m.get("content") or "") + written
        if not syntax.native:
            m.pop("tool_call_id", None)
            m.pop("name", None)
        if m.get("content") is None and not m.get("tool_calls"):
            m["content"] = ""  # templates concatenate content; only a message with calls may go without
        out.append(m)
    return out
