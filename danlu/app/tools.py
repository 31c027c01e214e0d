"""Tools an agent can call: typed Python functions, a safe calculator, and a retriever tool.

A tool is a plain function with type hints and a docstring; `@tool` reads both, so the description a model
sees is the docstring and the arguments are checked against the hints before the function runs:

    @tool
    def population(city: str, year: int) -> str:
        "The population of a city in a given year."
        ...
    population('{"city": "Deva", "year": 2020}')   # JSON object arguments
    population({"city": "Deva", "year": "x"})      # ToolError: argument 'year' must be int, got 'x'

A one-parameter tool also takes the raw text (`calculator("3 + 4")`). The calculator parses with Python's `ast`
and walks only number literals and arithmetic operators: no names, calls or attributes, so nothing a model
writes can run code (never `eval`).
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import operator
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from danlu.errors import DanluError

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolError(DanluError):
    """A tool was called wrongly (unknown argument, wrong type) or failed; the message says how to fix it."""


@dataclass
class Tool:
    name: str
    description: str
    func: Callable[..., Any]
    parameters: dict[str, type]  # name -> type, in signature order
    required: list[str]

    def signature(self) -> str:
        return f"{self.name}({', '.join(f'{p}: {t.__name__}' for p, t in self.parameters.items())})"

    def json_schema(self) -> dict[str, Any]:
        """The OpenAI function-calling description of this tool."""
        props = {p: {"type": _JSON_TYPES.get(t, "string")} for p, t in self.parameters.items()}
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {"type": "object", "properties": props, "required": self.required},
            },
        }

    def parse_arguments(self, arguments: str | dict[str, Any]) -> dict[str, Any]:
        """Arguments as keyword arguments of the right types; a ToolError names what is wrong."""
        if isinstance(arguments, str):
            raw = arguments.strip()
            parsed: Any = None
            if raw.startswith("{"):
                try:
                    parsed = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise ToolError(
                        f"tool {self.name}: arguments are not valid JSON ({e}): {raw[:100]!r}"
                    ) from e
            if isinstance(parsed, dict):
                arguments = parsed
            elif len(self.parameters) == 1:
                (name,) = self.parameters
                if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
                    raw = raw[1:-1]
                arguments = {name: _convert(self.name, name, self.parameters[name], raw)}
            else:
                raise ToolError(
                    f"tool {self.name} takes {len(self.parameters)} arguments; give a JSON object like "
                    f"{json.dumps({p: '...' for p in self.parameters})}"
                )
        if not isinstance(arguments, dict):
            raise ToolError(f"tool {self.name}: arguments must be a JSON object, got {arguments!r}")
        unknown = sorted(set(arguments) - set(self.parameters))
        if unknown:
            raise ToolError(
                f"tool {self.name} has no argument(s) {unknown}; its signature is {self.signature()}"
            )
        missing = [p for p in self.required if p not in arguments]
        if missing:
            raise ToolError(
                f"tool {self.name} needs argument(s) {missing}; its signature is {self.signature()}"
            )
        return {k: _check_type(self.name, k, self.parameters[k], v) for k, v in arguments.items()}

    def __call__(self, arguments: str | dict[str, Any]) -> str:
        """Run the tool; its result as text."""
        kwargs = self.parse_arguments(arguments)
        try:
            result = self.func(**kwargs)
        except ToolError:
            raise
        except (ArithmeticError, ValueError, TypeError, KeyError) as e:
            raise ToolError(f"tool {self.name} failed on {kwargs}: {e}") from e
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def _convert(tool_name: str, name: str, kind: type, raw: str) -> Any:
    if kind is str:
        return raw
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError(raw)
            return raw.lower() == "true"
        return kind(raw)
    except ValueError as e:
        raise ToolError(f"tool {tool_name}: argument {name!r} must be {kind.__name__}, got {raw!r}") from e


def _check_type(tool_name: str, name: str, kind: type, value: Any) -> Any:
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok and kind is not Any:
        raise ToolError(f"tool {tool_name}: argument {name!r} must be {kind.__name__}, got {value!r}")
    return value


def tool(
    func: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None
) -> Any:
    """Make a Tool from a typed function (usable as `@tool` or `@tool(name=...)`)."""

    def wrap(f: Callable[..., Any]) -> Tool:
        hints = typing.get_type_hints(f)
        params: dict[str, type] = {}
        required: list[str] = []
        for p in inspect.signature(f).parameters.values():
            kind = hints.get(p.name)
            if kind not in _JSON_TYPES:
                raise DanluError(
                    f"tool {f.__name__}: parameter {p.name!r} needs a type hint among str, int, float, bool"
                )
            params[p.name] = kind
            if p.default is inspect.Parameter.empty:
                required.append(p.name)
        doc = description or inspect.getdoc(f) or ""
        return Tool(name or f.__name__, doc.split("\n\n")[0].strip(), f, params, required)

    return wrap(func) if func is not None else wrap


# ------------------------------------------------------------------------------------------ the calculator
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION = 200  # characters
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e30


def _in_range(value: int | float | complex) -> int | float:
    """Every literal and every intermediate result: real, finite (a literal 1e1000 is inf, inf - inf is nan; a
    model must never read "inf" or "nan" as an answer) and at most MAX_MAGNITUDE."""
    if isinstance(value, complex):
        raise ToolError("calculator: the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"calculator: the result is not a finite number ({value}); use smaller numbers")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError(f"calculator: the result is out of range (|x| <= {MAX_MAGNITUDE:g}, real)")
    return value


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _in_range(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"calculator: exponent {right} is too large (at most {MAX_EXPONENT})")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise ToolError("calculator: division by zero")
        try:
            value = _BINARY[type(node.op)](left, right)
        except OverflowError:  # float ** float past 1.8e308
            raise ToolError(
                f"calculator: the result is out of range (|x| <= {MAX_MAGNITUDE:g}, real)"
            ) from None
        return _in_range(value)
    raise ToolError(
        f"calculator: {type(node).__name__} is not allowed; use numbers, + - * / // % ** and parentheses"
    )


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely (see the module docstring); ToolError on anything else.
    "×", "÷" and "^" mean *, / and **; anything after an "=" is ignored ("2 * 4 = 8" is 2 * 4)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError(f"calculator: give an arithmetic expression like '3 + 4 * 2', got {expression!r}")
    if len(expression) > MAX_EXPRESSION:
        raise ToolError(
            f"calculator: the expression is {len(expression)} characters; at most {MAX_EXPRESSION}"
        )
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**").rstrip("=?").strip()
    text = text.split("=")[0].strip()  # "2 * 4 = 8": models often write the result they expect; check it
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ToolError(f"calculator: cannot parse {expression!r} ({e.msg}); write e.g. '(3 + 4) * 2'") from e
    return _evaluate(tree)


def format_number(x: int | float) -> str:
    """29.0 -> "29"; other floats to 10 significant digits."""
    if isinstance(x, float) and math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return str(x) if isinstance(x, int) else f"{x:.10g}"


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with numbers, + - * / // % ** and parentheses, e.g. (3 + 4) * 2."""
    return format_number(calculate(expression))


def retriever_tool(retriever: Any, name: str = "search", description: str | None = None) -> Tool:
    """A tool returning the retriever's hits for a query, numbered, with their sources."""

    def search(query: str) -> str:
        hits = retriever.retrieve(query)
        if not hits:
            return "no results"
        return "\n".join(
            f"[{i}] {h.text} (source: {h.metadata.get('source', h.id)})" for i, h in enumerate(hits, 1)
        )

    doc = description or "Search the knowledge base; give a question or keywords, get the best passages."
    return Tool(name, doc, search, {"query": str}, ["query"])
