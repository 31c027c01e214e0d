"""Log-probs in `danlu serve`: chat logprobs/top_logprobs, completions logprobs/echo (max_tokens 0 scores the
prompt only), token-id prompts and the vLLM-style tokenizer routes, n choices sharing one prefill, the 400s.

Every value is checked against the model's own log-softmax of the same tokens, computed here by one plain
forward (teacher forcing), so a wrong position, a processed instead of raw distribution or a lost token fails.
The SmolLM2 test at the end checks the same against transformers through the official `openai` client."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
import torch

import danlu
import danlu.serve.logprobs
from danlu.errors import DanluError
from danlu.generate.engine import run
from danlu.serve.api import ServeConfig, create_app
from danlu.serve.logprobs import token_text
from danlu.serve.server import BackgroundServer

NAME = "tiny-world"
PROMPT = "The capital of Hetoris is"
MESSAGES = [{"role": "user", "content": "What does Fido like to eat?"}]


@pytest.fixture(scope="module")
def served(tiny):
    model, tokenizer = tiny
    with BackgroundServer(create_app(model, tokenizer, ServeConfig(model_name=NAME, max_n=4))) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            yield url, http


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="none", max_retries=0)


def log_softmax_of(model, ids: list[int]) -> torch.Tensor:
    """(T, V): row t is log p(. | ids[: t + 1]), from one forward over ids."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_engine_keeps_raw_logprobs_only_when_asked(tiny):
    model, tokenizer = tiny
    ids = tokenizer.encode(PROMPT)
    # logit_bias forces one token: its processed log-prob is ~0, the model's own (raw) one is not
    forced = tokenizer.encode(" f")[0]
    bias = {forced: 100.0}
    c = run(model, tokenizer, [PROMPT], max_new_tokens=6, top_logprobs=3, logit_bias=bias)[0]
    lsm = log_softmax_of(model, ids + list(c.token_ids))
    for j, tok in enumerate(c.token_ids):
        row = lsm[len(ids) + j - 1]
        assert math.isclose(c.raw_logprobs[j], float(row[tok]), abs_tol=1e-4)
        assert [t for t, _ in c.top_logprobs[j]] == row.topk(3).indices.tolist()
        assert [v for _, v in c.top_logprobs[j]] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
    assert set(c.token_ids) == {forced} and max(c.logprobs) > -1e-3 and max(c.raw_logprobs) < -0.5
    plain = run(model, tokenizer, [PROMPT], max_new_tokens=6, logit_bias=bias)[0]
    assert plain.token_ids == c.token_ids and plain.raw_logprobs == () and plain.top_logprobs == ()
    with pytest.raises(DanluError, match="beam search"):
        run(model, tokenizer, [PROMPT], max_new_tokens=4, num_beams=2, top_logprobs=1)


def test_echo_scores_the_prompt_without_decoding(served, tiny, monkeypatch):
    model, tokenizer = tiny
    _, http = served
    r = http.post("/v1/completions", json={"model": NAME, "prompt": PROMPT, "echo": True, "logprobs": 2,
                                           "max_tokens": 0})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    ids = tokenizer.encode(PROMPT)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) and "".join(lp["tokens"]) == PROMPT
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None and lp["text_offset"][0] == 0
    lsm = log_softmax_of(model, ids)
    want = [float(lsm[t - 1, ids[t]]) for t in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-4)
    for t, top in enumerate(lp["top_logprobs"][1:], start=1):
        best = lsm[t - 1].topk(2)
        names = [token_text(tokenizer, i)[0] for i in best.indices.tolist()]  # "bytes:\\x.." if not UTF-8
        assert set(names) <= set(top) and len(top) <= 3  # the 2 most likely, plus the chosen one
        assert top[names[0]] == pytest.approx(float(best.values[0]), abs=1e-4)
    # the same prompt as token ids, and several prompts at once (one batched scoring forward)
    as_ids = http.post("/v1/completions", json={"model": NAME, "prompt": ids, "echo": True, "logprobs": 2,
                                                "max_tokens": 0}).json()  # fmt: skip
    assert as_ids["choices"][0]["logprobs"] == lp
    two = http.post("/v1/completions", json={"model": NAME, "prompt": ["Fido", PROMPT], "echo": True,
                                             "logprobs": 2, "max_tokens": 0}).json()  # fmt: skip
    assert two["choices"][1]["logprobs"]["token_logprobs"][1:] == pytest.approx(want, abs=1e-4)
    # a long prompt is scored a few positions at a time through the KV cache: the same values
    monkeypatch.setattr(danlu.serve.logprobs, "SCORE_TOKENS_PER_FORWARD", 3)
    chunked = http.post("/v1/completions", json={"model": NAME, "prompt": ["Fido", PROMPT], "echo": True,
                                                 "logprobs": 2, "max_tokens": 0}).json()  # fmt: skip
    assert chunked["choices"][1]["logprobs"]["token_logprobs"][1:] == pytest.approx(want, abs=1e-4)
    assert chunked["choices"][1]["logprobs"]["tokens"] == lp["tokens"]


