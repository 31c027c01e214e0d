"""`danlu data clean`: planted exact and near duplicates are found (recall and precision >= 0.95), every filter
drops what it should, the report's counts add up, and a corpus cleaned to nothing is a clear error."""

import json
import random

from danlu.cli import main
from danlu.data.clean import Cleaner, CleanOptions, clean, dominant_script, repetition_ratio

HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"


def _random_doc(rng: random.Random, vocab: list[str]) -> str:
    if rng.random() < 0.25:  # a Chinese document: characters, no spaces
        return "".join(rng.choice(HAN) for _ in range(rng.randint(80, 160))) + "。"
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(60, 120))) + "."


def _edit(rng: random.Random, text: str, rate: float = 0.05) -> str:
    """5% of the words (or Han characters) substituted, deleted or inserted."""
    units = text.split(" ") if " " in text else list(text)
    sep = " " if " " in text else ""
    out = []
    for u in units:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(units))  # substitute
        elif r < 2 * rate / 3:
            continue  # delete
        elif r < rate:
            out.extend([u, rng.choice(units)])  # insert
        else:
            out.append(u)
    return sep.join(out)


def test_planted_duplicates_recall_and_precision(tmp_path):
    rng = random.Random(0)
    vocab = [
        "".join(rng.choice("abcdefghijklmnoprstuvwyz") for _ in range(rng.randint(2, 8))) for _ in range(3000)
    ]
    base = [_random_doc(rng, vocab) for _ in range(400)]
    exact = [rng.randrange(len(base)) for _ in range(40)]
    near = [rng.randrange(len(base)) for _ in range(60)]
    planted = [base[i] if k % 2 else "  " + base[i].replace(" ", "  ") + "\n" for k, i in enumerate(exact)]
    planted += [_edit(rng, base[i]) for i in near]
    assert sum(p != base[i] for p, i in zip(planted[40:], near)) >= 55  # the edits really changed them
    corpus = tmp_path / "corpus.jsonl"
    docs = base + planted
    corpus.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8"
    )
    opts = CleanOptions(min_chars=1)
    cleaner = Cleaner(opts)
    rules = [cleaner.keep(t)[1] for t in docs]  # the rule that dropped each document, None if kept
    planted_rules = rules[len(base) :]
    dup_rules = ("exact_duplicate", "near_duplicate")
    recall = sum(r in dup_rules for r in planted_rules) / len(planted)
    precision = sum(r in dup_rules for r in planted_rules) / max(1, sum(r in dup_rules for r in rules))
    print(f"dedup recall {recall:.3f} precision {precision:.3f}")
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    assert rules[: len(base)] == [None] * len(base)  # every original kept (it comes first)
    assert planted_rules[:40] == ["exact_duplicate"] * 40  # whitespace differences count as exact
    # the report of `clean` counts the same, and its counts add up and match the file
    report = clean([corpus], tmp_path / "out", opts)
    c = report["counts"]
    kept = (tmp_path / "out" / "clean.jsonl").read_text(encoding="utf-8").splitlines()
    assert c["kept"]["documents"] == len(kept) == rules.count(None)
    for rule in dup_rules:
        assert c[rule]["documents"] == rules.count(rule)
    assert sum(v["documents"] for v in c.values()) == report["documents"] == len(docs)
    md = (tmp_path / "out" / "report.md").read_text()
    for rule in dup_rules:
        assert f"| {rule} | {rules.count(rule)} | " in md
    assert report["examples"]["near_duplicate"][0]["similar_to"]


def test_each_filter_drops_its_documents(tmp_path, tokenizer):
    docs = {
        "kept": [
            "Deva is a city in Ropa. The river runs by it every day.",
            "迪拉梅位于泰兰河边，是一座美丽的城市。城里的人都很喜欢吃面条。",
        ],
        "empty": ["   \n "],
        "too_short": ["Tiny."],
        "repetition": ["ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha ha"],
        "symbols": ["!!! ### $$$ %%% ^^^ &&& *** ((( ))) @@@ ~~~ word"],
        "language": ["Это предложение написано по-русски, а не по-английски."],
    }
    corpus = tmp_path / "c.jsonl"
    rows = [t for texts in docs.values() for t in texts] + [
        "ＦＵＬＬ width letters are normalised to ASCII by NFKC."
    ]
    corpus.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in rows), encoding="utf-8"
    )
    report = clean([corpus], tmp_path / "out", CleanOptions(languages=("en", "zh")), tokenizer=tokenizer)
    for rule, texts in docs.items():
        assert report["counts"][rule]["documents"] == len(texts) + (rule == "kept"), rule
    assert report["counts"]["kept"]["tokens"] > 0 and report["tokens_counted"]
    assert report["examples"]["language"][0]["text"].startswith("Это")
    assert "FULL width" in (tmp_path / "out" / "clean.jsonl").read_text(encoding="utf-8")
    assert dominant_script("这是中文句子 with few words") == "zh" and dominant_script("123 + 4") is None
    assert repetition_ratio("abcdefghijklmnop") == 0 and repetition_ratio("ab" * 50) > 0.8


def test_empty_after_cleaning_is_one_error_line(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "short"}\n{"text": "tiny"}\n')
    code = main(["data", "clean", "--input", str(corpus), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(
        "error: the corpus is empty after cleaning: all 2 documents were dropped"
    )
    assert "too_short 2" in err and err.count("\n") == 1
    assert json.loads((tmp_path / "o" / "report.json").read_text())["counts"]["too_short"]["documents"] == 2
