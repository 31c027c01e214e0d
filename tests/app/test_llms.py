"""Model wrappers share one protocol: invoke, stream, batch. The local wrapper equals danlu.generate; the HTTP
wrapper talking to danlu serve equals the local one; the fake is scripted, streams, and honours stop strings."""

import pytest

import danlu
from danlu.app.llms import FakeLLM, LocalLLM, OpenAILLM
from danlu.app.usage import UsageTracker
from danlu.errors import DanluError
from danlu.serve.api import ServeConfig, create_app
from danlu.serve.server import BackgroundServer

CHAT = [{"role": "user", "content": "What is the capital of Hetoris?"}]


def test_fake_llm_scripts_streams_and_stops(capsys):
    llm = FakeLLM(["Thought: add.\nObservation: 5", lambda p: f"echo {p}"], verbose=True)
    assert llm.invoke("q", stop=["\nObservation:"]) == "Thought: add."
    assert list(llm.stream("hi there")) == ["echo ", "hi ", "there"]
    assert "----- prompt to fake -----\nq" in capsys.readouterr().out  # verbose prints every prompt sent
    assert llm.sent == ["q", "hi there"]
    with pytest.raises(DanluError, match="ran out of its 2 scripted responses"):
        llm.invoke("again")
    assert FakeLLM(["a", "b"], cycle=True).batch(["1", "2", "3"]) == ["a", "b", "a"]


def test_local_llm_equals_danlu_generate(local_model):
    model, tokenizer = local_model
    llm = LocalLLM(model, tokenizer, name="tiny", options={"max_new_tokens": 10})
    expected = danlu.generate(model, tokenizer, ["The capital of", "Deva"], max_new_tokens=10)
    assert llm.batch(["The capital of", "Deva"]) == expected
    assert llm.invoke("Deva") == expected[1]
    assert "".join(llm.stream("The capital of")) == expected[0]
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    end = tokenizer.token_to_id("<|im_end|>")
    assert llm.invoke(CHAT) == danlu.generate(
        model, tokenizer, prompt, max_new_tokens=10, stop_token_ids=[end]
    )
    assert llm.invoke("Deva", max_new_tokens=3) == danlu.generate(model, tokenizer, "Deva", max_new_tokens=3)


@pytest.fixture(scope="module")
def endpoint(local_model):
    model, tokenizer = local_model
    with BackgroundServer(create_app(model, tokenizer, ServeConfig(model_name="tiny"))) as url:
        yield url + "/v1"


def test_openai_llm_against_danlu_serve(endpoint, local_model):
    model, tokenizer = local_model
    local = LocalLLM(model, tokenizer, options={"max_new_tokens": 12})
    usage = UsageTracker()
    remote = OpenAILLM(endpoint, "tiny", usage=usage, options={"max_new_tokens": 12})
    assert remote.invoke("The capital of") == local.invoke("The capital of")
    assert remote.invoke(CHAT) == local.invoke(CHAT)
    assert "".join(remote.stream(CHAT)) == local.invoke(CHAT)
    assert remote.batch(["Deva", "Zovelan", "x"]) == local.batch(["Deva", "Zovelan", "x"])
    u = usage.by_model["tiny"]
    assert u.requests == 6 and u.prompt_tokens > 0 and u.completion_tokens > 0  # the stream's usage included


def test_openai_llm_errors_are_clear(endpoint):
    with pytest.raises(DanluError, match="404.*does not exist"):
        OpenAILLM(endpoint, "no-such-model").invoke("hi")
    with pytest.raises(DanluError, match="cannot reach"):
        OpenAILLM("http://127.0.0.1:1/v1", "tiny", timeout=2).invoke("hi")
