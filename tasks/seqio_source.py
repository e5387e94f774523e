"""Any task or mixture registered with seqio, read by our trainer (the `Task` contract of
`arch_objective/data/task.py`) through `seqio.get_dataset` and seqio's feature converters.

`DatasetConfig(task=NAME)` with NAME in `seqio.TaskRegistry` or `seqio.MixtureRegistry` but
not in our registry resolves to a `SeqioTask` (`tasks.resolve`). Its rows are

  seqio.get_dataset(NAME, task_feature_lengths, feature_converter, dataset_split=split,
                    shuffle=False, num_epochs=1, seed=seed,
                    shard_info=seqio.ShardInfo(shard_index, num_shards))

as numpy `{feature: [length]}` dicts, with

  task features            TASK_FEATURE_LENGTHS (from DatasetConfig)     converter
  {'inputs', 'targets'}    {'inputs': inputs_length, 'targets':          EncDec (ED),
                            targets_length}                              PrefixLM (CD, ND)
  {'targets'}              {'targets': length}                           LM (CD, ND)

(decoder rows of `inputs ++ targets` are `inputs_length + targets_length` long; the
non-causal decoder reading `{'targets'}` rows gets `decoder_causal_attention` 0
everywhere, causal as our full-LM rows). `rows(pack=...)` is the converters' `pack`.

A position is the number of rows read: `positioned_rows(start={'rows': n})` reads the
dataset again from its start and skips n rows (a replay: resuming costs reading those
rows again, unlike our own tasks, which restart at the document a row begins in). The
same seed gives the same rows only if the task's own preprocessing is deterministic given
seqio's seed (seqio seeds its random preprocessors from `seed`).
"""
from __future__ import annotations

import sys
from typing import Iterator, Optional

import numpy as np

from arch_objective import architectures
from arch_objective.data import registry
from arch_objective.data import task as task_lib
from arch_objective.errors import UserError
from arch_objective.objectives import chunking


def registered(name: str) -> bool:
  """Whether seqio (if imported) has a task or mixture `name`."""
  seqio = sys.modules.get("seqio")
  if seqio is None:
    return False
  return name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()


class SeqioTask(task_lib.Task):
  """A seqio task or mixture as a trainable `Task` (see the module docstring).

  Raises ValueError (at construction) when the task has no `targets` feature, or its
  `targets` vocabulary is not a SentencePiece model (the trainer sizes the model by it and
  records the model file).
  """

  def __init__(self, name: str, *, length: int, inputs_length: int = 1024,
               targets_length: int = 256):
    import seqio

    self.name = name
    self._provider = seqio.get_mixture_or_task(name)
    features = self._provider.output_features
    if "targets" not in features:
      raise UserError(f"seqio task {name!r} has features {sorted(features)}; the trainer "
                      f"reads 'targets' (and 'inputs' when there are any).")
    self.has_inputs = "inputs" in features
    self.task_feature_lengths = ({"inputs": inputs_length, "targets": targets_length}
                                 if self.has_inputs else {"targets": length})
    self.splits = tuple(self._provider.splits)
    vocabulary = features["targets"].vocabulary
    if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
      raise UserError(f"seqio task {name!r}: the 'targets' vocabulary is a "
                      f"{type(vocabulary).__name__}; the trainer reads tasks with a "
                      f"seqio.SentencePieceVocabulary.")
    self._vocabulary = (vocabulary.sentencepiece_model_file, vocabulary.extra_ids)

  @property
  def architectures(self) -> tuple[str, ...]:
    return architectures.readers(self.has_inputs)

  @property
  def default_architecture(self) -> str:
    """The reader when none is named (`architectures.default_reader`)."""
    return architectures.default_reader(self.has_inputs)

  def vocab(self):
    return registry.load_vocabulary(*self._vocabulary)

  def feature_converter(self, arch: str, pack: bool = True):
    from tasks import seqio_providers
    return seqio_providers.feature_converter(arch, pack)

  def positioned_rows(self, split: str = "train", *, arch: Optional[str] = None, seed: int = 0,
                      shard_index: int = 0, num_shards: int = 1, pack: bool = True,
                      start: Optional[dict] = None) -> Iterator[chunking.Tagged]:
    """Model rows `{feature: [length]}` int32 of this host's shard, row n tagged
    `{'rows': n}`; `start={'rows': n}` skips the first n (replayed)."""
    import seqio

    arch = arch or self.default_architecture
    if arch not in self.architectures:
      raise UserError(f"seqio task {self.name!r} (features "
                      f"{sorted(self.task_feature_lengths)}) is read by "
                      f"{', '.join(self.architectures)}, not {arch!r}.")
    if split not in self.splits:
      raise UserError(f"seqio task {self.name!r} has splits {list(self.splits)}, not "
                      f"{split!r}.")
    skip = int(start["rows"]) if start else 0
    dataset = seqio.get_dataset(
        self.name, task_feature_lengths=self.task_feature_lengths,
        feature_converter=self.feature_converter(arch, pack), dataset_split=split,
        shuffle=False, num_epochs=1, seed=seed, verbose=False,
        shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None)
    return self._rows(dataset.skip(skip), skip, arch)

  def _rows(self, dataset, first: int, arch: str) -> Iterator[chunking.Tagged]:
    layout = architectures.get(arch).layout
    for n, row in enumerate(dataset.as_numpy_iterator(), first):
      row = layout.complete_row({k: np.asarray(v, np.int32) for k, v in row.items()})
      yield chunking.tag(row, {"rows": n})
