"""Fixtures of the experiments' tests (experiments/*.py and `danlu demo --stages lab`, which runs them): a
script loaded by its path as the lab loads it, and the tiny world on disk, written once for the session.

Plain `pytest` (as CI runs it) puts no repository root on sys.path, so these tests cannot import a helper from
a `tests` package: the loader is the library's own `danlu.recipes.lab_stages.load_script`.
"""

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from danlu.data.world import write_world
from danlu.recipes.lab_stages import load_script

# the source tree's scripts, not $DANLU_EXPERIMENTS (lab_stages.experiments_dir), which a user may have set
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

sys.dont_write_bytecode = True  # the scripts are loaded from their paths; no __pycache__ in experiments/


@pytest.fixture(scope="session")
def experiments() -> Path:
    """The folder of the scripts under test."""
    return EXPERIMENTS


@pytest.fixture(scope="session")
def script() -> Callable[[str], ModuleType]:
    """`script("icl")`: experiments/icl.py as a module, loaded as the lab loads it (its folder on sys.path for
    its siblings, registered in sys.modules for its dataclasses)."""
    return lambda name: load_script(EXPERIMENTS / f"{name}.py")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """`danlu world --size tiny --seed 0` in a folder of this run; the scripts only read it."""
    out = tmp_path_factory.mktemp("world")
    write_world(out, seed=0, size="tiny")
    return out
