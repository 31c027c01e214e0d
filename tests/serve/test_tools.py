"""Tool calling through the official `openai` client against `danlu serve` on SmolLM2 (whose GGUF template has
no tool support: danlu's TOOLS_PROMPT), and through real tool-use templates (Phi-4-mini's from
../shared/fixtures, a Hermes-style one written here) rendered natively: forced calls' arguments validate
against the function's schema, streamed tool-call deltas join into the same call, tool results go back, each
bad input is a 400 naming its field, and a ReAct agent on OpenAILLM uses the native path."""

import copy
import json
from pathlib import Path

import jsonschema
import openai
import pytest

from danlu.app.agents import ReActAgent
from danlu.app.llms import OpenAILLM
from danlu.app.tools import calculator
from danlu.serve import replies
from danlu.serve import tools as serve_tools
from danlu.serve.prompting import chat_plan
from danlu.serve.schemas import ChatRequest

WEATHER = {
    "type": "object",
    # ASCII letters, digits, spaces, .,'- (nothing JSON escapes): at least a character per token, so every
    # call closes well within max_tokens
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Za-z0-9 .,'-]{0,20}$"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -999, "maximum": 999},
                   "b": {"type": "integer", "minimum": -999, "maximum": 999}},
    "required": ["a", "b"],
    "additionalProperties": False,
}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
PROMPTS = ["What is the weather in Paris?", "What is 12 plus 30?"]
FIXTURES = Path(__file__).parents[2] / ".." / "shared" / "fixtures" / "chat_templates"
# A Hermes/Qwen-style tool template (written for this test): tools listed as JSON, calls in <tool_call> tags.
HERMES = """{%- if tools %}<|im_start|>system
Functions:
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
Call one as <tool_call>
{"name": <name>, "arguments": <object>}
</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "tool" %}<|im_start|>user
<tool_response>{{ message.content }}</tool_response><|im_end|>
{% elif message.tool_calls is defined %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def client(smollm2_url):
    return openai.OpenAI(base_url=smollm2_url + "/v1", api_key="none", max_retries=0)


def create(client, prompt, **kw):
    return client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}], tools=TOOLS, max_tokens=56,
        temperature=0, **kw,
    )  # fmt: skip


def joined_call(stream):
    """The one tool call of a streamed reply, joined from its deltas (OpenAI's reassembly), and the finish."""
    call, finish = {"id": None, "name": None, "arguments": ""}, None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                assert d.index == 0
                call["id"] = d.id or call["id"]
                call["name"] = (d.function.name if d.function and d.function.name else None) or call["name"]
                call["arguments"] += (d.function.arguments or "") if d.function else ""
    return call, finish


def test_forced_calls_validate_and_stream_the_same(client):
    for prompt in PROMPTS[:2]:
        for name in SCHEMAS:
            r = create(client, prompt, tool_choice={"type": "function", "function": {"name": name}})
            choice = r.choices[0]
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            (call,) = choice.message.tool_calls
            assert call.type == "function" and call.function.name == name and call.id.startswith("call_")
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[name])
    pick = {"type": "function", "function": {"name": "get_weather"}}
    plain = create(client, PROMPTS[0], tool_choice=pick).choices[0].message.tool_calls[0]
    streamed, finish = joined_call(create(client, PROMPTS[0], tool_choice=pick, stream=True))
    assert finish == "tool_calls" and streamed["id"].startswith("call_")
    assert (streamed["name"], streamed["arguments"]) == (plain.function.name, plain.function.arguments)


def test_required_picks_a_declared_tool_and_streams_the_same(client):
    (plain,) = create(client, PROMPTS[1], tool_choice="required").choices[0].message.tool_calls
    jsonschema.validate(json.loads(plain.function.arguments), SCHEMAS[plain.function.name])
    streamed, finish = joined_call(create(client, PROMPTS[1], tool_choice="required", stream=True))
    assert finish == "tool_calls"
    assert (streamed["name"], streamed["arguments"]) == (plain.function.name, plain.function.arguments)


def test_tool_results_go_back(client):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a": 12, "b": 30}'},
    }
    messages = [
        {"role": "user", "content": "What is 12 plus 30?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    r = client.chat.completions.create(
        model="smollm2", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=16, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content


def test_bad_tool_inputs_are_400s_naming_the_field(client):
    def param(**kw):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "hi"}], **kw
            )
        return e.value.body["param"]

    assert param(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "rm_rf"}}) == (
        "tool_choice.function.name"
    )
    for bad in (
        {"type": "objekt"},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}},
    ):
        broken = copy.deepcopy(TOOLS)
        broken[1]["function"]["parameters"] = bad
        assert param(tools=broken) == "tools[1].function.parameters"
    assert param(tools=TOOLS + TOOLS[:1]) == "tools[2].function.name"  # a repeated name


@pytest.fixture(scope="module")
def templated(tiny):
    """The tiny tokenizer with a given chat template (a shallow copy; the fixture's own stays ChatML)."""

    def make(template: str):
        tok = copy.copy(tiny[1])
        tok.chat_template = template
        return tok

    return make


