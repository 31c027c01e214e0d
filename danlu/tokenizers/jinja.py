"""A small Jinja interpreter for chat templates (no `jinja2` dependency).

Renders the subset of Jinja that chat templates use, with the settings `transformers` renders them with
(trim_blocks and lstrip_blocks): text, `{{ expr }}`, `{% if / elif / else %}`, `{% for x in xs [if c] %}`
with `loop.*`, `{% set x = ... %}` (also `ns.attr`, scoped per loop iteration as in Jinja),
`{# comments #}`, `-` whitespace control, and expressions: literals, lists, dicts, `.attr`, `[key]`,
slices, `+ - * / // % ~`, comparisons, `in` / `not in`, `is [not] defined / none / string ...`,
`and / or / not`, `a if c else b`, filters (trim, length, lower, upper, tojson, join, default, ...),
whitelisted string and dict methods, `raise_exception(msg)`, `namespace()`, `range()`.
Anything else raises DanluError naming the construct.
"""

from __future__ import annotations

import re
from collections import ChainMap
from typing import Any

from danlu.errors import DanluError
from danlu.tokenizers.jinja_builtins import (
    FILTERS,
    TESTS,
    UNDEFINED,
    Loop,
    Namespace,
    get_attr,
    get_item,
    raise_exception,
    to_str,
)

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>==|!=|<=|>=|//|\*\*|[-+*/%~<>()\[\]{}.,:|=]))",
    re.S,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def _tokenize_expr(text: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise DanluError(f"chat template: cannot read expression {text!r} at {text[pos:]!r}")
        pos = m.end()
        if m.group("num"):
            out.append(("lit", float(m.group("num")) if "." in m.group("num") else int(m.group("num"))))
        elif m.group("str"):
            body = m.group("str")[1:-1]
            out.append(("lit", re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), "\\" + e.group(1)), body)))
        elif m.group("name"):
            out.append(("name", m.group("name")))
        else:
            out.append(("op", m.group("op")))
    return out


_BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "~": lambda a, b: to_str(a) + to_str(b),
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "in": lambda a, b: a in b,
}


