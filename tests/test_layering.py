"""The layering of danlu/ (docs/ARCHITECTURE.md, "Layers"), read from the imports with `ast`.

    ground   the modules directly in danlu/ (errors.py, fileio.py, flags.py, mdtext.py, gguf.py, ...): import no
             package, only each other
    library  nn, tokenizers, models, data, generate, eval, train, tune, align, app, serve: a package imports
             only the ground and the packages before it in this order
    top      recipes/ (world-specific runners, the demo stages) on the library; cli/ (every command) on all;
             __main__.py files are entry points. Nothing below imports them.
    façade   danlu/__init__.py (load, save, generate, stream) is for users: only the CLI and the entry points,
             its first users, call it (tests patch `danlu.load` to see what a command loads); the library and
             the recipes import the module that defines the name.

Function-level imports count for the layering as much as module-level ones (a lazy import is still a
dependency); `if TYPE_CHECKING:` imports count for the layering and not for the circles (they never run).
Circles: none among the module-level imports that run (one would make an import order fail), and none among
all imports, function-level ones included (KNOWN_CIRCLES, empty, is where a temporary exception would be named
with the helper that owns its files).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "danlu"
ORDER = ["nn", "tokenizers", "models", "data", "generate", "eval", "train", "tune", "align", "app", "serve"]
GROUND_KNOWN = {"errors", "fileio", "flags", "mdtext", "gguf"}  # docs/ARCHITECTURE.md, "Layers"
# every module directly in danlu/ is ground (a new one, say plots.py, is checked as ground too)
GROUND = {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"}
TOP = ["recipes", "cli"]  # recipes below the CLI: a recipe never imports a command module
MAX_LINES = 500

# (importer, imported) pairs allowed for now, each with the helper that owns the fix. Keep it empty.
ALLOWED: dict[tuple[str, str], str] = {}
# Circles through function-level imports, allowed for now: the modules of each, and who owns the fix. Keep it
# empty (issue 16: no import circles between files, function-level imports included).
KNOWN_CIRCLES: dict[frozenset[str], str] = {}


@dataclass(frozen=True)
class Edge:
    src: str  # importing module, dotted
    dst: str  # imported module (or "danlu" for the façade), dotted
    line: int
    runs_at_import: bool  # a module-level import outside `if TYPE_CHECKING:`


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> list[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: list[Edge] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:  # relative: from .x import y
            up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(up + ([node.module] if node.module else []))
        # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in targets(node):
                    if t == "danlu" or t.startswith("danlu."):
                        edges.append(Edge(name, t, node.lineno, top))
            elif isinstance(node, ast.If):
                runs = top and not _is_type_checking(node.test)
                visit(node.body, runs)
                visit(node.orelse, top)
            elif isinstance(node, (ast.Try, ast.With, ast.For, ast.While)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child], top)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                # a class body runs at import; a function body does not
                visit(node.body, top and isinstance(node, ast.ClassDef))
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child], top)

    visit(tree.body, True)
    return edges


EDGES = [e for name, path in sorted(MODULES.items()) for e in _imports(name, path)]


def layer(module: str) -> tuple[str, int]:
    """(kind, rank) of a module: façade, ground, library package, recipes, cli or entry point."""
    parts = module.split(".")
    if module == "danlu":
        return "facade", -1
    if parts[-1] == "__main__":
        return "entry", len(ORDER) + len(TOP)
    head = parts[1]
    if head in GROUND and len(parts) == 2:
        return "ground", -1
    if head in ORDER:
        return "library", ORDER.index(head)
    if head in TOP:
        return head, len(ORDER) + TOP.index(head)
    raise AssertionError(f"{module}: not in any layer; add it to the ground set or a package in {__file__}")


def violation(edge: Edge) -> str | None:
    kind, rank = layer(edge.src)
    to_kind, to_rank = layer(edge.dst)
    if to_kind == "facade" and kind not in ("cli", "entry"):
        return "imports the danlu façade (import the module that defines the name)"
    if kind == "ground":
        return None if to_kind == "ground" else "a ground module imports a package"
    if kind == "library":
        if to_kind in ("recipes", "cli", "entry"):
            return f"the library imports the top layer ({to_kind})"
        if to_kind == "library" and to_rank > rank:
            return f"{ORDER[rank]} imports {ORDER[to_rank]}, which comes after it"
        return None
    if kind == "recipes" and to_kind in ("cli", "entry"):
        return "a recipe imports the CLI"
    if kind == "cli" and to_kind == "entry":
        return "the CLI imports an entry point"
    return None


def test_every_module_has_a_layer_and_the_order_names_real_packages():
    for name in MODULES:
        layer(name)
    for package in [*ORDER, *TOP]:
        assert (PKG / package / "__init__.py").exists(), package
    assert GROUND_KNOWN <= GROUND, GROUND_KNOWN - GROUND


def test_imports_follow_the_layers():
    bad = []
    for e in EDGES:
        why = violation(e)
        if why and (e.src, e.dst) not in ALLOWED:
            bad.append(f"{MODULES[e.src].relative_to(ROOT)}:{e.line}: {e.src} -> {e.dst}: {why}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_allowed_exceptions_are_still_needed():
    found = {(e.src, e.dst) for e in EDGES if violation(e)}
    stale = [pair for pair in ALLOWED if pair not in found]
    assert not stale, f"remove these from ALLOWED, they are fixed: {stale}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _graph(at_import_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in EDGES:
        if (e.runs_at_import or not at_import_only) and e.dst in MODULES and e.dst != e.src:
            graph.setdefault(e.src, set()).add(e.dst)
    return graph


def test_no_import_circles_between_files():
    assert _cycles(_graph(at_import_only=True)) == []


def test_no_circles_through_function_level_imports_but_the_known_ones():
    found = {frozenset(c) for c in _cycles(_graph(at_import_only=False))}
    assert found - set(KNOWN_CIRCLES) == set(), (
        "new import circles (move the shared piece down, or pass a callable)"
    )
    fixed = set(KNOWN_CIRCLES) - found
    assert not fixed, f"remove these from KNOWN_CIRCLES, they are gone: {[sorted(c) for c in fixed]}"


def test_the_checker_sees_todays_kinds_of_violation():
    """The rules catch an upward import, a façade import, a ground import and the library importing the CLI."""
    assert violation(Edge("danlu.models.gpt", "danlu.train.loop", 1, True))
    assert violation(Edge("danlu.app.llms", "danlu", 1, False))
    assert violation(Edge("danlu.recipes.demo", "danlu", 1, False))
    assert not violation(Edge("danlu.cli.generate", "danlu", 1, False))
    assert violation(Edge("danlu.fileio", "danlu.data.formats", 1, False))
    assert violation(Edge("danlu.serve.api", "danlu.cli.serve", 1, False))
    assert violation(Edge("danlu.recipes.demo", "danlu.cli.train", 1, False))
    assert not violation(Edge("danlu.cli.models", "danlu.recipes.bert", 1, False))
    assert not violation(Edge("danlu.train.loop", "danlu.models.gpt", 1, True))
    # function-level imports are seen: danlu/cli/__init__.py imports its stages only inside functions
    assert any(e.src == "danlu.cli" and not e.runs_at_import for e in EDGES)


def test_no_file_over_500_lines():
    paths = [p for d in ("danlu", "tests", "benchmarks", "experiments") for p in (ROOT / d).rglob("*.py")]
    assert len(paths) > 100, "found too few files: is ROOT the repository?"
    long = {}
    for p in paths:
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            long[str(p.relative_to(ROOT))] = n
    assert not long, f"files over {MAX_LINES} lines (split them): {long}"


def test_entry_points_resolve_to_the_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts == {"danlu": "danlu.cli:main"}
    assert (PKG / "cli" / "__init__.py").exists() and (PKG / "__main__.py").exists()


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_danlu_generate_is_a_function_whatever_is_imported_first():
    """`danlu.generate` is a plain function; `danlu.generate.engine` stays importable, in either order."""
    check = (
        "import types, danlu; from danlu.generate.engine import generate as g; from danlu.generate import options;"
        "assert type(danlu.generate) is types.FunctionType, type(danlu.generate);"
        "import sys; assert type(sys.modules['danlu.generate']) is types.ModuleType;"
        "print(danlu.generate.__module__, options.__name__)"
    )
    first_engine = "import danlu.generate.engine, danlu.generate.search;"
    first_package = "import danlu.generate;"
    expected = "danlu danlu.generate.options"
    assert _run(check) == expected
    assert _run(first_engine + check) == expected
    assert _run(first_package + check) == expected
