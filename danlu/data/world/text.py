"""Sentences and pretraining documents of the embedded world.

Everything is produced as *lines*: (English, Chinese) pairs with the same meaning. A document is a list of
lines, written out as an English document, a Chinese document, or a parallel one (English line, then Chinese).
A line remembers which facts it states (`uses`), so lines built on held-out facts are never emitted, and
`drop_heldout_mentions` removes any line that would put a held-out answer next to its subject's name.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from danlu.data.world import lexicon as lex
from danlu.data.world.universe import Entity, Fact, Term, Universe

_SLOT = re.compile(r"\{(\w+)\}")


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def render(template: str, lang: str, /, **slots: Term) -> str:
    """Fill a template in one language. For a slot `x` the template may also use `a_x` (English, with its
    article) and `one_x` (Chinese, with 一 and the measure word)."""

    def fill(m: re.Match) -> str:
        key = m.group(1)
        if key.startswith("a_") and key[2:] in slots:
            word = slots[key[2:]].en
            return f"{article(word)} {word}"
        if key.startswith("one_") and key[4:] in slots:
            term = slots[key[4:]]
            return f"{lex.ONE_ZH}{term.measure}{term.zh}"
        term = slots[key]
        return term.en if lang == "en" else term.zh

    text = _SLOT.sub(fill, template)
    return text[:1].upper() + text[1:] if lang == "en" else text


@dataclass(frozen=True)
class Line:
    en: str
    zh: str
    uses: tuple[str, ...] = ()  # ids of the facts this line states


@functools.cache  # pure, and called for every fact many times over while writing text
def fact_line(fact: Fact, variant: int) -> Line:
    en, zh = lex.RELATIONS[fact.relation].statements[variant]
    slots = {"s": fact.subject, "o": fact.object}
    return Line(render(en, "en", **slots), render(zh, "zh", **slots), (fact.id,))


def fact_lines(fact: Fact) -> list[Line]:
    """Every way the world states this fact."""
    return [fact_line(fact, v) for v in range(len(lex.RELATIONS[fact.relation].statements))]


def story_line(key: str, uses: tuple[str, ...], **slots: Term) -> Line:
    en, zh = lex.STORY[key]
    return Line(render(en, "en", **slots), render(zh, "zh", **slots), uses)


# ---------------------------------------------------------------------------------------------------------
# Stories: 3-6 lines about one or two entities, every claim true in the universe.


def _person_slots(u: Universe, p: Entity) -> dict[str, Term]:
    a = p.attrs
    city = u.entity[a["home"].en]
    pet = u.entity[a["pet"].en]
    return {
        "p": p.name,
        "city": a["home"],
        "river": city.attrs["river"],
        "food": a["food"],
        "job": a["job"],
        "pet": a["pet"],
        "sound": pet.attrs["sound"],
        "pfood": pet.attrs["food"],
        "obj": a["owns"],
    }


def _story_day(u: Universe, p: Entity, rng: random.Random) -> list[Line]:
    s = _person_slots(u, p)
    f = {rel: u.fact(p.name, f"person.{rel}").id for rel in p.attrs}
    city, pet = u.entity[s["city"].en], u.entity[s["pet"].en]
    first = (
        story_line("intro", (), **s) if rng.random() < 0.5 else fact_line(u.fact(p.name, "person.home"), 0)
    )
    middle = [
        story_line("morning", (f["food"],), **s),
        story_line("work", (f["job"],), **s),
        story_line("walk", (f["pet"], f["home"], u.fact(city.name, "city.river").id), **s),
        story_line("pet_sound", (f["pet"], u.fact(pet.name, "animal.sound").id), **s),
        story_line("evening", (f["owns"],), **s),
    ]
    keep = sorted(rng.sample(range(len(middle)), rng.randint(2, 4)))
    last = rng.choice([story_line("happy", (), **s), story_line("sleep", (f["home"],), **s)])
    return [first, *(middle[i] for i in keep), last]


def _story_visit(u: Universe, p: Entity, q: Entity, rng: random.Random) -> list[Line]:
    s = _person_slots(u, p)
    qa = q.attrs
    s.update(q=q.name, qcity=qa["home"], qfood=qa["food"], qpet=qa["pet"])
    qf = {rel: u.fact(q.name, f"person.{rel}").id for rel in qa}
    lines = [
        story_line("visit", (qf["home"],), **s),
        fact_line(u.fact(qa["home"], "city.country"), rng.randrange(2)),
        fact_line(u.fact(q.name, "person.job"), rng.randrange(2)),
        story_line("together", (qf["food"],), **s),
        story_line("show_pet", (qf["pet"],), **s),
    ]
    keep = sorted(rng.sample(range(1, len(lines)), rng.randint(1, 3)))
    return [lines[0], *(lines[i] for i in keep), story_line("friends", (), **s)]


def _story_trip(u: Universe, p: Entity, c: Entity, rng: random.Random) -> list[Line]:
    s = _person_slots(u, p)
    ca = c.attrs
    s.update(
        country=c.name, language=ca["language"], capital=ca["capital"], staple=ca["food"], flag=ca["flag"]
    )
    cf = {rel: u.fact(c.name, f"country.{rel}").id for rel in ca}
    middle = [
        story_line("trip_lang", (cf["language"],), **s),
        story_line("trip_capital", (cf["capital"],), **s),
        story_line("trip_food", (cf["food"],), **s),
        story_line("trip_flag", (cf["flag"],), **s),
    ]
    keep = sorted(rng.sample(range(len(middle)), rng.randint(2, 4)))
    home = story_line("trip_home", (u.fact(p.name, "person.home").id,), **s)
    return [story_line("trip", (), **s), *(middle[i] for i in keep), home]


def _story_animal(u: Universe, p: Entity, rng: random.Random) -> list[Line]:
    s = _person_slots(u, p)
    pet = u.entity[s["pet"].en]
    return [
        fact_line(u.fact(pet.name, "animal.size"), rng.randrange(2)),
        story_line("animal_day", (u.fact(pet.name, "animal.food").id,), **s),
        story_line("animal_owner", (u.fact(p.name, "person.pet").id,), **s),
        story_line("animal_end", (u.fact(pet.name, "animal.sound").id,), **s),
    ]


def story(u: Universe, rng: random.Random, person: Entity | None = None) -> list[Line]:
    """One short story (before held-out filtering) about `person` or a random person."""
    p = person or rng.choice(u.people)
    kind = rng.choice(["day", "day", "visit", "trip", "animal"])
    if kind == "visit":
        q = rng.choice([x for x in u.people if x is not p] or [p])
        return _story_visit(u, p, q, rng)
    if kind == "trip":
        return _story_trip(u, p, rng.choice(u.countries), rng)
    if kind == "animal":
        return _story_animal(u, p, rng)
    return _story_day(u, p, rng)


# ---------------------------------------------------------------------------------------------------------
# Held-out facts must never reach training text: not stated, and not even guessable from co-occurrence.


class HeldoutGuard:
    """Drops lines that state a held-out fact, or that show a held-out answer in a document naming its subject.

    Subjects are found by their English name: every line is parallel, and a Chinese name never hides inside
    another name or a template (see `_NameMaker`), so the English check finds exactly the same subjects.
    """

    def __init__(self, u: Universe):
        self.heldout_ids = {f.id for f in u.facts if f.heldout}
        self.by_subject: dict[str, list[Fact]] = {}
        for f in u.facts:
            if f.heldout:
                self.by_subject.setdefault(f.subject.en.lower(), []).append(f)

    def clean(self, lines: list[Line]) -> list[Line]:
        lines = [ln for ln in lines if not self.heldout_ids.intersection(ln.uses)]
        words = [set(lex.split_words(ln.en)) for ln in lines]
        risky = [
            f for name in set().union(*words).intersection(self.by_subject) for f in self.by_subject[name]
        ]
        if not risky:
            return lines
        return [ln for ln, w in zip(lines, words, strict=True) if not any(_shows(ln, w, f) for f in risky)]


def _shows(line: Line, words: set[str], fact: Fact) -> bool:
    """Does this line show the fact's answer (English words, or the Chinese value as a substring)?"""
    answer = lex.split_words(fact.object.en)
    in_en = set(answer) <= words and contains_words(line.en, fact.object.en)
    return in_en or fact.object.zh in line.zh


