"""Command-line flags from dataclass fields: the one mechanism every `danlu` command builds its options with.

A field says what it means once, as metadata, and the flag, its help text, its default in `--help`, its choices
and its range all come from there (litgpt's config-driven CLI, done with plain `argparse` and `dataclasses`):

    max_new_tokens: int = option(64, "most tokens to generate", ge=1)

`add_dataclass_flags(parser, Config)` turns every field into `--max-new-tokens`; `check_ranges(obj)` raises a
DanluError naming the first field outside its range; the server's request schema can read the same metadata.
A ground module: it imports no danlu package but `danlu.errors` (torch only inside `apply_threads`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import MISSING, Field, field, fields
from typing import Any

from danlu.errors import DanluError

# Metadata keys: help (str), ge / gt / le / lt (numeric bounds), choices (a tuple), hint (said after an error),
# flag (the flag's name when it differs from the field's), cli (False: no flag).
RANGE_KEYS = ("ge", "gt", "le", "lt")


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, **meta: Any) -> Any:
    """A dataclass field with its help text, range and choices as metadata (see the module docstring)."""
    unknown = set(meta) - {*RANGE_KEYS, "choices", "hint", "flag", "cli"}
    if unknown:  # a typo here would silently drop a range
        raise TypeError(f"unknown option metadata {sorted(unknown)}")
    kw: dict[str, Any] = {"metadata": {"help": help, **meta}}
    if default_factory is not MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return field(**kw)


def range_text(meta: dict[str, Any]) -> str:
    """'>= 1', 'in (0, 1]', ... from the bounds in `meta` ('' when it has none)."""
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    return ""


def in_range(value: float, meta: dict[str, Any]) -> bool:
    return (
        ("ge" not in meta or value >= meta["ge"])
        and ("gt" not in meta or value > meta["gt"])
        and ("le" not in meta or value <= meta["le"])
        and ("lt" not in meta or value < meta["lt"])
    )


def check_ranges(obj: Any) -> None:
    """Raise a DanluError naming the first field of dataclass `obj` whose value breaks its type, range or choices."""
    for f in fields(obj):
        meta, value = f.metadata, getattr(obj, f.name)
        if "choices" in meta and value not in meta["choices"]:
            raise DanluError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
        if not any(k in meta for k in RANGE_KEYS) or (value is None and f.default is None):
            continue
        integer = isinstance(f.default, int) and not isinstance(f.default, bool)
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
            raise DanluError(
                f"{f.name} must be {'an integer' if integer else 'a finite number'}, got {value!r}"
            )
        if not in_range(value, meta):
            hint = f" ({meta['hint']})" if meta.get("hint") else ""
            raise DanluError(f"{f.name} must be {range_text(meta)}, got {value!r}{hint}")


def add_dataclass_flags(
    p: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    meta: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Every field of dataclass `cls` as a `--flag` (dest = the field name); returns the field names added.

    `defaults` overrides a field's default for this command (e.g. SFT's shorter run); `meta` adds or overrides
    metadata for classes whose fields carry none (their help is then written beside the command).
    A bool becomes `--x/--no-x`; a list a space-separated `nargs="*"`; a field defaulting to None takes the
    type its annotation names first (`int | None` -> int).
    """
    defaults, meta = defaults or {}, meta or {}
    added = []
    for f in fields(cls):
        m = {**f.metadata, **meta.get(f.name, {})}
        if f.name in skip or m.get("cli") is False:
            continue
        default = defaults.get(f.name, _field_default(f))
        flag = "--" + m.get("flag", f.name).replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": m.get("help") or None}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kw.update(nargs="*", type=str, action="extend")  # `--stop a b` and `--stop a --stop b`
        else:
            kw["type"] = type(default) if default is not None else _annotation_type(f)
            if "choices" in m:
                kw["choices"] = m["choices"]
        p.add_argument(flag, **kw)
        added.append(f.name)
    return added


def _field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _annotation_type(f: Field) -> type:
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    first = text.split("|")[0].strip()
    return {"int": int, "float": float, "str": str}.get(first, str)


# ------------------------------------------------------------------------------------ help shown the same way
class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (or says it is required), as `--help` promises the user."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "%(default)" in text:
            return text
        if action.required:
            return f"{text} (required)".strip()
        default = action.default
        if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
            shown = "on" if default else "off"
        elif default is None:
            shown = "none"
        elif isinstance(default, list | tuple):
            shown = " ".join(map(str, default)) if default else "none"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})".strip()


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The description printed as written (a docstring with examples), options as HelpFormatter shows them."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose every subparser shows its defaults the same way (they inherit the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("formatter_class")
        raw = isinstance(given, type) and issubclass(given, argparse.RawDescriptionHelpFormatter)
        kwargs["formatter_class"] = RawDescriptionHelpFormatter if raw else HelpFormatter
        # `--max` must not silently mean `--max-new-tokens` today and fail once `--max-steps` joins a command.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