class _Expr:
    """Recursive-descent parser turning an expression into a function of the context."""

    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i = text, _tokenize_expr(text), 0

    def peek(self, k: int = 0) -> tuple[str, Any]:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else ("end", None)

    def accept(self, kind: str, value: Any = None) -> bool:
        t = self.peek()
        if t[0] == kind and (value is None or t[1] == value):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, value: Any = None) -> Any:
        t = self.peek()
        if not self.accept(kind, value):
            raise DanluError(f"chat template: expected {value or kind!r} in {self.text!r}, found {t[1]!r}")
        return t[1]

    def parse(self):
        e = self.ternary()
        if self.peek()[0] != "end":
            raise DanluError(f"chat template: unexpected {self.peek()[1]!r} in {self.text!r}")
        return e

    def ternary(self):
        e = self.or_()
        if self.accept("name", "if"):
            cond = self.or_()
            other = self.ternary() if self.accept("name", "else") else (lambda c: UNDEFINED)
            return lambda c, e=e: e(c) if cond(c) else other(c)
        return e

    def or_(self):
        e = self.and_()
        while self.accept("name", "or"):
            r = self.and_()
            e = lambda c, a=e, b=r: a(c) or b(c)  # noqa: E731
        return e

    def and_(self):
        e = self.not_()
        while self.accept("name", "and"):
            r = self.not_()
            e = lambda c, a=e, b=r: a(c) and b(c)  # noqa: E731
        return e

    def not_(self):
        if self.accept("name", "not"):
            e = self.not_()
            return lambda c: not e(c)
        return self.compare()

    def compare(self):
        e = self.binary(0)
        while True:
            t = self.peek()
            if t[0] == "op" and t[1] in ("==", "!=", "<", ">", "<=", ">="):
                self.i += 1
                r, f = self.binary(0), _BINARY[t[1]]
                e = lambda c, a=e, b=r, f=f: f(a(c), b(c))  # noqa: E731
            elif t == ("name", "in") or (t == ("name", "not") and self.peek(1) == ("name", "in")):
                negate = self.accept("name", "not")
                self.expect("name", "in")
                r = self.binary(0)
                e = lambda c, a=e, b=r, n=negate: (a(c) in b(c)) != n  # noqa: E731
            elif self.accept("name", "is"):
                negate = self.accept("name", "not")
                name = self.expect("name")
                test = TESTS.get(name)
                if test is None:
                    raise DanluError(f"chat template: unsupported test 'is {name}' in {self.text!r}")
                e = lambda c, a=e, t=test, n=negate: t(a(c)) != n  # noqa: E731
            else:
                return e

    _LEVELS = [("~",), ("+", "-"), ("*", "/", "//", "%")]

    def binary(self, level: int):
        if level == len(self._LEVELS):
            return self.unary()
        e = self.binary(level + 1)
        while self.peek()[0] == "op" and self.peek()[1] in self._LEVELS[level]:
            f = _BINARY[self.peek()[1]]
            self.i += 1
            r = self.binary(level + 1)
            e = lambda c, a=e, b=r, f=f: f(a(c), b(c))  # noqa: E731
        return e

    def unary(self):
        if self.accept("op", "-"):
            e = self.unary()
            return lambda c: -e(c)
        return self.postfix()

    def args(self) -> tuple[list, dict]:
        args, kwargs = [], {}
        while not self.accept("op", ")"):
            if self.peek()[0] == "name" and self.peek(1) == ("op", "="):
                key = self.expect("name")
                self.expect("op", "=")
                kwargs[key] = self.ternary()
            else:
                args.append(self.ternary())
            if not self.accept("op", ","):
                self.expect("op", ")")
                break
        return args, kwargs

    def postfix(self):
        e = self.primary()
        while True:
            if self.accept("op", "."):
                name = self.expect("name")
                e = lambda c, a=e, n=name: get_attr(a(c), n)  # noqa: E731
            elif self.accept("op", "["):
                parts = [None, None, None]
                k = 0
                while not self.accept("op", "]"):
                    if self.accept("op", ":"):
                        k += 1
                    else:
                        parts[k] = self.ternary()
                if k == 0:
                    key = parts[0]
                    e = lambda c, a=e, key=key: get_item(a(c), key(c))  # noqa: E731
                else:
                    e = lambda c, a=e, p=parts: get_item(a(c), slice(*(x(c) if x else None for x in p)))  # noqa: E731
            elif self.accept("op", "("):
                args, kwargs = self.args()
                e = self._call_node(e, args, kwargs)
            elif self.accept("op", "|"):
                name = self.expect("name")
                f = FILTERS.get(name)
                if f is None:
                    raise DanluError(f"chat template: unsupported filter '|{name}' in {self.text!r}")
                args, kwargs = self.args() if self.accept("op", "(") else ([], {})
                e = self._call_node(lambda c, f=f: f, [e, *args], kwargs)
            else:
                return e

    @staticmethod
    def _call_node(func, args: list, kwargs: dict):
        def call(c):
            return _call(func(c), [x(c) for x in args], {n: x(c) for n, x in kwargs.items()})

        return call

    def primary(self):
        kind, value = self.peek()
        self.i += 1
        if kind == "lit":
            return lambda c: value
        if kind == "name":
            constants = {
                "true": True,
                "false": False,
                "none": None,
                "True": True,
                "False": False,
                "None": None,
            }
            if value in constants:
                return lambda c: constants[value]
            return lambda c: c.get(value, UNDEFINED)
        if (kind, value) == ("op", "("):
            e = self.ternary()
            self.expect("op", ")")
            return e
        if (kind, value) == ("op", "["):
            items = []
            while not self.accept("op", "]"):
                items.append(self.ternary())
                if not self.accept("op", ","):
                    self.expect("op", "]")
                    break
            return lambda c: [x(c) for x in items]
        if (kind, value) == ("op", "{"):
            pairs = []
            while not self.accept("op", "}"):
                key = self.ternary()
                self.expect("op", ":")
                pairs.append((key, self.ternary()))
                if not self.accept("op", ","):
                    self.expect("op", "}")
                    break
            return lambda c: {k(c): v(c) for k, v in pairs}
        raise DanluError(f"chat template: unexpected {value!r} in expression {self.text!r}")


def _call(f: Any, args: list, kwargs: dict) -> Any:
    if f is UNDEFINED or not callable(f):
        raise DanluError("chat template calls something that is not a known function or method")
    return f(*args, **kwargs)


_TAG = re.compile(r"\{\{(-?)(.*?)(-?)\}\}|\{%([-+]?)(.*?)(-?)%\}|\{#([-+]?)(.*?)(-?)#\}", re.S)


def _lex(template: str) -> list[tuple[str, str]]:
    """("text" | "out" | "stmt", content) with whitespace control, trim_blocks and lstrip_blocks applied."""
    items: list[list] = []  # [kind, content, strip_before, strip_after]
    pos = 0
    for m in _TAG.finditer(template):
        items.append(["text", template[pos : m.start()], False, False])
        if m.group(2) is not None and m.start(2) >= 0 and m.group(0).startswith("{{"):
            items.append(["out", m.group(2), m.group(1) == "-", m.group(3) == "-"])
        elif m.group(0).startswith("{%"):
            items.append(["stmt", m.group(5), m.group(4), m.group(6) == "-"])
        else:
            items.append(["comment", "", m.group(7), m.group(9) == "-"])
        pos = m.end()
    items.append(["text", template[pos:], False, False])
    for j, item in enumerate(items):
        if item[0] == "text":
            continue
        before, after = items[j - 1], items[j + 1]
        if item[2] is True or item[2] == "-":
            before[1] = before[1].rstrip()
        elif item[0] in ("stmt", "comment") and item[2] != "+":
            # lstrip_blocks: drop spaces and tabs between a line start and a block tag
            head, sep, tail = before[1].rpartition("\n")
            if tail.strip(" \t") == "" and (sep or j == 1):
                before[1] = head + sep
        if item[3]:
            after[1] = after[1].lstrip()
        elif item[0] in ("stmt", "comment") and after[1].startswith("\n"):
            after[1] = after[1][1:]  # trim_blocks: the newline right after a block tag goes
    return [(kind, content) for kind, content, _, _ in items if kind in ("out", "stmt") or content]


