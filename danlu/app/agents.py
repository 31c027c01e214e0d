"""Agents (notes 000 §agent 设计模式, notes 002 §Agent): tool use (ReAct), planning (plan-and-execute),
reflection (critique and revise), multi-agent collaboration (roles taking turns on a shared transcript), with
short-term (window) and long-term (vector) memory.

Every prompt is a visible module constant, every prompt sent is kept in the result (`.prompts`) and printed
with verbose=True. An agent that runs out of steps says so (`finished=False`, `answer=None`): no hidden fallback.

ReAct (Yao et al. 2023) interleaves reasoning and acting. The model writes
    Thought: ...            Action: calculator            Action Input: 11 + 18
the agent runs the tool and appends `Observation: 29`, and the model continues until it writes
`Final Answer: ...`. With as_chat=True each model turn is an assistant message and each observation a user
message (for chat models and OpenAI-compatible endpoints); otherwise one growing text transcript is sent.

Against a served model (an LLM with `supports_tools`, e.g. OpenAILLM on `danlu serve`) the agent uses native
tool calls instead: the tools go as OpenAI `tools` (their JSON schemas), the server renders them with the
model's chat template and constrains each call's arguments to its schema, each call is run and its result sent
back as a `role: "tool"` message, and a reply without calls is the answer. Local models keep the text protocol.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from danlu.app.llms import LLM, Prompt, render_prompt
from danlu.app.memory import VectorMemory, WindowMemory
from danlu.app.prompts import PromptTemplate, numbered
from danlu.app.tools import Tool, ToolError
from danlu.errors import DanluError

REACT_INSTRUCTIONS = PromptTemplate(
    "Answer the question. You can use these tools:\n{tools}\n\n"
    "Use exactly this format:\n"
    "Thought: what to do next\n"
    "Action: the tool to use, one of [{tool_names}]\n"
    "Action Input: the input for the tool\n"
    "Observation: the tool's result (given to you)\n"
    "... (Thought, Action, Action Input and Observation may repeat)\n"
    "Thought: I know the answer\n"
    "Final Answer: the answer\n"
    "{examples}{context}"
)
# One worked example, shown to the model verbatim (set examples="" to drop it).
REACT_EXAMPLE = (
    "\nExample:\n"
    "Question: Deva has 7 apples and buys 5 more. How many apples does Deva have now?\n"
    "Thought: I need to add 7 and 5.\n"
    "Action: calculator\n"
    "Action Input: 7 + 5\n"
    "Observation: 12\n"
    "Thought: I know the answer\n"
    "Final Answer: 12\n"
)
# Native tool calls (a served model): the system message; the tools themselves go as OpenAI `tools`.
NATIVE_INSTRUCTIONS = PromptTemplate(
    "Answer the question. Call a tool when it helps; when you know the answer, reply with it.{context}"
)
# The model must not invent the tool's answer, nor go on to ask itself a new question.
REACT_STOP = ["\nObservation:", "Observation:", "\nQuestion:"]


@dataclass
class Step:
    raw: str  # the model's output for this step
    thought: str = ""
    action: str | None = None
    action_input: str | None = None
    observation: str | None = None


@dataclass
class AgentResult:
    question: str
    answer: str | None
    steps: list[Step]
    prompts: list[Prompt]  # every prompt sent, in order
    finished: bool  # False: max_steps ran out before a Final Answer


def parse_react(text: str) -> Step:
    """A Step from a model output: a Final Answer, or an Action with its input, whichever comes first."""
    final = re.search(r"Final Answer\s*:\s*(.*)", text, flags=re.S)
    action = re.search(r"Action\s*:\s*(.*?)\s*\n\s*Action Input\s*:\s*(.*)", text, flags=re.S)
    first = min((m for m in (final, action) if m), key=lambda m: m.start(), default=None)
    thought_end = first.start() if first else len(text)
    thought = re.sub(r"^\s*Thought\s*:\s*", "", text[:thought_end]).strip()
    step = Step(raw=text, thought=thought)
    if first is final and final is not None:
        step.observation = None
        step.action, step.action_input = "Final Answer", final.group(1).strip().split("\n")[0].strip()
    elif action is not None:
        step.action = action.group(1).strip().strip("`[]'\"").strip()
        step.action_input = action.group(2).strip().split("\n")[0].strip().strip("`")
    return step


class ReActAgent:
    """Tool use by ReAct. `run(question)` -> AgentResult."""

    def __init__(
        self,
        llm: LLM,
        tools: list[Tool],
        max_steps: int = 6,
        examples: str = REACT_EXAMPLE,
        as_chat: bool = False,
        memory: WindowMemory | None = None,
        long_term: VectorMemory | None = None,
        options: dict[str, Any] | None = None,
        verbose: bool = False,
        native_tools: bool | None = None,
        tool_choice: str | dict[str, Any] = "auto",
    ) -> None:
        """native_tools: send OpenAI tools and read tool calls (None: when the llm has `supports_tools`).
        tool_choice: the native first turn's ("auto", "required" or {"type": "function", "function":
        {"name": ...}}); later turns are "auto", so the model can answer."""
        if not tools:
            raise DanluError("a ReAct agent needs at least one tool")
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise DanluError(f"tool names must be unique, got {names}")
        self.llm, self.tools, self.max_steps = llm, {t.name: t for t in tools}, max_steps
        self.examples, self.as_chat, self.memory, self.long_term = examples, as_chat, memory, long_term
        self.options, self.verbose = dict(options or {}), verbose
        if native_tools and not getattr(llm, "supports_tools", False):
            raise DanluError(f"native_tools=True needs an LLM that calls tools (OpenAILLM); {llm!r} does not")
        self.native = bool(getattr(llm, "supports_tools", False)) if native_tools is None else native_tools
        self.tool_choice = tool_choice

    def _context(self, question: str) -> str:
        context = ""
        if self.memory is not None and self.memory.messages():
            context += f"\nConversation so far:\n{self.memory.as_text()}\n"
        if self.long_term is not None and len(self.long_term):
            recalled = self.long_term.as_text(question)
            if recalled:
                context += f"\nThings you remember:\n{recalled}\n"
        return context

    def instructions(self, question: str) -> str:
        context = self._context(question)
        return REACT_INSTRUCTIONS.format(
            tools="\n".join(f"- {t.signature()}: {t.description}" for t in self.tools.values()),
            tool_names=", ".join(self.tools),
            examples=self.examples,
            context=context,
        )

    def _prompt(self, question: str, steps: list[Step]) -> Prompt:
        if self.as_chat:
            messages = [
                {"role": "system", "content": self.instructions(question)},
                {"role": "user", "content": f"Question: {question}"},
            ]
            for s in steps:
                messages.append({"role": "assistant", "content": s.raw.strip()})
                messages.append({"role": "user", "content": f"Observation: {s.observation}"})
            return messages
        transcript = "".join(f"{s.raw.rstrip()}\nObservation: {s.observation}\n" for s in steps)
        return f"{self.instructions(question)}\nQuestion: {question}\n{transcript}Thought:"

    def call_tool(self, name: str, arguments: str) -> str:
        """The tool's result, or an `error: ...` observation the model can act on (bad name or arguments)."""
        tool = self.tools.get(name) or {k.lower(): t for k, t in self.tools.items()}.get(name.lower())
        if tool is None:
            return f"error: there is no tool {name!r}; use one of [{', '.join(self.tools)}]"
        try:
            return tool(arguments)
        except ToolError as e:
            return f"error: {e}"

    def run(self, question: str) -> AgentResult:
        if self.native:
            return self._run_native(question)
        steps: list[Step] = []
        prompts: list[Prompt] = []
        stop = [*self.options.get("stop", []), *REACT_STOP]
        for _ in range(self.max_steps):
            prompt = self._prompt(question, steps)
            prompts.append(prompt)
            if self.verbose:
                print(f"----- agent prompt -----\n{render_prompt(prompt)}", flush=True)
            raw = self.llm.invoke(prompt, **{**self.options, "stop": stop})
            if not self.as_chat and not raw.lstrip().startswith("Thought"):
                raw = "Thought: " + raw.lstrip()  # the prompt ended with "Thought:"
            step = parse_react(raw)
            if self.verbose:
                print(f"----- model -----\n{raw}", flush=True)
            if step.action == "Final Answer":
                steps.append(step)
                self._remember(question, step.action_input)
                return AgentResult(question, step.action_input, steps, prompts, True)
            if step.action is None:
                step.observation = (
                    "error: no Action found; answer with 'Action: <tool>' and 'Action Input: <input>', "
                    "or with 'Final Answer: <answer>'"
                )
            else:
                step.observation = self.call_tool(step.action, step.action_input or "")
            if self.verbose:
                print(f"Observation: {step.observation}", flush=True)
            steps.append(step)
        return AgentResult(question, None, steps, prompts, False)

    def _run_native(self, question: str) -> AgentResult:
        """The loop with native tool calls: each call is a Step (action = the tool, action_input = its
        arguments' JSON), its result a `role: "tool"` message; a reply without calls is the Final Answer."""
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": NATIVE_INSTRUCTIONS.format(context=self._context(question))},
            {"role": "user", "content": question},
        ]
        specs = [t.json_schema() for t in self.tools.values()]
        for (
            spec
        ) in specs:  # a tool takes exactly its parameters: no invented extra keys in a constrained call
            spec["function"]["parameters"]["additionalProperties"] = False
        steps: list[Step] = []
        prompts: list[Prompt] = []
        for turn in range(self.max_steps):
            prompts.append([dict(m) for m in messages])
            if self.verbose:
                print(f"----- agent prompt -----\n{render_prompt(messages)}", flush=True)
            choice = self.tool_choice if turn == 0 else "auto"
            reply = self.llm.chat(messages, tools=specs, tool_choice=choice, **self.options)  # type: ignore[attr-defined]
            if not reply.tool_calls:
                answer = (reply.content or "").strip()
                steps.append(Step(raw=reply.content or "", action="Final Answer", action_input=answer))
                self._remember(question, answer)
                return AgentResult(question, answer, steps, prompts, True)
            calls = [_sendable(c) for c in reply.tool_calls]
            messages.append({"role": "assistant", "content": reply.content, "tool_calls": calls})
            for call in reply.tool_calls:
                name, arguments = call["function"]["name"], call["function"].get("arguments") or "{}"
                step = Step(raw=json.dumps(call, ensure_ascii=False), thought=reply.content or "",
                            action=name, action_input=arguments)  # fmt: skip
                step.observation = self.call_tool(name, arguments)
                if self.verbose:
                    print(f"Call: {name}({arguments}) -> {step.observation}", flush=True)
                steps.append(step)
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": step.observation})
        return AgentResult(question, None, steps, prompts, False)

    def _remember(self, question: str, answer: str | None) -> None:
        if self.memory is not None:
            self.memory.add("user", question)
            self.memory.add("assistant", answer or "")
        if self.long_term is not None:
            self.long_term.remember(f"Question: {question} Answer: {answer}")


