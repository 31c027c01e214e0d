"""Task records over the embedded world: SFT, preference pairs, rankings, seq2seq pairs, classification,
and the verifiable reward used by GRPO.

Where held-out facts may go: only into `sft_test` (kind "fact_heldout"). Held-in facts are split once
(`split_facts`): questions about "sft" facts train SFT and DPO; questions about "probe" facts are only
tested, so the model can know them from pretraining alone (kind "fact" in sft_test).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from danlu.data.world import lexicon as lex
from danlu.data.world.text import (
    HeldoutGuard,
    Line,
    arith_line,
    arith_problem,
    contains_words,
    fact_lines,
    render,
    story,
)
from danlu.data.world.universe import Fact, Term, Universe, WorldSize
from danlu.errors import DanluError

PROBE_FRACTION = 0.25  # of held-in facts whose questions appear only in sft_test
TEST_FRACTION = 0.15  # seq2seq / classification / arithmetic held-out test share


def _rng(seed: int, part: str) -> random.Random:
    # One independent stream per part, so adding records to one task never changes another task's records.
    return random.Random(f"danlu-world/{seed}/{part}")


@dataclass(frozen=True)
class FactSplit:
    sft: list[Fact]  # questions in sft_train, preference_train, ranking_train
    probe: list[Fact]  # held-in, asked only in sft_test / preference_test / ranking_test
    heldout: list[Fact]  # never in any training text


def split_facts(u: Universe, seed: int) -> FactSplit:
    held_in = [f for f in u.facts if not f.heldout]
    _rng(seed, "fact-split").shuffle(held_in)
    n_probe = max(1, round(PROBE_FRACTION * len(held_in)))
    return FactSplit(held_in[n_probe:], held_in[:n_probe], [f for f in u.facts if f.heldout])


# ---------------------------------------------------------------------------------------------------------
# Questions and answers.


@dataclass(frozen=True)
class QA:
    prompt: str
    output: str  # the concise, correct reply
    answer: str  # the bare answer a reward checks for
    lang: str
    kind: str  # fact, fact_heldout, arith
    relation: str = ""


def fact_qa(fact: Fact, lang: str) -> QA:
    rel = lex.RELATIONS[fact.relation]
    i = 0 if lang == "en" else 1
    slots = {"s": fact.subject, "o": fact.object}
    answer = fact.object.en if lang == "en" else fact.object.zh
    kind = "fact_heldout" if fact.heldout else "fact"
    return QA(
        render(rel.question[i], lang, **slots),
        render(rel.statements[0][i], lang, **slots),
        answer,
        lang,
        kind,
        fact.relation,
    )


def arith_qa(a: int, op: str, b: int, r: int, lang: str) -> QA:
    i = 0 if lang == "en" else 1
    q = lex.ARITH_QUESTION[i].format(a=a, op=op, b=b)
    return QA(q, lex.ARITH_ANSWER[i].format(r=r), str(r), lang, "arith")


def _arith_sets(seed: int, part: str, n_train: int, n_test: int) -> tuple[list[tuple], list[tuple]]:
    """Distinct arithmetic problems; no test problem is a train problem."""
    rng = _rng(seed, part)
    seen: set[tuple] = set()
    problems: list[tuple] = []
    for _ in range(50 * (n_train + n_test)):
        if len(problems) == n_train + n_test:
            break
        p = arith_problem(rng)
        if p not in seen:
            seen.add(p)
            problems.append(p)
    return problems[n_test:], problems[:n_test]


def _langs(rng: random.Random) -> str:
    return rng.choice(["en", "zh"])


# ---------------------------------------------------------------------------------------------------------
# SFT (Alpaca form).


def _alpaca(qa: QA) -> dict:
    rec = {"instruction": qa.prompt, "input": "", "output": qa.output}
    rec |= {"kind": qa.kind, "answer": qa.answer, "lang": qa.lang}
    if qa.relation:
        rec["relation"] = qa.relation
    return rec


def _translate(line: Line, direction: str) -> dict:
    src, tgt = (line.en, line.zh) if direction == "en-zh" else (line.zh, line.en)
    return {
        "instruction": lex.TRANSLATE[direction],
        "input": src,
        "output": tgt,
        "kind": "translate",
        "answer": tgt,
        "lang": direction,
    }


def sft_records(u: Universe, spec: WorldSize, seed: int) -> tuple[list[dict], list[dict]]:
    split = split_facts(u, seed)
    rng = _rng(seed, "sft")
    n_arith = max(20, round(400 * spec.task_scale))
    arith_train, arith_test = _arith_sets(seed, "sft-arith", n_arith, max(10, n_arith // 4))

    train = [_alpaca(fact_qa(f, lang)) for f in split.sft for lang in ("en", "zh")]
    train += [_alpaca(arith_qa(*p, _langs(rng))) for p in arith_train]
    # Translation only of sentences stating "sft" facts: probe facts must stay out of SFT entirely.
    lines = [ln for f in split.sft for ln in fact_lines(f)]
    for ln in rng.sample(lines, min(len(lines), n_arith)):
        train.append(_translate(ln, rng.choice(["en-zh", "zh-en"])))

    test = [_alpaca(fact_qa(f, lang)) for f in split.probe + split.heldout for lang in ("en", "zh")]
    test += [_alpaca(arith_qa(*p, _langs(rng))) for p in arith_test]
    lines = [ln for f in split.probe for ln in fact_lines(f)]
    for ln in rng.sample(lines, min(len(lines), max(10, n_arith // 4))):
        test.append(_translate(ln, rng.choice(["en-zh", "zh-en"])))
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


# ---------------------------------------------------------------------------------------------------------
# Preferences and rankings: correct and concise beats repetitive, evasive, or wrong.


def _value_pools(u: Universe) -> dict[str, list[Term]]:
    """For each relation, every value it can take: the pool a wrong answer is drawn from."""
    cities = [c.name for c in u.cities]
    colours, foods = [Term(*p) for p in lex.COLOURS], [Term(*p) for p in lex.FOODS]
    return {
        "country.capital": cities,
        "country.language": u.languages,
        "country.flag": colours,
        "country.food": foods,
        "city.country": [c.name for c in u.countries],
        "city.river": u.rivers,
        "person.job": [Term(*p) for p in lex.JOBS],
        "person.home": cities,
        "person.food": foods,
        "person.pet": [a.name for a in u.animals],
        "person.colour": colours,
        "person.owns": [Term(*p) for p in lex.OBJECTS],
        "animal.colour": colours,
        "animal.size": [Term(*p) for p in lex.SIZES],
        "animal.food": [Term(*p) for p in lex.ANIMAL_FOODS],
        "animal.sound": [Term(*p) for p in lex.SOUNDS],
    }


def _responses(qa: QA, fact: Fact | None, pools: dict[str, list[Term]], rng: random.Random) -> dict[str, str]:
    """The four kinds of reply to a question, best first."""
    sep = " " if qa.lang == "en" else ""
    repetitive = sep.join([qa.output] * rng.randint(3, 5))
    evasive = rng.choice(lex.EVASIVE)[0 if qa.lang == "en" else 1]
    if fact is None:  # arithmetic: off by a little
        r = int(qa.answer)
        wrong_value = r + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if 0 <= r + d <= lex.MAX_NUMBER])
        wrong = lex.ARITH_ANSWER[0 if qa.lang == "en" else 1].format(r=wrong_value)
    else:
        if fact.relation == "person.age":  # a nearby age is a more tempting mistake
            age = int(fact.object.en)
            others = [Term(str(a), str(a)) for a in range(age - 9, age + 10) if a != age]
        else:
            others = [t for t in pools[fact.relation] if t.en != fact.object.en]
        bad = Fact(fact.subject, fact.relation, rng.choice(others))
        wrong = fact_qa(bad, qa.lang).output
    return {"correct": qa.output, "repetitive": repetitive, "evasive": evasive, "wrong": wrong}


def _questions(facts: list[Fact], arith: list[tuple], rng: random.Random) -> list[tuple[QA, Fact | None]]:
    items = [(fact_qa(f, lang), f) for f in facts for lang in ("en", "zh")]
    items += [(arith_qa(*p, _langs(rng)), None) for p in arith]
    return items


def preference_records(
    u: Universe, spec: WorldSize, seed: int
) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(preference_train, preference_test, ranking_train, ranking_test)."""
    split = split_facts(u, seed)
    rng = _rng(seed, "preference")
    pools = _value_pools(u)
    n_arith = max(20, round(200 * spec.task_scale))
    arith_train, arith_test = _arith_sets(seed, "preference-arith", n_arith, max(10, n_arith // 4))
    out = []
    for facts, arith in ((split.sft, arith_train), (split.probe, arith_test)):
        pairs, rankings = [], []
        for qa, fact in _questions(facts, arith, rng):
            r = _responses(qa, fact, pools, rng)
            base = {"prompt": qa.prompt, "kind": qa.kind, "answer": qa.answer, "lang": qa.lang}
            rejected_kind = rng.choice(["wrong", "wrong", "evasive", "repetitive"])
            pairs.append(
                base | {"chosen": r["correct"], "rejected": r[rejected_kind], "rejected_kind": rejected_kind}
            )
            order = ["correct", "repetitive", "evasive", "wrong"]  # right beats honest beats wrong
            rankings.append(base | {"responses": [r[k] for k in order]})
        rng.shuffle(pairs)
        rng.shuffle(rankings)
        out += [pairs, rankings]
    return out[0], out[2], out[1], out[3]


# ---------------------------------------------------------------------------------------------------------
# Seq2seq (EN -> ZH) and classification.


def seq2seq_records(u: Universe, spec: WorldSize, seed: int) -> tuple[list[dict], list[dict]]:
    rng = _rng(seed, "seq2seq")
    guard = HeldoutGuard(u)
    lines = [ln for f in u.facts if not f.heldout for ln in fact_lines(f)]
    stories = [ln for _ in range(max(20, round(300 * spec.task_scale))) for ln in guard.clean(story(u, rng))]
    pairs = {ln.en: {"source": ln.en, "target": ln.zh, "kind": "fact"} for ln in lines}
    for ln in stories:
        pairs.setdefault(ln.en, {"source": ln.en, "target": ln.zh, "kind": "story"})
    records = [pairs[k] for k in sorted(pairs)]
    rng.shuffle(records)
    n_test = max(10, round(TEST_FRACTION * len(records)))
    return records[n_test:], records[:n_test]


TOPIC = {"person": "people", "animal": "animals", "country": "places", "city": "places"}
LABELS = ("people", "animals", "places", "numbers")


def classification_records(u: Universe, spec: WorldSize, seed: int) -> tuple[list[dict], list[dict]]:
    """Sentences labelled with their topic: people, animals, places (countries, cities), numbers."""
    rng = _rng(seed, "classification")
    cap = max(40, round(500 * spec.task_scale))
    by_label: dict[str, dict[str, None]] = {label: {} for label in LABELS}
    for f in u.facts:
        if not f.heldout:
            for ln in fact_lines(f):
                by_label[TOPIC[f.subject_kind]].update({ln.en: None, ln.zh: None})
    for _ in range(4 * cap):
        by_label["numbers"][arith_line(rng)] = None
    train, test = [], []
    for label in LABELS:
        texts = list(by_label[label])
        rng.shuffle(texts)
        texts = texts[:cap]
        n_test = max(2, round(TEST_FRACTION * len(texts)))
        test += [{"text": t, "label": label} for t in texts[:n_test]]
        train += [{"text": t, "label": label} for t in texts[n_test:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


# ---------------------------------------------------------------------------------------------------------
# The verifiable reward.

MAX_EXTRA_WORDS = (
    12  # a right answer wrapped in a short sentence still counts; a long list of guesses does not
)


def reward(record: dict, response: str) -> float:
    """1.0 if `response` gives the record's exact `answer`, else 0.0.

    Words are compared after normalisation (`split_words`: lowercase, punctuation dropped, one Chinese
    character per word). Arithmetic ("kind": "arith"): the last number in the response must equal the
    answer, so "3 + 4 = 7" and "7." both score 1. Otherwise: the answer's words must appear contiguously in
    the response, and the response may be at most MAX_EXTRA_WORDS words longer than the answer, so
    "The capital of Zorvia is Velmar." scores 1 but a list of every city name does not.
    """
    answer = record.get("answer")
    if not isinstance(answer, str) or not lex.split_words(answer):
        raise DanluError(f"reward needs a record with a non-empty 'answer' field, got {answer!r}")
    if not isinstance(response, str):
        raise DanluError(f"reward needs the response as a string, got {type(response).__name__}")
    words = lex.split_words(response)
    if record.get("kind") == "arith":
        numbers = [w for w in words if w.isdigit()]
        return 1.0 if numbers and int(numbers[-1]) == int(answer) else 0.0
    if len(words) > len(lex.split_words(answer)) + MAX_EXTRA_WORDS:
        return 0.0
    return 1.0 if contains_words(response, answer) else 0.0


# ---------------------------------------------------------------------------------------------------------
# Knowledge probes: what a model knows without being asked a question.

N_CHOICES = 4  # per multiple-choice knowledge item: chance is 1 / N_CHOICES
_OBJECT_SLOT = ("{o}", "{a_o}", "{one_o}")


def _statement_split(template: str) -> tuple[str, str] | None:
    """A statement template cut before its object slot: ("The capital of {s} is ", "{o}."), or None
    when the object comes first (nothing to condition on)."""
    cut = min((template.find(s) for s in _OBJECT_SLOT if s in template), default=-1)
    return (template[:cut], template[cut:]) if cut > 0 else None


def knowledge_records(u: Universe, seed: int) -> list[dict]:
    """Every fact as a completion probe in both languages, held-in and held-out alike.

    `query` is the fact's first statement up to its object ("The capital of Zorvia is "), `answer` the
    statement's remainder ("Velmar."), and `choices` the remainder with the true object and N_CHOICES − 1 other
    values of the same relation (the same pool the preference pairs draw wrong answers from), `gold` the true
    one's index. Scored by log-likelihood it is a multiple-choice task whose chance level is 1 / N_CHOICES;
    decoded greedily it asks whether the model completes the sentence it saw in pretraining.
    """
    pools = _value_pools(u)
    rng = _rng(seed, "knowledge")
    out = []
    for fact in u.facts:
        rel = lex.RELATIONS[fact.relation]
        for i, lang in enumerate(("en", "zh")):
            template = next((st[i] for st in rel.statements if _statement_split(st[i])), None)
            if template is None:
                continue
            if fact.relation == "person.age":
                age = int(fact.object.en)
                others = [Term(str(a), str(a)) for a in range(max(1, age - 9), age + 10) if a != age]
            else:
                others = [t for t in pools[fact.relation] if t.en != fact.object.en]
            objects = [fact.object, *rng.sample(others, min(N_CHOICES - 1, len(others)))]
            rng.shuffle(objects)
            sentences = [render(template, lang, s=fact.subject, o=o) for o in objects]
            prefix = render(_statement_split(template)[0], lang, s=fact.subject)
            if not all(s.startswith(prefix) for s in sentences):
                continue  # a capitalised or inflected prefix: not a clean cut
            choices = [s[len(prefix) :] for s in sentences]
            gold = objects.index(fact.object)
            out.append({
                "id": f"{fact.id}:{lang}", "relation": fact.relation, "lang": lang, "heldout": fact.heldout,
                "query": prefix, "choices": choices, "gold": gold, "answer": choices[gold],
            })  # fmt: skip
    return out
