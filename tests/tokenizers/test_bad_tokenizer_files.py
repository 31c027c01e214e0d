"""Malicious or broken tokenizer files (issue 15, finding 7): ids are checked against the file's own size
before any table is sized by them, and regexes from the file run under a time limit."""

import json
import subprocess
import sys
import textwrap

import pytest

from danlu.errors import DanluError
from danlu.tokenizers.io import load_tokenizer

BYTES = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}


def _bpe(vocab=None, added=None, merges=None, pre=None, normalizer=None):
    return {
        "model": {"type": "BPE", "vocab": BYTES if vocab is None else vocab, "merges": merges or []},
        "added_tokens": added or [],
        "pre_tokenizer": pre,
        "normalizer": normalizer,
    }


def _write(tmp_path, data, name="tokenizer.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _run(code: str, timeout: float = 120, limit_mb: int | None = None) -> subprocess.CompletedProcess:
    """code in a child process (with an address-space limit of limit_mb past its start, if given)."""
    prelude = ""
    if limit_mb:
        prelude = textwrap.dedent(
            f"""
            import resource
            vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + {limit_mb} * 2**20, resource.RLIM_INFINITY))
            """
        )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------------------------------- ids
def test_one_huge_id_is_refused_before_allocating(tmp_path):
    """id 3e8 in a 27-token file: 4.8 GB of id tables when sized by it. Refused under a 300 MB limit."""
    path = _write(tmp_path, _bpe(vocab={**BYTES, "zz": 300_000_000}))
    out = _run(
        f"""
        from danlu.errors import DanluError
        from danlu.tokenizers.io import load_tokenizer
        try:
            load_tokenizer({str(path)!r})
        except DanluError as e:
            print(e)
        """,
        limit_mb=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "model.vocab gives token 'zz' the id 300000000, but the file holds only 27 tokens" in out.stdout
    assert "tokenizer.json" in out.stdout


@pytest.mark.parametrize(
    "data, message",
    [
        (_bpe(vocab={**BYTES, "zz": -3}), r"model.vocab gives token 'zz' the id -3"),
        (_bpe(vocab={**BYTES, "zz": "7"}), r"model.vocab gives token 'zz' the id '7'"),
        (_bpe(vocab={**BYTES, "zz": True}), r"model.vocab gives token 'zz' the id True"),
        (_bpe(vocab=["a", "b"]), r"model.vocab should be an object mapping tokens to ids, found list"),
        (_bpe(added=[{"id": 10**9, "content": "<s>"}]), r"added_tokens gives token '<s>' the id 1000000000"),
        (_bpe(added=[{"id": 5}]), r"added_tokens\[0\] should be an object with a string content"),
        (_bpe(merges=["ab"]), r"model.merges\[0\] should be 'left right' or \[left, right\], found 'ab'"),
        (_bpe(merges=[["a", "b", "c"]]), r"model.merges\[0\] should be"),
    ],
)
def test_bad_bpe_ids_and_merges(tmp_path, data, message):
    with pytest.raises(DanluError, match=message):
        load_tokenizer(_write(tmp_path, data))


def test_bad_wordpiece_and_unigram_ids(tmp_path):
    wp = {"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 2**40}, "unk_token": "[UNK]"}}
    with pytest.raises(DanluError, match=r"model.vocab gives token 'a' the id 1099511627776"):
        load_tokenizer(_write(tmp_path, wp))
    uni = {"model": {"type": "Unigram", "vocab": [["a", -1.0], ["b", -2.0]], "unk_id": 0},
           "added_tokens": [{"id": 300_000_000, "content": "<pad>", "special": True}]}  # fmt: skip
    with pytest.raises(DanluError, match=r"added_tokens gives token '<pad>' the id 300000000"):
        load_tokenizer(_write(tmp_path, uni))
    uni["model"]["vocab"] = [["a", "x"]]
    with pytest.raises(DanluError, match=r"should be a list of \[piece, score\] pairs"):
        load_tokenizer(_write(tmp_path, uni))


def test_gguf_tokenizer_arrays_are_checked():
    from danlu.tokenizers.gguf import tokenizer_from_gguf_metadata

    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", 5]}
    with pytest.raises(DanluError, match=r"tokenizer.ggml.tokens should be an array of strings"):
        tokenizer_from_gguf_metadata(meta, "m.gguf")
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b"],
        "tokenizer.ggml.token_type": 7,
    }
    with pytest.raises(DanluError, match=r"token_type should be an array of 2 integers"):
        tokenizer_from_gguf_metadata(meta, "m.gguf")
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b"],
        "tokenizer.ggml.merges": ["ab"],
    }
    with pytest.raises(DanluError, match=r"merges should be an array of 'left right' strings"):
        tokenizer_from_gguf_metadata(meta, "m.gguf")


# ------------------------------------------------------------------------------------------- regexes
def _split(pattern):
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def test_catastrophic_split_pattern_is_a_clear_error_not_a_hang(tmp_path):
    """(a|a)+$ on 40 a's and a '!': 2^40 steps for a backtracking engine (hours with Python's re)."""
    path = _write(tmp_path, _bpe(pre={"type": "Sequence", "pretokenizers": [_split("(a|a)+$"),
                                        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}))  # fmt: skip
    out = _run(
        f"""
        from danlu.errors import DanluError
        import danlu.tokenizers.safe_regex
        from danlu.tokenizers.io import load_tokenizer
        danlu.tokenizers.safe_regex.FILE_REGEX_TIMEOUT_S = 0.2  # (1 s by default) a quicker test
        tok = load_tokenizer({str(path)!r})
        print(tok.encode("abc"))
        try:
            tok.encode("a" * 40 + "!")
        except DanluError as e:
            print(e)
        """,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.splitlines()
    assert first == "[0, 1, 2]"
    assert "pre_tokenizer Split pattern '(a|a)+$' ran past its time limit (0.2 s)" in second


def test_the_issues_nested_quantifier_pattern_runs_fast(tmp_path):
    """(a+)+$ (17 s for 27 characters with Python's re): no match before the '!', so one piece, at once."""
    path = _write(tmp_path, _bpe(pre=_split("(a+)+$")))
    out = _run(
        f"""
        from danlu.tokenizers.io import load_tokenizer
        print(load_tokenizer({str(path)!r}).pre_tokenizer("b" + "a" * 40 + "!"))
        """,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['b" + "a" * 40 + "!']"


def test_catastrophic_normalizer_pattern_is_a_clear_error(tmp_path, monkeypatch):
    import danlu.tokenizers.safe_regex

    monkeypatch.setattr(danlu.tokenizers.safe_regex, "FILE_REGEX_TIMEOUT_S", 0.2)  # (1 s by default)
    norm = {"type": "Replace", "pattern": {"Regex": "(x|x)+y"}, "content": "-"}
    uni = {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["x", -1.0], ["-", -1.0]], "unk_id": 0},
           "normalizer": norm}  # fmt: skip
    tok = load_tokenizer(_write(tmp_path, uni))
    assert tok.encode("xxy") == [2]  # the pattern works on ordinary text
    with pytest.raises(
        DanluError, match=r"normalizer Replace pattern '\(x\|x\)\+y' ran past its time limit \(0.2 s\)"
    ):
        tok.encode("x" * 40)


def test_pattern_that_is_not_a_string(tmp_path):
    with pytest.raises(DanluError, match=r"pre_tokenizer Split pattern should be a string, found int 5"):
        load_tokenizer(_write(tmp_path, _bpe(pre=_split(5))))


def test_cli_names_the_bad_tokenizer_file(tmp_path, capsys):
    from danlu.cli import main

    path = _write(tmp_path, _bpe(vocab={**BYTES, "zz": 300_000_000}))
    code = main(["tokenizer", "encode", "--tokenizer", str(path), "abc"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and "the id 300000000" in err


def test_json_nested_too_deep(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DanluError, match=r"tokenizer.json is not valid JSON \(RecursionError"):
        load_tokenizer(path)
