"""Chat templates: turn a list of messages into one prompt string, as `transformers` does.

danlu's own tokenizers use ChatML (`<|im_start|>{role}\\n{content}<|im_end|>\\n`, then
`<|im_start|>assistant\\n` as the generation prompt), rendered natively. Templates of loaded tokenizers are
Jinja text (Hugging Face `chat_template`, from tokenizer_config.json or GGUF metadata), written by whoever
made the checkpoint, so they are untrusted code: `danlu.tokenizers.jinja` renders them in jinja2's sandbox,
configured as `transformers` configures it, under the limits of `template_limits.py`. A template that breaks a limit, fails,
or calls `raise_exception` raises `ChatTemplateError` (the server answers it with a 400).

The variables a template sees are the ones `transformers` passes: `messages` (None-valued keys dropped,
`reasoning_content` / `thinking` filled from each other), `tools`, `documents`, `add_generation_prompt`, the
tokenizer's special tokens (`bos_token`, `eos_token`, ...: only those it has) and any extra keywords.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from danlu.tokenizers.template_limits import ChatTemplateError  # noqa: F401  (re-exported: raised by render)

# ChatML (OpenAI; used by Qwen and SmolLM2): `<|im_start|>{role}\n{content}<|im_end|>\n` per message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def render_chatml(messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """ChatML rendering of messages whose role and content are strings."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def render_chat_template(
    template: str,
    messages: Any,
    *,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **variables: Any,
) -> str:
    """Render messages with a chat template (Jinja text as stored in tokenizer_config.json).

    variables: the special tokens (bos_token=..., eos_token=...) and any keyword the template reads
    (e.g. enable_thinking=False); like `transformers`, every one is visible to the template.
    """
    from danlu.tokenizers.jinja import plain_data, render_template

    if not isinstance(template, str):
        raise ChatTemplateError(f"a chat template must be Jinja text, got {type(template).__name__}")
    messages = prepare_messages(messages)
    if template == CHATML_TEMPLATE and all(
        isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        return render_chatml(messages, add_generation_prompt)  # the same text, without the template engine
    if tools is not None and not (
        isinstance(tools, list | tuple) and all(isinstance(t, Mapping) for t in tools)
    ):
        raise ChatTemplateError(
            f"tools must be a list of JSON-schema dicts ({{'type': 'function', 'function': {{...}}}}), got {tools!r:.100}"
        )
    context = {
        **plain_data(variables),
        "messages": messages,
        "tools": plain_data(tools),
        "documents": plain_data(documents),
        "add_generation_prompt": add_generation_prompt,
    }
    return render_template(template, context)


def prepare_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a chat and copy it as `transformers` hands it to a template.

    Each message is a dict with a string `role` and a `content` that is a string, a list of parts
    ({"type": "text", "text": ...}) or absent (e.g. an assistant message with only `tool_calls`). Keys whose
    value is None are dropped (templates test for missing keys, not None), and `reasoning_content` /
    `thinking` are filled from whichever of reasoning_content, thinking, reasoning is set.
    """
    from danlu.tokenizers.jinja import plain_data

    if not isinstance(messages, list | tuple):
        raise ChatTemplateError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(
                f"message {i} must be a dict with 'role' and 'content', got {message!r:.100}"
            )
        message = {k: v for k, v in message.items() if v is not None}
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ChatTemplateError(
                f"message {i} has role {role!r}; give a role such as 'user' or 'assistant'"
            )
        content = message.get("content")
        if not (
            content is None
            or isinstance(content, str)
            or (isinstance(content, list | tuple) and all(isinstance(p, Mapping) for p in content))
        ):
            raise ChatTemplateError(
                f"message {i} ({role}) has content {content!r:.100}; content must be a string or a list of "
                "parts such as {'type': 'text', 'text': '...'}"
            )
        message = plain_data(message)
        reasoning = next(
            (message[k] for k in ("reasoning_content", "thinking", "reasoning") if k in message), None
        )
        if reasoning is not None:  # `thinking` first unless the message has it, `reasoning_content` as given
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out
