"""Record schemas for JSONL data, and readers that say exactly which line and field is wrong.

One JSON object per line; extra fields are allowed and kept. Kinds and their required fields:

    pretrain        {"text": str}
    sft             {"instruction": str, "input": str (may be empty or absent), "output": str}
                    or {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]} (OpenAI)
                    or {"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]} (ShareGPT)
    preference      {"prompt": str, "chosen": str, "rejected": str}   (chosen != rejected)
    ranking         {"prompt": str, "responses": [best, ..., worst]}  (at least 2, all different)
    seq2seq         {"source": str, "target": str}
    classification  {"text": str, "label": str | int}

Errors are `DanluError`s such as
    data.jsonl line 7: field 'rejected' is missing (preference records need prompt, chosen, rejected)

`read_texts(path)` reads a corpus for tokenizer training or pretraining: a `.txt` file (the whole file is
one document), a pretrain `.jsonl` file (one document per record), or a folder of such files (sorted by
name). A missing path, an empty corpus, or a file that is not UTF-8 raises a `DanluError`; for the last one
the message gives the byte offset of the first bad byte and the `iconv` command that converts the file.
A UTF-8 byte-order mark at the start of a file is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from danlu.errors import DanluError
from danlu.fileio import decode_utf8, iter_jsonl_lines
from danlu.fileio import short_json as _short
from danlu.fileio import write_jsonl as write_jsonl  # re-exported: the one JSONL writer

REQUIRED: dict[str, tuple[str, ...]] = {
    "pretrain": ("text",),
    "sft": ("instruction", "input", "output"),
    "preference": ("prompt", "chosen", "rejected"),
    "ranking": ("prompt", "responses"),
    "seq2seq": ("source", "target"),
    "classification": ("text", "label"),
}
ROLES = ("system", "user", "assistant")


def _fail(where: str, message: str) -> DanluError:
    return DanluError(f"{where}: {message}" if where else message)


def _text_field(obj: dict, name: str, kind: str, where: str, allow_empty: bool = False) -> None:
    if name not in obj:
        raise _fail(where, f"field {name!r} is missing ({kind} records need {', '.join(REQUIRED[kind])})")
    value = obj[name]
    if not isinstance(value, str):
        raise _fail(where, f"field {name!r} must be a string, got {type(value).__name__} {_short(value)}")
    if not allow_empty and not value.strip():
        raise _fail(where, f"field {name!r} is empty; {kind} records need text there")


def _validate_messages(obj: dict, where: str) -> None:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise _fail(
            where,
            f"field 'messages' must be a non-empty list of {{role, content}} objects, got {_short(messages)}",
        )
    for i, m in enumerate(messages):
        at = f"field 'messages'[{i}]"
        if not isinstance(m, dict):
            raise _fail(where, f"{at} must be an object with role and content, got {_short(m)}")
        if m.get("role") not in ROLES:
            raise _fail(where, f"{at}: 'role' must be one of {', '.join(ROLES)}, got {_short(m.get('role'))}")
        if not isinstance(m.get("content"), str):
            raise _fail(where, f"{at}: 'content' must be a string, got {_short(m.get('content'))}")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise _fail(where, "field 'messages' has no non-empty assistant message to learn from")


# ShareGPT's speaker names -> chat roles (FastChat's export; "user"/"assistant" also occur in the wild).
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


def sharegpt_messages(obj: dict, where: str = "") -> list[dict[str, str]]:
    """A ShareGPT record's `conversations` as {role, content} messages, naming the bad turn if one is."""
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        raise _fail(
            where,
            f"field 'conversations' must be a non-empty list of {{from, value}} objects, got {_short(turns)}",
        )
    out = []
    for i, t in enumerate(turns):
        at = f"field 'conversations'[{i}]"
        if not isinstance(t, dict):
            raise _fail(where, f"{at} must be an object with from and value, got {_short(t)}")
        if t.get("from") not in SHAREGPT_ROLES:
            raise _fail(
                where, f"{at}: 'from' must be one of {', '.join(SHAREGPT_ROLES)}, got {_short(t.get('from'))}"
            )
        if not isinstance(t.get("value"), str):
            raise _fail(where, f"{at}: 'value' must be a string, got {_short(t.get('value'))}")
        out.append({"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]})
    return out


def sft_messages(record: dict) -> list[dict[str, str]]:
    """An SFT record as chat messages: OpenAI `messages` as they are, ShareGPT `conversations` mapped to roles,
    Alpaca's instruction (+ a blank line + input) as the user turn and its output as the reply. The one place
    an SFT record becomes a conversation: training, evaluation, reward and rollouts all prompt through it."""
    if "messages" in record:
        return list(record["messages"])
    if "conversations" in record:
        return sharegpt_messages(record)
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record.get("output", "")}]


