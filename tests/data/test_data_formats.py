"""Record validation and corpus reading: every bad input names the file, the line and the field."""

import json

import pytest

from danlu.data.formats import iter_jsonl, read_jsonl, read_texts, validate_record, write_jsonl
from danlu.errors import DanluError

GOOD = {
    "pretrain": {"text": "Deva is a city in Ropa."},
    "sft": {"instruction": "What is 3 + 4?", "input": "", "output": "7."},
    "preference": {"prompt": "What is 3 + 4?", "chosen": "7.", "rejected": "8."},
    "ranking": {"prompt": "What is 3 + 4?", "responses": ["7.", "I do not know.", "8."]},
    "seq2seq": {"source": "Deva is red.", "target": "德瓦是红色的。"},
    "classification": {"text": "3 + 4 = 7", "label": "numbers"},
}


def _write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_records_round_trip(tmp_path, kind):
    path = write_jsonl(tmp_path / f"{kind}.jsonl", [GOOD[kind], GOOD[kind] | {"extra": 1}])
    records = read_jsonl(path, kind)
    assert records == [GOOD[kind], GOOD[kind] | {"extra": 1}]
    assert "德瓦" in path.read_text(encoding="utf-8") or kind != "seq2seq"  # written unescaped


def test_messages_form_of_sft():
    rec = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    assert validate_record("sft", rec) is rec
    with pytest.raises(DanluError, match=r"x line 2: field 'messages'\[1\]: 'role' must be one of"):
        validate_record(
            "sft",
            {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
            "x line 2",
        )
    with pytest.raises(DanluError, match="no non-empty assistant message"):
        validate_record("sft", {"messages": [{"role": "user", "content": "a"}]})


BAD = [
    (
        "preference",
        {"prompt": "p", "chosen": "a"},
        r"field 'rejected' is missing \(preference records need prompt, chosen, rejected\)",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        "fields 'chosen' and 'rejected' are the same",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": "a", "rejected": 3},
        "field 'rejected' must be a string, got int 3",
    ),
    ("sft", {"instruction": "q", "input": "", "output": "  "}, "field 'output' is empty"),
    ("sft", {"input": "", "output": "a"}, "field 'instruction' is missing"),
    ("pretrain", {"txt": "hello"}, r"field 'text' is missing \(pretrain records need text\)"),
    ("ranking", {"prompt": "p", "responses": ["a"]}, "field 'responses' must be a list of at least 2"),
    ("ranking", {"prompt": "p", "responses": ["a", "a"]}, "field 'responses' repeats a response"),
    (
        "ranking",
        {"prompt": "p", "responses": ["a", ""]},
        r"field 'responses'\[1\] must be a non-empty string",
    ),
    ("seq2seq", {"source": "a", "target": None}, "field 'target' must be a string, got NoneType"),
    ("classification", {"text": "a", "label": True}, "field 'label' must be a string or an int"),
    ("classification", {"text": "a", "label": ""}, "field 'label' is empty"),
]


@pytest.mark.parametrize(("kind", "record", "message"), BAD)
def test_bad_record_names_file_line_and_field(tmp_path, kind, record, message):
    path = _write(tmp_path, [json.dumps(GOOD[kind]), "", json.dumps(record)])
    with pytest.raises(DanluError, match=rf"data\.jsonl line 3: {message}"):
        read_jsonl(path, kind)


def test_invalid_json_and_non_objects(tmp_path):
    path = _write(tmp_path, [json.dumps(GOOD["pretrain"]), '{"text": "a",}'])
    with pytest.raises(
        DanluError,
        match=r"data\.jsonl line 2: invalid JSON \(.*column \d+\); each line must be one JSON object",
    ):
        read_jsonl(path, "pretrain")
    path = _write(tmp_path, ['["a list"]'])
    with pytest.raises(DanluError, match=r"data\.jsonl line 1: expected a JSON object, got list"):
        list(iter_jsonl(path))
    with pytest.raises(DanluError, match="unknown record kind 'dpo'"):
        validate_record("dpo", {})


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DanluError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl", "sft")
    empty = _write(tmp_path, ["", "  "])
    with pytest.raises(DanluError, match="has no records"):
        read_jsonl(empty, "sft")


def test_read_texts_txt_jsonl_and_folder(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_bytes(b"\xef\xbb\xbfhello\n\nworld\n")  # BOM is dropped
    write_jsonl(tmp_path / "corpus" / "b.jsonl", [{"text": "德瓦"}, {"text": "Deva"}])
    (tmp_path / "corpus" / "notes.md").write_text("ignored", encoding="utf-8")
    assert read_texts(tmp_path / "corpus" / "a.txt") == ["hello\n\nworld\n"]
    assert read_texts(tmp_path / "corpus") == ["hello\n\nworld\n", "德瓦", "Deva"]


def test_read_texts_errors(tmp_path):
    with pytest.raises(DanluError, match="corpus not found"):
        read_texts(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(DanluError, match="corpus .*blank.txt is empty"):
        read_texts(tmp_path / "blank.txt")
    bad = tmp_path / "gbk.txt"
    bad.write_bytes(b"ok line\n" + "中文".encode("gbk"))
    with pytest.raises(
        DanluError, match=r"gbk\.txt is not valid UTF-8: byte 0xd6 at byte offset 8 .*iconv -f GBK -t UTF-8"
    ):
        read_texts(bad)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(
        DanluError, match=r"bad\.jsonl is not valid UTF-8: byte 0xe9 at byte offset 30 \(line 2\)"
    ):
        read_texts(bad_jsonl)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DanluError, match="has no .txt or .jsonl files"):
        read_texts(tmp_path / "empty_dir")