def _parse(tokens: list[tuple[str, str]], pos: int, ends: tuple[str, ...]) -> tuple[list, int, str]:
    """Nodes until one of the end keywords; returns (nodes, next position, the end statement)."""
    nodes: list = []
    while pos < len(tokens):
        kind, content = tokens[pos]
        pos += 1
        if kind == "text":
            nodes.append(("text", content))
            continue
        if kind == "out":
            nodes.append(("out", _Expr(content).parse()))
            continue
        stmt = content.strip()
        keyword = stmt.split(None, 1)[0] if stmt else ""
        if keyword in ends:
            return nodes, pos, stmt
        if keyword == "if":
            branches, otherwise = [], []
            cond, stmt_end = stmt[2:], ""
            while True:
                body, pos, stmt_end = _parse(tokens, pos, ("elif", "else", "endif"))
                branches.append((_Expr(cond).parse(), body))
                if stmt_end.startswith("elif"):
                    cond = stmt_end[4:]
                    continue
                if stmt_end == "else":
                    otherwise, pos, stmt_end = _parse(tokens, pos, ("endif",))
                break
            nodes.append(("if", branches, otherwise))
        elif keyword == "for":
            m = re.fullmatch(r"for\s+([\w\s,]+?)\s+in\s+(.+?)(?:\s+if\s+(.+))?", stmt, re.S)
            if m is None:
                raise DanluError(f"chat template: cannot read {{% {stmt} %}}")
            targets = [t.strip() for t in m.group(1).split(",")]
            cond = _Expr(m.group(3)).parse() if m.group(3) else None
            body, pos, stmt_end = _parse(tokens, pos, ("else", "endfor"))
            otherwise = []
            if stmt_end == "else":
                otherwise, pos, _ = _parse(tokens, pos, ("endfor",))
            nodes.append(("for", targets, _Expr(m.group(2)).parse(), cond, body, otherwise))
        elif keyword == "set":
            m = re.fullmatch(r"set\s+([\w.]+)\s*=\s*(.+)", stmt, re.S)
            if m is None:
                raise DanluError(f"chat template: cannot read {{% {stmt} %}} (block set is not supported)")
            nodes.append(("set", m.group(1), _Expr(m.group(2)).parse()))
        elif keyword in ("generation", "endgeneration"):
            continue  # transformers' marker for assistant tokens: no output of its own
        else:
            raise DanluError(f"chat template: unsupported statement {{% {stmt} %}}")
    if ends:
        raise DanluError(f"chat template: missing {{% {' / '.join(ends)} %}}")
    return nodes, pos, ""


def _render(nodes: list, ctx: ChainMap, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            value = node[1](ctx)
            out.append("" if value is UNDEFINED else to_str(value))
        elif kind == "if":
            for cond, body in node[1]:
                if cond(ctx):
                    _render(body, ctx, out)
                    break
            else:
                _render(node[2], ctx, out)
        elif kind == "for":
            _, targets, iterable, cond, body, otherwise = node
            items = iterable(ctx)
            items = list(items.items()) if isinstance(items, dict) else list(items)
            if cond is not None:
                items = [x for x in items if cond(ctx.new_child(_bind(targets, x)))]
            loop = Loop(len(items))
            for index, item in enumerate(items):
                loop.index0 = index
                _render(body, ctx.new_child({**_bind(targets, item), "loop": loop}), out)
            if not items:
                _render(otherwise, ctx, out)
        elif kind == "set":
            target, value = node[1], node[2](ctx)
            if "." in target:
                name, attr = target.split(".", 1)
                obj = ctx.get(name)
                if not isinstance(obj, Namespace):
                    raise DanluError(f"chat template: {{% set {target} %}} needs {name} to be a namespace()")
                setattr(obj, attr, value)
            else:
                ctx[target] = value


def _bind(targets: list[str], item: Any) -> dict[str, Any]:
    if len(targets) == 1:
        return {targets[0]: item}
    values = list(item)
    if len(values) != len(targets):
        raise DanluError(f"chat template: cannot unpack {item!r} into {', '.join(targets)}")
    return dict(zip(targets, values))


def render_jinja(template: str, variables: dict[str, Any]) -> str:
    """Render a Jinja chat template with variables (see the module docstring for what is supported)."""
    nodes, _, _ = _parse(_lex(template), 0, ())
    globals_ = {
        "raise_exception": raise_exception,
        "namespace": Namespace,
        "range": range,
        "true": True,
        "false": False,
        "none": None,
    }
    out: list[str] = []
    _render(nodes, ChainMap(dict(variables), globals_), out)
    return "".join(out)