def _sendable(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call as the history sends it back: arguments that are not a JSON object (a call cut by
    max_tokens) go as {} (a server refuses them; the tool's error observation tells the model what happened)."""
    try:
        ok = isinstance(json.loads(call["function"].get("arguments") or ""), dict)
    except ValueError:
        ok = False
    return call if ok else {**call, "function": {**call["function"], "arguments": "{}"}}


# ------------------------------------------------------------------------------------------ plan and execute
PLAN_PROMPT = PromptTemplate(
    "Break the task into at most {max_steps} short steps. Write one step per line, numbered 1., 2., ...\n"
    "Task: {task}\n"
    "Plan:\n"
)
EXECUTE_PROMPT = PromptTemplate("Task: {task}\nDone so far:\n{done}\nNow do this step: {step}")


@dataclass
class PlanResult:
    task: str
    plan: list[str]
    results: list[AgentResult]
    answer: str | None
    prompts: list[Prompt] = field(default_factory=list)  # the planner's prompts


def parse_plan(text: str) -> list[str]:
    """Numbered lines ("1. ..." or "1) ...") of a plan; the whole text as one step when none are numbered."""
    steps = [m.group(1).strip() for m in re.finditer(r"^\s*\d+[.)]\s*(.+?)\s*$", text, flags=re.M)]
    return steps or ([text.strip()] if text.strip() else [])


class PlanAndExecute:
    """Planning (notes 000 §规划): a planner writes numbered steps, an executor agent does each in turn, seeing
    the results so far; the answer is the last step's."""

    def __init__(self, planner: LLM, executor: ReActAgent, max_steps: int = 5, verbose: bool = False) -> None:
        self.planner, self.executor, self.max_steps, self.verbose = planner, executor, max_steps, verbose

    def run(self, task: str) -> PlanResult:
        prompt = PLAN_PROMPT.format(max_steps=self.max_steps, task=task)
        if self.verbose:
            print(f"----- planner prompt -----\n{prompt}", flush=True)
        plan = parse_plan(self.planner.invoke(prompt))[: self.max_steps]
        if not plan:
            raise DanluError(f"the planner wrote no plan for {task!r}; check the planner model")
        results: list[AgentResult] = []
        for step in plan:
            done = numbered(f"{s} -> {r.answer}" for s, r in zip(plan, results)) or "(nothing yet)"
            results.append(self.executor.run(EXECUTE_PROMPT.format(task=task, done=done, step=step)))
        return PlanResult(task, plan, results, results[-1].answer, [prompt])


# ------------------------------------------------------------------------------------------ reflection
DRAFT_PROMPT = PromptTemplate("{task}")
CRITIQUE_PROMPT = PromptTemplate(
    "Task: {task}\nProposed answer: {draft}\n"
    "Check the proposed answer carefully. If it is correct and complete, reply with exactly DONE. "
    "Otherwise explain what is wrong."
)
REVISE_PROMPT = PromptTemplate(
    "Task: {task}\nPrevious answer: {draft}\nCritique: {critique}\nWrite a corrected answer, and nothing else."
)


@dataclass
class ReflectionResult:
    task: str
    answer: str
    drafts: list[str]
    critiques: list[str]
    prompts: list[Prompt]


def reflect(
    llm: LLM, task: str, critic: LLM | None = None, max_rounds: int = 2, verbose: bool = False, **options: Any
) -> ReflectionResult:
    """Reflection (notes 000 §反思; Madaan et al. 2023, Self-Refine): draft, critique, revise, until the critic
    says DONE or max_rounds revisions were made. The critic defaults to the same model."""
    critic = critic or llm
    prompts: list[Prompt] = []

    def ask(model: LLM, prompt: str) -> str:
        prompts.append(prompt)
        if verbose:
            print(f"----- reflection prompt -----\n{prompt}", flush=True)
        return model.invoke(prompt, **options).strip()

    drafts = [ask(llm, DRAFT_PROMPT.format(task=task))]
    critiques: list[str] = []
    for _ in range(max_rounds):
        critique = ask(critic, CRITIQUE_PROMPT.format(task=task, draft=drafts[-1]))
        critiques.append(critique)
        if critique.strip().upper().startswith("DONE"):
            break
        drafts.append(ask(llm, REVISE_PROMPT.format(task=task, draft=drafts[-1], critique=critique)))
    return ReflectionResult(task, drafts[-1], drafts, critiques, prompts)


# ------------------------------------------------------------------------------------------ multi-agent
ROLE_PROMPT = PromptTemplate(
    "You are {name}, one of a team ({team}). {instructions}\n"
    "Task: {task}\n\n"
    "Conversation so far:\n{transcript}\n\n"
    "Write your next message. When the team has the final answer, write FINAL ANSWER: <answer>.\n"
    "{name}:"
)
FINAL_MARKER = "FINAL ANSWER:"


@dataclass
class Role:
    name: str
    instructions: str
    llm: LLM


@dataclass
class Collaboration:
    task: str
    answer: str | None
    transcript: list[tuple[str, str]]  # (role name, message)
    prompts: list[Prompt]


def collaborate(
    roles: list[Role], task: str, max_turns: int = 6, verbose: bool = False, **options: Any
) -> Collaboration:
    """Multi-agent collaboration (notes 000 §多智能体协作): roles speak in turn on one shared transcript until one
    writes FINAL ANSWER: or max_turns messages were written."""
    if not roles:
        raise DanluError("collaborate needs at least one Role")
    transcript: list[tuple[str, str]] = []
    prompts: list[Prompt] = []
    team = ", ".join(r.name for r in roles)
    for turn in range(max_turns):
        role = roles[turn % len(roles)]
        prompt = ROLE_PROMPT.format(
            name=role.name,
            team=team,
            instructions=role.instructions,
            task=task,
            transcript="\n".join(f"{n}: {m}" for n, m in transcript) or "(nobody has spoken yet)",
        )
        prompts.append(prompt)
        if verbose:
            print(f"----- prompt to {role.name} -----\n{prompt}", flush=True)
        message = role.llm.invoke(prompt, **options).strip()
        transcript.append((role.name, message))
        if FINAL_MARKER in message.upper():
            at = message.upper().index(FINAL_MARKER) + len(FINAL_MARKER)
            return Collaboration(task, message[at:].strip(), transcript, prompts)
    return Collaboration(task, None, transcript, prompts)
