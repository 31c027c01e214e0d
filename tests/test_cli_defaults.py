"""One default per option across the library, the CLI and the server (issue 20): `GenerationOptions` is the
source; `danlu generate`/`danlu chat` flags and the server's request schema must say the same; `--device` is
`auto` for every command."""

import argparse
from dataclasses import fields

import pytest

from danlu.cli import build_parser
from danlu.generate.options import GenerationOptions

# The server's names for the options OpenAI names differently.
SERVER_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
# Not request fields: set by the server itself (end-of-turn ids) or by decoding setups it does not offer.
NOT_IN_REQUESTS = {
    "add_eos_stop",
    "stop_token_ids",
    "early_stopping",
    "contrastive_alpha",
    "num_draft_tokens",
    "draft",
    # OpenAI's form is `response_format` (issue 17); until the server honours it a request carrying it is refused
    "json_schema",
    # requests say it per route: chat `logprobs` + `top_logprobs`, completions `logprobs` (serve/logprobs.py)
    "top_logprobs",
}


def command(name: str) -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices[name]


def _empty(value):
    return None if value in ([], {}, ()) else value


@pytest.mark.parametrize("name", ["generate", "chat"])
def test_cli_defaults_are_the_library_defaults(name):
    library = GenerationOptions()
    defaults = {a.dest: a.default for a in command(name)._actions}
    for f in fields(GenerationOptions):
        if f.name in defaults:
            assert _empty(defaults[f.name]) == _empty(getattr(library, f.name)), (name, f.name)
    assert defaults["temperature"] == 0.0 and defaults["max_new_tokens"] == library.max_new_tokens
    assert defaults["logit_bias"] == [] and library.logit_bias == {}


def test_cli_default_beam_search_is_valid():
    """The reported failure: `danlu generate --num-beams 4` refused by the CLI's own sampling default."""
    from danlu.cli.generate import check_generation_args

    args = command("generate").parse_args(["--model", "m", "hi", "--num-beams", "4"])
    check_generation_args(args)  # raised "num_beams=4 with temperature=0.8" before


def test_server_request_defaults_are_the_library_defaults():
    from danlu.serve.schemas import Sampling

    library = GenerationOptions()
    request = Sampling(model="m")
    checked = 0
    for f in fields(GenerationOptions):
        if f.name in NOT_IN_REQUESTS:
            continue
        server_name = SERVER_NAMES.get(f.name, f.name)
        assert server_name in Sampling.model_fields, f"the request schema has no {server_name}"
        if f.name == "max_new_tokens":
            # Unset max_tokens means "as many as fit" in OpenAI's API; the server fills it with
            # `serve --default-max-tokens` capped by the room left in the context (docs/CLI.md, Defaults).
            assert request.max_tokens is None
            continue
        assert _empty(getattr(request, server_name)) == _empty(getattr(library, f.name)), f.name
        checked += 1
    assert checked >= 12


def test_every_command_defaults_to_device_auto():
    def walk(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, (*path, name))
            elif action.dest == "device":
                yield " ".join(path), action.default

    devices = dict(walk(build_parser()))
    assert {"generate", "chat", "serve", "demo", "eval", "pretrain", "sft", "reward", "dpo", "ppo", "grpo",
            "vit train", "seq2seq train", "bert train", "rag ask", "agent"} <= set(devices)  # fmt: skip
    assert set(devices.values()) == {"auto"}, devices
