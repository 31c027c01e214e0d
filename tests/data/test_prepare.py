"""`danlu data prepare`: token shards equal the tokenizer's own encode, resume after SIGKILL is byte-identical,
and bad input (another tokenizer, corrupt or truncated shards, uint16 overflow, bad parquet) is a clear error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from danlu.cli import main
from danlu.data.prepare import PrepareOptions, _val_split, prepare
from danlu.data.shards import HEADER_BYTES, TokenStream
from danlu.errors import DanluError
from danlu.tokenizers.bpe import BPETokenizer

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    "Deva is a city in Ropa. 迪拉梅位于泰兰河边。",
    "",  # an empty document: skipped, no end-of-text written for it
    "Emoji 🎉🔥 and a 👩‍👩‍👧 family.\n\n\nblank lines inside\n",
    "   ",
    "纯中文的一段话，包含标点符号！还有数字 12345。",
    "<|endoftext|> a special token in text is its id",
] + [f"Story {i}: Tofi travels to Gobo 去哈纳森旅行 {'🙂' * (i % 3)} number {i * 7}." for i in range(60)]


def _write_corpus(folder: Path) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    a = folder / "a.jsonl"
    a.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in DOCS[:40]), encoding="utf-8"
    )
    b = folder / "b.txt"
    b.write_text(DOCS[40], encoding="utf-8")
    c = folder / "c.parquet"
    pq.write_table(pa.table({"id": list(range(len(DOCS) - 41)), "text": DOCS[41:]}), c)
    return [a, b, c]


def _all_tokens(folder, split) -> list[int]:
    s = TokenStream(folder, split)
    return s.read(0, s.n_tokens).tolist() if s.n_tokens else []


def test_shards_equal_the_tokenizers_encode(tmp_path, tokenizer):
    files = _write_corpus(tmp_path / "corpus")
    opts = PrepareOptions(shard_tokens=200, val_fraction=0.2, workers=2, show_progress=False)
    index = prepare([tmp_path / "corpus"], tokenizer, tmp_path / "out", opts)
    eos = tokenizer.eos_token_id
    docs = [t for t in DOCS if t.strip()]
    for split, is_val in (("train", False), ("val", True)):
        expected = [i for t in docs if _val_split(t, 0.2) == is_val for i in [*tokenizer.encode(t), eos]]
        assert _all_tokens(tmp_path / "out", split) == expected
        assert index["totals"][split]["documents"] == sum(_val_split(t, 0.2) == is_val for t in docs)
    assert index["totals"]["val"]["documents"] > 0 and len(index["splits"]["train"]) > 3
    assert index["dtype"] == "uint16" and index["empty_documents"] == 2
    assert [s["bytes"] for s in index["sources"]] == [f.stat().st_size for f in files]
    # one worker writes the same bytes as two
    prepare(
        [tmp_path / "corpus"], tokenizer, tmp_path / "one", PrepareOptions(**{**opts.__dict__, "workers": 1})
    )
    for entry in index["splits"]["train"] + index["splits"]["val"]:
        assert (tmp_path / "one" / entry["name"]).read_bytes() == (
            tmp_path / "out" / entry["name"]
        ).read_bytes()


def _run_prepare(tok_dir, corpus, out, kill=None):
    code = (
        "import sys; from danlu.data.prepare import prepare, PrepareOptions; "
        "from danlu.tokenizers.base import Tokenizer; "
        "prepare([sys.argv[2]], Tokenizer.load(sys.argv[1]), sys.argv[3], "
        "PrepareOptions(shard_tokens=150, val_fraction=0.1, show_progress=False))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DANLU_PREPARE_KILL", None)
    if kill:
        env["DANLU_PREPARE_KILL"] = kill
    return subprocess.run([sys.executable, "-c", code, str(tok_dir), str(corpus), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("kill", ["3:renamed", "5:progress"])
def test_resume_after_sigkill_is_byte_identical(tmp_path, tokenizer, kill):
    tok_dir = tokenizer.save(tmp_path / "tok")
    corpus = _write_corpus(tmp_path / "corpus")[0]
    assert _run_prepare(tok_dir, corpus, tmp_path / "full").returncode == 0
    killed = _run_prepare(tok_dir, corpus, tmp_path / "cut", kill=kill)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    assert (tmp_path / "cut" / "progress.json").is_file() and not (tmp_path / "cut" / "index.json").exists()
    resumed = _run_prepare(tok_dir, corpus, tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    full = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == full and len(full) > 5
    for name in full:
        if name.endswith(".bin"):
            assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    a, b = (json.loads((tmp_path / d / "index.json").read_text()) for d in ("full", "cut"))
    assert a["splits"] == b["splits"] and a["totals"] == b["totals"]


def test_refuses_to_mix_tokenizers(tmp_path, tokenizer, world):
    corpus = _write_corpus(tmp_path / "corpus")[0]
    opts = PrepareOptions(show_progress=False)
    prepare([corpus], tokenizer, tmp_path / "out", opts)
    other = BPETokenizer.train(world.pretrain_texts("train"), vocab_size=300)
    with pytest.raises(DanluError, match="holds shards of another tokenizer .* cannot be mixed"):
        prepare([corpus], other, tmp_path / "out", opts)
    assert prepare([corpus], tokenizer, tmp_path / "out", opts)["reused"]  # same inputs: nothing redone


def test_corrupt_and_truncated_shards_name_file_and_offset(tmp_path, tokenizer):
    corpus = _write_corpus(tmp_path / "corpus")[0]
    prepare([corpus], tokenizer, tmp_path / "out", PrepareOptions(shard_tokens=300, show_progress=False))
    shard = tmp_path / "out" / "train_000001.bin"
    data = bytearray(shard.read_bytes())
    data[HEADER_BYTES + 10 : HEADER_BYTES + 12] = np.array([65000], dtype="<u2").tobytes()
    shard.write_bytes(bytes(data))
    with pytest.raises(
        DanluError, match=rf"{shard}.* corrupt: token id 65000 at byte offset {HEADER_BYTES + 10}"
    ):
        TokenStream(tmp_path / "out")
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(DanluError, match=rf"{shard} is truncated: .* data ends at byte offset 100"):
        TokenStream(tmp_path / "out")
    shard.write_bytes(b"garbage" * 20)
    with pytest.raises(
        DanluError, match=rf"{shard} is corrupt: no danlu token-shard header at byte offset 0"
    ):
        TokenStream(tmp_path / "out")


class _BigVocab:
    vocab_size, eos_token_id = 70_000, 0

    def to_hf_dict(self):
        return {"model": "stub"}


def test_uint16_with_a_big_vocabulary(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus")[0]
    with pytest.raises(DanluError, match="70,000 tokens, too many for uint16 .* use --dtype uint32"):
        prepare([corpus], _BigVocab(), tmp_path / "out", PrepareOptions(dtype="uint16", show_progress=False))


def test_bad_inputs_at_the_command_line(tmp_path, tokenizer, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok_dir = tokenizer.save(tmp_path / "tok")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"content": ["hello"]}), bad)
    code = main(
        ["data", "prepare", "--input", str(bad), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "no column 'text' (its columns: content)" in err
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    code = main(["data", "prepare", "--input", str(jl), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "o"),
                 "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "x.jsonl line 2: field 'text' is missing" in err and "Traceback" not in err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "ok"}\n{"text": "caf\xe9"}\n'.encode("latin-1"))
    code = main(["data", "prepare", "--input", str(latin), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "o"),
                 "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    # the one UTF-8 message of danlu.fileio.decode_utf8 (docs/DUPLICATES.md): the byte, where, and iconv
    assert code == 2 and "latin.jsonl is not valid UTF-8: byte 0xe9 at byte offset 28 (line 2)" in err
    assert "iconv" in err
    for bad, said in (('{"text": "ok"}\n["text"]\n', "line 2: expected a JSON object, got list"),
                      ('{"text": "ok"}\n{"text": \n', "line 2: invalid JSON (")):  # fmt: skip
        jl.write_text(bad)
        code = main(["data", "prepare", "--input", str(jl), "--tokenizer", str(tok_dir), "--out",
                     str(tmp_path / "o"), "--quiet"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and f"x.jsonl {said}" in err and "Traceback" not in err, err
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": "  "}\n\n')
    code = main(["data", "prepare", "--input", str(blank), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "e"),
                 "--quiet"])  # fmt: skip
    assert code == 2 and "no non-empty documents" in capsys.readouterr().err


def test_cli_prepare_prints_throughput(tmp_path, tokenizer, capsys):
    tok_dir = tokenizer.save(tmp_path / "tok")
    _write_corpus(tmp_path / "corpus")
    code = main(["data", "prepare", "--input", str(tmp_path / "corpus" / "*.jsonl"), str(tmp_path / "corpus" / "b.txt"),
                 "--tokenizer", str(tok_dir), "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "MB/s" in out and "uint16 ids" in out
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert [Path(s["path"]).name for s in index["sources"]] == ["a.jsonl", "b.txt"]
