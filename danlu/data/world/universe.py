"""The entities of the embedded world and the facts about them, built from a seed.

A `Universe` holds countries, cities, people, animals (invented species), rivers and languages, each with an
English and a Chinese name, plus attribute values from the closed lists in `lexicon.py`. Every attribute is
one `Fact` (subject, relation, object). A fixed slice of people-facts is *held out*: it is never written into
any training text, so a model can only answer it by guessing (the SFT-does-not-inject-knowledge experiment).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from danlu.data.world import lexicon as lex
from danlu.errors import DanluError

HELDOUT_FRACTION = 0.12  # of people-facts, per relation


@dataclass(frozen=True)
class Term:
    """A word or name with its English and Chinese forms; `measure` is the Chinese measure word of objects."""

    en: str
    zh: str
    measure: str = ""


@dataclass
class Entity:
    kind: str  # country, city, person, animal
    name: Term
    attrs: dict[str, Term] = field(default_factory=dict)  # relation suffix ("capital", "job") -> value


@dataclass(frozen=True)
class Fact:
    subject: Term
    relation: str  # a key of lexicon.RELATIONS, e.g. "person.job"
    object: Term
    heldout: bool = False

    @property
    def subject_kind(self) -> str:
        return self.relation.split(".")[0]

    @property
    def id(self) -> str:
        return f"{self.relation}:{self.subject.en}"


@dataclass(frozen=True)
class WorldSize:
    """How big a world is: entity counts, bytes of pretraining text, and a scale for task record counts."""

    countries: int
    cities_per_country: int
    people: int
    animals: int
    pretrain_bytes: int
    task_scale: float  # multiplies the number of arithmetic / translation / classification records


SIZES: dict[str, WorldSize] = {
    "tiny": WorldSize(3, 2, 16, 5, 50_000, 0.2),  # unit tests: well under a second
    "small": WorldSize(6, 3, 100, 10, 1_500_000, 1.0),  # `danlu demo`
    "medium": WorldSize(10, 4, 300, 16, 10_000_000, 2.0),
    "large": WorldSize(12, 4, 600, 20, 25_000_000, 3.0),  # tokenizer speed benchmark
}


def resolve_size(size: str | int) -> WorldSize:
    """A preset name, or an int m: "small" with m times the text and sqrt(m) times the people."""
    if isinstance(size, bool):
        raise DanluError(f"world size must be a preset name or a positive int, got {size!r}")
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if isinstance(size, int):
        if size < 1:
            raise DanluError(f"world size multiplier must be >= 1, got {size}")
        s = SIZES["small"]
        root = math.sqrt(size)
        return WorldSize(
            countries=min(12, round(s.countries * root)),
            cities_per_country=s.cities_per_country,
            people=round(s.people * root),
            animals=min(24, round(s.animals * root)),
            pretrain_bytes=s.pretrain_bytes * size,
            task_scale=s.task_scale * root,
        )
    if size not in SIZES:
        raise DanluError(f"unknown world size {size!r}; use one of {', '.join(SIZES)} or a positive integer")
    return SIZES[size]


class _NameMaker:
    """Invented names from syllables; unique in English, and no Chinese name contains another one.

    The second rule lets a Chinese name be found by substring search: 卡洛 can never hide inside 卡洛兰.
    """

    def __init__(self, rng: random.Random, reserved: set[str]):
        self.rng = rng
        self.taken_en = set(reserved)
        self.taken_zh: list[str] = []
        self.open = sorted(lex.SYLLABLES)
        self.closed = sorted(lex.FINAL_SYLLABLES)

    def make(self, n_syllables: tuple[int, ...] = (2, 2, 3), allow_final: bool = True) -> Term:
        for _ in range(10_000):
            n = self.rng.choice(n_syllables)
            syllables = [self.rng.choice(self.open) for _ in range(n - 1)]
            last_pool = self.closed if allow_final and self.rng.random() < 0.3 else self.open
            syllables.append(self.rng.choice(last_pool))
            en = "".join(syllables)
            zh = "".join(lex.SYLLABLES.get(s) or lex.FINAL_SYLLABLES[s] for s in syllables)
            if en in self.taken_en or any(zh in t or t in zh for t in self.taken_zh):
                continue
            self.taken_en.add(en)
            self.taken_zh.append(zh)
            return Term(en.capitalize(), zh)
        raise DanluError("ran out of invented names; use a smaller world size")


def _terms(pairs) -> list[Term]:
    return [Term(*p) for p in pairs]


@dataclass
class Universe:
    countries: list[Entity]
    cities: list[Entity]
    people: list[Entity]
    animals: list[Entity]
    rivers: list[Term]
    languages: list[Term]
    facts: list[Fact]

    def __post_init__(self) -> None:
        self.entity = {e.name.en: e for e in self.entities()}
        self.fact_by_id = {f.id: f for f in self.facts}

    def entities(self) -> list[Entity]:
        return [*self.countries, *self.cities, *self.people, *self.animals]

    def fact(self, subject: Term, relation: str) -> Fact:
        return self.fact_by_id[f"{relation}:{subject.en}"]

    def names(self) -> list[Term]:
        """Every invented name: entities, rivers, languages."""
        return [e.name for e in self.entities()] + self.rivers + self.languages


def build_universe(seed: int, spec: WorldSize) -> Universe:
    rng = random.Random(f"danlu-world/{seed}/universe")
    names = _NameMaker(rng, reserved=lex.lexicon_words())
    colours, foods, jobs = _terms(lex.COLOURS), _terms(lex.FOODS), _terms(lex.JOBS)

    languages = []
    for _ in range(max(2, spec.countries // 2)):
        stem = names.make((2,), allow_final=False)
        en = stem.en[:-1] if stem.en[-1] in "aeiou" else stem.en
        languages.append(Term(en + lex.LANGUAGE_SUFFIX[0], stem.zh + lex.LANGUAGE_SUFFIX[1]))
    n_cities = spec.countries * spec.cities_per_country
    rivers = [names.make((2,)) for _ in range(max(3, n_cities // 2))]

    animals = []
    for _ in range(spec.animals):
        name = names.make((2,), allow_final=False)
        attrs = {
            "colour": rng.choice(colours),
            "size": rng.choice(_terms(lex.SIZES)),
            "food": rng.choice(_terms(lex.ANIMAL_FOODS)),
            "sound": rng.choice(_terms(lex.SOUNDS)),
        }
        animals.append(Entity("animal", Term(name.en.lower(), name.zh), attrs))

    countries, cities = [], []
    for _ in range(spec.countries):
        country = Entity("country", names.make((2, 3)))
        own = [
            Entity("city", names.make(), {"country": country.name}) for _ in range(spec.cities_per_country)
        ]
        for city in own:
            city.attrs["river"] = rng.choice(rivers)
        country.attrs = {
            "capital": own[0].name,
            "language": rng.choice(languages),
            "flag": rng.choice(colours),
            "food": rng.choice(foods),
        }
        countries.append(country)
        cities.extend(own)

    people = []
    for _ in range(spec.people):
        age = str(rng.randint(*lex.AGE_RANGE))  # digits read the same in Chinese
        attrs = {
            "age": Term(age, age),
            "job": rng.choice(jobs),
            "home": rng.choice(cities).name,
            "food": rng.choice(foods),
            "pet": rng.choice(animals).name,
            "colour": rng.choice(colours),
            "owns": rng.choice(_terms(lex.OBJECTS)),
        }
        people.append(Entity("person", names.make(), attrs))

    # Held out: a fixed share of each person-relation, so every relation has held-in and held-out facts.
    heldout: set[str] = set()
    for rel in (r for r in lex.RELATIONS if r.startswith("person.")):
        ids = [f"{rel}:{p.name.en}" for p in people]
        heldout.update(rng.sample(ids, k=max(1, round(HELDOUT_FRACTION * len(ids)))))

    facts = []
    for e in [*countries, *cities, *people, *animals]:
        for attr, value in e.attrs.items():
            rel = f"{e.kind}.{attr}"
            facts.append(Fact(e.name, rel, value, heldout=f"{rel}:{e.name.en}" in heldout))
    return Universe(countries, cities, people, animals, rivers, languages, facts)
