"""The code is lint-clean: `ruff check danlu tests benchmarks` with the rules of pyproject.toml [tool.ruff]
(pycodestyle E/W, pyflakes F, import sorting I, bugbear B, pyupgrade UP), so a finding fails the suite instead
of waiting for a reviewer. ruff comes with the dev extra (./setup-dev)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff")
    return [exe] if exe else [sys.executable, "-m", "ruff"]


def test_ruff_check_is_clean():
    proc = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--output-format", "concise", "danlu", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"ruff check found problems (fix them, or `ruff check --fix`):\n{proc.stdout}{proc.stderr}"
    )
