"""What rendering one chat template may cost, and the error it raises past a limit.

A leaf module (it imports only danlu.errors), so the sandbox (`jinja.py`, `jinja_builtins.py`) and the chat
front end (`chat.py`, which imports the sandbox) both read it without importing each other.
The limits are read at call time: change them here (`danlu.tokenizers.template_limits.TEMPLATE_TIME_LIMIT_S
= 5.0`); docs/SECURITY.md lists them.
"""

from __future__ import annotations

from danlu.errors import DanluError

TEMPLATE_TIME_LIMIT_S = 2.0  # wall-clock seconds to compile and render one chat, loops of any shape included
TEMPLATE_MAX_OUTPUT_CHARS = 4 * 2**20  # characters of rendered prompt (4 Mi; the server's body limit is 1 MB)
# length of any string a template builds, and about what str() of a list or dict it builds would print
TEMPLATE_MAX_VALUE_SIZE = 4 * 2**20
TEMPLATE_MAX_INT_BITS = 4096  # bits of an integer that `*`, `**`, `//`, `%` or a call makes or takes
TEMPLATE_MAX_SOURCE_CHARS = 2**20  # characters of template text (real templates are under 50 k)
# `range()` is jinja2's sandboxed range: at most jinja2.sandbox.MAX_RANGE (100000) items.


class ChatTemplateError(DanluError):
    """A chat template (or the messages given to it) cannot be rendered: syntax, a limit, raise_exception."""
