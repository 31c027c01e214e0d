"""The values, filters and tests of danlu's Jinja subset (see `jinja.py`): Undefined, namespace(),
the `loop` object, attribute and item access (Jinja's rules: `x.name` tries the attribute, then the
item), and the whitelisted filters, tests and methods a chat template may use.
"""

from __future__ import annotations

import json
from typing import Any

from danlu.errors import DanluError


class _Undefined:
    """Jinja's undefined value: prints as "", is falsy, `is defined` is false."""

    def __str__(self) -> str:
        return ""

    def __bool__(self) -> bool:
        return False

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


UNDEFINED = _Undefined()


class Namespace:
    """`namespace(...)`: an object whose attributes `{% set ns.x = ... %}` may change inside loops."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class Loop:
    def __init__(self, length: int) -> None:
        self.length, self.index0 = length, 0

    @property
    def index(self) -> int:
        return self.index0 + 1

    @property
    def first(self) -> bool:
        return self.index0 == 0

    @property
    def last(self) -> bool:
        return self.index0 == self.length - 1

    @property
    def revindex(self) -> int:
        return self.length - self.index0

    @property
    def revindex0(self) -> int:
        return self.length - self.index0 - 1


def raise_exception(message: str) -> None:
    raise DanluError(f"chat template refused the messages: {message}")


def to_str(value: Any) -> str:
    if value is None:
        return "None"
    return str(value)


FILTERS = {
    "trim": lambda v, chars=None: str(v).strip(chars),
    "length": len,
    "count": len,
    "lower": lambda v: str(v).lower(),
    "upper": lambda v: str(v).upper(),
    "capitalize": lambda v: str(v).capitalize(),
    "title": lambda v: str(v).title(),
    "string": to_str,
    "int": lambda v, default=0: int(v) if str(v).strip().lstrip("-").isdigit() else default,
    "float": float,
    "first": lambda v: next(iter(v), UNDEFINED),
    "last": lambda v: list(v)[-1] if len(v) else UNDEFINED,
    "list": list,
    "join": lambda v, sep="": sep.join(to_str(x) for x in v),
    "default": lambda v, d="", boolean=False: d if (v is UNDEFINED or (boolean and not v)) else v,
    "replace": lambda v, old, new: str(v).replace(old, new),
    "items": lambda v: list(v.items()),
    "safe": lambda v: v,
    "tojson": lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent),
}
FILTERS["d"] = FILTERS["default"]


def _apply_test(value: Any, name: str | None, *args: Any) -> bool:
    if name is None:  # select() / selectattr("x") without a test keep truthy values
        return bool(value)
    if name in ("equalto", "eq", "=="):
        return value == args[0]
    if name in ("ne", "!="):
        return value != args[0]
    test = TESTS.get(name)
    if test is None:
        raise DanluError(f"chat template: unsupported test {name!r}")
    return test(value)


def _map(values: Any, *args: Any, attribute: str | None = None) -> list:
    if attribute is not None:
        return [get_attr(v, attribute) for v in values]
    name, rest = args[0], args[1:]
    if name not in FILTERS:
        raise DanluError(f"chat template: unsupported filter {name!r} in map()")
    return [FILTERS[name](v, *rest) for v in values]


FILTERS["map"] = _map
FILTERS["select"] = lambda v, name=None, *a: [x for x in v if _apply_test(x, name, *a)]
FILTERS["reject"] = lambda v, name=None, *a: [x for x in v if not _apply_test(x, name, *a)]
FILTERS["selectattr"] = lambda v, attr, name=None, *a: [
    x for x in v if _apply_test(get_attr(x, attr), name, *a)
]
FILTERS["rejectattr"] = lambda v, attr, name=None, *a: [
    x for x in v if not _apply_test(get_attr(x, attr), name, *a)
]
TESTS = {
    "defined": lambda v: v is not UNDEFINED,
    "undefined": lambda v: v is UNDEFINED,
    "none": lambda v: v is None,
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "mapping": lambda v: isinstance(v, dict),
    "sequence": lambda v: isinstance(v, list | tuple | str),
    "iterable": lambda v: isinstance(v, list | tuple | str | dict),
    "boolean": lambda v: isinstance(v, bool),
    "true": lambda v: v is True,
    "false": lambda v: v is False,
    "even": lambda v: v % 2 == 0,
    "odd": lambda v: v % 2 == 1,
}
METHODS = {
    str: {
        "strip",
        "lstrip",
        "rstrip",
        "startswith",
        "endswith",
        "split",
        "lower",
        "upper",
        "replace",
        "title",
    }
    | {"capitalize", "format", "count", "find", "join"},
    dict: {"get", "items", "keys", "values"},
    list: {"index", "count"},
}


def get_attr(obj: Any, name: str) -> Any:
    # Jinja's `x.name`: an attribute first (for a dict: its whitelisted methods), then the item.
    if isinstance(obj, dict):
        return getattr(obj, name) if name in METHODS[dict] else obj.get(name, UNDEFINED)
    for kind, names in METHODS.items():
        if isinstance(obj, kind):
            return getattr(obj, name) if name in names else UNDEFINED
    if isinstance(obj, Namespace | Loop):
        return getattr(obj, name, UNDEFINED)
    return UNDEFINED


def get_item(obj: Any, key: Any) -> Any:
    if isinstance(key, slice):
        return obj[key]
    try:
        return obj[key]
    except (KeyError, IndexError, TypeError):
        return get_attr(obj, key) if isinstance(key, str) else UNDEFINED