# ------------------------------------------------------------------------------- device and threads flags
def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps"
    )


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads for PyTorch; 0 = as many as the CPUs free now (fewer when the machine is busy)",
    )


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; another name is checked (before any loading)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise DanluError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DanluError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return name


def cpu_budget() -> tuple[int, float]:
    """(CPUs this process may run on, the 1-minute load average of the machine)."""
    try:
        n_cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n_cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return n_cpus, load


def pick_threads(requested: int, torch_default: int, n_cpus: int, load: float) -> int:
    """The thread count to use: `requested` when given (> 0); otherwise torch's default capped by the CPUs
    this process may use and by the CPUs the load average leaves free (at least 1).

    Why: PyTorch sizes its pool to the machine's cores whatever else runs; with other busy processes its
    threads wait on each other at every parallel region, and a step measured 4-21 s with the default where
    one thread took 1.5 s (issue 20). The load average is read before our own work starts, so it counts others.
    """
    if requested > 0:
        return requested
    free = max(1, math.floor(n_cpus - load + 0.5))
    return max(1, min(torch_default, n_cpus, free))


def apply_threads(requested: int, quiet: bool = False) -> int:
    """Set torch's intra-op threads (see `pick_threads`); say so on stderr when fewer than torch would use."""
    if requested < 0:
        raise DanluError(f"--threads must be >= 0 (0 = choose), got {requested}")
    import torch

    if requested == 0 and "OMP_NUM_THREADS" in os.environ:  # the user chose already
        return torch.get_num_threads()
    torch_default = torch.get_num_threads()
    n_cpus, load = cpu_budget()
    n = pick_threads(requested, torch_default, n_cpus, load)
    if n != torch_default:
        torch.set_num_threads(n)
        if requested == 0 and not quiet:
            print(
                f"note: using {n} CPU thread(s), not PyTorch's {torch_default}: {n_cpus} CPUs usable, load "
                f"average {load:.1f} (pass --threads N to choose)",
                file=sys.stderr,
            )
    return n


# glibc's malloc serves a block over its mmap threshold (at most 32 MiB, adjusted as blocks are freed) with
# fresh pages from the kernel and returns them on free, so a tensor that size or larger faults in every page
# again each time it is allocated. One pretraining step of the demo's model makes a (32·128, 2,048) logits
# tensor of 33.5 MB, and its backward as large again: `danlu demo` took 193 s with those page faults and 168 s
# without, the same CPU seconds and figures (docs/BENCHMARKS.md, "Freed large tensors reused"). Keeping freed
# memory in the heap lets the next step reuse it; the cost is that the process keeps its peak heap until it exits.
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # never hand the heap's free top back to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed large blocks instead of unmapping them (see MMAP_THRESHOLD). A no-op
    off glibc (macOS, Windows, musl), with DANLU_KEEP_FREED_MEMORY=0, or when the user tunes glibc's malloc
    themselves (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES set). Returns whether it was
    applied."""
    if os.environ.get("DANLU_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    import ctypes

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):  # musl, or another libc
            return False
        libc = ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):  # not a glibc system (macOS, Windows)
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD))
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD))
    return bool(ok)


def heavy(p: argparse.ArgumentParser, func: Any, device: bool = True, validate: Any = None) -> None:
    """Give a command that runs a model `--threads` (and `--device`), and set its handler: the wrapper first
    validates every flag (`validate(args)`, cheap, before any loading), then resolves the device and threads."""
    if device:
        add_device_flag(p)
    add_threads_flag(p)

    def run(args: argparse.Namespace) -> Any:
        if validate is not None:
            validate(args)
        if getattr(args, "device", None) is not None:
            args.device = resolve_device(args.device)
        apply_threads(args.threads, quiet=getattr(args, "quiet", False))
        keep_freed_memory()
        return func(args)

    run.__wrapped__ = func  # tests can reach the command itself
    p.set_defaults(func=run)


def split_list(values: list[str] | None, flag: str) -> list[str]:
    """A space-separated list flag's values; the old comma form (`a,b`) still splits, with a note."""
    out: list[str] = []
    for v in values or []:
        if "," in v:
            print(
                f"note: {flag} takes space-separated values now ({flag} {v.replace(',', ' ')})",
                file=sys.stderr,
            )
            out += [x.strip() for x in v.split(",") if x.strip()]
        elif v.strip():
            out.append(v.strip())
    return out
