"""Chat templates rendered in jinja2's sandbox, bounded in time and in the size of what they build.

A checkpoint's chat template is code from a stranger. It runs in jinja2's `ImmutableSandboxedEnvironment`,
configured as `transformers` configures it (so both render the same text): trim_blocks, lstrip_blocks, the
loop-controls extension (`break`, `continue`), `{% generation %}` blocks, `raise_exception`, `strftime_now`,
a `tojson` that keeps non-ASCII, a `namespace` that refuses underscore names and a `dict` without the type.

The sandbox stops attribute escapes: names starting with "_" and Python internals are unreachable, also
through `str.format` fields (`{0.__globals__}`), and lists and dicts cannot be mutated. It does not bound
work, so danlu adds (limits in `danlu.tokenizers.template_limits`):
- time: a trace function of the rendering thread (`sys.settrace`, per thread, so it works in the server's
  worker threads) checks a deadline at every Python call and at every line of the template's own compiled
  code, so nested empty loops stop too; it raises a BaseException that no `except Exception` in jinja2 eats.
- size: every operation that can multiply a size is checked before it allocates (`*`, `**`, `+`, `%`,
  `~`, the `center`/`indent`/`replace`/`join`/`batch` filters, str methods with a width or a replacement,
  `str.format` widths, `int.to_bytes`, `tojson` indents), every call's, filter's and operator's result is
  checked after, and macro bodies, `{% set %}` blocks and the whole output are joined by a counting join.
The globals, filters and size checks are in `jinja_builtins.py`; this file holds the clock, the compiler
changes and the environment.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache, wraps
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.sandbox import ImmutableSandboxedEnvironment

from danlu.tokenizers import template_limits as limits
from danlu.tokenizers.jinja_builtins import (
    BoundedBuffer,
    GenerationBlock,
    TemplateDict,
    TemplateNamespace,
    bounded_filter,
    check_binop,
    check_format,
    check_length,
    check_method_call,
    check_size,
    join,
    raise_exception,
    strftime_now,
    tojson,
    too_big,
)
from danlu.tokenizers.template_limits import ChatTemplateError

TEMPLATE_FILENAME = "<template>"  # the file name jinja2 compiles template code under


class _OutOfTime(BaseException):
    """Raised by the trace function. A BaseException, so jinja2's `except Exception` clauses let it pass."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Trace the current thread: past `seconds`, the next Python call or template line raises _OutOfTime."""
    deadline = time.monotonic() + seconds
    clock = time.monotonic

    def on_line(frame: Any, event: str, arg: Any) -> Any:
        if clock() > deadline:
            raise _OutOfTime
        return on_line

    def on_call(frame: Any, event: str, arg: Any) -> Any:
        if clock() > deadline:
            raise _OutOfTime
        # Line events only in template code: a loop without calls (`{% for a in s %}{% endfor %}`) is seen.
        return on_line if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    previous = sys.gettrace()  # a debugger's or coverage's tracer comes back afterwards
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


# --- the environment -------------------------------------------------------------------------------------


