"""A seeded synthetic world: a pretraining corpus about it, and prompted task families
for multitask finetuning (MT-F) and for held-out zero-shot evaluation, all true of it.

The laptop-scale study needs data that is small, downloaded from nowhere, and whose
answers a model can learn from its pretraining text. `make_world(seed)` builds:

- entities: people (name, gender, age, trait, home town, workplace and so profession,
  friends, a sibling, a pet, a thing), towns (region, size, product), workplaces (kind,
  town, reputation), animals (species, colour), things (kind, colour, material);
- facts about them, base and derived by rules (`entities.closure`: a person who
  works at a bakery is a baker, lives in the north if their town is there, ...);
- a history of causal chains (`events`: rain -> wet streets -> a slip -> a doctor).

From it come:

- `World.corpus_documents(...)`: biographies, town guides, narratives and news reports
  of the chains, dialogues, reviews and pet notes, a few MB by default (`write_corpus`
  writes JSON Lines `{"text": ...}` for `tasks.register_local_corpus`);
- `World.training_tasks()`: one `prompts.mixture.PromptedTask` per (family, template) of
  six training families (attribute QA, extractive QA, paraphrase, topic, sentiment,
  summarisation), for a `PromptedMixture`;
- `World.classification_suite(split)`: the training families with answer choices
  (paraphrase, topic, sentiment) in the same form, to check what MT-F taught;
- `World.heldout_suite(split)`: four held-out families that mirror T0-Eval (NLI,
  coreference, cause and effect, story endings) with answer choices for rank
  classification; their names and wording occur in no training template and nowhere in
  the corpus.

  >>> world = make_world(seed=0)
  >>> doc = next(world.corpus_documents(num_documents=1))
  >>> suite = world.heldout_suite("validation")
  >>> [(f.name, len(f.prompts), f.num_choices) for f in suite][0]
  ('world_nli', 5, 3)

Everything is a function of the configuration: the same seed gives byte-identical
documents and examples; examples and documents are drawn each from its own seeded
generator, so asking for more of them leaves the first ones unchanged.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
from typing import TYPE_CHECKING, Iterator, Optional

from arch_objective.errors import UserError, integer_at_least
from arch_objective.data.world import entities as we
from arch_objective.data.world import events as wv
from arch_objective.data.world import facts as facts_lib
from arch_objective.data.world import prompts as wp
from arch_objective.data.world import tasks as wk
from arch_objective.data.world import text as wt
from arch_objective.data.world.prompts import WorldPrompt

if TYPE_CHECKING:
  from arch_objective.prompts.mixture import PromptedTask

DEFAULT_CORPUS_BYTES = 4_000_000
SPLITS = ("train", "validation", "test")

__all__ = ["DEFAULT_CORPUS_BYTES", "HeldOutFamily", "TrainingFamily", "World", "WorldConfig",
           "WorldPrompt", "make_world", "write_corpus"]


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """The size of a world and of its task splits (examples per family)."""
  seed: int = 0
  num_people: int = 400
  num_towns: int = 12
  places_per_town: int = 7
  num_chains: int = 600
  train_examples: int = 2000        # per training family, split 'train'
  validation_examples: int = 300    # per training family, splits 'validation' and 'test'
  heldout_examples: int = 300       # per held-out family, splits 'validation' and 'test'

  def __post_init__(self):
    for field in ("num_chains", "train_examples", "validation_examples", "heldout_examples"):
      value = getattr(self, field)
      if not integer_at_least(value, 1):
        raise UserError(f"WorldConfig.{field} must be an integer >= 1, found {value!r}.")


@dataclasses.dataclass(frozen=True)
class TrainingFamily:
  """A training task family: its templates; its examples come from `World.examples`."""
  name: str
  prompts: tuple[WorldPrompt, ...]


@dataclasses.dataclass(frozen=True)
class HeldOutFamily:
  """A held-out family as T0-Eval scores it: every example under every prompt, each
  answer choice ranked; `random` is a uniform guess's accuracy (a fraction)."""
  name: str
  random: float
  num_choices: int
  prompts: tuple[WorldPrompt, ...]
  examples: tuple[dict, ...]
  split: str = "validation"


