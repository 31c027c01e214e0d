"""The embedded world: danlu's default data, invented, bilingual, and deterministic from a seed.

A small universe of invented countries, cities, people and animals (names made of syllables, each syllable
with one fixed Chinese character, so Zovelan is 佐维兰 everywhere), with attributes from closed lists
(colours, foods, jobs...). Every attribute is a fact with English and Chinese sentences. From it come the
data for every stage of a model's life, sized so tiny models on 2 CPU cores learn visibly in minutes.

    from danlu.data.world import build_world, write_world, reward
    world = build_world(seed=0, size="tiny")
    world.pretrain_texts("train")[:2]     # ["Deva is a city in Ropa. ...", "3 + 4 = 7 ..."]
    record = world.sft_records("test")[0] # {"instruction", "input", "output", "kind", "answer", "lang", ...}
    reward(record, "Zadan.")              # 1.0 if that is record["answer"], else 0.0
    write_world("out/world", seed=0, size="small")   # {"sft_train": Path("out/world/sft_train.jsonl"), ...}

In memory (split is "train" or "test"; pretraining uses "train" or "val"):
    world.pretrain_texts(split)          list[str]                    pretraining documents
    world.fact_records()                 list[dict]                   every fact, with "heldout", "en", "zh"
    world.sft_records(split)             Alpaca {"instruction", "input", "output", "kind", "answer", "lang"}
    world.preference_records(split)      {"prompt", "chosen", "rejected", "kind", "answer", "rejected_kind"}
    world.ranking_records(split)         {"prompt", "responses": [best, ..., worst], "kind", "answer"}
    world.seq2seq_records(split)         {"source": English, "target": Chinese, "kind"}
    world.classification_records(split)  {"text", "label"}, label in people / animals / places / numbers
    world.vocabulary()                   set[str] of every word the world can produce (see `split_words`)
    world.facts, world.people, ...       the universe itself (`universe.Fact`, `Entity`)

The SFT knowledge experiment: `sft_test` holds questions of kind "fact" (facts stated in pretraining whose
questions were never in any training record) and "fact_heldout" (facts that appear in NO training text at
all). A model that answers "fact" but not "fact_heldout" learned its knowledge in pretraining, not in SFT.
Held-out facts are all about people; compare them with the "fact" records whose "relation" starts "person.".
Kinds: "fact", "fact_heldout", "arith", "translate". Records carry "answer", checked by `reward`.

Sizes: "tiny" (unit tests, ~50 KB of pretraining text), "small" (default, ~1.5 MB), "medium" (~10 MB),
"large" (~25 MB), or an int m (small with m times the text). The same seed and size give byte-identical files.

The package: lexicon.py (syllables, closed lists, sentence templates), universe.py (entities and facts
from a seed), text.py (sentences, pretraining documents), tasks.py (SFT, preference and seq2seq records, the
reward); this file assembles them into a World and writes its files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from danlu.data.world import lexicon as lex
from danlu.data.world.lexicon import split_words
from danlu.data.world.tasks import (
    classification_records,
    knowledge_records,
    preference_records,
    reward,
    seq2seq_records,
    sft_records,
)
from danlu.data.world.text import fact_lines, pretrain_documents
from danlu.data.world.universe import Entity, Fact, Universe, WorldSize, build_universe, resolve_size
from danlu.errors import DanluError

__all__ = ["World", "build_world", "write_world", "reward", "split_words", "FILES"]

# File stem -> (record kind for danlu.data.formats, how to get the records from a World).
FILES: dict[str, tuple[str, str]] = {
    "pretrain_train": ("pretrain", "train"),
    "pretrain_val": ("pretrain", "val"),
    "facts": ("facts", ""),
    "sft_train": ("sft", "train"),
    "sft_test": ("sft", "test"),
    "preference_train": ("preference", "train"),
    "preference_test": ("preference", "test"),
    "ranking_train": ("ranking", "train"),
    "ranking_test": ("ranking", "test"),
    "seq2seq_train": ("seq2seq", "train"),
    "seq2seq_test": ("seq2seq", "test"),
    "classification_train": ("classification", "train"),
    "classification_test": ("classification", "test"),
}


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise DanluError(f"unknown split {split!r}; use one of {', '.join(allowed)}")


@dataclass
class World:
    """A built world. Records are generated on first use and cached; each task has its own random stream."""

    seed: int
    size: str | int
    spec: WorldSize
    universe: Universe = field(repr=False)

    # The universe, for convenience.
    @property
    def facts(self) -> list[Fact]:
        return self.universe.facts

    @property
    def people(self) -> list[Entity]:
        return self.universe.people

    @property
    def countries(self) -> list[Entity]:
        return self.universe.countries

    @property
    def cities(self) -> list[Entity]:
        return self.universe.cities

    @property
    def animals(self) -> list[Entity]:
        return self.universe.animals

    def heldout_facts(self) -> list[Fact]:
        return [f for f in self.facts if f.heldout]

    # Records.
    @cached_property
    def _pretrain(self) -> tuple[list[str], list[str]]:
        return pretrain_documents(self.universe, self.seed, self.spec.pretrain_bytes)

    @cached_property
    def _sft(self) -> tuple[list[dict], list[dict]]:
        return sft_records(self.universe, self.spec, self.seed)

    @cached_property
    def _preference(self) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
        return preference_records(self.universe, self.spec, self.seed)

    @cached_property
    def _seq2seq(self) -> tuple[list[dict], list[dict]]:
        return seq2seq_records(self.universe, self.spec, self.seed)

    @cached_property
    def _classification(self) -> tuple[list[dict], list[dict]]:
        return classification_records(self.universe, self.spec, self.seed)

    def pretrain_texts(self, split: str = "train") -> list[str]:
        _check_split(split, ("train", "val"))
        return self._pretrain[0] if split == "train" else self._pretrain[1]

    def fact_records(self) -> list[dict]:
        out = []
        for f in self.facts:
            line = fact_lines(f)[0]
            out.append(
                {
                    "id": f.id,
                    "subject": f.subject.en,
                    "subject_zh": f.subject.zh,
                    "relation": f.relation,
                    "object": f.object.en,
                    "object_zh": f.object.zh,
                    "heldout": f.heldout,
                    "en": line.en,
                    "zh": line.zh,
                }
            )
        return out

    def sft_records(self, split: str = "train") -> list[dict]:
        _check_split(split, ("train", "test"))
        return self._sft[0 if split == "train" else 1]

    def preference_records(self, split: str = "train") -> list[dict]:
        _check_split(split, ("train", "test"))
        return self._preference[0 if split == "train" else 1]

    def ranking_records(self, split: str = "train") -> list[dict]:
        _check_split(split, ("train", "test"))
        return self._preference[2 if split == "train" else 3]

    def seq2seq_records(self, split: str = "train") -> list[dict]:
        _check_split(split, ("train", "test"))
        return self._seq2seq[0 if split == "train" else 1]

    def classification_records(self, split: str = "train") -> list[dict]:
        _check_split(split, ("train", "test"))
        return self._classification[0 if split == "train" else 1]

    @cached_property
    def _knowledge(self) -> list[dict]:
        return knowledge_records(self.universe, self.seed)

    def knowledge_records(self, heldout: bool | None = None) -> list[dict]:
        """Fact-completion probes (`tasks.knowledge_records`); `heldout` picks held-out or held-in only."""
        return [r for r in self._knowledge if heldout is None or r["heldout"] == heldout]

    def records(self, stem: str) -> list[dict]:
        """The records of one output file, by its stem ("sft_train", "pretrain_val", "facts"...)."""
        if stem not in FILES:
            raise DanluError(f"unknown world file {stem!r}; use one of {', '.join(FILES)}")
        kind, split = FILES[stem]
        if kind == "pretrain":
            return [{"text": t} for t in self.pretrain_texts(split)]
        if kind == "facts":
            return self.fact_records()
        return getattr(self, f"{kind}_records")(split)

    def vocabulary(self) -> set[str]:
        """Every word the world can produce: English words (lowercase), numbers, Chinese characters.

        Built from the lexicon and the invented names, not from generated text, so it also judges text a
        model writes: the share of `split_words(text)` found here is the share of valid world words.
        """
        names = (split_words(f"{t.en} {t.zh}") for t in self.universe.names())
        return lex.lexicon_words().union(*names)


def build_world(seed: int = 0, size: str | int = "small") -> World:
    """The world for `seed` and `size` (a preset name or an int multiplier); records are built lazily."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DanluError(f"world seed must be an int, got {seed!r}")
    spec = resolve_size(size)
    return World(seed=seed, size=size, spec=spec, universe=build_universe(seed, spec))


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_world(out_dir: str | Path, seed: int = 0, size: str | int = "small") -> dict[str, Path]:
    """Write every file of the world into `out_dir` (atomically, one file at a time); return their paths.

    Files: `<stem>.jsonl` for each stem in FILES, and `world.json` (seed, size, record counts, vocabulary).
    """
    from danlu.fileio import atomic_write_text

    world = build_world(seed, size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DanluError(f"world output {out} exists and is not a folder; choose another --out")
    paths: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for stem in FILES:
        records = world.records(stem)
        paths[stem] = out / f"{stem}.jsonl"
        atomic_write_text(paths[stem], _jsonl(records))
        counts[stem] = len(records)
    meta = {
        "seed": seed,
        "size": size,
        "counts": counts,
        "heldout_facts": len(world.heldout_facts()),
        "vocabulary": sorted(world.vocabulary()),
    }
    paths["world"] = out / "world.json"
    atomic_write_text(paths["world"], json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return paths
