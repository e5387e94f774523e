"""What is true of one seeded world: its entities, its facts (base and derived), its
history, and the lookups the text and task code read.

`Facts` is a value: the text (`text.py`) and task (`tasks.py`) code receive it and never
reach back into the `World` that owns the corpus and the task splits.

  >>> facts = Facts.build(seed=0, num_people=40, num_towns=4, places_per_town=3,
  ...                     num_chains=20)
  >>> person = facts.entities.people[0]
  >>> facts.holds((person.id, entities.LIVES_IN, facts.value(person.id, entities.LIVES_IN)))
  True
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

from arch_objective.errors import UserError
from arch_objective.data.world import entities
from arch_objective.data.world import events

we = entities


class Facts:
  """Entities, facts and history of one seeded world.

  Lookups: `entity[id]`, `values(subject, relation)`, `value(...)`, `holds(fact)`,
  `facts_of(relation)`, `domain(relation)`, `surface(value)` (an id's name, or the
  literal); `chains` (the history), `reviewed_places`, `seed`.
  """

  def __init__(self, seed: int, found: we.Entities, chains: Sequence[events.Chain]):
    self.seed = seed
    self.entities = e = found
    self.entity = {x.id: x for group in (e.people, e.towns, e.places, e.animals, e.things)
                   for x in group}
    self.chains = tuple(chains)
    self.facts: tuple[we.Fact, ...] = tuple(we.closure(we.base_facts(e)))
    values: dict[tuple[str, str], list[str]] = {}
    by_relation: dict[str, list[we.Fact]] = {}
    for f in self.facts:
      values.setdefault((f.subject, f.relation), []).append(f.value)
      by_relation.setdefault(f.relation, []).append(f)
    self._values = {k: tuple(v) for k, v in values.items()}
    self._by_relation = {r: tuple(fs) for r, fs in by_relation.items()}
    self._fact_set = frozenset(self.facts)
    self.reviewed_places = tuple(p for p in e.places if p.quality)

  @classmethod
  def build(cls, seed: int, num_people: int, num_towns: int, places_per_town: int,
            num_chains: int) -> "Facts":
    """The facts of the world of `seed` (entities and chains each from its own seeded
    generator)."""
    e = we.build_entities(random.Random(f"{seed}:entities"), num_people, num_towns,
                          places_per_town)
    chains = events.build_chains(random.Random(f"{seed}:chains"), e, num_chains)
    return cls(seed, e, chains)

  def values(self, subject: str, relation: str) -> tuple[str, ...]:
    return self._values.get((subject, relation), ())

  def value(self, subject: str, relation: str) -> Optional[str]:
    """The value of a relation with one value, or None when the subject has none."""
    values = self.values(subject, relation)
    if len(values) > 1:
      raise UserError(f"{subject} has {len(values)} values of {relation!r} ({values}); use "
                      f"values().")
    return values[0] if values else None

  def holds(self, fact: Sequence[str]) -> bool:
    return we.Fact(*fact) in self._fact_set

  def facts_of(self, relation: str) -> tuple[we.Fact, ...]:
    return self._by_relation.get(relation, ())

  def domain(self, relation: str) -> tuple[str, ...]:
    """The values the relation takes in this world, in order of first appearance."""
    return tuple(dict.fromkeys(f.value for f in self._by_relation.get(relation, ())))

  def surface(self, value: str) -> str:
    """How text names a value: a person's or town's name, 'the <place>', an animal's
    name, a thing's kind; literals as they are."""
    entity = self.entity.get(value)
    if entity is None:
      return value
    if isinstance(entity, we.Place):
      return "the " + entity.name
    if isinstance(entity, we.Thing):
      return entity.kind
    return entity.name
