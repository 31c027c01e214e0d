"""danlu's Jinja subset renders chat templates exactly as jinja2 does in `transformers`."""

from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import _compile_jinja_template

from danlu.errors import DanluError
from danlu.tokenizers.base import CHATML_TEMPLATE
from danlu.tokenizers.chat import render_chat_template
from danlu.tokenizers.jinja import render_jinja

TEMPLATES = {
    "chatml": CHATML_TEMPLATE,
    "smollm2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
        "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
        "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "namespace_and_filters": (
        "{%- set ns = namespace(found=false, n=0) -%}\n{%- for m in messages -%}\n"
        "  {%- if m.role == 'system' -%}{%- set ns.found = true -%}{%- endif -%}\n"
        "  {%- set ns.n = ns.n + m.content|length -%}\n{%- endfor -%}\n"
        "{{- 'sys:' ~ ns.found ~ ' chars:' ~ ns.n }}\n{% for m in messages if m.role != 'system' %}\n"
        "  [{{ loop.index }}/{{ loop.length }}] {{ m.role|upper }}: {{ m.content if m.content else '(empty)' }}"
        "{{ '\\n' if not loop.last }}\n{% endfor %}\n{# a comment #}\n"
        "{{ 'no' if false else (messages|length > 2) }} {{ {'a': 1}.get('a') }} {{ [1,2,3][-1] }} {{ 'x' * 3 }}"
        " {{ 7 // 2 }} {{ messages[0].nothing is defined }} {{ messages|map(attribute='role')|join(',') if false }}"
        "{% for k, v in {'x': 1}.items() %}{{ k }}={{ v }}{% else %}none{% endfor %}"
    ),
    "select_map": (
        "{{ messages|selectattr('role', 'equalto', 'system')|list|length }} "
        "{{ messages|rejectattr('content')|map(attribute='role')|join(',') }} {{ [0, 1, '', 2]|select|list }} "
        "{{ messages|map(attribute='role')|map('upper')|join('+') }}"
    ),
}
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "  Hello  "},
        {"role": "assistant", "content": "Hey! 你好"},
        {"role": "user", "content": ""},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "assistant", "content": "c"},
    ],
]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_same_text_as_jinja2(name, conversation, generation_prompt):
    variables = {
        "messages": CONVERSATIONS[conversation],
        "add_generation_prompt": generation_prompt,
        "bos_token": "<s>",
        "eos_token": "</s>",
    }
    try:
        expected = _compile_jinja_template(TEMPLATES[name]).render(**variables)
    except Exception as e:  # the template's own raise_exception: danlu must refuse too
        with pytest.raises(DanluError, match="refused"):
            render_jinja(TEMPLATES[name], variables)
        assert "alternate" in str(e)
        return
    assert render_jinja(TEMPLATES[name], variables) == expected
    assert render_chat_template(TEMPLATES[name], **variables) == expected


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{% macro m() %}x{% endmacro %}", "unsupported statement"),
        ("{{ x | nosuchfilter }}", "unsupported filter"),
        ("{% if true %}open", "missing"),
        ("{{ 'a' +* 1 }}", "unexpected"),
        ("{{ x is nosuchtest }}", "unsupported test"),
    ],
)
def test_unsupported_constructs_raise(template, match):
    with pytest.raises(DanluError, match=match):
        render_jinja(template, {"x": 1})
