"""schemathesis against `danlu serve` on the tiny checkpoint, every check enabled: no 5xx, no status the OpenAPI
document does not list, no reply that breaks its schema, schema-valid requests accepted (or refused by a
documented runtime limit), invalid ones rejected. Bounded: a few hundred cases, seconds on 2 cores.

Schema-valid requests may still be refused with 400 (a prompt beyond the model's context, n above the server's
limit: limits that depend on the model and the server's settings, not on the schema), 404 (an embedding model
when none is served), 413 or 503; positive_data_acceptance is told so, and otherwise runs as shipped."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "404", "413", "503"]
"""


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    """`python -m danlu.serve` (the `danlu serve` command) on a free 127.0.0.1 port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = [sys.executable, "-m", "danlu.serve", "--model", str(tiny_checkpoint), "--name", "tiny-world",
               "--port", str(port), "--default-max-tokens", "8", "--max-wait-ms", "1"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "danlu serve did not start within 120 s"
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(15)


def test_schemathesis_finds_nothing(served, tmp_path):
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        pytest.fail("schemathesis is missing; install the dev extra: pip install -e '.[dev]'")
    url, log = served
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
               url + "/openapi.json", "--checks", "all", "--max-examples", "8", "--workers", "1",
               "--generation-deterministic"]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, timeout=170, cwd=tmp_path)
    seconds = time.perf_counter() - started
    summary = re.search(r"(\d+) generated, (.*)", run.stdout)
    print(f"\nschemathesis: {summary.group(0) if summary else '?'} in {seconds:.1f} s")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert summary and int(summary.group(1)) >= 100, run.stdout[-3000:]
    assert "Traceback" not in log.read_text()  # no request made the server log a crash
