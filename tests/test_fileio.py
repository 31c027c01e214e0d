"""danlu.fileio: the one atomic writer (any writer through `atomic_path`) and the one JSONL reader/writer."""

from __future__ import annotations

import math

import pytest

from danlu.errors import DanluError
from danlu.fileio import atomic_path, iter_jsonl_lines, write_jsonl


def test_atomic_path_publishes_whole_or_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing is visible until the rename
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_jsonl_round_trip_with_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "丹炉"}, {"n": 2}])
    assert "丹炉" in path.read_text(encoding="utf-8")  # not escaped
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + '{"n": 3}\n', encoding="utf-8")
    assert list(iter_jsonl_lines(path)) == [(1, {"text": "丹炉"}), (2, {"n": 2}), (5, {"n": 3})]
    with pytest.raises(ValueError):
        write_jsonl(tmp_path / "nan.jsonl", [{"x": math.nan}])  # JSON has no NaN
    assert not (tmp_path / "nan.jsonl").exists()
    (tmp_path / "bad.jsonl").write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(
        DanluError, match=r"bad\.jsonl is not valid UTF-8: byte 0xff at byte offset 16 \(line 2\)"
    ):
        list(iter_jsonl_lines(tmp_path / "bad.jsonl"))
