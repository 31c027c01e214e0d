"""From a chat reply back to OpenAI's message (`reply_message`) and stream deltas (`ReplyStream`), as the reply's
`ChatPlan` (danlu/serve/tools.py) says: text, the arguments of a forced call, a constrained call object
("required"), or an unconstrained reply parsed for calls ("auto": a reply that starts as a call, in JSON or in
the template's own syntax, becomes `tool_calls`; one that starts as text stays text, streamed or not)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from danlu.serve.tools import ChatPlan

MAX_CALLS = 16  # tool calls parsed from one reply (auto)
MAX_TRIES = 256  # places a JSON value is tried from: a reply of nested "{" is not parsed again from each one


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip


def may_be_call(text: str, plan: ChatPlan) -> bool:
    """Whether an unconstrained reply (so far) starts as a call: a JSON object, a code fence, or the
    template's opening (a reply that starts as text stays text, streamed or not)."""
    stripped, opening = text.lstrip(), plan.syntax.opening.strip()
    if stripped.startswith(("{", "```")):
        return True
    return bool(opening) and (opening.startswith(stripped) or stripped.startswith(opening))


def parse_calls(text: str, plan: ChatPlan) -> list[dict[str, Any]]:
    """The tool calls in an unconstrained reply that starts as one (`may_be_call`): JSON objects {"name":
    <offered tool>, "arguments"|"parameters": {...}} in it (inside the template's <tool_call> tags or a code
    fence too), else the template's own syntax (name, its between text, the arguments)."""
    names, calls, decoder = set(plan.offered), [], json.JSONDecoder()
    if not text.strip() or not may_be_call(text, plan):
        return []
    at, tries = text.find("{"), 0
    while at != -1 and len(calls) < MAX_CALLS and tries < MAX_TRIES:
        tries += 1
        try:
            value, end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the JSON decoder goes
            at = text.find("{", at + 1)
            continue
        args = next(
            (value[k] for k in ("arguments", "parameters") if isinstance(value, dict) and k in value), None
        )
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = None
        if isinstance(value, dict) and value.get("name") in names and isinstance(args, dict):
            calls.append(_call(value["name"], json.dumps(args, ensure_ascii=False)))
            at = text.find("{", end)
        else:
            at = text.find("{", at + 1)
    between = plan.syntax.between
    if calls or not between or not names or plan.syntax.key:
        return calls
    flexible = r"\s*".join(re.escape(c) for c in between if not c.isspace())
    pattern = re.compile(
        "(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + ")" + flexible
    )
    for m in list(pattern.finditer(text))[:MAX_TRIES]:
        try:
            args, _ = decoder.raw_decode(text, m.end())
        except (ValueError, RecursionError):
            continue
        if isinstance(args, dict) and len(calls) < MAX_CALLS:
            calls.append(_call(m.group(1), json.dumps(args, ensure_ascii=False)))
    return calls


def _header(plan: ChatPlan) -> re.Pattern:
    """The start of a constrained call object (grammar.py writes json.dumps' spacing, properties in order)."""
    return re.compile(r'\{"name": "([A-Za-z0-9_-]{1,64})", "' + re.escape(plan.key) + '": ')


def _complete(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def reply_message(text: str, reason: str, plan: ChatPlan) -> tuple[dict[str, Any], str]:
    """(message, finish_reason) of one choice: its text, or its tool calls with finish_reason "tool_calls"
    ("length" when max_tokens cut the call)."""
    calls: list[dict[str, Any]] = []
    if plan.call == "arguments":
        calls = [_call(plan.name, text)]
    elif plan.call == "object":
        head = _header(plan).match(text)
        if head:
            body = text[head.end() :]
            calls = [_call(head.group(1), body[:-1] if _complete(text) else body)]
    elif plan.call == "auto":
        calls = parse_calls(text, plan)
    if not calls:
        return {"role": "assistant", "content": text}, reason
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": calls,
    }, "length" if reason == "length" else "tool_calls"


class ReplyStream:
    """One streamed choice: its decoded pieces in, OpenAI deltas out (`feed`, then `close`). A call streams as
    `delta.tool_calls[{index, id, type, function: {name, arguments}}]` then argument pieces; under "auto" text
    that could still become a call is held back until it is one (sent at the end) or cannot be."""

    def __init__(self, plan: ChatPlan) -> None:
        self.plan, self.text, self.sent, self.id = plan, "", 0, f"call_{uuid.uuid4().hex[:24]}"
        self.started = False  # the call's first delta (id, name) went out
        self.flowing = plan.call is None  # auto: the reply is text, streamed as it comes

    def _start(self, name: str) -> dict[str, Any]:
        self.started = True
        call = {"index": 0, "id": self.id, "type": "function", "function": {"name": name, "arguments": ""}}
        return {"tool_calls": [call]}

    @staticmethod
    def _args(piece: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self.text += piece
        return self._deltas(final=False)

    def feed_scored(self, piece: str, logprobs: Any) -> list[tuple[dict[str, Any], Any]]:
        """feed(piece) with the piece's log-probs on its first delta; while a reply that may become a tool call
        is held back (no delta yet), an empty delta carries them, so none are lost from the stream."""
        deltas = self.feed(piece) if piece else []
        if not deltas and logprobs is not None:
            deltas = [{}]
        return [(d, logprobs if j == 0 else None) for j, d in enumerate(deltas)]

    def close(self, reason: str) -> tuple[list[dict[str, Any]], str]:
        """The last deltas and the finish reason."""
        deltas = self._deltas(final=True)
        if self.plan.call == "auto" and not self.flowing:
            message, reason = reply_message(self.text, reason, self.plan)
            if message.get("tool_calls"):
                return [
                    {"tool_calls": [{"index": j, **c} for j, c in enumerate(message["tool_calls"])]}
                ], reason
            return [{"content": self.text}] if self.text else [], reason
        if self.started:
            reason = "length" if reason == "length" else "tool_calls"
        elif (
            self.plan.call == "object" and self.text
        ):  # cut before the call named its tool: text, as unstreamed
            deltas.append({"content": self.text})
        return deltas, reason

    def _deltas(self, final: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        call = self.plan.call
        if call is None or (call == "auto" and self.flowing):
            if len(self.text) > self.sent:
                out.append({"content": self.text[self.sent :]})
                self.sent = len(self.text)
            return out
        if call == "auto":
            if self.text.strip() and not may_be_call(self.text, self.plan):
                self.flowing = True
                return self._deltas(final)
            return out  # held back: sent by close()
        if call == "arguments":
            if not self.started:
                out.append(self._start(self.plan.name))
            body, start = self.text, 0
        else:  # "object": the header names the tool, the closing brace is not the arguments'
            head = _header(self.plan).match(self.text)
            if head is None:
                return out
            if not self.started:
                out.append(self._start(head.group(1)))
                self.sent = head.end()
            start = head.end()
            end = len(self.text) - 1 if (not final or _complete(self.text)) else len(self.text)
            body = self.text[:end]
        if len(body) > max(self.sent, start):
            out.append(self._args(body[max(self.sent, start) :]))
            self.sent = len(body)
        return out