class _BoundedCodeGenerator(CodeGenerator):
    """jinja2's compiler, except that `a ~ b` goes through the environment's size-checking join and every
    list, tuple and dict literal is size-checked: `{% set ns.l = [ns.l, ns.l] %}` in a loop builds a value
    whose str() doubles each time, and str() of nested lists runs in C, where no time limit can stop it."""

    def buffer(self, frame: Any) -> None:
        # Macro bodies, {% set %} and {% filter %} blocks collect their output in a list that is joined at the
        # end: a counting list refuses to grow past the size limit while the loop inside still runs.
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    def _checked(self, visit: Any, node: jinja2.nodes.Node, frame: Any) -> None:
        self.write("environment.checked_literal(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: jinja2.nodes.List, frame: Any) -> None:
        self._checked(super().visit_List, node, frame)

    def visit_Dict(self, node: jinja2.nodes.Dict, frame: Any) -> None:
        self._checked(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: jinja2.nodes.Tuple, frame: Any) -> None:
        if node.ctx == "load":  # not a loop or {% set %} target
            self._checked(super().visit_Tuple, node, frame)
        else:
            super().visit_Tuple(node, frame)

    @optimizeconst
    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Any) -> None:
        self.write("environment.concat_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with size checks on operators, calls and joins (see the module docstring)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%", "//"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
        )
        self.filters = {name: bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters["join"] = bounded_filter("join", join)
        self.filters["tojson"] = tojson
        self.globals.update(
            raise_exception=raise_exception,
            strftime_now=strftime_now,
            dict=TemplateDict(),
            namespace=TemplateNamespace,
        )

    def concat(self, parts: Any) -> str:  # type: ignore[override]
        # The join jinja2 uses for macro bodies, {% set %} blocks and filter blocks.
        out, total = [], 0
        for part in parts:
            total += len(part)
            check_length(total, "a block of template text")
            out.append(part)
        return "".join(out)

    def new_buffer(self) -> BoundedBuffer:
        return BoundedBuffer()

    def checked_literal(self, value: Any) -> Any:
        return check_size(value, "a list or dict literal")

    def concat_values(self, values: tuple) -> str:
        parts = [v if isinstance(v, str) else str(v) for v in values]
        check_length(sum(len(p) for p in parts), "a string joined with ~")
        return "".join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) is str and type(right) is str:  # the common case, without calls
            if len(left) + len(right) > limits.TEMPLATE_MAX_VALUE_SIZE:
                raise too_big("a joined string", len(left) + len(right))
            return left + right
        check_binop(operator, left, right)
        return check_size(super().call_binop(context, operator, left, right), f"the result of `{operator}`")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes | int) and not isinstance(owner, bool):
            args = check_method_call(owner, getattr(__obj, "__name__", ""), args, kwargs)
        return check_size(super().call(__context, __obj, *args, **kwargs), "the result of a call")

    def wrap_str_format(self, value: Any) -> Any:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        @wraps(wrapper)
        def bounded(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], Mapping) else kwargs
            check_format(fmt, () if is_map else args, mapping)
            return check_size(wrapper(*args, **kwargs), "a formatted string")

        return bounded


_ENVIRONMENT = ChatTemplateEnvironment()


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    return _ENVIRONMENT.from_string(source)


def render_template(source: str, variables: dict[str, Any]) -> str:
    """Render template text with variables, under danlu's limits; any failure is a ChatTemplateError."""
    if len(source) > limits.TEMPLATE_MAX_SOURCE_CHARS:
        raise ChatTemplateError(
            f"the chat template is {len(source)} characters, over the limit of {limits.TEMPLATE_MAX_SOURCE_CHARS} "
            "(danlu.tokenizers.template_limits.TEMPLATE_MAX_SOURCE_CHARS)"
        )
    seconds, max_chars = limits.TEMPLATE_TIME_LIMIT_S, limits.TEMPLATE_MAX_OUTPUT_CHARS
    out: list[str] = []
    total = 0
    try:
        with _deadline(seconds):
            template = _compile(source)
            for chunk in template.generate(**variables):
                total += len(chunk)
                if total > max_chars:
                    raise ChatTemplateError(
                        f"the chat template's output passed {max_chars} characters "
                        "(danlu.tokenizers.template_limits.TEMPLATE_MAX_OUTPUT_CHARS); "
                        "shorten the chat or fix the template"
                    )
                out.append(chunk)
    except _OutOfTime:
        raise ChatTemplateError(
            f"the chat template took longer than {seconds} s to render "
            "(danlu.tokenizers.template_limits.TEMPLATE_TIME_LIMIT_S); the template is broken or hostile"
        ) from None
    except ChatTemplateError:
        raise
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"the chat template is not valid Jinja (line {e.lineno}): {e.message}"
        ) from None
    except RecursionError:
        raise ChatTemplateError(
            "the chat template recursed too deeply (a macro or loop that calls itself)"
        ) from None
    except (
        Exception
    ) as e:  # anything a stranger's template raises: undefined names, type errors, security errors
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None
    return "".join(out)


def plain_data(value: Any) -> Any:
    """A copy of value made of plain JSON types (str, int, float, bool, None, dict, list, tuple) only.

    A template reaches the methods of whatever it is given, so subclasses become their base type and any other
    object a placeholder naming its type ("<ndarray>"), as `transformers` does before rendering.
    """
    try:
        return _plain(value)
    except RecursionError:
        raise ChatTemplateError("the messages, tools or template variables are nested too deeply") from None


def _plain(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"