def test_generated_tokens_logprobs_as_lm_eval_reads_them(served, tiny):
    """echo + logprobs + max_tokens=1 is lm-evaluation-harness's loglikelihood request: the prompt's entries,
    then the generated token's, all raw log-softmax; greedy: the chosen token is the most likely one."""
    model, tokenizer = tiny
    _, http = served
    ids = tokenizer.encode(PROMPT)
    body = {"model": NAME, "prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 5, "temperature": 0}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    lp = choice["logprobs"]
    generated = choice["text"][len(PROMPT) :]
    assert generated == danlu.generate(model, tokenizer, PROMPT, max_new_tokens=5)
    new_ids = list(run(model, tokenizer, [PROMPT], max_new_tokens=5)[0].token_ids)
    assert len(lp["tokens"]) == len(ids) + len(new_ids) == len(ids) + 5
    lsm = log_softmax_of(model, ids + new_ids)
    want = [float(lsm[t - 1, (ids + new_ids)[t]]) for t in range(1, len(ids) + len(new_ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-4)
    for tok, value, top in zip(
        lp["tokens"][len(ids) :], lp["token_logprobs"][len(ids) :], lp["top_logprobs"][len(ids) :]
    ):
        assert top[tok] == value == max(top.values())  # lm-eval's is_greedy test
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][len(ids)] == len(PROMPT)
    # streamed: the chunks' logprobs put together are the same
    chunks = [c for c in http.post("/v1/completions", json={**body, "stream": True}).text.split("\n\n")
              if c.startswith("data: {")]  # fmt: skip
    streamed = [json.loads(c[6:])["choices"][0]["logprobs"] for c in chunks]
    tokens = [t for s in streamed if s for t in s["tokens"]]
    values = [v for s in streamed if s for v in s["token_logprobs"]]
    assert tokens == lp["tokens"] and values == lp["token_logprobs"]


def test_chat_logprobs_and_top_logprobs(client, tiny):
    model, tokenizer = tiny
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, max_tokens=8,
                                       logprobs=True, top_logprobs=4)  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 8
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    ids = tokenizer.encode(prompt)
    new_ids = run(model, tokenizer, [prompt], max_new_tokens=8)[0].token_ids
    lsm = log_softmax_of(model, ids + list(new_ids))
    for j, entry in enumerate(content):
        values = [a.logprob for a in entry.top_logprobs]
        assert len(values) == 4 and values == sorted(values, reverse=True)
        assert entry.top_logprobs[0].token == entry.token and values[0] == entry.logprob  # greedy
        assert entry.logprob == pytest.approx(float(lsm[len(ids) + j - 1, new_ids[j]]), abs=1e-4)
        assert bytes(entry.bytes) == tokenizer.token_bytes(new_ids[j])
    stream = client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, max_tokens=8,
                                            logprobs=True, top_logprobs=4, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    streamed, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            streamed += c.logprobs.content if c.logprobs else []
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == [e.logprob for e in content]
    assert usage.completion_tokens == 8
    none = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    assert none.choices[0].logprobs is None
    zero = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2, logprobs=True)
    assert [e.top_logprobs for e in zero.choices[0].logprobs.content] == [[], []]


