"""`danlu serve`'s flags come from ServeConfig's fields (one flag generator, `danlu.flags`; docs/DUPLICATES.md).

Pins what the hand-written flags did: the same flag names and defaults, the limits in their own group, each
value landing in its ServeConfig field, and a bad value refused before any model is loaded."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from danlu.cli import serve as cli_serve
from danlu.errors import DanluError
from danlu.flags import Parser
from danlu.serve.config import LIMIT_FIELDS, ServeConfig

# The flags `danlu serve` had before they were generated, and the field each sets.
FLAGS = {
    "--max-batch-size": "max_batch_size", "--max-wait-ms": "max_wait_ms", "--scheduler": "scheduler",
    "--kv-cache-tokens": "kv_cache_tokens", "--prefill-chunk-tokens": "prefill_chunk_tokens",
    "--prefix-cache-tokens": "prefix_cache_tokens", "--max-body-bytes": "max_body_bytes",
    "--default-max-tokens": "default_max_tokens", "--max-num-beams": "max_num_beams", "--max-n": "max_n",
    "--max-rows-per-request": "max_rows_per_request", "--max-rows-in-flight": "max_rows_in_flight",
    "--max-prompt-tokens": "max_prompt_tokens", "--header-timeout": "header_timeout_s",
    "--keep-alive-timeout": "keep_alive_timeout_s", "--max-connections": "max_connections",
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="danlu")
    cli_serve.register(p.add_subparsers(dest="command"))
    return p


def _serve_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_the_flags_and_their_defaults_are_the_configs() -> None:
    serve = _serve_parser(_parser())
    actions = {s: a for a in serve._actions for s in a.option_strings}
    d = ServeConfig()
    for flag, name in FLAGS.items():
        assert actions[flag].dest == name and actions[flag].default == getattr(d, name), flag
        assert actions[flag].help, flag
    limits = next(g for g in serve._action_groups if g.title.startswith("limits"))
    in_limits = {a.dest for a in limits._group_actions}
    assert in_limits == set(LIMIT_FIELDS) | {"allowed_hosts"}
    assert actions["--scheduler"].choices == ("continuous", "static")


def test_values_reach_the_config() -> None:
    argv = ["serve", "--model", "M"]
    for k, (flag, name) in enumerate(FLAGS.items()):
        if name != "scheduler":
            argv += [flag, str(k + 2)]
    args = _parser().parse_args([*argv, "--scheduler", "static", "--api-key", "K"])
    config = cli_serve.serve_config_from_args(args, model_name="m", api_key=args.api_key)
    for k, (flag, name) in enumerate(FLAGS.items()):
        if name != "scheduler":
            assert getattr(config, name) == k + 2, flag
    assert config.scheduler == "static" and config.api_key == "K" and config.model_name == "m"
    untouched = {f.name for f in fields(ServeConfig)} - set(FLAGS.values()) - {"model_name", "api_key"}
    assert all(getattr(config, n) == getattr(ServeConfig(), n) for n in untouched)


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [("--max-n", "0", "max_n must be >= 1, got 0"), ("--max-connections", "0", "max_connections must be >= 1"),
     ("--header-timeout", "-1", "header_timeout_s must be >= 0"), ("--max-wait-ms", "-1", "max_wait_ms must be >= 0"),
     ("--prefix-cache-tokens", "-1", "prefix_cache_tokens must be >= 0, got -1 (0 = off)"),
     ("--kv-cache-tokens", "0", "kv_cache_tokens must be >= 1")],
)  # fmt: skip
def test_a_bad_value_is_refused_before_loading(tmp_path, flag, value, said) -> None:
    args = _parser().parse_args(["serve", "--model", str(tmp_path), flag, value])
    with pytest.raises(DanluError, match=said.replace("(", r"\(").replace(")", r"\)")):
        args.func(args)  # the validation runs first: no model is read from the empty folder


def test_a_config_built_in_python_is_checked_the_same() -> None:
    with pytest.raises(DanluError, match="scheduler must be one of continuous, static"):
        ServeConfig(scheduler="fast")
    with pytest.raises(DanluError, match="max_rows_in_flight must be >= 1"):
        ServeConfig(max_rows_in_flight=0)
