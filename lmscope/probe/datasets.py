"""Built-in true/false statement datasets, generated offline from the fact tables.

Each entity (a city, a number, an animal, an unordered pair of addends, ...)
yields one true and one false statement, so every set is balanced. Entities are
split three ways, train / validation / test, by a seeded hash of (domain,
entity), so every set of a domain (cities and neg_cities) holds out the same
entities and a held-out entity never appears in training, not even negated
(Marks & Tegmark 2023 split by statement; we split by entity to measure
generalization, not recall). Probes are fitted on train; anything chosen by
looking at scores (layer, probe kind) is chosen on validation; test is scored
once for the choice (docs/measuring.md: out of sample, choices on validation).
Every statement carries its contrast (the claim negated), which CCS trains on
(Burns et al. 2022).

    ds = load_dataset("cities")      # Dataset(name, train=[Statement...], val=[...], test=[...])
    names()                          # the built-in set names
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError, close_matches
from .facts import ANIMALS, CITIES, NUMBERS, SPANISH, number_word

TEST_FRACTION = 0.3
VAL_FRACTION = 0.2
"""Entities with hash value u < 0.3 are test, 0.3 <= u < 0.5 validation, the rest train (the test
entities are the ones the two-way split of schema 1 held out)."""
SEED = 0
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Statement:
    """One statement: its text, whether it is true (1) or false (0), its entity and its negation."""

    text: str
    label: int
    entity: str
    contrast: str


@dataclass(frozen=True)
class Dataset:
    name: str
    domain: str
    description: str
    train: list[Statement]
    val: list[Statement]
    test: list[Statement]

    @property
    def all(self) -> list[Statement]:
        return self.train + self.val + self.test

    def split(self, name: str) -> list[Statement]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def _rng(*key) -> random.Random:
    return random.Random("|".join(map(str, (SEED,) + key)))


def split_of(domain: str, entity: str) -> str:
    """'train', 'val' or 'test' for an entity: a seeded hash of (domain, entity), so every set of a
    domain (cities and neg_cities, larger_than and smaller_than) splits the same entities alike."""
    u = _rng("split", domain, entity).random()
    return "test" if u < TEST_FRACTION else "val" if u < TEST_FRACTION + VAL_FRACTION else "train"


def is_test_entity(domain: str, entity: str) -> bool:
    return split_of(domain, entity) == "test"


def split_entities(domain: str, entities: list[str]) -> dict[str, set[str]]:
    """{split: entity set} of a domain."""
    out: dict[str, set[str]] = {k: set() for k in SPLITS}
    for e in entities:
        out[split_of(domain, e)].add(e)
    return out


def _wrong(rng: random.Random, true_value: str, values: list[str]) -> str:
    return rng.choice(sorted({v for v in values if v != true_value}))


# --- generators: each returns (entity, [Statement, ...]) pairs over the whole domain ------------
def _cities(negated: bool) -> list[Statement]:
    rng = _rng("cities")
    countries = sorted(set(CITIES.values()))
    out = []
    for city, country in sorted(CITIES.items()):
        wrong = _wrong(rng, country, countries)
        for value, truth in ((country, 1), (wrong, 0)):
            pos = f"The city of {city} is in {value}."
            neg = f"The city of {city} is not in {value}."
            if negated:
                out.append(Statement(neg, 1 - truth, city, pos))
            else:
                out.append(Statement(pos, truth, city, neg))
    return out


def _compare(larger: bool) -> list[Statement]:
    """'X is larger than Y.' over number words; per X two true and two false comparisons."""
    rng = _rng("numbers", larger)
    out = []
    for x in NUMBERS:
        # Compare only within the same split, so a held-out number never appears in training at all.
        pool = [
            n
            for n in NUMBERS
            if n != x and split_of("numbers", str(n)) == split_of("numbers", str(x))
        ]
        bigger = [n for n in pool if n > x]
        smaller = [n for n in pool if n < x]
        k = min(2, len(bigger), len(smaller))
        if k == 0:
            continue
        for y in rng.sample(bigger, k) + rng.sample(smaller, k):
            truth = int((x > y) == larger)
            word, other = ("larger", "smaller") if larger else ("smaller", "larger")
            text = f"{number_word(x).capitalize()} is {word} than {number_word(y)}."
            contrast = f"{number_word(x).capitalize()} is {other} than {number_word(y)}."
            out.append(Statement(text, truth, str(x), contrast))
    return out


def _arithmetic() -> list[Statement]:
    """'a plus b equals c.' for a, b in 2..19 (a sample), with c off by 1..3 for the false ones.

    The entity is the unordered pair {a, b}: "3 plus 5" and its commutative twin "5 plus 3" are one
    fact, so they always land in the same split (keyed by the ordered problem, 8 of 34 test
    problems had their twin in training)."""
    rng = _rng("arithmetic")
    problems = [(a, b) for a in range(2, 20) for b in range(2, 20)]
    rng.shuffle(problems)
    out = []
    for a, b in sorted(problems[:120]):
        c = a + b
        wrong = c + rng.choice([-3, -2, -1, 1, 2, 3])
        for value, truth in ((c, 1), (wrong, 0)):
            out.append(
                Statement(
                    f"{a} plus {b} equals {value}.",
                    truth,
                    f"{min(a, b)}+{max(a, b)}",
                    f"{a} plus {b} does not equal {value}.",
                )
            )
    return out


def _animals() -> list[Statement]:
    rng = _rng("animals")
    classes = sorted(set(ANIMALS.values()))
    out = []
    for animal, cls in sorted(ANIMALS.items()):
        wrong = _wrong(rng, cls, classes)
        for value, truth in ((cls, 1), (wrong, 0)):
            art = "an" if value[0] in "aeiou" else "a"
            out.append(
                Statement(
                    f"The {animal} is {art} {value}.",
                    truth,
                    animal,
                    f"The {animal} is not {art} {value}.",
                )
            )
    return out


def _spanish() -> list[Statement]:
    rng = _rng("spanish")
    words = sorted(set(SPANISH.values()))
    out = []
    for es, en in sorted(SPANISH.items()):
        wrong = _wrong(rng, en, words)
        for value, truth in ((en, 1), (wrong, 0)):
            out.append(
                Statement(
                    f'The Spanish word "{es}" means "{value}".',
                    truth,
                    es,
                    f'The Spanish word "{es}" does not mean "{value}".',
                )
            )
    return out


# name -> (domain, description, generator)
BUILTIN: dict[str, tuple[str, str, Callable[[], list[Statement]]]] = {
    "cities": ("cities", "The city of X is in Y.", lambda: _cities(False)),
    "neg_cities": ("cities", "The city of X is not in Y.", lambda: _cities(True)),
    "larger_than": ("numbers", "X is larger than Y. (number words 51..99)", lambda: _compare(True)),
    "smaller_than": (
        "numbers",
        "X is smaller than Y. (number words 51..99)",
        lambda: _compare(False),
    ),
    "arithmetic": ("arithmetic", "a plus b equals c.", _arithmetic),
    "animal_class": ("animals", "The X is a Y. (mammal, bird, fish, ...)", _animals),
    "sp_en_trans": ("spanish", 'The Spanish word "X" means "Y".', _spanish),
}


def names() -> list[str]:
    return list(BUILTIN)


def load_dataset(name: str) -> Dataset:
    """A built-in set, split by entity into train, validation and test."""
    if name not in BUILTIN:
        raise UserError(
            f"unknown dataset {name!r}{close_matches(name, BUILTIN)}; "
            "list them with `lmscope probe datasets`"
        )
    domain, desc, gen = BUILTIN[name]
    by = {k: [] for k in SPLITS}
    for s in gen():
        by[split_of(domain, s.entity)].append(s)
    return Dataset(name=name, domain=domain, description=desc, **by)


def parse_names(spec: str) -> list[str]:
    """'cities,larger_than' or 'all' -> checked list of names."""
    if spec.strip() == "all":
        return names()
    out = [s.strip() for s in spec.split(",") if s.strip()]
    if not out:
        raise UserError(
            "no dataset given; pass e.g. --dataset cities,larger_than (see `lmscope probe "
            "datasets`)"
        )
    for n in out:
        if n not in BUILTIN:
            load_dataset(n)  # raises the one-line error with close matches
    return out
