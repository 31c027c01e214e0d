"""Arithmetic word problems made from the embedded world's arithmetic records, for agents with a calculator.

Each SFT arithmetic record ("What is 11 + 18?", answer "29") becomes a short story about a person of the world:

    {"question": "Tofi has 11 apples and gets 18 more. How many apples does Tofi have now?",
     "expression": "11 + 18", "answer": "29", "source": "What is 11 + 18?"}
"""

from __future__ import annotations

import re
from typing import Any

from danlu.errors import DanluError

_ITEMS = ["apples", "books", "coins", "stones", "cups", "shells", "pens", "eggs"]
_TEMPLATES = {
    "+": "{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
    "-": "{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?",
    "*": "{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have in all?",
}
_ARITH = re.compile(r"(\d+)\s*([-+*])\s*(\d+)")


def word_problems(world: Any, split: str = "test", limit: int | None = None) -> list[dict[str, str]]:
    """Word problems from `world.sft_records(split)` records of kind "arith" (English and Chinese alike)."""
    people = [p.name.en for p in world.people]
    if not people:
        raise DanluError("this world has no people to tell word problems about")
    out = []
    for record in world.sft_records(split):
        if record.get("kind") != "arith":
            continue
        m = _ARITH.search(record["instruction"])
        if m is None:
            continue
        a, op, b = m.group(1), m.group(2), m.group(3)
        n = len(out)
        question = _TEMPLATES[op].format(name=people[n % len(people)], a=a, b=b, item=_ITEMS[n % len(_ITEMS)])
        out.append({"question": question, "expression": f"{a} {op} {b}", "answer": record["answer"],
                    "source": record["instruction"]})  # fmt: skip
        if limit is not None and len(out) >= limit:
            break
    return out
