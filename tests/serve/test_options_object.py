"""The server builds one GenerationOptions per request and that object travels to the batch: no dicts
serialised and rebuilt; the request schema's ranges and defaults are the engine's field metadata."""

from dataclasses import fields

import pytest

from danlu.flags import RANGE_KEYS
from danlu.generate.options import GenerationOptions
from danlu.serve.batching import Row, plan_batches
from danlu.serve.prompting import choice_options, generation_options
from danlu.serve.schemas import APIError, CompletionRequest, Sampling


def test_the_requests_options_object_reaches_the_batch():
    req = CompletionRequest(model="m", prompt="hi", temperature=0.5, seed=3, n=2, stop=["."], max_tokens=5)
    opts = generation_options(req, 2, 64, None, _config(), chat=False, param="prompt")
    assert isinstance(opts, GenerationOptions) and opts.stop == (".",) and opts.max_new_tokens == 5
    first, second = choice_options(opts, 2)
    assert first is opts and second.seed == 4 and second.temperature == 0.5
    rows = [Row("hi", o, 2, lambda e: None, prompt_ids=[1, 2]) for o in (opts, opts, second)]
    assert rows[0].options is opts  # not rebuilt
    batches = plan_batches(rows, max_batch_size=8, block_size=64)
    assert [len(b) for b in batches] == [2, 1]  # grouped by the options' hash: seeds differ, so apart


def test_request_ranges_are_the_engines():
    props = Sampling.model_json_schema()["properties"]
    keyword = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}
    server = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
    checked = 0
    for f in fields(GenerationOptions):
        name = server.get(f.name, f.name)
        if name not in props or not any(k in f.metadata for k in RANGE_KEYS):
            continue
        number = props[name]["anyOf"][0]
        for k in RANGE_KEYS:
            if k in f.metadata and not (f.name == "temperature" and k == "le"):
                assert number[keyword[k]] == f.metadata[k], (f.name, k)
                checked += 1
        assert props[name]["description"] == f.metadata["help"]
    assert checked >= 12
    assert props["temperature"]["anyOf"][0]["maximum"] == 2  # OpenAI's cap, narrower than the engine's


def test_out_of_range_option_is_a_400_naming_it():
    req = CompletionRequest(model="m", prompt="hi", num_beams=2, temperature=0.5)
    with pytest.raises(APIError) as e:
        generation_options(req, 2, 64, None, _config(), chat=False, param="prompt")
    assert e.value.status == 400 and e.value.param == "num_beams"


def _config():
    from danlu.serve.config import ServeConfig

    return ServeConfig()
