"""The embedded world: determinism, held-out facts kept out of training, valid files, vocabulary, reward, CLI."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from danlu.cli import main
from danlu.data.formats import read_jsonl
from danlu.data.world import FILES, build_world, reward, split_words, write_world
from danlu.data.world import lexicon as lex
from danlu.data.world.text import fact_lines
from danlu.errors import DanluError


@pytest.fixture(scope="module")
def world():
    return build_world(seed=0, size="tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return write_world(out, seed=0, size="tiny")


METADATA = {"id", "relation", "kind", "lang", "label", "rejected_kind", "subject", "object"}


def _strings(obj):
    """Every string inside a record (values of all fields, recursively)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _training_records(w):
    """Everything a model is trained on (all *_train splits and the pretraining documents)."""
    out = [{"text": t} for t in w.pretrain_texts("train") + w.pretrain_texts("val")]
    for stem in FILES:
        if stem.endswith("_train"):
            out += w.records(stem)
    return out


def test_same_seed_gives_byte_identical_files(tmp_path, files):
    again = write_world(tmp_path / "again", seed=0, size="tiny")
    assert set(again) == set(files)
    for stem, path in files.items():
        assert path.read_bytes() == again[stem].read_bytes(), stem


def test_files_do_not_depend_on_the_hash_seed(tmp_path, files):
    """Same bytes from a fresh interpreter with another PYTHONHASHSEED (no set-order leaks into the data)."""
    code = f"from danlu.data.world import write_world; write_world({str(tmp_path)!r}, seed=0, size='tiny')"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parents[2])
    for stem in ("pretrain_train", "sft_test", "preference_train", "world"):
        assert (tmp_path / files[stem].name).read_bytes() == files[stem].read_bytes(), stem


def test_different_seed_gives_different_world(world):
    other = build_world(seed=1, size="tiny")
    assert {p.name.en for p in other.people} != {p.name.en for p in world.people}
    assert other.pretrain_texts("train") != world.pretrain_texts("train")


def test_written_files_validate_and_match_counts(files):
    meta = json.loads(files["world"].read_text(encoding="utf-8"))
    assert meta["seed"] == 0 and meta["size"] == "tiny"
    for stem, (kind, _) in FILES.items():
        records = read_jsonl(files[stem], None if kind == "facts" else kind)
        assert len(records) == meta["counts"][stem] > 0, stem
    facts = read_jsonl(files["facts"])
    assert {"subject", "relation", "object", "heldout", "en", "zh"} <= set(facts[0])
    assert 0.05 < sum(f["heldout"] for f in facts) / len(facts) < 0.2


def test_heldout_facts_never_appear_in_training_text(world):
    """A held-out fact's answer never shares a training document with its subject, in either language."""
    heldout = world.heldout_facts()
    assert heldout and all(f.subject_kind == "person" for f in heldout)
    docs = [" ".join(_strings(r)) for r in _training_records(world)]
    doc_words = [set(split_words(d)) for d in docs]
    checked = 0
    for f in heldout:
        name, answer = f.subject.en.lower(), f.object.en.lower()
        for doc, words in zip(docs, doc_words, strict=True):
            if name in words:
                checked += 1
                assert answer not in words, (f.id, doc)
            if f.subject.zh in doc:
                assert f.object.zh not in doc, (f.id, doc)
    assert checked > 0  # the held-out people do appear in training text, just never with those answers


def test_heldin_facts_are_in_pretraining(world):
    """Every fact not held out is stated in the pretraining text (else nothing could be learned)."""
    text = "\n".join(world.pretrain_texts("train"))
    missing = [
        f.id
        for f in world.facts
        if not f.heldout and not any(ln.en in text or ln.zh in text for ln in fact_lines(f))
    ]
    assert not missing


def test_sft_test_holds_unseen_questions(world):
    train, test = world.sft_records("train"), world.sft_records("test")
    train_prompts = {r["instruction"] for r in train}
    kinds = {r["kind"] for r in test}
    assert kinds == {"fact", "fact_heldout", "arith", "translate"}
    assert {r["kind"] for r in train} == {"fact", "arith", "translate"}
    for r in test:
        assert r["instruction"] not in train_prompts or r["kind"] == "translate"
    # A probe fact ("fact" in test) is asked nowhere in training, but stated in pretraining.
    probe_answers = [(r["instruction"], r["answer"]) for r in test if r["kind"] == "fact"]
    assert probe_answers
    trained_inputs = {r["input"] for r in train}
    for r in test:
        if r["kind"] == "translate":
            assert r["input"] not in trained_inputs


def test_records_are_bilingual_and_natural(world):
    zh_records = [r for r in world.sft_records("train") if r["lang"] == "zh"]
    assert zh_records
    for r in zh_records:
        for text in (r["instruction"], r["output"]):
            assert not re.search(r"[\u4e00-\u9fff] +[\u4e00-\u9fff]", text), text
            assert text.endswith(("。", "？")), text
    for doc in world.pretrain_texts("train"):
        assert not re.search(r"[\u4e00-\u9fff] [\u4e00-\u9fff]", doc), doc
    pair = world.seq2seq_records("train")[0]
    assert re.search(r"[A-Za-z]", pair["source"]) and re.search(r"[\u4e00-\u9fff]", pair["target"])


def _transliterations(en: str) -> set[str]:
    """Every Chinese spelling of `en` read as a sequence of the world's syllables."""
    table = {**lex.SYLLABLES, **lex.FINAL_SYLLABLES}
    if not en:
        return {""}
    return {table[s] + rest for s in table if en.startswith(s) for rest in _transliterations(en[len(s) :])}


