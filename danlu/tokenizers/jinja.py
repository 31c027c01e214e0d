"""Chat templates rendered in jinja2's sandbox, bounded in time and in the size of what they build.

A checkpoint's chat template is code from a stranger. It runs in jinja2's `ImmutableSandboxedEnvironment`,
configured as `transformers` configures it (so both render the same text): trim_blocks, lstrip_blocks, the
loop-controls extension (`break`, `continue`), `{% generation %}` blocks, `raise_exception`, `strftime_now`,
a `tojson` that keeps non-ASCII, a `namespace` that refuses underscore names and a `dict` without the type.

The sandbox stops attribute escapes: names starting with "_" and Python internals are unreachable, also
through `str.format` fields (`{0.__globals__}`), and lists and dicts cannot be mutated. It does not bound
work, so danlu adds (limits in `danlu.tokenizers.chat`):
- time: a trace function of the rendering thread (`sys.settrace`, per thread, so it works in the server's
  worker threads) checks a deadline at every Python call and at every line of the template's own compiled
  code, so nested empty loops stop too; it raises a BaseException that no `except Exception` in jinja2 eats.
- size: every operation that can multiply a size is checked before it allocates (`*`, `**`, `+`, `%`,
  `~`, the `center`/`indent`/`replace`/`join`/`batch` filters, str methods with a width or a replacement,
  `str.format` widths, `int.to_bytes`, `tojson` indents), every call's, filter's and operator's result is
  checked after, and macro bodies, `{% set %}` blocks and the whole output are joined by a counting join.
"""

from __future__ import annotations

import json
import math
import re
import string
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache, wraps
from typing import Any

import jinja2
import jinja2.ext
import jinja2.filters
import jinja2.nodes
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from danlu.tokenizers import chat as limits
from danlu.tokenizers.chat import ChatTemplateError

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


# --- sizes ---------------------------------------------------------------------------------------------


def _too_big(what: str, size: int) -> ChatTemplateError:
    return ChatTemplateError(
        f"the chat template would make {what} of size {size}, over the limit of {limits.TEMPLATE_MAX_VALUE_SIZE} "
        "(danlu.tokenizers.chat.TEMPLATE_MAX_VALUE_SIZE); the template is broken or hostile"
    )


_CONTAINERS = (list, tuple, set, frozenset, dict)


def value_size(value: Any, stop: int) -> int:
    """About how many characters str(value) takes, counted only until past `stop`.

    A list holding the same object twice counts it twice (that is what str() prints), but each distinct
    object is walked once, so `[l, l]` nested 60 deep costs 60 steps, not 2**60.
    """
    memo: dict[int, int] = {}

    def size(v: Any) -> int:
        key = id(v)
        if key in memo:
            return memo[key]
        if isinstance(v, dict):
            total, items = 2 + 4 * len(v), [*v.keys(), *v.values()]
        else:
            total, items = 2 + 2 * len(v), v
        for x in items if total <= stop else ():
            kind = type(x)
            if kind is int or kind is float or kind is bool or x is None:  # inline: no call (no trace event)
                total += 8
            elif kind is str or kind is bytes:
                total += len(x) + 2
            elif isinstance(x, _CONTAINERS):
                total += size(x)
            else:
                total += len(x) + 2 if isinstance(x, str | bytes) else 8
            if total > stop:
                break
        memo[key] = total
        return total

    if isinstance(value, str | bytes):
        return len(value) + 2
    return size(value) if isinstance(value, _CONTAINERS) else 8


def _check_size(value: Any, what: str = "a value") -> Any:
    """value, or ChatTemplateError when it is a string or container over the size limit."""
    limit = limits.TEMPLATE_MAX_VALUE_SIZE
    if isinstance(value, str | bytes):
        if len(value) > limit:
            raise _too_big(f"{what} (a string)", len(value))
    elif type(value) is int:  # e.g. ('f' * 10**6)|int(base=16): a huge int makes `//` quadratic, in C
        _check_int_bits(value.bit_length(), what)
    elif isinstance(value, list | tuple | set | frozenset | dict):
        size = value_size(value, limit)
        if size > limit:
            raise _too_big(f"{what} (a {type(value).__name__})", size)
    return value


def _check_length(n: int, what: str) -> None:
    if n > limits.TEMPLATE_MAX_VALUE_SIZE:
        raise _too_big(what, n)


def _check_int_bits(bits: int, where: str) -> None:
    if bits > limits.TEMPLATE_MAX_INT_BITS:
        raise ChatTemplateError(
            f"the chat template would use an integer of about {bits} bits ({where}), over the limit of "
            f"{limits.TEMPLATE_MAX_INT_BITS} (danlu.tokenizers.chat.TEMPLATE_MAX_INT_BITS)"
        )


_PRINTF_SPEC = re.compile(r"%(?:%|(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?)")


