"""Pretraining tasks: a corpus, an objective and a vocabulary, readable with or without seqio.

A `TaskSpec` produces the task features of its objective from its corpus, in numpy
(no TensorFlow needed unless the corpus is TFDS). `tasks/` registers every spec with
seqio too, so seqio users get the same examples from `seqio.get_dataset` at the lengths
they ask for (t5x's TASK_FEATURE_LENGTHS, `pipeline.task_feature_lengths`).

Task names are `<corpus>_<objective>`; the prefix LM comes in the two packings of the
paper, `<corpus>_prefix_lm_decoder` and `<corpus>_prefix_lm_encoder_decoder`:

  task                               task features                default architecture
  <corpus>_full_lm                   targets (626)                causal_decoder
  <corpus>_prefix_lm_decoder         inputs + targets = 626       non_causal_decoder
  <corpus>_prefix_lm_encoder_decoder inputs + targets = 626 (x2)  encoder_decoder
  <corpus>_span_corruption           inputs 512, targets 114      encoder_decoder (any arch)
  <corpus>_ul2                       inputs 313, targets 313      encoder_decoder (any arch)

Prefix LM task features are each chunk's prefix and the rest (t5's `prefix_lm`); the two
prefix LM tasks differ in their splits: the encoder-decoder's come in complementary
pairs (i, 626 - i), so two consecutive examples fill one 626 / 626 row.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator, Optional

import numpy as np

from arch_objective import architectures
from arch_objective.data import task as task_lib
from arch_objective.data import vocabularies
from arch_objective.errors import UserError
from arch_objective.objectives import pipeline, ul2

# (split, seed, shard_index, num_shards, start) -> (text, position) pairs: this host's
# share of the split's documents, each with the position a read restarts at (JSON), from
# `start` (a position) when given.
TextSource = Callable[..., Iterator[tuple[str, dict]]]

# task suffix -> (objective, architectures it serves, default architecture)
TASK_KINDS = {
    "full_lm": (pipeline.FULL_LM, (architectures.CAUSAL_DECODER, architectures.NON_CAUSAL_DECODER),
                architectures.CAUSAL_DECODER),
    "prefix_lm_decoder": (pipeline.PREFIX_LM,
                          (architectures.CAUSAL_DECODER, architectures.NON_CAUSAL_DECODER),
                          architectures.NON_CAUSAL_DECODER),
    "prefix_lm_encoder_decoder": (pipeline.PREFIX_LM, (architectures.ENCODER_DECODER,),
                                  architectures.ENCODER_DECODER),
    "span_corruption": (pipeline.SPAN_CORRUPTION, architectures.ARCHITECTURES,
                        architectures.ENCODER_DECODER),
    "ul2": (pipeline.UL2, architectures.ARCHITECTURES, architectures.ENCODER_DECODER),
}


# task suffix -> the task features its examples hold (what `task_examples` yields and the
# seqio bridge declares, t5x's contract); the model features of each architecture are
# `architectures.model_features`, their lengths `pipeline.Objective.feature_lengths`.
TASK_FEATURES = {
    "full_lm": ("targets",),
    "span_corruption": ("inputs", "targets"),
    "prefix_lm_decoder": ("inputs", "targets"),
    "prefix_lm_encoder_decoder": ("inputs", "targets"),
    "ul2": ("inputs", "targets"),
}


@dataclasses.dataclass(frozen=True)
class TaskSpec(task_lib.Task):
  """One pretraining task. `source(split=..., seed=..., shard_index=..., num_shards=...)`
  yields document texts, tokenised with the SentencePiece model at `vocabulary` (plus
  `extra_ids` sentinels)."""
  name: str
  kind: str
  source: TextSource
  vocabulary: str = vocabularies.DEFAULT_VOCABULARY_PATH
  extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS
  length: int = pipeline.PAPER_LENGTH
  splits: tuple[str, ...] = ("train", "validation")
  description: str = ""
  denoisers: tuple = ul2.PAPER_DENOISERS   # the UL2 kind's mixture (`objectives/ul2.py`)

  def __post_init__(self):
    if self.kind not in TASK_KINDS:
      raise UserError(f"task {self.name!r}: unknown kind {self.kind!r}; valid kinds: "
                      f"{', '.join(TASK_KINDS)}.")

  def with_denoisers(self, denoisers) -> "TaskSpec":
    """This UL2 task with another mixture of denoisers (`ul2.denoisers_from` specs or
    `ul2.Denoiser`s)."""
    if self.kind != "ul2":
      raise UserError(f"denoisers (DatasetConfig.denoisers, UL2_DENOISERS) configure UL2 "
                      f"tasks; task {self.name!r} is {self.kind!r}.")
    return dataclasses.replace(self, denoisers=ul2.denoisers_from(denoisers))

  def vocab(self) -> vocabularies.SentencePieceVocabulary:
    return load_vocabulary(self.vocabulary, self.extra_ids)

  @property
  def objective_name(self) -> str:
    return TASK_KINDS[self.kind][0]

  @property
  def architectures(self) -> tuple[str, ...]:
    return TASK_KINDS[self.kind][1]

  @property
  def default_architecture(self) -> str:
    return TASK_KINDS[self.kind][2]

  def objective(self, arch: Optional[str] = None, pack: bool = True) -> pipeline.Objective:
    arch = arch or self.default_architecture
    if arch not in self.architectures:
      raise UserError(f"task {self.name!r} ({self.kind}) is read by "
                      f"{', '.join(self.architectures)}, not {arch!r}.")
    return pipeline.Objective(self.objective_name, arch, self.length, pack=pack,
                              denoisers=self.denoisers)

  def documents(self, split: str = "train", *, seed: int = 0, shard_index: int = 0,
                num_shards: int = 1) -> Iterator[np.ndarray]:
    """Tokenised documents of a split (no EOS)."""
    return (doc for doc, _ in self.positioned_documents(
        split, seed=seed, shard_index=shard_index, num_shards=num_shards))

  def positioned_documents(self, split: str = "train", *, seed: int = 0, shard_index: int = 0,
                           num_shards: int = 1, start: Optional[dict] = None
                           ) -> Iterator[tuple[np.ndarray, dict]]:
    """(tokenised document, source position) of this host's share, from `start` on."""
    if split not in self.splits:
      raise UserError(f"task {self.name!r} has splits {list(self.splits)}, not {split!r}.")
    encode = self.vocab().encode
    texts = self.source(split=split, seed=seed, shard_index=shard_index, num_shards=num_shards,
                        start=start)
    return ((np.asarray(encode(text), np.int32), position) for text, position in texts)

  def task_examples(self, split: str = "train", *, arch: Optional[str] = None, seed: int = 0,
                    shard_index: int = 0, num_shards: int = 1
                    ) -> Iterator[dict[str, np.ndarray]]:
    """The task features of the objective (`TASK_FEATURES[kind]`, each `[n]`: what the
    seqio task yields at this spec's length)."""
    vocab = self.vocab()
    return self.objective(arch).task_examples(
        self.documents(split, seed=seed, shard_index=shard_index, num_shards=num_shards),
        seed=shard_seed(seed, shard_index, num_shards), sentinel_start=vocab.vocab_size - 1,
        num_extra_ids=vocab.extra_ids)

  def positioned_rows(self, split: str = "train", *, arch: Optional[str] = None, seed: int = 0,
                      shard_index: int = 0, num_shards: int = 1, pack: bool = True,
                      start: Optional[dict] = None) -> Iterator[dict[str, np.ndarray]]:
    """Model features `{feature: [length]}`, one dict per row, for `arch`, each tagged
    (`chunking.Tagged.where`) with the position a read restarts it at; `start=row.where` reads the rows from that row on, reading only the
    documents from the one it starts in (the same rows, bit for bit)."""
    vocab = self.vocab()
    documents = self.positioned_documents(split, seed=seed, shard_index=shard_index,
                                          num_shards=num_shards,
                                          start=start["source"] if start else None)
    return self.objective(arch, pack).positioned_rows(
        documents, seed=shard_seed(seed, shard_index, num_shards),
        sentinel_start=vocab.vocab_size - 1, num_extra_ids=vocab.extra_ids, start=start)


