"""response_format through the official `openai` client against `danlu serve` on SmolLM2: json_schema replies
parse and validate for every prompt of a small set (the schemas bound every string and number, so each object
closes well before max_tokens), streamed replies join to the same text, json_object is a JSON object, and each
bad input is a 400 naming its field."""

import json

import jsonschema
import openai
import pytest

from danlu.serve.api import ServeConfig, create_app
from danlu.serve.server import BackgroundServer

ANSWER = {
    "type": "object",
    "properties": {
        # ASCII letters, digits, spaces, .,'- (nothing JSON escapes): a character per token at least, so the
        # object closes within max_tokens
        "answer": {"type": "string", "pattern": "^[A-Za-z0-9 .,'-]{0,24}$"},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 10},
        "kind": {"enum": ["fact", "opinion", "number"]},
    },
    "required": ["answer", "confidence", "kind"],
    "additionalProperties": False,
}
PROMPTS = [
    "What is the capital of France?",
    "Name a primary color.",
    "What is 7 times 6?",
    "Who wrote Hamlet?",
    "Is the sea salty?",
]


@pytest.fixture(scope="module")
def client(smollm2_url):
    return openai.OpenAI(base_url=smollm2_url + "/v1", api_key="none", max_retries=0)


def ask(client, prompt, response_format, **kw):
    return client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}], response_format=response_format,
        max_tokens=48, temperature=0, **kw,
    )  # fmt: skip


def test_json_schema_replies_parse_and_validate(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}
    for prompt in PROMPTS:
        r = ask(client, prompt, fmt)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (prompt, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), ANSWER)
    # streamed: the content deltas join into the same document
    stream = ask(client, PROMPTS[0], fmt, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == ask(client, PROMPTS[0], fmt).choices[0].message.content


def test_json_object_and_text(client):
    r = ask(client, "Describe Paris in JSON with a name field.", {"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    plain = ask(client, PROMPTS[0], {"type": "text"}).choices[0].message.content
    assert plain == ask(client, PROMPTS[0], None).choices[0].message.content
    assert not plain.lstrip().startswith("{")  # the text format really is unconstrained


def error(client, **kw):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], **kw)
    return e.value.body


def test_bad_schemas_are_400s_naming_the_field(client):
    def schema_format(schema):
        return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

    # not a JSON Schema (the metaschema says so), and one llguidance cannot compile (a look-behind pattern)
    for bad in ({"type": "objekt"}, {"type": "string", "pattern": "(?<=a)b"}):
        body = error(client, response_format=schema_format(bad))
        assert body["param"] == "response_format.json_schema.schema", body
    # a wrong type is the schema's 422, not a 400
    with pytest.raises(openai.UnprocessableEntityError):
        error(client, response_format={"type": "yaml"})


def test_a_tokenizer_that_cannot_express_the_grammar(make_gpt):
    """A Unigram tokenizer has no bytes per token id, so no grammar mask: a 400 naming response_format."""
    from danlu.tokenizers.unigram import UnigramTokenizer

    tok = UnigramTokenizer.train(["the cat sat on the mat"] * 20 + ["a dog ran"] * 20, vocab_size=40)
    model = make_gpt(vocab_size=tok.vocab_size)
    with BackgroundServer(create_app(model, tok, ServeConfig(model_name="uni"))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="uni",
                messages=[{"role": "user", "content": "hi"}],
                response_format={"type": "json_object"},
            )
        assert e.value.body["param"] == "response_format" and "byte-level" in e.value.body["message"]
        tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="uni", messages=[{"role": "user", "content": "hi"}], tools=tools, tool_choice="required"
            )
        assert e.value.body["param"] == "tool_choice"
        ok = client.chat.completions.create(
            model="uni", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert ok.choices[0].message.content is not None  # plain text still works
