"""Bad input gets a clear OpenAI-style error with the right status, and the server stays up after each."""

import httpx
import pytest

from danlu.serve.api import ServeConfig, create_app
from danlu.serve.server import BackgroundServer

CHAT = {
    "model": "tiny-world",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 4,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def http(tiny):
    model, tokenizer = tiny
    config = ServeConfig(model_name="tiny-world", max_body_bytes=20_000, max_n=4)
    with BackgroundServer(create_app(model, tokenizer, config)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["message"] and body["type"]
    return body


@pytest.fixture(autouse=True)
def server_stays_up(http):
    yield
    ok = http.post("/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None


def test_malformed_json(http):
    r = http.post(
        "/v1/chat/completions",
        content=b'{"model": "tiny-world", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert "not valid JSON" in error_of(r, 400)["message"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", "hot"),
        ("max_tokens", "10"),
        ("messages", "hello"),
        ("n", 1.5),
        ("stream", "yes"),
        ("stop", 3),
    ],
)
def test_wrong_field_types(http, field, value):
    body = error_of(http.post("/v1/chat/completions", json={**CHAT, field: value}), 422)
    assert body["param"].startswith(field)


def test_values_out_of_range(http):
    assert (
        error_of(http.post("/v1/chat/completions", json={**CHAT, "temperature": -1}), 422)["param"]
        == "temperature"
    )
    assert (
        error_of(http.post("/v1/chat/completions", json={**CHAT, "messages": []}), 422)["param"] == "messages"
    )
    bad_role = {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}
    assert "role" in error_of(http.post("/v1/chat/completions", json=bad_role), 422)["param"]


def test_unknown_model_and_route(http):
    body = error_of(http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
    assert body["code"] == "model_not_found" and "tiny-world" in body["message"]
    assert (
        error_of(http.post("/v1/embeddings", json={"model": "minilm", "input": "x"}), 404)["code"]
        == "model_not_found"
    )
    assert error_of(http.get("/v1/nowhere"), 404)["code"] == "not_found"


def test_max_tokens_beyond_the_context(http):
    body = error_of(http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100_000}), 400)
    assert body["code"] == "context_length_exceeded" and "max_tokens <=" in body["message"]
    long_prompt = {"model": "tiny-world", "prompt": "Zovelan " * 600, "max_tokens": 1}
    assert error_of(http.post("/v1/completions", json=long_prompt), 400)["code"] == "context_length_exceeded"


def test_n_too_large(http):
    body = error_of(http.post("/v1/chat/completions", json={**CHAT, "n": 50}), 400)
    assert body["param"] == "n" and "at most 4" in body["message"]


def test_oversized_body(http):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 50_000}]}
    assert "at most 20000" in error_of(http.post("/v1/chat/completions", json=big), 413)["message"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"model": "tiny-world", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}]}'

    r = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    error_of(r, 413)


def test_tool_call_with_bad_arguments(http):
    call = {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{not json"}}
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]
    body = error_of(
        http.post("/v1/chat/completions", json={**CHAT, "messages": messages, "tools": tools}), 400
    )
    assert (
        body["code"] == "invalid_tool_call"
        and "messages[1].tool_calls[0].function.arguments" in body["message"]
    )
    call["function"]["arguments"] = '["a list"]'
    assert (
        "JSON object"
        in error_of(
            http.post("/v1/chat/completions", json={**CHAT, "messages": messages, "tools": tools}), 400
        )["message"]
    )
    call["function"] = {"name": "rm_rf", "arguments": "{}"}
    assert (
        "not among the tools"
        in error_of(
            http.post("/v1/chat/completions", json={**CHAT, "messages": messages, "tools": tools}), 400
        )["message"]
    )
    orphan = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "4"}]
    assert (
        "answers no earlier tool call"
        in error_of(http.post("/v1/chat/completions", json={**CHAT, "messages": orphan}), 400)["message"]
    )
    bad_tool = [{"type": "function", "function": {"name": "has space"}}]
    error_of(http.post("/v1/chat/completions", json={**CHAT, "tools": bad_tool}), 422)


def test_a_valid_tool_round_trip_is_accepted(http):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "2 + 2"}'},
    }
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]
    r = http.post("/v1/chat/completions", json={**CHAT, "messages": messages, "tools": tools})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_unsupported_fields_are_refused_not_ignored(http):
    assert (
        error_of(
            http.post("/v1/completions", json={"model": "tiny-world", "prompt": "a", "suffix": "b"}), 400
        )["param"]
        == "suffix"
    )
    image = {
        **CHAT,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    }
    assert "text only" in error_of(http.post("/v1/chat/completions", json=image), 400)["message"]


def test_bad_option_values_from_the_engine(http):
    body = error_of(http.post("/v1/chat/completions", json={**CHAT, "num_beams": 2, "temperature": 0.5}), 400)
    assert "num_beams" in body["message"]


def test_overloaded_gives_503_then_recovers(tiny):
    model, tokenizer = tiny
    app = create_app(model, tokenizer, ServeConfig(model_name="tiny-world"))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        app.state.batcher.stop()
        body = error_of(client.post("/v1/chat/completions", json=CHAT), 503)
        assert body["code"] == "overloaded"
        assert client.get("/health").json()["status"] == "stopped"
        app.state.batcher.start()
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
