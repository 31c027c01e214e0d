"""`danlu agent`: ReAct with the calculator (and a search tool over a `rag index` store) from the command line;
--verbose prints every prompt sent. The model is danlu's scripted FakeLLM put where the checkpoint loads."""

import json

import pytest

from danlu.app.llms import FakeLLM
from danlu.cli import main


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """`--model CKPT` loads this FakeLLM; returns (the checkpoint path to pass, the list of LLMs made)."""
    made = []

    def from_path(path, device="cpu", **kwargs):
        assert device in ("cpu", "cuda") and kwargs["options"]["max_new_tokens"] == 64
        llm = FakeLLM(made_responses.pop(0))
        made.append(llm)
        return llm

    made_responses: list[list] = []
    monkeypatch.setattr("danlu.app.llms.LocalLLM.from_path", from_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    return str(ckpt), made, made_responses


def test_agent_uses_the_calculator_and_answers(scripted, capsys):
    ckpt, made, responses = scripted
    responses.append(
        [" I need 17 * 23.\nAction: calculator\nAction Input: 17 * 23", " I know it.\nFinal Answer: 391"]
    )
    assert main(["agent", "What is 17 times 23?", "--model", ckpt, "--verbose"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("391")
    assert out.count("----- agent prompt -----") == 2  # every prompt sent is shown
    assert "Observation: 391" in out and "calculator(expression: str)" in out
    assert made[0].calls == 2  # one model call per ReAct step


def test_agent_json_and_search_tool(scripted, tmp_path, capsys):
    ckpt, _, responses = scripted
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "kalan.md").write_text(
        "Kalan is the capital of Zovelia. It lies by the sea.\n", encoding="utf-8"
    )
    store = tmp_path / "rag.sqlite"
    assert main(["rag", "index", str(notes), "--store", str(store), "--embeddings", "hashing"]) == 0
    responses.append(
        [" Look it up.\nAction: search\nAction Input: capital of Zovelia", " Found.\nFinal Answer: Kalan"]
    )
    assert (
        main(["agent", "What is the capital of Zovelia?", "--model", ckpt, "--store", str(store), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the `rag index` line
    assert result["answer"] == "Kalan" and result["finished"] is True
    assert (
        result["steps"][0]["action"] == "search"
        and "Kalan is the capital" in result["steps"][0]["observation"]
    )


def test_agent_out_of_steps_says_so(scripted, capsys):
    ckpt, _, responses = scripted
    responses.append([" Again.\nAction: calculator\nAction Input: 1 + 1"] * 2)
    assert main(["agent", "Loop?", "--model", ckpt, "--max-steps", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no Final Answer after 2 steps" in captured.err
