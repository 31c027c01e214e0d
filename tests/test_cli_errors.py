"""Bad input at the command line: one clear `error: ...` line, exit status 2, no traceback."""

import subprocess
import sys

import pytest

from danlu.cli import main
from danlu.models.checkpoints import save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer

WORLDISH = ["Zovelan lives in Kalan.", "佐维兰住在卡兰。", "3 + 4 = 7"] * 40


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    BPETokenizer.train(WORLDISH, vocab_size=300).save(d)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    f = tmp_path_factory.mktemp("corpus") / "text.txt"
    f.write_text("\n".join(WORLDISH * 5), encoding="utf-8")
    return f


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_missing_corpus(capsys, tmp_path):
    code, err = run_cli(capsys, "tokenizer", "train", "--input", str(tmp_path / "nope.txt"), "--vocab-size",
                        "300", "--out", str(tmp_path / "t"))  # fmt: skip
    assert code == 2 and err.startswith("error: ") and "nope.txt" in err


def test_empty_corpus(capsys, tmp_path, tok_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, err = run_cli(capsys, "tokenizer", "train", "--input", str(empty), "--vocab-size", "300", "--out",
                        str(tmp_path / "t"))  # fmt: skip
    assert code == 2 and "empty" in err
    code, err = run_cli(capsys, "pretrain", "--data", str(empty), "--tokenizer", str(tok_dir), "--out",
                        str(tmp_path / "run"), "--quiet")  # fmt: skip
    assert code == 2 and "empty" in err


def test_non_utf8_corpus_is_an_error_with_the_byte_offset(capsys, tmp_path):
    """Handling: a non-UTF-8 file is refused, naming the offset of the first bad byte and suggesting iconv."""
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Zovelan lives in Kalan.\ncaf\xe9".encode("latin-1"))
    code, err = run_cli(capsys, "tokenizer", "train", "--input", str(bad), "--vocab-size", "300", "--out",
                        str(tmp_path / "t"))  # fmt: skip
    assert code == 2 and "latin1.txt" in err and "27" in err and "iconv" in err


def test_vocab_size_below_bytes_and_specials(capsys, tmp_path, corpus):
    code, err = run_cli(capsys, "tokenizer", "train", "--input", str(corpus), "--vocab-size", "200", "--out",
                        str(tmp_path / "t"))  # fmt: skip
    assert code == 2 and "200" in err and "259" in err  # 256 bytes + 3 specials


def test_block_size_larger_than_context(capsys, tmp_path, corpus, tok_dir):
    code, err = run_cli(capsys, "pretrain", "--data", str(corpus), "--tokenizer", str(tok_dir), "--out",
                        str(tmp_path / "run"), "--preset", "llama-tiny", "--block-size", "1024", "--max-steps",
                        "1", "--quiet")  # fmt: skip
    assert code == 2 and "block_size 1024 is larger than the model's context (256" in err


def test_negative_learning_rate(capsys, tmp_path, corpus, tok_dir):
    code, err = run_cli(capsys, "pretrain", "--data", str(corpus), "--tokenizer", str(tok_dir), "--out",
                        str(tmp_path / "run"), "--lr", "-0.001", "--quiet")  # fmt: skip
    assert code == 2 and "lr must be a positive number, got -0.001" in err


def test_corrupt_and_foreign_checkpoints(capsys, tmp_path, tok_dir):
    ck = tmp_path / "ck"
    save_model(GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=300, n_layer=1)), ck)
    (ck / "model.safetensors").write_bytes(b"\x00garbage")
    code, err = run_cli(capsys, "generate", "--model", str(ck), "hello")
    assert code == 2 and "corrupt" in err
    (ck / "config.json").write_text('{"model_type": "t5"}')
    code, err = run_cli(capsys, "generate", "--model", str(ck), "hello")
    assert code == 2 and "model_type='t5'" in err and "supported" in err
    code, err = run_cli(capsys, "generate", "--model", str(tmp_path / "missing"), "hello")
    assert code == 2 and "does not exist" in err


def test_building_the_cli_does_not_import_torch():
    """`danlu --help` and argument errors stay fast: no command module pulls PyTorch in at registration."""
    import subprocess
    import sys

    code = "import sys, danlu.cli; danlu.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_closed_pipe_ends_quietly(tmp_path):
    # `danlu world --out DIR | head -0`: the reader is gone before the summary is written.
    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", "world", "--out", str(tmp_path / "w")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_abbreviated_flags_are_refused(capsys):
    # argparse would read `--max-new` as `--max-new-tokens`: a prefix that silently changes meaning
    # the day another flag starts with it.
    with pytest.raises(SystemExit):
        main(["generate", "--model", "m", "--max-new", "3", "hi"])
    assert "unrecognized arguments: --max-new" in capsys.readouterr().err
