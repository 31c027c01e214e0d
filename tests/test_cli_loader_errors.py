"""Broken or malicious files and arguments at the command line (issue 15, finding 7): one `error:` line,
exit status 2, no traceback."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from danlu.cli import main
from danlu.models.checkpoints import save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer

TINY = dict(vocab_size=300, n_layer=1, n_head=2, n_kv_head=1, n_embd=8, intermediate_size=16, block_size=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ck")
    tok = BPETokenizer.train(["Zovelan lives in Kalan.", "3 + 4 = 7"] * 40, vocab_size=300)
    save_model(GPT(GPTConfig.from_name("llama-tiny", **TINY)), d, tokenizer=tok)
    return d


def one_error_line(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_non_utf8_argument_in_process(capsys):
    err = one_error_line(
        capsys, "tokenizer", "encode", "--tokenizer", "t", "caf\udce9"
    )  # what Python makes of b"\xe9"
    assert "argument 5 (b'caf\\xe9') is not valid UTF-8" in err


def test_non_utf8_argument_from_the_shell(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "danlu", "generate", "--model", b"/tmp/\xff\xfe", "hi"],
        capture_output=True,
        timeout=120,
    )
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("error: argument 3 (b'/tmp/\\xff\\xfe') is not valid UTF-8")


def test_generate_with_a_config_that_is_a_list(capsys, tmp_path, checkpoint):
    d = _copy(checkpoint, tmp_path / "bad")
    (d / "config.json").write_text(json.dumps([1, 2, 3]))
    err = one_error_line(capsys, "generate", "--model", str(d), "hi")
    assert "config.json should hold a JSON object" in err


def test_generate_with_zero_heads(capsys, tmp_path, checkpoint):
    d = _copy(checkpoint, tmp_path / "bad")
    config = json.loads((d / "config.json").read_text())
    config["danlu"]["config"]["n_head"] = 0
    (d / "config.json").write_text(json.dumps(config))
    err = one_error_line(capsys, "generate", "--model", str(d), "hi")
    assert "config.json: bad GPT config: n_head must be in [1, 65536], got 0" in err


def test_generate_with_nan_weights(capsys, tmp_path, checkpoint):
    from safetensors.torch import load_file, save_file

    d = _copy(checkpoint, tmp_path / "bad")
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, str(d / "model.safetensors"))
    err = one_error_line(capsys, "generate", "--model", str(d), "hi")
    assert "tensor norm_f.weight holds 1 NaN or infinite value(s)" in err


def test_generate_with_a_gguf_whose_alignment_is_zero(capsys, tmp_path):
    key = b"general.alignment"
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, 0)  # uint32 0
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv + b"\0" * 32)
    err = one_error_line(capsys, "generate", "--model", str(path), "hi")
    assert "general.alignment = 0 is not a power of two" in err
