"""Every `danlu` command explains itself: each flag has help text, `--help` shows its default (or that it is
required) and its choices, subcommands look the same, and docs/CLI.md names every flag once (issue 20)."""

import argparse
import re
from pathlib import Path

import pytest

from danlu.cli import build_parser, main

CLI_MD = Path(__file__).resolve().parents[1] / "docs" / "CLI.md"


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser, action) for every action of every (sub)parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, parser, action


def options():
    for path, parser, action in walk(build_parser()):
        if action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, parser, action


def test_every_flag_has_help_and_shows_its_default():
    seen = 0
    for path, parser, action in walk(build_parser()):
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        where = f"danlu {' '.join(path)} {action.option_strings or action.dest}"
        assert action.help, f"{where} has no help text"
        if not action.option_strings:
            continue  # a positional argument is always required
        shown = parser._get_formatter()._expand_help(action)  # what `--help` prints for it
        assert "(default: " in shown or "(required)" in shown, f"{where}: --help shows no default: {shown!r}"
        seen += 1
    assert seen > 300  # every command's flags were walked, not just the top parser's


def test_help_output_shows_defaults_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--decay {cosine,linear,constant}" in text and "(default: cosine)" in text
    assert "--dtype {auto,float32,bfloat16}" in text and "--device DEVICE" in text
    assert "(default: auto)" in text and "--data DATA [DATA ...]" in text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--temperature TEMPERATURE .*\(default: 0\.0\)", text)
    assert "--quantize {auto,none,int8,int4,gguf}" in text and "(default: none)" in text


def subcommand_actions(parser, path=()):
    """(command path, the _SubParsersAction) for every parser that has subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield path, action
            for name, sub in action.choices.items():
                yield from subcommand_actions(sub, (*path, name))


def test_subcommands_show_one_metavar():
    metavars = {" ".join(path): a.metavar for path, a in subcommand_actions(build_parser())}
    assert metavars.pop("") == "COMMAND"
    assert {"vit", "clip", "diffusion", "seq2seq", "bert", "tokenizer", "rag"} <= set(metavars)
    assert set(metavars.values()) == {"SUBCOMMAND"}, metavars


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and re.fullmatch(r"danlu \S+\n", capsys.readouterr().out)


# ------------------------------------------------------------------------------------ docs/CLI.md's table
def flag_table() -> dict[str, tuple[str, set[str]]]:
    """docs/CLI.md's rows: flag -> (meaning, commands)."""
    rows = {}
    text = CLI_MD.read_text(encoding="utf-8").split("## Every flag", 1)[1]
    for line in text.splitlines():
        m = re.fullmatch(r"\| `(--[a-z0-9-]+)` \| (.+?) \| (.+?) \|", line.strip())
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} appears twice in docs/CLI.md"
            rows[m.group(1)] = (m.group(2), {c.strip().strip("`") for c in m.group(3).split(",")})
    return rows


def test_flag_table_lists_every_flag_with_its_commands():
    table = flag_table()
    actual: dict[str, set[str]] = {}
    for path, _, action in options():
        negated = isinstance(action, argparse.BooleanOptionalAction)  # --x and --no-x: one row, `--x`
        for flag in action.option_strings[:1] if negated else action.option_strings:
            actual.setdefault(flag, set()).add(" ".join(path))
    assert set(table) == set(actual), (sorted(set(actual) - set(table)), sorted(set(table) - set(actual)))
    for flag, (_, commands) in table.items():
        assert commands == actual[flag], (
            f"{flag}: table says {sorted(commands)}, parser {sorted(actual[flag])}"
        )


def test_flag_table_has_no_two_names_for_one_thing():
    table = flag_table()
    meanings: dict[str, str] = {}
    for flag, (meaning, _) in table.items():
        key = meaning.lower().strip(" .")
        assert key not in meanings, f"{flag} and {meanings[key]} mean the same: {meaning!r}"
        meanings[key] = flag
    # The names issue 20 found doubled are gone for good.
    assert not {"--steps", "--beam-size", "--val-data", "--test", "--embedding-model", "--n"} & set(table)
