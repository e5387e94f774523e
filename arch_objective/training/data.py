"""Batches for the trainer: a task's rows, this host's shard, a resumable position.

Each process reads its own shard of the documents (`shard_index = process_index`) and
builds `batch_size / process_count` rows per step. Corpora are repeated in epochs;
epoch `e` draws its randomness from the seed `(seed, e)`. A batch iterator started at
position `n` yields exactly the batches an uninterrupted one yields after `n` batches.
"""
from __future__ import annotations

import dataclasses
import itertools
import numbers
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from arch_objective.data import vocabularies
from arch_objective.objectives import feature_converters, pipeline


@dataclasses.dataclass
class DatasetConfig:
  """What to read: a registered task (or a local corpus) and how to batch it.

  task: `c4_<kind>` or, with `corpus`, `local_<kind>`; kinds are full_lm,
    prefix_lm_decoder, prefix_lm_encoder_decoder and span_corruption.
  batch_size: rows per step over all hosts (ED prefix-LM rows hold two examples each).
  """
  task: str
  batch_size: int
  length: int = pipeline.PAPER_LENGTH
  corpus: Optional[Union[str, Sequence[str]]] = None
  field: str = "text"
  layout: str = "line"
  vocabulary: str = vocabularies.DEFAULT_VOCABULARY_PATH
  extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS
  tfds_data_dir: Optional[str] = None
  c4_version: str = "3.1.0"
  split: str = "train"
  seed: int = 0
  pack: bool = True
  # prompted mixtures (MT-F): `task='t0_train'` or any name with `prompt_datasets`
  prompt_datasets: Optional[Sequence[str]] = None
  data_dir: Optional[str] = None
  mapping: Optional[str] = None
  inputs_length: int = 1024
  targets_length: int = 256

  def __post_init__(self):
    for name in ("batch_size", "length", "inputs_length", "targets_length", "seed"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (
          0 if name == "seed" else 1):
        raise ValueError(f"DatasetConfig.{name} must be a {'non-negative' if name == 'seed' else 'positive'} "
                         f"integer, found {value!r} ({type(value).__name__}).")

  def spec(self, arch: Optional[str] = None):
    """The task's spec (`<corpus>_prefix_lm` resolves to the packing of `arch`)."""
    import tasks  # registers the C4 tasks
    return tasks.resolve(self.task, corpus=self.corpus, field=self.field, layout=self.layout,
                         vocabulary=self.vocabulary, extra_ids=self.extra_ids,
                         length=self.length, tfds_data_dir=self.tfds_data_dir,
                         c4_version=self.c4_version, arch=arch,
                         prompt_datasets=self.prompt_datasets, data_dir=self.data_dir,
                         mapping=self.mapping, inputs_length=self.inputs_length,
                         targets_length=self.targets_length)


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def rows_forever(spec, arch: str, split: str, seed: int, shard_index: int, num_shards: int,
                 pack: bool) -> Iterator[dict[str, np.ndarray]]:
  for epoch in itertools.count():
    count = 0
    for row in spec.rows(split, arch=arch, seed=_epoch_seed(seed, epoch),
                         shard_index=shard_index, num_shards=num_shards, pack=pack):
      count += 1
      yield row
    if count == 0:
      raise ValueError(f"task {spec.name!r} split {split!r} produced no rows for shard "
                       f"{shard_index}/{num_shards}; the corpus is empty or too small for "
                       f"{num_shards} hosts.")


def batches(config: DatasetConfig, arch: str, *, shard_index: int = 0, num_shards: int = 1,
            start: int = 0, repeat: bool = True, split: Optional[str] = None
            ) -> Iterator[dict[str, np.ndarray]]:
  """This host's batches `{feature: [batch_size / num_shards, length]}` from position
  `start` (in batches)."""
  if config.batch_size % num_shards:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{num_shards} processes.")
  spec = config.spec(arch)
  split = split or config.split
  if repeat:
    rows = rows_forever(spec, arch, split, config.seed, shard_index, num_shards, config.pack)
  else:
    rows = spec.rows(split, arch=arch, seed=config.seed, shard_index=shard_index,
                     num_shards=num_shards, pack=config.pack)
  stream = feature_converters.batch_rows(rows, config.batch_size // num_shards)
  return itertools.islice(stream, start, None)
