"""Prompt templates: plain, few-shot and chat. Variables are `{name}` fields (Python's format syntax;
write `{{` and `}}` for literal braces) and are checked: a missing or unexpected variable is an error that
names it, never a silently empty slot.

Notes 003 §LangChain: "Prompt 管理，支持各种自定义模板" and "提示模板，使我们不必对文本进行硬编码".

    qa = PromptTemplate("Question: {question}\\nAnswer:")
    qa.format(question="What is 3 + 4?")
    shots = FewShotTemplate(examples=[{"q": "1 + 1", "a": "2"}], example=PromptTemplate("Q: {q}\\nA: {a}"),
                            suffix=PromptTemplate("Q: {q}\\nA:"), prefix="Answer with a number.")
    chat = ChatTemplate([("system", "You are {persona}."), ("user", "{question}")])
    chat.format_messages(persona="terse", question="Hi")   # [{"role": "system", ...}, {"role": "user", ...}]
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from danlu.errors import DanluError


def template_variables(template: str) -> list[str]:
    """The `{name}` fields of a template, in order of first appearance."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DanluError(
            f"bad prompt template ({e}): {template[:80]!r}; write literal braces as {{{{ }}}}"
        ) from e
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise DanluError(
                f"prompt template field {{{name}}} is not a plain variable name; use {{name}} fields only, "
                f"and {{{{ }}}} for literal braces: {template[:80]!r}"
            )
        if name not in names:
            names.append(name)
    return names


@dataclass
class PromptTemplate:
    """A text with `{variables}`. `partial(**values)` fixes some now; `format(**values)` fills the rest."""

    template: str
    partials: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.variables = template_variables(self.template)
        unknown = sorted(set(self.partials) - set(self.variables))
        if unknown:
            raise DanluError(
                f"partial values {unknown} are not variables of the template; it has {self.variables}"
            )

    @property
    def input_variables(self) -> list[str]:
        """The variables still to fill."""
        return [v for v in self.variables if v not in self.partials]

    def partial(self, **values: Any) -> PromptTemplate:
        return PromptTemplate(self.template, {**self.partials, **values})

    def format(self, **values: Any) -> str:
        values = {**self.partials, **values}
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise DanluError(f"prompt template needs {missing}; given {sorted(values)}")
        extra = sorted(set(values) - set(self.variables))
        if extra:
            raise DanluError(f"prompt template has no variables {extra}; its variables are {self.variables}")
        return self.template.format(**values)

    def __str__(self) -> str:
        return self.template


@dataclass
class FewShotTemplate:
    """prefix, then each example rendered with `example`, then `suffix` filled with the inputs; joined by
    `separator`. The examples are shown to the model verbatim (in-context learning, Brown et al. 2020)."""

    examples: list[dict[str, Any]]
    example: PromptTemplate
    suffix: PromptTemplate
    prefix: str = ""
    separator: str = "\n\n"

    def __post_init__(self) -> None:
        for i, ex in enumerate(self.examples):
            missing = [v for v in self.example.input_variables if v not in ex]
            if missing:
                raise DanluError(f"few-shot example {i} lacks {missing}; it has {sorted(ex)}")

    @property
    def input_variables(self) -> list[str]:
        return self.suffix.input_variables

    def format(self, **values: Any) -> str:
        shots = [
            self.example.format(**{k: ex[k] for k in self.example.input_variables}) for ex in self.examples
        ]
        parts = ([self.prefix] if self.prefix else []) + shots + [self.suffix.format(**values)]
        return self.separator.join(parts)


@dataclass
class ChatTemplate:
    """A list of (role, template) messages; `format_messages` fills them into OpenAI-style message dicts.

    Each variable may appear in any message; together they must be given exactly once."""

    messages: list[tuple[str, str]]

    def __post_init__(self) -> None:
        from danlu.tokenizers.base import CHAT_ROLES

        self.templates: list[tuple[str, PromptTemplate]] = []
        for i, item in enumerate(self.messages):
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise DanluError(f"chat template message {i} must be a (role, template) pair, got {item!r}")
            role, text = item
            if role not in CHAT_ROLES:
                raise DanluError(f"chat template message {i} has role {role!r}; use one of {CHAT_ROLES}")
            self.templates.append((role, PromptTemplate(text)))

    @property
    def input_variables(self) -> list[str]:
        out: list[str] = []
        for _, t in self.templates:
            out += [v for v in t.input_variables if v not in out]
        return out

    def format_messages(self, **values: Any) -> list[dict[str, str]]:
        missing = [v for v in self.input_variables if v not in values]
        extra = sorted(set(values) - set(self.input_variables))
        if missing or extra:
            raise DanluError(
                f"chat template variables: missing {missing}, unexpected {extra}; it takes {self.input_variables}"
            )
        return [
            {"role": role, "content": t.format(**{k: values[k] for k in t.input_variables})}
            for role, t in self.templates
        ]


def numbered(items: Iterable[str], start: int = 1) -> str:
    """ "[1] first\\n[2] second": how sources and plans are shown to a model."""
    return "\n".join(f"[{i}] {x}" for i, x in enumerate(items, start))