def _check_printf(fmt: str | bytes, args: Any) -> None:
    """`fmt % args`: refuse widths and precisions over the size limit, also when given by `*`."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    star = False
    for m in _PRINTF_SPEC.finditer(text):
        for group in m.groups():
            if group == "*":
                star = True
            elif group:
                _check_length(int(group), "a %-format width")
    if star:
        for a in args if isinstance(args, tuple) else (args,):
            if isinstance(a, int):
                _check_length(abs(a), "a %-format width")


def _check_format(fmt: str, args: tuple, kwargs: Mapping) -> None:
    """`fmt.format(...)`: refuse widths and precisions over the size limit, also nested ones (`{0:{1}}`)."""
    nested = False
    specs = [fmt]
    while specs:
        try:
            parsed = list(string.Formatter().parse(specs.pop()))
        except ValueError:
            return  # str.format itself reports the malformed string
        for _, field, spec, _ in parsed:
            if field is None or not spec:
                continue
            nested = nested or "{" in spec
            specs.append(spec)
            for digits in re.findall(r"\d+", spec):
                _check_length(int(digits), "a format width")
    if nested:
        for a in (*args, *kwargs.values()):
            if isinstance(a, int):
                _check_length(abs(a), "a format width")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int):
                # a list's items are counted once here (2 per reference); the result is checked in full after
                size = len(seq) if isinstance(seq, str | bytes) else 2 * len(seq)
                _check_length(size * max(n, 0), "a repeated string or list")
        if isinstance(left, int) and isinstance(right, int):
            _check_int_bits(left.bit_length() + right.bit_length(), "`*`")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_int_bits(int(math.log2(abs(left)) * right) + 1, "`**`")
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            _check_length(len(left) + len(right), "a joined string")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            _check_length(2 * (len(left) + len(right)), "a joined list")  # and the result in full after
    elif operator == "%" and isinstance(left, str | bytes):
        _check_printf(left, right)
    if operator in ("%", "//"):  # a big integer literal (0xfff...) divided: quadratic time in C
        for x in (left, right):
            if isinstance(x, int):
                _check_int_bits(x.bit_length(), f"`{operator}`")


def _check_method_call(owner: Any, name: str, args: tuple, kwargs: dict) -> tuple:
    """Pre-check a str/bytes/int method that can build something much bigger than its inputs; the args
    to call it with (a `join` argument is read once, into a list)."""
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
        _check_length(first, f"a str.{name} width")
    elif name == "expandtabs":
        tab = kwargs.get("tabsize", first if first is not None else 8)
        if isinstance(tab, int):
            _check_length(
                len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * tab, "expandtabs"
            )
    elif (
        name == "replace"
        and len(args) >= 2
        and isinstance(args[0], type(owner))
        and isinstance(args[1], type(owner))
    ):
        old, new = args[0], args[1]
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        hits = owner.count(old) if old else len(owner) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _check_length(len(owner) + hits * max(len(new) - len(old), 0), "a replaced string")
    elif name == "join" and args:
        items = list(args[0])
        total = len(owner) * max(len(items) - 1, 0)
        try:
            total += sum(map(len, items))  # C speed when every item is a string (join needs that anyway)
        except TypeError:
            total += sum(len(x) for x in items if isinstance(x, str | bytes))
        _check_length(total, "a joined string")
        return (items, *args[1:])
    elif name == "translate" and isinstance(owner, str) and isinstance(first, Mapping):
        longest = max((len(v) for v in first.values() if isinstance(v, str)), default=1)
        _check_length(len(owner) * max(longest, 1), "a translated string")
    elif name == "to_bytes" and isinstance(owner, int):
        length = kwargs.get("length", first if first is not None else 1)
        if isinstance(length, int):
            _check_length(length, "int.to_bytes")
    return args


# --- filters and globals transformers gives templates -------------------------------------------------------


_MAX_JSON_INDENT = 1024


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: Any = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # transformers' tojson: json.dumps with these options and ensure_ascii=False (jinja2's own escapes HTML).
    _check_size(value, "the value given to tojson")
    width = len(indent) if isinstance(indent, str) else indent
    if isinstance(width, int) and width > _MAX_JSON_INDENT:  # the indent is repeated once per nesting level
        raise ChatTemplateError(
            f"the chat template asks tojson for an indent of {width}; at most {_MAX_JSON_INDENT}"
        )
    if indent is None:
        return _check_size(
            json.dumps(value, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys),
            "tojson's text",
        )
    encoder = json.JSONEncoder(
        ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    parts, total = [], 0
    for chunk in encoder.iterencode(value):  # counted as it grows: a wide indent multiplies the text
        total += len(chunk)
        _check_length(total, "tojson's text")
        parts.append(chunk)
    return "".join(parts)


def _raise_exception(message: Any) -> None:
    raise ChatTemplateError(f"the chat template refused these messages: {message}")


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Namespace(Namespace):
    """jinja2's namespace, refusing names that start with "_" (as transformers' does)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]  # `self` positional only, so namespace(self=1) still works
        values = dict(*args, **kwargs)
        for name in values:
            _Namespace._check(name)
        Namespace.__init__(self, values)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot store {name!r} in a namespace")