def contains_words(text: str, phrase: str) -> bool:
    """Whole-word containment: `phrase`'s words appear contiguously among `text`'s words."""
    words, target = lex.split_words(text), lex.split_words(phrase)
    n = len(target)
    return n > 0 and any(words[i : i + n] == target for i in range(len(words) - n + 1))


# ---------------------------------------------------------------------------------------------------------
# Arithmetic: "3 + 4 = 7", "three plus four is seven.", "三加四等于七。"


def arith_problem(rng: random.Random) -> tuple[int, str, int, int]:
    op = rng.choice(list(lex.ARITH_OPS))
    a, b = rng.randint(0, lex.ARITH_MAX[op]), rng.randint(0, lex.ARITH_MAX[op])
    if op == "*":
        return a, op, b, a * b
    if op == "-" and a < b:  # no negative results: tiny models learn faster on a closed set of numbers
        a, b = b, a
    return a, op, b, a + b if op == "+" else a - b


def arith_line(rng: random.Random) -> str:
    a, op, b, r = arith_problem(rng)
    form = rng.random()
    if max(a, b, r) >= len(lex.NUMBER_WORDS_EN) or form < 0.6:  # word form only up to twenty
        return f"{a} {op} {b} = {r}"
    if form < 0.8:
        words = lex.NUMBER_WORDS_EN
        text = lex.ARITH_WORDS[0].format(a=words[a], op=lex.ARITH_OPS[op][0], b=words[b], r=words[r])
        return text[:1].upper() + text[1:]
    words = lex.NUMBER_WORDS_ZH
    return lex.ARITH_WORDS[1].format(a=words[a], op=lex.ARITH_OPS[op][1], b=words[b], r=words[r])


