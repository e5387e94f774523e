"""The contract every trainable task meets, corpus tasks and prompted mixtures alike.

`registry.TaskSpec` (a corpus and an objective: `c4_span_corruption`, `local_full_lm`,
...) and `prompts.mixture.PromptedMixture` (the T0 mixture, the world's MT-F mixture)
are both `Task`s; the trainer, its batches and its validation read a task only through
this interface:

  name              the registered name
  splits            the splits it has, e.g. ("train", "validation")
  architectures     the architectures that read its rows
  default_architecture  the one that reads `rows(arch=None)`
  vocab()           its SentencePiece vocabulary (with extra ids)
  positioned_rows(split, *, arch, seed, shard_index, num_shards, pack, start)
                    model rows of host `shard_index`'s share, each tagged
                    (`chunking.Tagged.where`) with the position a read restarts it at;
                    `start` (such a position) continues there, bit for bit
  rows(...)         the same rows without `start` (written once, by `Task`)
"""
from __future__ import annotations

import abc
from typing import Iterator, Optional

import numpy as np

from arch_objective import architectures as architectures_lib
from arch_objective.errors import UserError

REQUIRED = ("name", "splits", "architectures", "default_architecture", "vocab", "rows",
            "positioned_rows")


class Task(abc.ABC):
  """The base of every task: `rows` is written here once, over `positioned_rows`."""
  name: str
  splits: tuple[str, ...]

  @property
  @abc.abstractmethod
  def architectures(self) -> tuple[str, ...]:
    """The architectures that read this task's rows."""

  @property
  @abc.abstractmethod
  def default_architecture(self) -> str:
    """The reader of `rows(arch=None)`."""

  @abc.abstractmethod
  def vocab(self):
    """The task's vocabulary (`vocabularies.SentencePieceVocabulary`)."""

  @abc.abstractmethod
  def positioned_rows(self, split: str = "train", *, arch: Optional[str] = None,
                      seed: int = 0, shard_index: int = 0, num_shards: int = 1,
                      pack: bool = True, start: Optional[dict] = None
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Model rows `{feature: [length]}` of host `shard_index`'s share for `arch`, each
    tagged with the position a read restarts it at (`chunking.Tagged.where`)."""

  def rows(self, split: str = "train", *, arch: Optional[str] = None, seed: int = 0,
           shard_index: int = 0, num_shards: int = 1, pack: bool = True
           ) -> Iterator[dict[str, np.ndarray]]:
    """`positioned_rows` from the start, as plain dicts."""
    rows = self.positioned_rows(split, arch=arch, seed=seed, shard_index=shard_index,
                                num_shards=num_shards, pack=pack)
    return (dict(row) for row in rows)


def check(task, arch: Optional[str] = None, split: Optional[str] = None):
  """`task` if it meets the contract (and serves `arch`, has `split`), else an error
  naming what is missing."""
  missing = [name for name in REQUIRED if not hasattr(task, name)]
  if missing:
    raise TypeError(f"{type(task).__name__} {getattr(task, 'name', task)!r} is not a task: "
                    f"it lacks {', '.join(missing)} (see arch_objective/data/task.py).")
  if arch is not None:
    architectures_lib.check(arch)
    if arch not in task.architectures:
      raise UserError(f"task {task.name!r} is read by {', '.join(task.architectures)}, not "
                      f"{arch!r}.")
  if split is not None and split not in task.splits:
    raise UserError(f"task {task.name!r} has splits {list(task.splits)}, not {split!r}.")
  return task
