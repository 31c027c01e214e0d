"""Model output and user text placed in Markdown reports so that any CommonMark renderer shows it as it is.

Generated text holds anything: `*`, `_`, backticks, `<img ...>`, leading spaces, blank lines. Pasted
into Markdown as is, it turns into emphasis, HTML or collapsed paragraphs. Inside a code span or a fenced
code block nothing is interpreted (CommonMark 0.31, sections 4.5 and 6.1), so every such text goes there,
with a fence longer than any backtick run it contains.
"""

from __future__ import annotations

import re


def _longest_run(text: str, char: str) -> int:
    return max((len(m) for m in re.findall(re.escape(char) + "+", text)), default=0)


def code_span(text: str) -> str:
    """`text` as an inline code span, shown literally. Line breaks become spaces (as CommonMark renders
    them in a span); use `fenced` for text whose lines matter."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    if not text:
        return "*(empty)*"
    ticks = "`" * (_longest_run(text, "`") + 1)
    # CommonMark strips one space from each end when both ends are spaces, and a tick at either end
    # would merge with the fence: pad with one space in those cases, which the renderer removes again
    if (
        text.startswith("`")
        or text.endswith("`")
        or (text.startswith(" ") and text.endswith(" ") and text.strip())
    ):
        text = f" {text} "
    return f"{ticks}{text}{ticks}"


def fenced(text: str, info: str = "text") -> str:
    """`text` as a fenced code block (ending in a newline): every line, space and character kept."""
    fence = "`" * max(3, _longest_run(text, "`") + 1)
    body = text if text.endswith("\n") else text + "\n"
    return f"{fence}{info}\n{body}{fence}\n"