def test_n_choices_share_one_prefill(served, tiny, monkeypatch):
    model, tokenizer = tiny
    _, http = served
    prompt = "Vilan and Pona walked to the market of Fadono, where"
    prefilled: list[int] = []
    forward = model.forward

    def counting(input_ids, *args, **kwargs):
        if input_ids is not None and input_ids.shape[1] > 1:  # a prefill (a decode step feeds one token)
            prefilled.append(input_ids.numel())
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    body = {"model": NAME, "prompt": prompt, "n": 3, "max_tokens": 4, "temperature": 1.0, "logprobs": 1}
    r = http.post("/v1/completions", json=body).json()
    assert len(r["choices"]) == 3 and all(len(c["logprobs"]["tokens"]) == 4 for c in r["choices"])
    n_ids = len(tokenizer.encode(prompt))
    assert 0 < sum(prefilled) <= n_ids, (
        f"prefilled {prefilled} tokens for 3 choices of a {n_ids}-token prompt"
    )


@pytest.mark.parametrize(
    "route, body, param",
    [
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
        ),
        ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"messages": MESSAGES, "logprobs": True, "num_beams": 2}, "logprobs"),
        ("/v1/completions", {"prompt": "a", "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"prompt": "a", "echo": True, "n": 2, "logprobs": 1}, "echo"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": [1, 10**6], "max_tokens": 1}, "prompt"),
        ("/v1/completions", {"prompt": [[1], [2, 10**6]], "max_tokens": 1}, "prompt[1]"),
        ("/detokenize", {"tokens": [1, 10**6]}, "tokens"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(served, route, body, param):
    r = served[1].post(route, json={"model": NAME, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_tokenizer_routes_as_vllm_serves_them(served, tiny):
    _, tokenizer = tiny
    _, http = served
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == tokenizer.id_to_token(tokenizer.eos_token_id)
    ids = http.post("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()["tokens"]
    assert ids == tokenizer.encode(PROMPT)
    assert http.post("/detokenize", json={"tokens": ids}).json()["prompt"] == PROMPT


# ---- SmolLM2 against transformers, through the official client --------------------------------------------
@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    model, tokenizer = danlu.load(smollm2_gguf)
    hf = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    with BackgroundServer(create_app(model, tokenizer, ServeConfig(model_name="smollm2"))) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0), model, tokenizer, hf


def test_smollm2_echo_logprobs_match_transformers_and_n_choices(smol):
    client, model, tokenizer, hf = smol
    prompt = "The chemical symbol for gold is Au. The chemical symbol for silver is"
    r = client.completions.create(model="smollm2", prompt=prompt, echo=True, logprobs=3, max_tokens=2,
                                  temperature=0)  # fmt: skip
    lp = r.choices[0].logprobs
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        full = ids + list(run(model, tokenizer, [prompt], max_new_tokens=2)[0].token_ids)
        lsm = hf(torch.tensor([full])).logits[0].float().log_softmax(-1)
    want = [float(lsm[t - 1, full[t]]) for t in range(1, len(full))]
    assert len(lp.tokens) == len(full) and lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=2e-3)
    for tok, value, top in zip(
        lp.tokens[len(ids) :], lp.token_logprobs[len(ids) :], lp.top_logprobs[len(ids) :]
    ):
        assert top[tok] == value == max(top.values())  # greedy: the chosen token is the most likely
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi!"}],
                                          max_tokens=3, temperature=0.8, n=3, logprobs=True,
                                          top_logprobs=5)  # fmt: skip
    assert [c.index for c in chat.choices] == [0, 1, 2]
    for c in chat.choices:
        for entry in c.logprobs.content:
            values = [a.logprob for a in entry.top_logprobs]
            assert len(values) == 5 and values == sorted(values, reverse=True)
