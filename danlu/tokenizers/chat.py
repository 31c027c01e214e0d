"""Chat templates: turn a list of {"role", "content"} messages into one prompt string.

danlu's own tokenizers use ChatML (`<|im_start|>{role}\\n{content}<|im_end|>\\n`, then
`<|im_start|>assistant\\n` as the generation prompt), rendered natively. Templates of loaded tokenizers
are Jinja text (Hugging Face `chat_template`), rendered by danlu's small Jinja interpreter
(`danlu.tokenizers.jinja`; `jinja2` is not a danlu dependency) with the variables `transformers` passes:
messages, add_generation_prompt, bos_token, eos_token.
"""

from __future__ import annotations

from danlu.tokenizers.base import CHATML_TEMPLATE
from danlu.tokenizers.jinja import render_jinja


def render_chatml(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """ChatML rendering of validated messages."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def render_chat_template(
    template: str,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render messages with a chat template (Jinja text as stored in tokenizer_config.json)."""
    if template == CHATML_TEMPLATE:
        return render_chatml(messages, add_generation_prompt)
    context = {
        "messages": messages,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    return render_jinja(template, context)
