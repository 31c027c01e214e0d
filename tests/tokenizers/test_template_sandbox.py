"""A chat template from a stranger can neither read the process (attribute escapes) nor take it down (time,
memory): each case below leaked the environment, froze or exhausted memory with danlu's former hand-written
Jinja interpreter; now each is a ChatTemplateError, fast, or renders without the secret."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from danlu.errors import DanluError
from danlu.tokenizers import template_limits
from danlu.tokenizers.chat import ChatTemplateError, render_chat_template

SECRET = "sk-planted-4f1c9e-do-not-leak"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def planted_secret(monkeypatch):
    monkeypatch.setenv("DANLU_TEST_API_KEY", SECRET)


@pytest.fixture
def short_limit(monkeypatch):
    """A 0.3 s time limit, so the time-limit tests stay fast (the default is tested once below)."""
    monkeypatch.setattr(template_limits, "TEMPLATE_TIME_LIMIT_S", 0.3)
    return 0.3


def render(template: str, **kwargs) -> str:
    return render_chat_template(template, MESSAGES, **kwargs)


def outcome(template: str) -> str:
    """The rendered text, or the error message: what a server would send back."""
    try:
        return render(template)
    except ChatTemplateError as e:
        return str(e)


ESCAPES = [
    # issue 15's template: str.format fields walking from a global function to os.environ
    "{{ raise_exception('{0.__globals__[json].decoder.re.enum.sys.modules[os].environ}'.format(raise_exception)) }}",
    "{{ '{0.__globals__[os].environ}'.format(raise_exception) }}",
    "{{ '{0.__init__.__globals__[os].environ}'.format(namespace) }}",
    "{{ '{m.__class__.__init__.__globals__}'.format_map({'m': messages}) }}",
    "{{ raise_exception.__globals__['os'].environ }}",
    "{{ strftime_now.__globals__.datetime }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].environ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ dict.__class__ }}{{ dict.fromkeys.__globals__ }}",
    "{{ self._TemplateReference__context.environment.globals }}",
    "{% for m in messages %}{{ loop.__class__.__init__.__globals__['sys'].modules['os'].environ }}{% endfor %}",
    "{% set ns = namespace() %}{{ ns.__reduce_ex__(2) }}",
    "{{ (messages|first).items.__self__.__class__ }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_attribute_escapes_leak_nothing(template):
    text = outcome(template)
    assert SECRET not in text and "PATH" not in text
    assert not any(leak in text for leak in ("<class", "<function", "<module", "<built-in", "{'"))


def test_format_field_escape_through_the_tokenizer(bpe):
    # Through the public entry point, as the server calls it: an error that names no secret.
    template = ESCAPES[0]
    with pytest.raises(ChatTemplateError) as info:
        bpe.apply_chat_template(MESSAGES, chat_template=template)
    assert SECRET not in str(info.value) and "unsafe" in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{{ loop.__class__.__mro__ }}{% endfor %}",
        "{% set ns = namespace(a=1) %}{{ ns.__reduce_ex__(2) }}",
        "{% set ns = namespace() %}{% set ns._hidden = 1 %}",
        "{% set ns = namespace(_hidden=1) %}",
        "{{ messages.append({'role': 'system'}) }}",  # the immutable sandbox: no mutation of lists or dicts
    ],
)
def test_underscore_attributes_and_mutation_refused(template):
    with pytest.raises(ChatTemplateError):
        render(template)
    assert render("{{ messages.__class__ }}|{{ loop.__class__ }}|{{ ''.__doc__ }}") == "||"


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        # loops whose body has no call at all: only line tracing in template code sees them
        "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    ],
)
def test_unbounded_loops_stop_at_the_time_limit(short_limit, template):
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match="longer than 0.3 s"):
        render(template)
    assert time.monotonic() - start < short_limit + 1.5


def test_default_time_limit_in_a_worker_thread():
    # The server renders in worker threads: the limit is per thread, and the caller's tracer is left alone.
    assert template_limits.TEMPLATE_TIME_LIMIT_S == 2.0
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    tracer_before = sys.gettrace()
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(render, template)
        quick = pool.submit(render, "{% for m in messages %}{{ m.content }}{% endfor %}")
        assert quick.result(timeout=5) == "hi"
        with pytest.raises(ChatTemplateError, match="longer than 2.0 s"):
            slow.result(timeout=10)
    assert time.monotonic() - start < 6
    assert sys.gettrace() is tracer_before and threading.current_thread() is threading.main_thread()


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{% for i in range(10**8) %}{% endfor %}", "Range too big"),
        ("{{ range(100000000)|list|length }}", "Range too big"),
        ("{{ 'A' * 10**9 }}", "repeated string"),
        ("{{ 'A' * 1000000000 }}", "repeated string"),
        ("{{ 10**9 * 'A' }}", "repeated string"),
        ("{{ ['A'] * 10**9 }}", "repeated string or list"),
        (
            "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
            "bits",
        ),
        ("{{ 2 ** 100000 }}", "bits"),
        ("{{ (2 ** 64) ** 1000 }}", "bits"),
        ("{% set x = ('f' * 10**6)|int(base=16) %}{{ x // (x // 3) }}", "bits"),
        ("{% set x = 0x" + "f" * 2000 + " %}{{ x // (x // 3) }}", "bits"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "~",
        ),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "joined",
        ),
        (
            "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
            "list",
        ),
        (
            "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"
            "{{ ns.l|string|length }}",
            "list or dict literal",
        ),
        (
            "{% set ns = namespace(d={}) %}{% for i in range(64) %}{% set ns.d = {'a': ns.d, 'b': ns.d} %}"
            "{% endfor %}{{ ns.d|tojson }}",
            "list or dict literal",
        ),
        (
            "{% set ns = namespace(t=()) %}{% for i in range(64) %}{% set ns.t = (ns.t, ns.t) %}{% endfor %}"
            "{{ ns.t }}",
            "list or dict literal",
        ),
        ("{{ 'x'|center(10**9) }}", "centred"),
        ("{{ 'x'.center(10**9) }}", "center"),
        ("{{ 'x'.zfill(10**9) }}", "zfill"),
        ("{{ ('a\\n' * 1000)|indent(10**6) }}", "indented"),
        ("{{ ('a' * 10**6).replace('', 'bbbbbbbbbb') }}", "replaced"),
        ("{{ ('a' * 10**6)|replace('a', 'bbbbbbbbbb') }}", "replaced"),
        ("{{ ('\\t' * 10**6).expandtabs(100) }}", "expandtabs"),
        ("{{ ('x' * 10**6).translate({120: 'yyyyyyyyyy'}) }}", "translated"),
        ("{{ (['x'] * 100000)|join('-' * 100) }}", "joined"),
        ("{{ ('-' * 100).join(['x'] * 100000) }}", "joined"),
        ("{{ '{:>1000000000}'.format(1) }}", "format width"),
        ("{{ '{:>{}}'.format(1, 10**9) }}", "format width"),
        ("{{ '%*d' % (10**9, 1) }}", "%-format width"),
        ("{{ '%1000000000d' % 1 }}", "%-format width"),
        ("{{ '%1000000000d'|format(1) }}", "%-format width"),
        ("{{ (1).to_bytes(10**9, 'big') }}", "to_bytes"),
        ("{{ [1]|batch(10**9, 'x')|list }}", "batch"),
        ("{{ messages|tojson(indent=10**9) }}", "indent"),
        (
            "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endmacro %}{% set y = m() %}",
            "block of template text",
        ),
        (
            "{% set y %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endset %}",
            "block of template",
        ),
        (
            "{% filter upper %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfilter %}",
            "block of template",
        ),
        ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output passed"),
        ("{% for i in range(100000) %}{{ messages * 1000 }}{% endfor %}", "output passed"),
        ("{{ {}.fromkeys(range(100000), 'x' * 1000) }}", "size"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed"),
    ],
)
def test_sizes_are_bounded(template, match):
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=match) as info:
        render(template)
    assert isinstance(info.value, DanluError)
    # the message (matched above) shows the size check refused it, not the time limit; and nothing hung
    assert time.monotonic() - start < 5


def test_limits_leave_ordinary_templates_alone():
    big = "长文本 " * 100_000  # 600 k characters of content renders, also repeated a few times
    assert render("{{ messages[0].content * 3 }}", tools=None).count("hi") == 3
    text = render_chat_template(
        "{% for m in messages %}{{ m.content ~ '|' ~ m.content }}{% endfor %}",
        [{"role": "user", "content": big}],
    )
    assert len(text) == 2 * len(big) + 1
    assert render("{{ 2 ** 64 }} {{ '%5.2f' % 3.14159 }} {{ '{:>6}'.format('ab') }} {{ 'x'|center(5) }}") == (
        "18446744073709551616  3.14     ab   x  "
    )


def test_source_size_limit(monkeypatch):
    monkeypatch.setattr(template_limits, "TEMPLATE_MAX_SOURCE_CHARS", 100)
    with pytest.raises(ChatTemplateError, match="over the limit of 100"):
        render("x" * 101)