# ---------------------------------------------------------------------------------------------------------
# Pretraining documents.

DOC_KINDS = ("facts", "story", "parallel", "arith")
DOC_WEIGHTS = (0.35, 0.35, 0.15, 0.15)
VAL_FRACTION = 0.05


def _cycle(items: list, rng: random.Random) -> Iterator:
    """Endless shuffled passes over `items`: every entity gets its turn before any gets a second one."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def _join(lines: list[Line], lang: str) -> str:
    if lang == "en":
        return " ".join(ln.en for ln in lines)
    if lang == "zh":
        return "".join(ln.zh for ln in lines)
    return "\n".join(f"{ln.en}\n{ln.zh}" for ln in lines)


def pretrain_documents(u: Universe, seed: int, n_bytes: int) -> tuple[list[str], list[str]]:
    """(train, val) documents totalling about `n_bytes` of UTF-8, none revealing a held-out fact."""
    rng = random.Random(f"danlu-world/{seed}/pretrain")
    guard = HeldoutGuard(u)
    held_in = [f for f in u.facts if not f.heldout]
    facts_of: dict[str, list[Fact]] = {}
    for f in held_in:
        facts_of.setdefault(f.subject.en, []).append(f)
    entities = _cycle([e for e in u.entities() if e.name.en in facts_of], rng)
    people = _cycle(u.people, rng)

    train: list[str] = []
    val: list[str] = []
    total = 0
    while total < n_bytes:
        kind = rng.choices(DOC_KINDS, DOC_WEIGHTS)[0]
        lang = rng.choice(["en", "zh"])
        if kind == "arith":
            text = "\n".join(arith_line(rng) for _ in range(rng.randint(4, 8)))
        else:
            if kind == "facts":
                facts = list(facts_of[next(entities).name.en])
                rng.shuffle(facts)
                lines = [fact_line(f, rng.randrange(2)) for f in facts]
            elif kind == "story":
                lines = story(u, rng, next(people))
            else:  # parallel: a few facts, each in English then Chinese
                lines = [fact_line(f, rng.randrange(2)) for f in rng.sample(held_in, rng.randint(2, 4))]
                lang = "parallel"
            lines = guard.clean(lines)
            if not lines:
                continue
            text = _join(lines, lang)
        (val if rng.random() < VAL_FRACTION else train).append(text)
        total += len(text.encode("utf-8"))
    if not val:  # a tiny world still gets a validation document
        val.append(train.pop())
    return train, val