def test_names_transliterate_consistently(world):
    for term in world.universe.names():
        stem = term.en.lower().removesuffix(lex.LANGUAGE_SUFFIX[0])
        zh = term.zh.removesuffix(lex.LANGUAGE_SUFFIX[1])
        if term.en.endswith(lex.LANGUAGE_SUFFIX[0]):  # a language drops its stem's last vowel: Daba -> Dabish
            assert any(zh in _transliterations(stem + v) for v in "aeiou") or zh in _transliterations(stem)
        else:
            assert zh in _transliterations(stem), term
    zh_names = [t.zh for t in world.universe.names()]
    for a in zh_names:
        assert sum(a in b for b in zh_names) == 1, a  # no Chinese name hides inside another
    # The same name is written the same way in every English/Chinese pair.
    names = {t.en: t.zh for t in world.universe.names()}
    for pair in world.seq2seq_records("train"):
        for word in re.findall(r"[A-Z][a-z]+", pair["source"]):
            if word in names:
                assert names[word] in pair["target"], pair


def test_lexicon_keeps_names_and_values_apart():
    name_chars = set(lex.SYLLABLES.values()) | set(lex.FINAL_SYLLABLES.values())
    assert len(name_chars) == len(lex.SYLLABLES) + len(lex.FINAL_SYLLABLES)  # one character per syllable
    template_chars = {c for t in lex.all_template_strings() for c in t}
    values = {
        zh
        for pairs in (lex.COLOURS, lex.FOODS, lex.ANIMAL_FOODS, lex.JOBS, lex.SIZES, lex.SOUNDS)
        for _, zh in pairs
    }
    values |= {zh for _, zh, _ in lex.OBJECTS}
    assert not name_chars & (template_chars | {c for v in values for c in v})
    for a in values:
        assert [b for b in values if a in b] == [a], a  # a Chinese value is never part of another


def test_vocabulary_covers_every_written_word(world):
    vocab = world.vocabulary()
    assert {"capital", "首", "7", world.people[0].name.en.lower(), world.people[0].name.zh[0]} <= vocab
    assert "Capital" not in vocab  # words are lowercase, as split_words gives them
    for stem in FILES:
        for record in world.records(stem):
            for text in _strings({k: v for k, v in record.items() if k not in METADATA}):
                unknown = set(split_words(text)) - vocab
                assert not unknown, (stem, text, unknown)
    assert [w in vocab for w in split_words("Zzyzx likes 3 apples.")] == [False, True, True, True]


def test_reward_checks_exact_answers(world):
    fact = next(r for r in world.sft_records("test") if r["kind"] == "fact" and r["lang"] == "en")
    assert reward(fact, fact["output"]) == 1.0
    assert reward(fact, f"I think it is {fact['answer']}.") == 1.0
    assert reward(fact, "I do not know.") == 0.0
    assert reward(fact, " ".join(["Nothing"] * 20) + " " + fact["answer"]) == 0.0  # long lists of guesses
    arith = {"kind": "arith", "answer": "7"}
    assert reward(arith, "3 + 4 = 7") == 1.0 and reward(arith, "7.") == 1.0
    assert reward(arith, "17") == 0.0 and reward(arith, "7 or 8") == 0.0
    zh = {"kind": "fact", "answer": "红色"}
    assert reward(zh, "红色。") == 1.0 and reward(zh, "蓝色。") == 0.0
    for pair in world.preference_records("train"):
        assert reward(pair, pair["chosen"]) == 1.0
        if pair["rejected_kind"] in ("wrong", "evasive"):
            assert reward(pair, pair["rejected"]) == 0.0
    with pytest.raises(DanluError, match="answer"):
        reward({"kind": "fact"}, "x")


def test_rankings_order_best_to_worst(world):
    for r in world.ranking_records("test"):
        best, *_, worst = r["responses"]
        assert len(r["responses"]) == 4
        assert reward(r, best) == 1.0 and reward(r, worst) == 0.0


def test_classification_labels_are_balanced_enough(world):
    train = world.classification_records("train")
    labels = {r["label"] for r in train}
    assert labels == {"people", "animals", "places", "numbers"}
    test_texts = {r["text"] for r in world.classification_records("test")}
    assert not test_texts & {r["text"] for r in train}


def test_sizes_and_speed():
    t0 = time.perf_counter()
    w = build_world(seed=3, size="tiny")
    n_bytes = sum(len(t.encode()) for t in w.pretrain_texts("train") + w.pretrain_texts("val"))
    w.sft_records("train"), w.preference_records("train"), w.seq2seq_records("train")
    w.classification_records("train")
    assert time.perf_counter() - t0 < 1.0
    assert 40_000 < n_bytes < 80_000
    bigger = build_world(seed=3, size=2)
    assert len(bigger.people) > len(build_world(seed=3, size="small").people)
    for bad in ("huge", 0, -1):
        with pytest.raises(DanluError, match="size"):
            build_world(size=bad)
    with pytest.raises(DanluError, match="unknown split 'val'"):
        w.sft_records("val")


def test_cli_writes_the_world(tmp_path, capsys):
    assert main(["world", "--out", str(tmp_path / "w"), "--seed", "2", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "sft_train.jsonl" in out and "held-out" in out
    assert (tmp_path / "w" / "pretrain_train.jsonl").stat().st_size > 0
    assert main(["world", "--out", str(tmp_path / "x"), "--size", "enormous"]) == 2
    assert "unknown world size 'enormous'" in capsys.readouterr().err
