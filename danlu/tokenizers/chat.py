"""Chat templates: turn a list of {"role", "content"} messages into one prompt string.

danlu's own tokenizers use ChatML (`<|im_start|>{role}\\n{content}<|im_end|>\\n`, then
`<|im_start|>assistant\\n` as the generation prompt), rendered natively. The Jinja text of the template
is also saved in `tokenizer_config.json` so Hugging Face `apply_chat_template` renders the same string.
"""

from __future__ import annotations

from danlu.errors import DanluError
from danlu.tokenizers.base import CHATML_TEMPLATE


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
    raise DanluError("this tokenizer's chat template is not supported by danlu yet (only ChatML)")