class _DictFactory:
    """The `dict` templates see: dict(...) and dict.fromkeys(...), without the type object itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers' marker of assistant text; renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    # jinja2's join without autoescape (ours is off), counting as it goes.
    if attribute is not None:
        value = map(jinja2.filters.make_attrgetter(eval_ctx.environment, attribute), value)
    sep = str(d)
    parts = [item if isinstance(item, str) else str(item) for item in value]
    _check_length(sum(map(len, parts)) + len(sep) * max(len(parts) - 1, 0), "a joined string")
    return sep.join(parts)


def _prechecked_filter(name: str, args: tuple, kwargs: dict) -> None:
    """Size checks before the jinja2 filters that can multiply their input."""
    value = args[0] if args else None
    if name == "center":
        width = args[1] if len(args) > 1 else kwargs.get("width", 80)
        if isinstance(width, int):
            _check_length(width, "a centred string")
    elif name == "indent" and isinstance(value, str):
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        pad = width if isinstance(width, int) else len(str(width))
        _check_length(len(value) + (value.count("\n") + 1) * pad, "an indented string")
    elif name == "replace" and len(args) >= 3:
        _check_method_call(str(value), "replace", tuple(str(a) for a in args[1:3]) + tuple(args[3:]), kwargs)
    elif name in ("batch", "slice") and len(args) > 1 and isinstance(args[1], int):
        _check_length(args[1], f"a {name} count")
    elif name == "format" and isinstance(value, str):
        _check_printf(value, tuple(args[1:]) or tuple(kwargs.values()))


def _bounded_filter(name: str, func: Any) -> Any:
    @wraps(func)  # keeps jinja_pass_arg, so the context/environment is still passed
    def bounded(*args: Any, **kwargs: Any) -> Any:
        passed = getattr(func, "jinja_pass_arg", None)
        _prechecked_filter(name, args[1:] if passed else args, kwargs)
        result = func(*args, **kwargs)
        if isinstance(result, Iterator) and not isinstance(result, str):
            return (_check_size(item, f"an item of the {name} filter") for item in result)
        return _check_size(result, f"the result of the {name} filter")

    return bounded


# --- the environment -------------------------------------------------------------------------------------


class _BoundedBuffer(list):
    """The output list of a block: append/extend count characters and stop at the size limit."""

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0

    def append(self, part: str) -> None:
        self.chars += len(part)
        _check_length(self.chars, "a block of template text")
        super().append(part)

    def extend(self, parts: Any) -> None:
        for part in parts:
            self.append(part)


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
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
        )
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters["join"] = _bounded_filter("join", _join)
        self.filters["tojson"] = _tojson
        self.globals.update(
            raise_exception=_raise_exception,
            strftime_now=_strftime_now,
            dict=_DictFactory(),
            namespace=_Namespace,
        )

    def concat(self, parts: Any) -> str:  # type: ignore[override]
        # The join jinja2 uses for macro bodies, {% set %} blocks and filter blocks.
        out, total = [], 0
        for part in parts:
            total += len(part)
            _check_length(total, "a block of template text")
            out.append(part)
        return "".join(out)

    def new_buffer(self) -> _BoundedBuffer:
        return _BoundedBuffer()

    def checked_literal(self, value: Any) -> Any:
        return _check_size(value, "a list or dict literal")

    def concat_values(self, values: tuple) -> str:
        parts = [v if isinstance(v, str) else str(v) for v in values]
        _check_length(sum(len(p) for p in parts), "a string joined with ~")
        return "".join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) is str and type(right) is str:  # the common case, without calls
            if len(left) + len(right) > limits.TEMPLATE_MAX_VALUE_SIZE:
                raise _too_big("a joined string", len(left) + len(right))
            return left + right
        _check_binop(operator, left, right)
        return _check_size(super().call_binop(context, operator, left, right), f"the result of `{operator}`")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes | int) and not isinstance(owner, bool):
            args = _check_method_call(owner, getattr(__obj, "__name__", ""), args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs), "the result of a call")

    def wrap_str_format(self, value: Any) -> Any:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        @wraps(wrapper)
        def bounded(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], Mapping) else kwargs
            _check_format(fmt, () if is_map else args, mapping)
            return _check_size(wrapper(*args, **kwargs), "a formatted string")

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
            "(danlu.tokenizers.chat.TEMPLATE_MAX_SOURCE_CHARS)"
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
                        "(danlu.tokenizers.chat.TEMPLATE_MAX_OUTPUT_CHARS); shorten the chat or fix the template"
                    )
                out.append(chunk)
    except _OutOfTime:
        raise ChatTemplateError(
            f"the chat template took longer than {seconds} s to render "
            "(danlu.tokenizers.chat.TEMPLATE_TIME_LIMIT_S); the template is broken or hostile"
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
