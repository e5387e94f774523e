"""Batches for the trainer: a task's rows, this host's shard, a checkpointable state.

Each process reads only its own share of the documents (`shard_index = process_index`:
a contiguous byte range of local files, a contiguous range of TFDS example indices) and
builds `batch_size / process_count` rows per step. Corpora are repeated in epochs;
epoch `e` draws its randomness from the seed `(seed, e)`. `Batches` is a grain
`DatasetIterator` whose state (the position of the next row in the share) restores the
stream at that row without reading what came before it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import grain
import numpy as np

from arch_objective.data import task as task_lib
from arch_objective.data import vocabularies
from arch_objective.errors import UserError, integer_at_least
from arch_objective.objectives import pipeline
from arch_objective.training import sources as source_lib


@dataclasses.dataclass
class DatasetConfig:
  """What to read and how to batch it: a task, the source of its documents, and what
  every source shares (rows per step, lengths, vocabulary, split, seed, packing).

  task: `c4_<kind>` (TFDS C4), `local_<kind>` (a `LocalCorpus` source), `t0_train` (T0's
    training mixture) or, with a `PromptedDatasets` source that names datasets, any name
    for their prompted mixture; or any task or mixture registered with seqio. Kinds are
    full_lm, prefix_lm (the packing of the architecture that reads it), prefix_lm_decoder,
    prefix_lm_encoder_decoder, span_corruption and ul2.
  batch_size: rows per step over all hosts (ED prefix-LM rows hold two examples each).
  length: the pretraining tasks' chunk length (a targets-only seqio task's targets).
  inputs_length, targets_length: a prompted mixture's lengths (a seqio task's with inputs).
  denoisers: UL2 tasks only, their mixture: ('R'|'X', mean_span, density[, rate]) and
    ('S'[, rate]) tuples (`objectives/ul2.py`; None: the UL2 paper's seven).
  source: where the task's documents come from, one of `arch_objective.training.sources`
    (`C4`, `LocalCorpus`, `PromptedDatasets`); None reads what the task's name says with
    defaults: C4 at its default version for `c4_<kind>`, T0's mixture from the Hugging
    Face Hub for `t0_train`.
  """
  task: str
  batch_size: int
  length: int = pipeline.PAPER_LENGTH
  vocabulary: str = vocabularies.DEFAULT_VOCABULARY_PATH
  extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS
  split: str = "train"
  seed: int = 0
  pack: bool = True
  inputs_length: int = 1024
  targets_length: int = 256
  source: Optional[source_lib.Source] = None
  denoisers: Optional[tuple] = None
  _specs: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                   compare=False)

  def __post_init__(self):
    for name in ("batch_size", "length", "inputs_length", "targets_length", "seed"):
      value = getattr(self, name)
      lowest, what = (0, "non-negative") if name == "seed" else (1, "positive")
      if not integer_at_least(value, lowest):
        raise UserError(f"DatasetConfig.{name} must be a {what} integer, found {value!r} "
                        f"({type(value).__name__}).")
    source_lib.check(self.source)
    if self.denoisers is not None:
      from arch_objective.objectives import ul2
      object.__setattr__(self, "denoisers", ul2.denoisers_from(self.denoisers))

  @property
  def prompted(self) -> bool:
    """Whether the task is a prompted MT-F mixture (`sources.is_prompted`)."""
    return source_lib.is_prompted(self.task, self.source)

  def spec(self, arch: Optional[str] = None):
    """The task's spec (`<corpus>_prefix_lm` resolves to the packing of `arch`),
    resolved once per (config, arch): the trainer, its batches and its validation all
    read the same object, whatever another config registers under the same name."""
    if arch not in self._specs:
      spec = self._resolve(arch)
      if self.denoisers is not None:
        if not hasattr(spec, "with_denoisers"):
          raise UserError(f"DatasetConfig.denoisers configures UL2 tasks; {self.task!r} is "
                          f"not one.")
        spec = spec.with_denoisers(self.denoisers)
      self._specs[arch] = task_lib.check(spec, arch)
    return self._specs[arch]

  def _resolve(self, arch: Optional[str]):
    import tasks  # registers the C4 tasks
    return tasks.resolve(self.task, source=self.source, vocabulary=self.vocabulary,
                         extra_ids=self.extra_ids, length=self.length, arch=arch,
                         inputs_length=self.inputs_length,
                         targets_length=self.targets_length)


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def positioned_rows_forever(spec, arch: str, split: str, seed: int, shard_index: int,
                            num_shards: int, pack: bool, state: Optional[dict]
                            ) -> Iterator[tuple[dict[str, np.ndarray], Optional[dict]]]:
  """(row, the state a read restarts that row at) over epochs; epoch `e` draws its
  randomness from the seed `(seed, e)`. `state` (`{"epoch", "where"}`) starts there."""
  epoch = int(state["epoch"]) if state else 0
  where = state.get("where") if state else None
  while True:
    count = 0
    options = dict(arch=arch, seed=_epoch_seed(seed, epoch), shard_index=shard_index,
                   num_shards=num_shards, pack=pack)
    for row in spec.positioned_rows(split, start=where, **options):
      count += 1
      yield row, {"epoch": epoch, "where": row.where}
    if count == 0 and where is None:
      raise UserError(f"task {spec.name!r} split {split!r} produced no rows for shard "
                      f"{shard_index}/{num_shards}; the corpus is empty or too small for "
                      f"{num_shards} hosts.")
    epoch, where = epoch + 1, None


class Batches(grain.DatasetIterator):
  """This host's batches `{feature: [batch_size / num_shards, length]}` of a task, as a
  checkpointable grain iterator.

  `get_state()` is JSON: `{"batches": n, "rows": {"epoch", "where"}}`, where `where` is
  the position of the next row's first example in this host's share of the corpus (the
  document it starts in, the tokens of that document before it, its chunk index: see
  `chunking.concat_and_split_positioned`). `set_state` restarts the pipeline right there,
  reading only from that document on, so a resume costs the same at step 10 as at step
  100,000 and yields the batches an uninterrupted run would have, bit for bit. For a
  prompted mixture (MT-F) `where` is the mixture's draw and how many examples of each
  task it has read, so no example before it is rendered again. A state without `rows`
  (checkpoints written before iterator states) replays `batches` batches. The
  trainer saves the state of every process beside the train state (grain's orbax
  handler: one JSON file per process).
  """

  def __init__(self, config: DatasetConfig, arch: str, *, shard_index: int = 0,
               num_shards: int = 1, repeat: bool = True, split: Optional[str] = None):
    super().__init__()
    if config.batch_size % num_shards:
      raise UserError(f"batch_size {config.batch_size} is not divisible by the "
                      f"{num_shards} processes.")
    self._config, self._arch = config, arch
    self._shard = dict(shard_index=shard_index, num_shards=num_shards)
    self._repeat, self._split = repeat, split or config.split
    self._spec = config.spec(arch)
    self._rows_per_batch = config.batch_size // num_shards
    self._batches = 0
    self._open(None)

  def _open(self, rows_state: Optional[dict]):
    if self._repeat:
      self._rows = positioned_rows_forever(self._spec, self._arch, self._split,
                                           self._config.seed, pack=self._config.pack,
                                           state=rows_state, **self._shard)
    else:
      rows = self._spec.positioned_rows(self._split, arch=self._arch, seed=self._config.seed,
                                        pack=self._config.pack, **self._shard)
      self._rows = ((row, None) for row in rows)
    self._next = next(self._rows, None)

  def __next__(self) -> dict[str, np.ndarray]:
    buffer = []
    while len(buffer) < self._rows_per_batch:
      if self._next is None:
        raise StopIteration
      buffer.append(self._next[0])
      self._next = next(self._rows, None)
    self._batches += 1
    return {k: np.stack([r[k] for r in buffer]) for k in buffer[0]}

  def get_state(self) -> dict:
    rows = self._next[1] if self._next is not None else None
    return {"batches": self._batches, "rows": rows}

  def set_state(self, state: dict):
    """Continue at `state` (from `get_state`, or `{"batches": n}` to replay n)."""
    rows = state.get("rows")
    self._batches = 0
    self._open(rows if self._repeat and rows is not None else None)
    if rows is None or not self._repeat:
      for _ in range(int(state.get("batches", 0))):
        next(self)
    self._batches = int(state.get("batches", 0))


def batches(config: DatasetConfig, arch: str, *, shard_index: int = 0, num_shards: int = 1,
            start: int = 0, repeat: bool = True, split: Optional[str] = None) -> Batches:
  """This host's batches `{feature: [batch_size / num_shards, length]}` from position
  `start` (in batches; replayed: prefer `Batches.set_state`)."""
  iterator = Batches(config, arch, shard_index=shard_index, num_shards=num_shards,
                     repeat=repeat, split=split)
  if start:
    iterator.set_state({"batches": start})
  return iterator
