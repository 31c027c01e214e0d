"""What danlu's chat-template sandbox (`danlu.tokenizers.jinja`) gives templates and checks sizes with.

- The globals and filters `transformers` gives chat templates, written for danlu: `raise_exception`,
  `strftime_now`, a `tojson` that keeps non-ASCII and takes indent / separators / sort_keys, a `namespace`
  that refuses names starting with "_", a `dict` without the type object, `{% generation %}` blocks.
- Size checks (limits in `danlu.tokenizers.template_limits`): before an operation that can build something much bigger
  than its inputs (a width, a repeat count, a replacement, a separator), and on values after they are built
  (`value_size` counts what str() of a list or dict would print, walking each distinct object once).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import wraps
from typing import Any

import jinja2
import jinja2.ext
import jinja2.filters
import jinja2.nodes
from jinja2.utils import Namespace

from danlu.tokenizers import template_limits as limits
from danlu.tokenizers.template_limits import ChatTemplateError

# --- sizes ---------------------------------------------------------------------------------------------


def too_big(what: str, size: int) -> ChatTemplateError:
    return ChatTemplateError(
        f"the chat template would make {what} of size {size}, over the limit of {limits.TEMPLATE_MAX_VALUE_SIZE} "
        "(danlu.tokenizers.template_limits.TEMPLATE_MAX_VALUE_SIZE); the template is broken or hostile"
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


def check_size(value: Any, what: str = "a value") -> Any:
    """value, or ChatTemplateError when it is a string or container over the size limit."""
    limit = limits.TEMPLATE_MAX_VALUE_SIZE
    if isinstance(value, str | bytes):
        if len(value) > limit:
            raise too_big(f"{what} (a string)", len(value))
    elif type(value) is int:  # e.g. ('f' * 10**6)|int(base=16): a huge int makes `//` quadratic, in C
        _check_int_bits(value.bit_length(), what)
    elif isinstance(value, list | tuple | set | frozenset | dict):
        size = value_size(value, limit)
        if size > limit:
            raise too_big(f"{what} (a {type(value).__name__})", size)
    return value


def check_length(n: int, what: str) -> None:
    if n > limits.TEMPLATE_MAX_VALUE_SIZE:
        raise too_big(what, n)


def _check_int_bits(bits: int, where: str) -> None:
    if bits > limits.TEMPLATE_MAX_INT_BITS:
        raise ChatTemplateError(
            f"the chat template would use an integer of about {bits} bits ({where}), over the limit of "
            f"{limits.TEMPLATE_MAX_INT_BITS} (danlu.tokenizers.template_limits.TEMPLATE_MAX_INT_BITS)"
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
                check_length(int(group), "a %-format width")
    if star:
        for a in args if isinstance(args, tuple) else (args,):
            if isinstance(a, int):
                check_length(abs(a), "a %-format width")


def check_format(fmt: str, args: tuple, kwargs: Mapping) -> None:
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
                check_length(int(digits), "a format width")
    if nested:
        for a in (*args, *kwargs.values()):
            if isinstance(a, int):
                check_length(abs(a), "a format width")


def check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int):
                # a list's items are counted once here (2 per reference); the result is checked in full after
                size = len(seq) if isinstance(seq, str | bytes) else 2 * len(seq)
                check_length(size * max(n, 0), "a repeated string or list")
        if isinstance(left, int) and isinstance(right, int):
            _check_int_bits(left.bit_length() + right.bit_length(), "`*`")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_int_bits(int(math.log2(abs(left)) * right) + 1, "`**`")
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            check_length(len(left) + len(right), "a joined string")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            check_length(2 * (len(left) + len(right)), "a joined list")  # and the result in full after
    elif operator == "%" and isinstance(left, str | bytes):
        _check_printf(left, right)
    if operator in ("%", "//"):  # a big integer literal (0xfff...) divided: quadratic time in C
        for x in (left, right):
            if isinstance(x, int):
                _check_int_bits(x.bit_length(), f"`{operator}`")


def check_method_call(owner: Any, name: str, args: tuple, kwargs: dict) -> tuple:
    """Pre-check a str/bytes/int method that can build something much bigger than its inputs; the args
    to call it with (a `join` argument is read once, into a list)."""
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
        check_length(first, f"a str.{name} width")
    elif name == "expandtabs":
        tab = kwargs.get("tabsize", first if first is not None else 8)
        if isinstance(tab, int):
            check_length(
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
        check_length(len(owner) + hits * max(len(new) - len(old), 0), "a replaced string")
    elif name == "join" and args:
        items = list(args[0])
        total = len(owner) * max(len(items) - 1, 0)
        try:
            total += sum(map(len, items))  # C speed when every item is a string (join needs that anyway)
        except TypeError:
            total += sum(len(x) for x in items if isinstance(x, str | bytes))
        check_length(total, "a joined string")
        return (items, *args[1:])
    elif name == "translate" and isinstance(owner, str) and isinstance(first, Mapping):
        longest = max((len(v) for v in first.values() if isinstance(v, str)), default=1)
        check_length(len(owner) * max(longest, 1), "a translated string")
    elif name == "to_bytes" and isinstance(owner, int):
        length = kwargs.get("length", first if first is not None else 1)
        if isinstance(length, int):
            check_length(length, "int.to_bytes")
    return args


# --- filters and globals transformers gives templates -------------------------------------------------------


_MAX_JSON_INDENT = 1024


def tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: Any = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # transformers' tojson: json.dumps with these options and ensure_ascii=False (jinja2's own escapes HTML).
    check_size(value, "the value given to tojson")
    width = len(indent) if isinstance(indent, str) else indent
    if isinstance(width, int) and width > _MAX_JSON_INDENT:  # the indent is repeated once per nesting level
        raise ChatTemplateError(
            f"the chat template asks tojson for an indent of {width}; at most {_MAX_JSON_INDENT}"
        )
    if indent is None:
        return check_size(
            json.dumps(value, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys),
            "tojson's text",
        )
    encoder = json.JSONEncoder(
        ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    parts, total = [], 0
    for chunk in encoder.iterencode(value):  # counted as it grows: a wide indent multiplies the text
        total += len(chunk)
        check_length(total, "tojson's text")
        parts.append(chunk)
    return "".join(parts)


def raise_exception(message: Any) -> None:
    raise ChatTemplateError(f"the chat template refused these messages: {message}")


def strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class TemplateNamespace(Namespace):
    """jinja2's namespace, refusing names that start with "_" (as transformers' does)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]  # `self` positional only, so namespace(self=1) still works
        values = dict(*args, **kwargs)
        for name in values:
            TemplateNamespace._check(name)
        Namespace.__init__(self, values)

    def __setitem__(self, name: str, value: Any) -> None:
        TemplateNamespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot store {name!r} in a namespace")


