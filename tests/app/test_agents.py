"""Agents with scripted fake models: ReAct solves the world's arithmetic word problems through the calculator
(and recovers from a bad tool call), plan-and-execute, reflection, multi-agent turns, window and vector memory;
tools check their typed arguments; the calculator never evaluates code."""

import re

import pytest

from danlu.app.agents import PlanAndExecute, ReActAgent, Role, collaborate, parse_plan, parse_react, reflect
from danlu.app.llms import FakeLLM
from danlu.app.memory import VectorMemory, WindowMemory
from danlu.app.tasks import word_problems
from danlu.app.tools import ToolError, calculator, retriever_tool, tool


def scripted_solver(prompt: str) -> str:
    """A fake model that reads the last question and the last observation, as a ReAct model would."""
    question = re.findall(r"Question: (.*)", prompt)[-1]
    after = prompt.split(f"Question: {question}")[-1]
    if "Observation:" in after:
        return f" The calculator says {re.findall(r'Observation: (.*)', after)[-1]}.\nFinal Answer: {re.findall(r'Observation: (.*)', after)[-1]}"
    a, b = re.findall(r"\d+", question)[:2]
    op = "+" if "more" in question else "-" if "away" in question else "*"
    return f" I need {a} {op} {b}.\nAction: calculator\nAction Input: {a} {op} {b}\nObservation: (made up, cut by the stop string)"


def test_react_solves_world_word_problems_with_the_calculator(world):
    problems = word_problems(world, "test")
    assert len(problems) >= 10
    agent = ReActAgent(FakeLLM([scripted_solver], cycle=True), [calculator])
    for p in problems:
        result = agent.run(p["question"])
        assert result.finished and result.answer == p["answer"], (p, result.steps)
        assert result.steps[0].action == "calculator" and result.steps[0].action_input == p["expression"]
        assert "made up" not in result.steps[0].observation  # the model never writes the observation itself


def test_bad_tool_call_becomes_an_observation_and_the_agent_recovers(capsys):
    llm = FakeLLM([
        "Thought: try\nAction: calculator\nAction Input: __import__('os').system('echo hi')",
        "Thought: wrong tool\nAction: browser\nAction Input: x",
        "Thought: I give up formatting",
        "Thought: again\nAction: calculator\nAction Input: 6 * 7",
        "Thought: done\nFinal Answer: 42",
    ])  # fmt: skip
    result = ReActAgent(llm, [calculator], verbose=True).run("What is six times seven?")
    assert result.answer == "42" and len(result.steps) == 5
    assert result.steps[0].observation.startswith("error: calculator: Call is not allowed")
    assert "there is no tool 'browser'" in result.steps[1].observation
    assert "no Action found" in result.steps[2].observation
    assert result.steps[3].observation == "42"
    out = capsys.readouterr().out
    assert "----- agent prompt -----" in out and "Observation: 42" in out  # every prompt is printed
    assert result.prompts[-1] == llm.sent[-1]


def test_max_steps_is_reported_not_hidden():
    result = ReActAgent(
        FakeLLM(["Action: calculator\nAction Input: 1 + 1"], cycle=True), [calculator], max_steps=2
    ).run("loop")
    assert result.finished is False and result.answer is None and len(result.steps) == 2


def test_chat_mode_sends_turns():
    llm = FakeLLM(["Action: calculator\nAction Input: 2 + 3", "Final Answer: 5"])
    result = ReActAgent(llm, [calculator], as_chat=True).run("2 + 3?")
    assert result.answer == "5"
    last = llm.sent[-1]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"] and last[-1][
        "content"
    ] == "Observation: 5"


def test_typed_tools_check_arguments():
    @tool
    def population(city: str, year: int, growth: float = 0.0) -> str:
        """People living in a city in a year.

        Details the model does not need."""
        return f"{city}:{year}:{growth}"

    assert population.description == "People living in a city in a year."
    assert population.signature() == "population(city: str, year: int, growth: float)"
    assert population('{"city": "Deva", "year": 2020, "growth": 1}') == "Deva:2020:1.0"
    assert population({"city": "Deva", "year": 2020}) == "Deva:2020:0.0"
    with pytest.raises(ToolError, match="'year' must be int, got '2020'"):
        population({"city": "Deva", "year": "2020"})
    with pytest.raises(ToolError, match="needs argument"):
        population({"city": "Deva"})
    with pytest.raises(ToolError, match="has no argument"):
        population({"city": "Deva", "year": 1, "planet": "x"})
    with pytest.raises(ToolError, match="not valid JSON"):
        population("{city: Deva}")
    with pytest.raises(ToolError, match="takes 3 arguments"):
        population("Deva 2020")
    assert population.json_schema()["function"]["parameters"]["required"] == ["city", "year"]