class World(facts_lib.Facts):
  """One seeded world: its facts (`Facts`: entities, facts, history and their lookups),
  and the text and tasks about it. The text and task code receive the facts as a value
  (`Facts`), so they never call back into this class."""

  def __init__(self, config: WorldConfig):
    self.config = config
    e = we.build_entities(random.Random(f"{config.seed}:entities"), config.num_people,
                          config.num_towns, config.places_per_town)
    super().__init__(config.seed, e,
                     wv.build_chains(random.Random(f"{config.seed}:chains"), e,
                                     config.num_chains))
    self._examples: dict[tuple[str, str], tuple[dict, ...]] = {}

  # The corpus.

  def corpus_documents(self, num_documents: Optional[int] = None,
                       target_bytes: Optional[int] = None) -> Iterator[str]:
    """Documents about the world until `num_documents` or `target_bytes` (UTF-8 bytes of
    text) is reached, whichever comes first; `DEFAULT_CORPUS_BYTES` when neither is given.

    The documents come in passes over the world (`text.corpus_round`): each pass
    has every biography, town guide, chain story, review and pet note, in a seeded
    order and freshly phrased; so one pass states every fact of the world.
    """
    if num_documents is None and target_bytes is None:
      target_bytes = DEFAULT_CORPUS_BYTES
    for name, limit in (("num_documents", num_documents), ("target_bytes", target_bytes)):
      if limit is not None and not integer_at_least(limit, 1):
        raise UserError(f"corpus_documents: {name} must be an integer >= 1, found {limit!r}.")
    count = size = 0
    for round_index in itertools.count():
      for kind, key in wt.corpus_round(self, round_index):
        if ((num_documents is not None and count >= num_documents)
            or (target_bytes is not None and size >= target_bytes)):
          return
        rng = random.Random(f"{self.seed}:document:{round_index}:{kind}:{key}")
        text = wt.document(self, kind, key, rng)
        count += 1
        size += len(text.encode("utf-8"))
        yield text

  def write_corpus(self, path: str, num_documents: Optional[int] = None,
                   target_bytes: Optional[int] = None) -> dict:
    return write_corpus(path, self, num_documents=num_documents, target_bytes=target_bytes)

  # Tasks.

  def examples(self, family: str, split: str = "train") -> tuple[dict, ...]:
    """The examples of a family's split (cached); example i is drawn from its own
    generator, so the first examples do not depend on how many there are."""
    generators = {**wk.TRAINING_GENERATORS, **wk.HELDOUT_GENERATORS}
    if family not in generators:
      raise UserError(f"unknown world task family {family!r}; valid: "
                      f"{', '.join(generators)}.")
    if split not in SPLITS:
      raise UserError(f"unknown split {split!r} for {family}; valid: {', '.join(SPLITS)}.")
    heldout = family in wk.HELDOUT_GENERATORS
    if heldout and split == "train":
      raise UserError(f"{family} is a held-out family: it has no train split (its examples "
                      f"are for zero-shot evaluation only); use 'validation' or 'test'.")
    key = (family, split)
    if key not in self._examples:
      n = (self.config.heldout_examples if heldout else self.config.train_examples
           if split == "train" else self.config.validation_examples)
      generate = generators[family]
      examples = []
      for i in range(n):
        example = generate(self, random.Random(f"{self.seed}:{family}:{split}:{i}"))
        example["id"] = f"{family}-{split}-{i}"
        examples.append(example)
      self._examples[key] = tuple(examples)
    return self._examples[key]

  def training_families(self) -> tuple[TrainingFamily, ...]:
    return tuple(TrainingFamily(name, prompts) for name, prompts in wp.TRAINING_PROMPTS.items())

  def training_tasks(self) -> list["PromptedTask"]:
    """One `PromptedTask` per (training family, template); `examples(split)` takes
    'train' or 'validation'. Held-out families are not among them."""
    from arch_objective.prompts import mixture  # prompts sit above data; import on use

    tasks = []
    for family in self.training_families():
      def examples(split: str, name: str = family.name) -> tuple[dict, ...]:
        return self.examples(name, split)
      for prompt in family.prompts:
        tasks.append(mixture.PromptedTask(f"{family.name}/{prompt.name}", prompt, examples,
                                          len(family.prompts)))
    return tasks

  def heldout_suite(self, split: str = "validation") -> list[HeldOutFamily]:
    """The held-out families (NLI, coreference, cause and effect, story ending) with
    their prompts and the examples of `split` ('validation' or 'test')."""
    suite = []
    for name, prompts in wp.HELDOUT_PROMPTS.items():
      suite.append(HeldOutFamily(name, wp.HELDOUT_RANDOM[name], len(prompts[0].choices),
                                 prompts, self.examples(name, split), split))
    return suite

  def classification_suite(self, split: str = "validation") -> list[HeldOutFamily]:
    """MT-F's own classification families (the training families whose prompts have
    answer choices: paraphrase, topic, sentiment) with the examples of `split`, in the
    held-out families' form, so T0-Eval's rank classification scores whether MT-F
    taught its own tasks. Not held out: the MT-F mixture trains on their 'train' split."""
    suite = []
    for family in self.training_families():
      if not all(p.has_choices for p in family.prompts):
        continue
      counts = {len(p.choices) for p in family.prompts}
      if len(counts) != 1:
        raise UserError(f"{family.name}: its prompts have {sorted(counts)} answer choices; "
                        f"a classification family needs one number for all of them.")
      (count,) = counts
      suite.append(HeldOutFamily(family.name, 1.0 / count, count, family.prompts,
                                 self.examples(family.name, split), split))
    return suite


def make_world(seed: int = 0, **config) -> World:
  """The world of `seed`; keyword arguments override `WorldConfig`'s fields
  (`num_people`, `num_towns`, `places_per_town`, `num_chains`, `train_examples`,
  `validation_examples`, `heldout_examples`)."""
  fields = {f.name for f in dataclasses.fields(WorldConfig)} - {"seed"}
  unknown = sorted(set(config) - fields)
  if unknown:
    raise UserError(f"make_world: unknown option(s) {unknown}; valid: {sorted(fields)}.")
  return World(WorldConfig(seed=seed, **config))


def write_corpus(path: str, world: World, *, num_documents: Optional[int] = None,
                 target_bytes: Optional[int] = None) -> dict:
  """Write the world's corpus as JSON Lines (`{"text": ...}` per line, for
  `tasks.register_local_corpus`); returns {'path', 'documents', 'bytes'} (bytes of text)."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  count = size = 0
  with open(path, "w", encoding="utf-8") as f:
    for text in world.corpus_documents(num_documents=num_documents, target_bytes=target_bytes):
      f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
      count += 1
      size += len(text.encode("utf-8"))
  return {"path": path, "documents": count, "bytes": size}