def sft_prompt(record: dict, tokenizer: Any) -> str:
    """The prompt a model is given for an SFT record: every turn before the first assistant reply through the
    tokenizer's chat template, ending with the assistant header. A tokenizer without a template gets the
    turns' text as it is (a base model prompted in plain text)."""
    messages = sft_messages(record)
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    if not hasattr(tokenizer, "apply_chat_template"):
        return "\n\n".join(m["content"] for m in messages[:first])
    prompt = tokenizer.apply_chat_template(messages[:first], add_generation_prompt=True)
    return prompt if isinstance(prompt, str) else tokenizer.decode(prompt)  # an HF-style template gives ids


def validate_record(kind: str, obj: Any, where: str = "") -> dict:
    """Check one record of `kind`; return it unchanged, or raise DanluError naming `where` and the field."""
    if kind not in REQUIRED:
        raise DanluError(f"unknown record kind {kind!r}; use one of {', '.join(REQUIRED)}")
    if not isinstance(obj, dict):
        raise _fail(
            where, f"expected a JSON object with {', '.join(REQUIRED[kind])}, got {type(obj).__name__}"
        )
    if kind == "sft":
        if "conversations" in obj and "messages" not in obj:
            _validate_messages({"messages": sharegpt_messages(obj, where)}, where)
            return obj
        if "messages" in obj:
            _validate_messages(obj, where)
            return obj
        if "instruction" not in obj:
            raise _fail(
                where,
                "field 'instruction' is missing (sft records need instruction, input, output or messages)",
            )
        _text_field(obj, "instruction", kind, where)
        if "input" in obj:
            _text_field(obj, "input", kind, where, allow_empty=True)
        _text_field(obj, "output", kind, where)
        return obj
    for name in REQUIRED[kind]:
        if name == "responses":
            _validate_responses(obj, where)
        elif name == "label":
            _validate_label(obj, where)
        else:
            _text_field(obj, name, kind, where)
    if kind == "preference" and obj["chosen"] == obj["rejected"]:
        raise _fail(
            where,
            "fields 'chosen' and 'rejected' are the same text; a preference pair needs two different responses",
        )
    return obj


def _validate_responses(obj: dict, where: str) -> None:
    if "responses" not in obj:
        raise _fail(where, "field 'responses' is missing (ranking records need prompt, responses)")
    responses = obj["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise _fail(
            where,
            f"field 'responses' must be a list of at least 2 strings, best first, got {_short(responses)}",
        )
    for i, r in enumerate(responses):
        if not isinstance(r, str) or not r.strip():
            raise _fail(where, f"field 'responses'[{i}] must be a non-empty string, got {_short(r)}")
    if len(set(responses)) != len(responses):
        raise _fail(where, "field 'responses' repeats a response; a ranking needs different responses")


def _validate_label(obj: dict, where: str) -> None:
    if "label" not in obj:
        raise _fail(where, "field 'label' is missing (classification records need text, label)")
    label = obj["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise _fail(
            where, f"field 'label' must be a string or an int, got {type(label).__name__} {_short(label)}"
        )
    if isinstance(label, str) and not label.strip():
        raise _fail(where, "field 'label' is empty; give each record a class name")


# ---------------------------------------------------------------------------------------------------------
# Reading.


def iter_jsonl(path: str | Path, kind: str | None = None) -> Iterator[dict]:
    """Yield the records of a JSONL file (`danlu.fileio.iter_jsonl_lines`), validated as `kind` when given."""
    for number, obj in iter_jsonl_lines(path):
        yield validate_record(kind, obj, f"{path} line {number}") if kind is not None else obj


def read_jsonl(path: str | Path, kind: str | None = None) -> list[dict]:
    """All records of a JSONL file (validated as `kind` when given); an empty file is an error."""
    records = list(iter_jsonl(path, kind))
    if not records:
        raise DanluError(f"{path} has no records; expected one JSON object per line")
    return records


def read_texts(path: str | Path) -> list[str]:
    """Documents of a corpus: a .txt file (one document), a pretrain .jsonl, or a folder of them."""
    path = Path(path)
    if not path.exists():
        raise DanluError(
            f'corpus not found: {path}; give a .txt file, a .jsonl file of {{"text"}} records, or a folder'
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise DanluError(f"corpus folder {path} has no .txt or .jsonl files")
    else:
        files = [path]
    texts: list[str] = []
    for file in files:
        if file.suffix == ".jsonl":
            texts.extend(r["text"] for r in iter_jsonl(file, "pretrain"))
        else:
            data = file.read_bytes()
            bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
            text = decode_utf8(data[bom:], file, bom)
            if text.strip():
                texts.append(text)
    if not texts:
        raise DanluError(f"corpus {path} is empty: no text to train on; add documents or choose another file")
    return texts
