"""Where a dataset's documents come from: one small config per kind of source.

A `DatasetConfig` names a task and holds what every source shares (batch size, lengths,
vocabulary, seed, packing); its `source` says what the task reads, and `tasks.resolve`
registers the task over it before handing back the spec:

  C4(version, data_dir)               TFDS c4/en, read by the tasks `c4_<kind>`
  LocalCorpus(files, field, layout)   local text or JSON Lines files, read by the tasks
                                      `local_<kind>`
  PromptedDatasets(datasets,          a prompted MT-F mixture named after the task: every
                   data_dir, mapping) prompt of `datasets`, or without them T0's training
                                      mixture (`t0_train`); the datasets' files from
                                      `data_dir`/`mapping`, else the Hugging Face Hub

`source=None` reads what the task's name says, with defaults: `c4_<kind>` reads C4 at
`C4_VERSION`, `t0_train` T0's mixture from the Hub, and `local_<kind>` has no files to
read (an error naming `LocalCorpus.files`). A task or mixture registered with seqio needs
no source: it is read as seqio registered it.

A source applies to the tasks it describes: C4 to `c4_<kind>`, a PromptedDatasets without
datasets to `t0_train`; any other task name resolves as without a source (so the run
files that bind one still train on a seqio task). A LocalCorpus registers only
`local_<kind>`, and another task name with it is an error.

In gin the run files bind `DatasetConfig.source = @corpus_source()` (pretraining and
evaluation, from the macros CORPUS, TFDS_DATA_DIR and C4_VERSION) or
`DatasetConfig.source = @PromptedDatasets()` (MT-F, from PROMPT_DATASETS, DATA_DIR and
MAPPING). `corpus_source` also reads the command line's `--corpus --field --layout
--tfds_data_dir --c4_version`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence, Union

from arch_objective.data import sources as data_sources
from arch_objective.errors import UserError

C4_VERSION = data_sources.C4_VERSION
T0_TRAIN = "t0_train"       # T0's training mixture (promptsource's d4_train)

Files = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _path_or_none(where: str, value):
  if value is not None and not (isinstance(value, os.PathLike) or (
      isinstance(value, str) and value)):
    raise UserError(f"{where} must be a path (a non-empty string) or None, found "
                    f"{value!r} ({type(value).__name__}).")


@dataclasses.dataclass(frozen=True)
class C4:
  """TFDS `c4/en` at `version`, prepared in `data_dir` (None: TFDS's default folder).

  The tasks `c4_<kind>` read it; the paper trained on 2.2.0, the default is the newest
  version TensorFlow Datasets knows (`C4_VERSION`). C4 is not downloaded on the fly: it
  must be prepared in `data_dir` beforehand.
  """
  version: str = C4_VERSION
  data_dir: Optional[str] = None

  def __post_init__(self):
    if not isinstance(self.version, str) or not self.version:
      raise UserError(f"C4.version must be a c4/en version string such as "
                      f"{C4_VERSION!r} (known: {', '.join(data_sources.C4_VERSIONS)}), "
                      f"found {self.version!r} ({type(self.version).__name__}).")
    _path_or_none("C4.data_dir", self.data_dir)


@dataclasses.dataclass(frozen=True)
class LocalCorpus:
  """Local files (paths or globs; one or a list) read by the tasks `local_<kind>`.

  JSON Lines files (`.jsonl`, `.json`) hold one document per line, its text in `field`;
  any other file is UTF-8 text, one document per line (`layout='line'`) or per
  blank-line-separated paragraph (`layout='paragraph'`). Every 100th document of a host's
  share forms the validation split. The files are globbed when the tasks are registered,
  so a pattern that matches nothing fails before training starts.
  """
  files: Files
  field: str = "text"
  layout: str = "line"

  def __post_init__(self):
    files = self.files
    single = isinstance(files, (str, os.PathLike))
    items = [files] if single else files
    if not (single or isinstance(files, (list, tuple))) or not items or not all(
        isinstance(f, os.PathLike) or (isinstance(f, str) and f) for f in items):
      raise UserError(f"LocalCorpus.files must be a path or glob, or a non-empty list of "
                      f"them (e.g. 'corpus/*.jsonl'), found {files!r}.")
    if not isinstance(self.field, str) or not self.field:
      raise UserError(f"LocalCorpus.field must be the JSON Lines field that holds the text "
                      f"(a non-empty string such as 'text'), found {self.field!r}.")
    if self.layout not in data_sources.LAYOUTS:
      raise UserError(f"LocalCorpus.layout must be one of "
                      f"{', '.join(sorted(data_sources.LAYOUTS))}, found {self.layout!r}.")


@dataclasses.dataclass(frozen=True)
class PromptedDatasets:
  """A prompted MT-F mixture, registered under the task's name: every promptsource prompt
  of `datasets` (`'super_glue/rte'`, `'imdb'`), or with None T0's training mixture
  (promptsource's d4_train, the task `t0_train`).

  The datasets' files come from `data_dir` (a directory of their original files) and
  `mapping` (a JSON file pointing a dataset's split at a file), else from the Hugging
  Face Hub (network or cache).
  """
  datasets: Optional[Sequence[str]] = None
  data_dir: Optional[str] = None
  mapping: Optional[str] = None

  def __post_init__(self):
    datasets = self.datasets
    if datasets is not None and (
        not isinstance(datasets, (list, tuple)) or not datasets
        or not all(isinstance(d, str) and d for d in datasets)):
      hint = f" (one dataset: [{datasets!r}])" if isinstance(datasets, str) else ""
      raise UserError(f"PromptedDatasets.datasets must be None (T0's training mixture) or "
                      f"a non-empty list of dataset names such as ['super_glue/rte', "
                      f"'imdb']{hint}, found {datasets!r}.")
    _path_or_none("PromptedDatasets.data_dir", self.data_dir)
    _path_or_none("PromptedDatasets.mapping", self.mapping)


SOURCES = (C4, LocalCorpus, PromptedDatasets)
Source = Union[C4, LocalCorpus, PromptedDatasets]


def check(source, where: str = "DatasetConfig.source") -> Optional[Source]:
  """`source` if it is None or one of `SOURCES`, else an error naming `where`."""
  if source is not None and not isinstance(source, SOURCES):
    raise UserError(f"{where} must be None or one of "
                    f"{', '.join(s.__name__ for s in SOURCES)} "
                    f"(arch_objective.training.sources), found {source!r} "
                    f"({type(source).__name__}).")
  return source


def is_prompted(task: str, source: Optional[Source]) -> bool:
  """Whether `task` with `source` is a prompted MT-F mixture: T0's training mixture
  (`t0_train`), or a PromptedDatasets source that names its datasets."""
  return task == T0_TRAIN or (isinstance(source, PromptedDatasets) and bool(source.datasets))


def corpus_source(corpus: Optional[Files] = None, field: str = "text", layout: str = "line",
                  tfds_data_dir: Optional[str] = None, c4_version: str = C4_VERSION
                  ) -> Union[C4, LocalCorpus]:
  """The corpus the pretraining tasks read, from flat options: `LocalCorpus(corpus,
  field, layout)` when `corpus` names files, else `C4(c4_version, tfds_data_dir)`.

  The command line's `--corpus --field --layout --tfds_data_dir --c4_version` and the run
  files' macros CORPUS, TFDS_DATA_DIR and C4_VERSION (`DatasetConfig.source =
  @corpus_source()`) are these options.
  """
  if corpus:
    return LocalCorpus(corpus, field=field, layout=layout)
  return C4(version=c4_version, data_dir=tfds_data_dir)