@pytest.mark.parametrize("template, opening", [("hermes", "<tool_call>\n"), ("phi4_mini", "<|tool_call|>")])
def test_tool_templates_are_rendered_natively(templated, template, opening):
    text = HERMES if template == "hermes" else (FIXTURES / "phi4_mini.jinja").read_text()
    tok = templated(text)
    syntax = serve_tools.call_syntax(tok)
    assert syntax.native and syntax.key == "arguments" and syntax.opening == opening
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    messages = [{"role": "user", "content": "1 + 2?"}, {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "3"}]  # fmt: skip
    named = {"type": "function", "function": {"name": "add"}}
    body = {"model": "m", "messages": messages, "tools": TOOLS}
    plan = chat_plan(tok, ChatRequest.model_validate({**body, "tool_choice": named}))
    assert serve_tools.TOOLS_PROMPT[:20] not in plan.prompt  # the template's own tool listing
    # the template's listing of the named tool (the one offered) and the earlier call, as the template writes them
    assert '"name": "add", "parameters"' in plan.prompt and '{"a": 1, "b": 2}' in plan.prompt
    # the assistant turn is prefilled with the template's opening of a call to add, up to its arguments
    assert plan.prompt.endswith(opening + '{"name": "add", "arguments": ') and plan.call == "arguments"
    assert json.loads(plan.json_schema) == ADD
    required = chat_plan(tok, ChatRequest.model_validate({**body, "tool_choice": "required"}))
    assert required.prompt.endswith(opening) and required.call == "object"
    # auto: unconstrained, and a reply in the template's syntax is parsed back into a call
    auto = chat_plan(tok, ChatRequest.model_validate(body))
    assert auto.json_schema is None and auto.prompt.endswith(
        "<|assistant|>" if template == "phi4_mini" else "assistant\n"
    )
    reply = (
        opening
        + '{"name": "add", "arguments": {"a": 5, "b": 6}}'
        + ("\n</tool_call>" if template == "hermes" else "<|/tool_call|>")
    )
    message, reason = replies.reply_message(reply, "stop", auto)
    assert reason == "tool_calls" and message["tool_calls"][0]["function"] == {
        "name": "add",
        "arguments": '{"a": 5, "b": 6}',
    }
    assert replies.reply_message("The answer is 11.", "stop", auto) == (
        {"role": "assistant", "content": "The answer is 11."},
        "stop",
    )


def test_an_agent_on_the_served_model_calls_tools_natively(smollm2_url):
    llm = OpenAILLM(smollm2_url + "/v1", "smollm2", options={"max_new_tokens": 24})
    agent = ReActAgent(llm, [calculator], max_steps=2,
                       tool_choice={"type": "function", "function": {"name": "calculator"}})  # fmt: skip
    assert agent.native
    result = agent.run("What is 11 + 18?")
    first = result.steps[0]
    # the forced call's arguments fit the tool's schema (SmolLM2-135M fills in an empty expression: the
    # calculator's error is the observation), and the tool ran on them
    assert first.action == "calculator"
    jsonschema.validate(json.loads(first.action_input), calculator.json_schema()["function"]["parameters"])
    assert first.observation == agent.call_tool("calculator", first.action_input)
    # the second request carried the call and its result back as OpenAI messages
    sent = result.prompts[1]
    assert sent[-2]["role"] == "assistant" and sent[-2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert sent[-1] == {
        "role": "tool",
        "tool_call_id": sent[-2]["tool_calls"][0]["id"],
        "content": first.observation,
    }
    assert len(result.prompts) == 2 and (result.finished or result.steps[-1].action == "calculator")


def test_auto_replies_stream_as_text_or_as_one_call(templated):
    """auto is unconstrained: a reply that starts as text streams as content at once; one that starts as the
    template's call is held back and sent as a tool-call delta, equal to the non-streamed message."""
    tok = templated(HERMES)
    plan = chat_plan(tok, ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                     "tools": TOOLS}))  # fmt: skip
    text = replies.ReplyStream(plan)
    assert text.feed("Hello") == [{"content": "Hello"}] and text.feed(" there") == [{"content": " there"}]
    assert text.close("stop") == ([], "stop")
    call = replies.ReplyStream(plan)
    pieces = ["<tool_", "call>\n", '{"name": "add", ', '"arguments": {"a": 1, "b": 2}}', "\n</tool_call>"]
    assert all(call.feed(p) == [] for p in pieces)
    deltas, reason = call.close("stop")
    (delta,) = deltas
    assert reason == "tool_calls" and delta["tool_calls"][0]["index"] == 0
    assert delta["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}
    message, _ = replies.reply_message("".join(pieces), "stop", plan)
    assert message["tool_calls"][0]["function"] == delta["tool_calls"][0]["function"]
    # a call to a tool that was not offered is text
    other = replies.ReplyStream(plan)
    other.feed('{"name": "rm_rf", "arguments": {}}')
    assert other.close("stop") == ([{"content": '{"name": "rm_rf", "arguments": {}}'}], "stop")