class TemplateDict:
    """The `dict` templates see: dict(...) and dict.fromkeys(...), without the type object itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers' marker of assistant text; renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


@jinja2.pass_eval_context
def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    # jinja2's join without autoescape (ours is off), counting as it goes.
    if attribute is not None:
        value = map(jinja2.filters.make_attrgetter(eval_ctx.environment, attribute), value)
    sep = str(d)
    parts = [item if isinstance(item, str) else str(item) for item in value]
    check_length(sum(map(len, parts)) + len(sep) * max(len(parts) - 1, 0), "a joined string")
    return sep.join(parts)


def _prechecked_filter(name: str, args: tuple, kwargs: dict) -> None:
    """Size checks before the jinja2 filters that can multiply their input."""
    value = args[0] if args else None
    if name == "center":
        width = args[1] if len(args) > 1 else kwargs.get("width", 80)
        if isinstance(width, int):
            check_length(width, "a centred string")
    elif name == "indent" and isinstance(value, str):
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        pad = width if isinstance(width, int) else len(str(width))
        check_length(len(value) + (value.count("\n") + 1) * pad, "an indented string")
    elif name == "replace" and len(args) >= 3:
        check_method_call(str(value), "replace", tuple(str(a) for a in args[1:3]) + tuple(args[3:]), kwargs)
    elif name in ("batch", "slice") and len(args) > 1 and isinstance(args[1], int):
        check_length(args[1], f"a {name} count")
    elif name == "format" and isinstance(value, str):
        _check_printf(value, tuple(args[1:]) or tuple(kwargs.values()))


def bounded_filter(name: str, func: Any) -> Any:
    @wraps(func)  # keeps jinja_pass_arg, so the context/environment is still passed
    def bounded(*args: Any, **kwargs: Any) -> Any:
        passed = getattr(func, "jinja_pass_arg", None)
        _prechecked_filter(name, args[1:] if passed else args, kwargs)
        result = func(*args, **kwargs)
        if isinstance(result, Iterator) and not isinstance(result, str):
            return (check_size(item, f"an item of the {name} filter") for item in result)
        return check_size(result, f"the result of the {name} filter")

    return bounded


class BoundedBuffer(list):
    """The output list of a block: append/extend count characters and stop at the size limit."""

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0

    def append(self, part: str) -> None:
        self.chars += len(part)
        check_length(self.chars, "a block of template text")
        super().append(part)

    def extend(self, parts: Any) -> None:
        for part in parts:
            self.append(part)
