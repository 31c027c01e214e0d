"""Chains: a prompt template feeding a model (`LLMChain`), steps run in order over a dict (`pipeline`), and
the retrieval-augmented generation chain (`RagChain`).

Notes 003 §LangChain: "Chains 允许我们将多个组件组合在一起" and the RAG flow — the question is searched in the
user's vector store, the hits go to the model with the question, the model answers. Here the prompt is a
visible constant (`RAG_PROMPT`), the answer comes back with the sources it was shown and those it cited.

    chain = RagChain(hybrid_retriever(store, k=3), llm)
    result = chain.invoke("What is the capital of Hetoris?")
    result.answer, [h.metadata["source"] for h in result.cited], result.prompt
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from danlu.app.llms import LLM, Prompt, render_prompt
from danlu.app.prompts import ChatTemplate, PromptTemplate, numbered
from danlu.app.retrieval import score_label
from danlu.app.stores import Hit
from danlu.errors import DanluError

RAG_PROMPT = PromptTemplate(
    "Answer the question using only the numbered sources below, and cite the sources you used as [n].\n"
    "If the sources do not hold the answer, say that you do not know.\n\n"
    "Sources:\n{sources}\n\n"
    "Question: {question}\n"
    "Answer:"
)


class LLMChain:
    """`prompt.format(**values)` sent to `llm` (as one user message when as_chat=True); returns the text."""

    def __init__(self, prompt: PromptTemplate | ChatTemplate, llm: LLM, as_chat: bool = False) -> None:
        self.prompt, self.llm, self.as_chat = prompt, llm, as_chat

    def render(self, **values: Any) -> Prompt:
        if isinstance(self.prompt, ChatTemplate):
            return self.prompt.format_messages(**values)
        text = self.prompt.format(**values)
        return [{"role": "user", "content": text}] if self.as_chat else text

    def invoke(self, options: dict[str, Any] | None = None, **values: Any) -> str:
        return self.llm.invoke(self.render(**values), **(options or {}))

    def stream(self, options: dict[str, Any] | None = None, **values: Any) -> Iterator[str]:
        return self.llm.stream(self.render(**values), **(options or {}))


def pipeline(
    *steps: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Run steps in order; each takes the state dict and returns keys to add (or overwrite)."""

    def run(state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        for step in steps:
            update = step(state)
            if not isinstance(update, dict):
                raise DanluError(
                    f"pipeline step {getattr(step, '__name__', step)!r} returned {type(update).__name__}, not a dict"
                )
            state.update(update)
        return state

    return run


@dataclass
class RagAnswer:
    question: str
    answer: str
    sources: list[Hit]  # what the model was shown, numbered from 1 in this order
    cited: list[Hit]  # the sources the answer cites as [n]; all sources when it cites none
    prompt: Prompt  # exactly what was sent


def cited_sources(answer: str, sources: list[Hit]) -> list[Hit]:
    """The sources an answer cites as [n] (or [n, m]); every source if it cites none that exist."""
    numbers: list[int] = []
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", answer):
        numbers += [int(x) for x in group.split(",")]
    picked = [sources[n - 1] for n in dict.fromkeys(numbers) if 1 <= n <= len(sources)]
    return picked or list(sources)


class RagChain:
    """question -> retriever -> RAG_PROMPT with numbered sources -> llm -> RagAnswer."""

    def __init__(
        self,
        retriever: Any,
        llm: LLM,
        prompt: PromptTemplate = RAG_PROMPT,
        as_chat: bool = True,
        verbose: bool = False,
    ) -> None:
        missing = {"sources", "question"} - set(prompt.input_variables)
        if missing:
            raise DanluError(
                f"a RAG prompt needs the variables {{sources}} and {{question}}; it lacks {sorted(missing)}"
            )
        self.retriever, self.llm, self.prompt, self.as_chat, self.verbose = (
            retriever,
            llm,
            prompt,
            as_chat,
            verbose,
        )

    def build_prompt(self, question: str, sources: list[Hit]) -> Prompt:
        text = self.prompt.format(sources=numbered(h.text for h in sources), question=question)
        return [{"role": "user", "content": text}] if self.as_chat else text

    def invoke(self, question: str, **options: Any) -> RagAnswer:
        if not isinstance(question, str) or not question.strip():
            raise DanluError(f"the question must be a non-empty string, got {question!r}")
        sources = self.retriever.retrieve(question)
        prompt = self.build_prompt(question, sources)
        if self.verbose:
            scores = "\n".join(
                f"[{n}] {score_label(h, n)} {h.metadata.get('source', h.id)}"
                for n, h in enumerate(sources, 1)
            )
            print(
                f"----- retrieved -----\n{scores}\n----- RAG prompt -----\n{render_prompt(prompt)}",
                flush=True,
            )
        answer = self.llm.invoke(prompt, **options).strip()
        return RagAnswer(question, answer, sources, cited_sources(answer, sources), prompt)