@pytest.mark.parametrize(
    "expression, value",
    [
        ("11 + 18", "29"),
        ("(3 + 4) * 2", "14"),
        ("7 / 2", "3.5"),
        ("2 ** 10", "1024"),
        ("-5 % 3", "1"),
        ("12 × 3", "36"),
        ("8 / 4", "2"),
    ],
)
def test_calculator(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize(
    "expression, message",
    [("__import__('os')", "Call is not allowed"), ("x + 1", "Name is not allowed"), ("(1).real", "Attribute"),
     ("9 ** 99999", "exponent"), ("1 / 0", "division by zero"), ("1 +", "cannot parse"), ("'a' * 3", "Constant"),
     ("[1, 2]", "List"), ("1" * 300, "characters")],
)  # fmt: skip
def test_calculator_refuses_everything_but_arithmetic(expression, message):
    with pytest.raises(ToolError, match=message):
        calculator(expression)


def test_parse_react():
    step = parse_react("Thought: add them\nAction: [calculator]\nAction Input: `3 + 4`\nmore text")
    assert (step.thought, step.action, step.action_input) == ("add them", "calculator", "3 + 4")
    assert parse_react("Final Answer: 7 apples").action_input == "7 apples"
    assert parse_plan("Plan:\n1. add\n2) double\n") == ["add", "double"]


def test_plan_and_execute():
    planner = FakeLLM(["1. Add 3 and 4\n2. Multiply the result by 5"])
    executor_llm = FakeLLM([
        "Action: calculator\nAction Input: 3 + 4", "Final Answer: 7",
        lambda p: "Action: calculator\nAction Input: 7 * 5" if "Add 3 and 4 -> 7" in p else "Final Answer: wrong",
        "Final Answer: 35",
    ])  # fmt: skip
    result = PlanAndExecute(planner, ReActAgent(executor_llm, [calculator])).run("What is (3 + 4) * 5?")
    assert result.plan == ["Add 3 and 4", "Multiply the result by 5"]
    assert [r.answer for r in result.results] == ["7", "35"] and result.answer == "35"


def test_reflection_revises_until_the_critic_is_satisfied():
    writer = FakeLLM(["Deva is the capital of Ropa.", "Fadono is the capital of Hetoris."])
    critic = FakeLLM(["Wrong country: the task asks about Hetoris.", "DONE"])
    result = reflect(writer, "What is the capital of Hetoris?", critic=critic)
    assert result.answer == "Fadono is the capital of Hetoris."
    assert result.drafts[0] != result.answer and len(result.critiques) == 2
    assert "Critique: Wrong country" in result.prompts[2]


def test_multi_agent_roles_share_one_transcript():
    solver = FakeLLM(["I think 3 + 4 = 8.", "Right, FINAL ANSWER: 7"])
    checker = FakeLLM([lambda p: "No: " + calculator("3 + 4") + "." if "3 + 4 = 8" in p else "?"])
    result = collaborate(
        [Role("solver", "Solve it.", solver), Role("checker", "Check the solver.", checker)], "3 + 4?"
    )
    assert result.answer == "7"
    assert [name for name, _ in result.transcript] == ["solver", "checker", "solver"]
    assert "checker: No: 7." in result.prompts[-1]


def test_memories_enter_the_prompt():
    window, long_term = WindowMemory(k=2), VectorMemory()
    long_term.remember("Tofi's favourite number is 12.")
    long_term.remember("Deva is a city in Ropa.")
    llm = FakeLLM(["Final Answer: 12", "Final Answer: 24"])
    agent = ReActAgent(llm, [calculator], memory=window, long_term=long_term)
    agent.run("What is Tofi's favourite number?")
    agent.run("Double Tofi's favourite number.")
    second = llm.sent[1]
    assert "Conversation so far:\nuser: What is Tofi's favourite number?\nassistant: 12" in second
    assert "Tofi's favourite number is 12." in second.split("Things you remember:")[1]
    assert len(window.messages()) == 2 and len(window.history) == 4 and len(long_term) == 4


def test_retriever_tool(world):
    from danlu.app.embeddings import HashingEmbeddings
    from danlu.app.loaders import world_fact_documents
    from danlu.app.retrieval import BM25Index, BM25Retriever
    from danlu.app.stores import VectorStore

    store = VectorStore(":memory:", HashingEmbeddings())
    store.add(world_fact_documents(world, langs=("en",)))
    search = retriever_tool(BM25Retriever(BM25Index.from_store(store), k=2))
    out = search("capital of Hetoris")
    assert out.startswith("[1] The capital of Hetoris is Fadono. (source: country.capital:Hetoris)")