def shard_seed(seed: int, shard_index: int, num_shards: int) -> int:
  """The objective seed of one shard: each host draws its own noise masks and splits."""
  if num_shards == 1:
    return seed
  return int(np.random.SeedSequence([seed, shard_index, num_shards]).generate_state(1)[0])


@functools.lru_cache(maxsize=None)
def load_vocabulary(path: str, extra_ids: int) -> vocabularies.SentencePieceVocabulary:
  """A vocabulary, loaded once per process."""
  return vocabularies.SentencePieceVocabulary(path, extra_ids=extra_ids)


_SPECS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec, *, replace: bool = True) -> TaskSpec:
  """Add a spec (idempotent: re-registering a name replaces it unless `replace=False`)."""
  if not replace and spec.name in _SPECS:
    raise UserError(f"task {spec.name!r} is already registered.")
  _SPECS[spec.name] = spec
  return spec


def get(name: str) -> TaskSpec:
  if name not in _SPECS:
    raise UserError(f"unknown task {name!r}; registered tasks: "
                    f"{', '.join(sorted(_SPECS)) or '(none)'}. Import `tasks` to register "
                    f"the C4 tasks, or pass --corpus for local_* tasks; a task or mixture "
                    f"registered with seqio (its module imported first) is read through "
                    f"seqio.")
  return _SPECS[name]


def names() -> list[str]:
  return sorted(_SPECS)


def reset():
  """Forget every spec (for tests)."""
  _SPECS.clear()
