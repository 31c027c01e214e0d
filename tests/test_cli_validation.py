"""Every flag is checked before any heavy work (issue 20: `--preset nope` was refused only after tokenizing),
and `--threads` / the oversubscription guard pick a sane PyTorch thread count."""

import os
import sys

import pytest
import torch

from danlu import flags
from danlu.cli import main


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Loading a tokenizer, a model or a world fails the test: validation must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("heavy work started before the flags were checked")

    monkeypatch.setattr("danlu.tokenizers.base.Tokenizer.load", forbidden)
    monkeypatch.setattr("danlu.load", forbidden)
    monkeypatch.setattr("danlu.models.checkpoints.load", forbidden)  # what the library (serve, app) calls
    monkeypatch.setattr("danlu.data.world.write_world", forbidden)
    monkeypatch.setattr("danlu.data.formats.read_texts", forbidden)


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_unknown_preset_fails_before_tokenizing(capsys, tmp_path, no_heavy_work):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n")
    code, err = run(capsys, "pretrain", "--data", str(corpus), "--tokenizer", str(tmp_path), "--out",
                    str(tmp_path / "run"), "--preset", "nope")  # fmt: skip
    assert code == 2 and err.startswith("error: ") and "'nope'" in err and "llama-tiny" in err


@pytest.mark.parametrize(
    "argv, needle",
    [(["pretrain", "--data", "D", "--tokenizer", "T", "--out", "O", "--lr", "-1"], "lr must be a positive"),
     (["pretrain", "--data", "nowhere.txt", "--tokenizer", ".", "--out", "O"], "no such data file or folder"),
     (["generate", "--model", "M", "hi", "--num-beams", "4", "--temperature", "0.8"], "num_beams=4 with temperature"),
     (["generate", "--model", "M", "hi", "--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
     (["chat", "--model", "M", "--min-p", "2"], "min_p must be in [0, 1], got 2.0"),
     (["generate", "--model", "M", "hi", "--device", "tpu9"], "unknown device 'tpu9'"),
     (["sft", "--model", "M", "--data", "D", "--out", "O", "--lora", "--lora-r", "0"], "rank r must be >= 1"),
     (["dpo", "--model", "M", "--data", "D", "--out", "O", "--decay", "constant", "--max-steps", "0"],
      "max_steps must be positive"),
     (["grpo", "--model", "M", "--data", "D", "--out", "O", "--group-size", "1"], "group_size must be >= 2"),
     (["seq2seq", "train", "--data", "D", "--out", "O", "--preset", "nope"], "unknown model preset 'nope'"),
     (["bert", "train", "--data", "D", "--out", "O", "--max-steps", "0"], "--max-steps must be positive"),
     (["vit", "train", "--out", "O", "--max-steps", "0"], "--max-steps, --batch-size"),
     (["eval", "--model", "M", "--out", "O"], "--model and --world go together"),
     (["demo", "--out", "O", "--stages", "pretrian"], "unknown demo stage 'pretrian'"),
     (["demo", "--out", "O", "--size", "huge"], "unknown world size 'huge'"),
     (["demo", "--out", "O", "--preset", "nope"], "unknown model preset 'nope'"),
     (["world", "--out", "O", "--size", "huge"], "unknown world size 'huge'"),
     (["serve", "--model", "M", "--port", "0"], "--port must be in 1..65535"),
     (["agent", "what is 2 + 2?"], "an agent needs a model"),
     (["tokenizer", "train", "--input", "nowhere.txt", "--vocab-size", "300", "--out", "O"], "no such input file")],
)  # fmt: skip
def test_bad_flags_fail_fast_with_one_error_line(capsys, tmp_path, monkeypatch, no_heavy_work, argv, needle):
    monkeypatch.chdir(tmp_path)  # relative paths: nothing named D, M, O or T exists here
    code, err = run(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "O").exists()  # nothing was written either


def test_choices_are_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--data", "D", "--tokenizer", "T", "--out", "O", "--decay", "sine"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'sine'" in err and "cosine" in err


def test_old_comma_lists_still_work_with_a_note(capsys):
    assert flags.split_list(["q,v", "o"], "--lora-targets") == ["q", "v", "o"]
    assert "--lora-targets q v" in capsys.readouterr().err
    assert flags.split_list(["a", "b"], "--x") == ["a", "b"]
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------- --threads
def test_pick_threads():
    assert flags.pick_threads(3, torch_default=16, n_cpus=2, load=9.0) == 3  # asked for: obeyed
    assert flags.pick_threads(0, torch_default=16, n_cpus=16, load=0.2) == 16  # idle machine: torch's own
    assert flags.pick_threads(0, torch_default=16, n_cpus=4, load=0.0) == 4  # affinity caps it
    assert flags.pick_threads(0, torch_default=2, n_cpus=2, load=7.5) == 1  # oversubscribed: one thread
    assert flags.pick_threads(0, torch_default=8, n_cpus=8, load=5.2) == 3


_FAULTS = """
import resource, sys, torch
from danlu.flags import keep_freed_memory
applied = keep_freed_memory()
def faults_of_one_alloc():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(10 * 1024 * 1024).fill_(1.0)  # 40 MiB, over glibc's largest default mmap threshold (32 MiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# the first few aligned blocks (torch asks posix_memalign for 64-byte alignment) still grow the heap; then reuse
warm = [faults_of_one_alloc() for _ in range(8)]
print(applied, max(faults_of_one_alloc() for _ in range(4)))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_freed_large_tensors_are_reused_not_faulted_in_again():
    """keep_freed_memory (called by every heavy command): once the heap has grown, a 40 MiB tensor reuses freed
    pages, where by default glibc maps fresh ones and faults in all 10,240 of them again, every time."""
    import subprocess

    def run(env_extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env_extra
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True
        )
        applied, faults = out.stdout.split()
        return applied == "True", int(faults)

    applied, faults = run({})
    assert applied and faults < 1000
    applied, faults = run({"DANLU_KEEP_FREED_MEMORY": "0"})  # opted out: glibc's default, every page again
    assert not applied and faults > 9000


def test_busy_machine_gets_fewer_threads_and_a_note(capsys, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(flags, "cpu_budget", lambda: (max(2, before), 50.0))
    try:
        assert flags.apply_threads(0) == 1 and torch.get_num_threads() == 1
        if before > 1:
            assert "note: using 1 CPU thread(s)" in capsys.readouterr().err
        assert flags.apply_threads(2, quiet=True) == 2 and torch.get_num_threads() == 2
        with pytest.raises(flags.DanluError, match="--threads must be >= 0"):
            flags.apply_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_threads_flag_reaches_torch(capsys, tmp_path, monkeypatch):
    """`--threads N` is applied before the command runs (here: a `generate` whose model load is faked)."""
    seen = {}

    def fake_load(path, device="cpu"):
        seen["threads"], seen["device"] = torch.get_num_threads(), device
        raise flags.DanluError("stop here")

    before = torch.get_num_threads()
    monkeypatch.setattr("danlu.load", fake_load)
    try:
        assert main(["generate", "--model", str(tmp_path), "hi", "--threads", "1", "--device", "cpu"]) == 2
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": 1, "device": "cpu"}
