"""The local overlay's data: any experiment file, shrunk, on one CPU (`gin/local.gin`).

`gin/local.gin`, given after an experiment file, rebinds the model size, rows per step,
lengths and how many steps one run takes, and routes the data through the functions
here:

  local_batch_size()         16 rows, or more when the file has more microbatches
  local_dataset(dataset)     C4 tasks `c4_<kind>` read a LocalCorpus as `local_<kind>`;
                             prompted MT-F mixtures (`t0_train`, PROMPT_DATASETS) become
                             the world's training families (`world_mtf`)
  local_suite()              T0-Eval scores the world's held-out families
  local_harness_tasks()      lm-eval YAML tasks over the same families (EAI-Eval)

Everything else stays the experiment file's: architecture, objective, microbatches,
dropout, schedules, restore and reset options, activation dtype, mesh logic.

The default data is the laptop study's synthetic world (`data/world/`): its corpus and
a SentencePiece vocabulary of `WORLD_VOCAB` pieces (+100 extra ids: 500 ids), made once
into LOCAL_DATA_DIR (default `$XDG_CACHE_HOME/arch-objective/local-world-v2`, else
`~/.cache/...`). It is written into a temporary folder and renamed into place, so runs
that start together share one copy. Give LOCAL_CORPUS and LOCAL_VOCABULARY to train on
your own text instead.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import tempfile
from typing import Optional, Sequence, Union

from arch_objective.errors import UserError, integer_at_least
from arch_objective.training import data
from arch_objective.training import example_data
from arch_objective.training import sources as source_lib

WORLD_VERSION = 2          # bumped whenever the world's corpus changes
WORLD_SEED = 0
WORLD_BYTES = 4_000_000
WORLD_VOCAB = 400
WORLD_MTF = "world_mtf"
_CORPUS, _VOCAB = "corpus.jsonl", "spm.model"


@dataclasses.dataclass(frozen=True)
class LocalData:
  """The files of a local world: `directory/corpus.jsonl`, `directory/spm.model`."""
  directory: str

  @property
  def corpus(self) -> str:
    return os.path.join(self.directory, _CORPUS)

  @property
  def vocabulary(self) -> str:
    return os.path.join(self.directory, _VOCAB)


def default_data_dir() -> str:
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "arch-objective", f"local-world-v{WORLD_VERSION}")


@functools.lru_cache(maxsize=None)
def _world():
  from arch_objective.data import world as world_lib
  return world_lib.make_world(seed=WORLD_SEED)


def prepare(data_dir: Optional[str] = None, log=None) -> LocalData:
  """The world's corpus and vocabulary in `data_dir` (default `default_data_dir()`),
  made there first if missing (a few seconds)."""
  from arch_objective.data import sources, vocabularies
  from arch_objective.data import world as world_lib
  local = LocalData(os.path.abspath(os.path.expanduser(data_dir or default_data_dir())))
  if os.path.exists(local.corpus) and os.path.exists(local.vocabulary):
    return local
  if os.path.exists(local.directory) and os.listdir(local.directory):
    raise UserError(f"LOCAL_DATA_DIR {local.directory!r} exists but holds no {_CORPUS} and "
                    f"{_VOCAB}; give an empty or new directory.")
  parent = os.path.dirname(local.directory)
  os.makedirs(parent, exist_ok=True)
  (log or logging.getLogger(__name__).info)(f"making the local world in {local.directory} (once)")
  tmp = tempfile.mkdtemp(prefix=".local-world-", dir=parent)
  try:
    world_lib.write_corpus(os.path.join(tmp, _CORPUS), _world(), target_bytes=WORLD_BYTES)
    vocabularies.train_sentencepiece(sources.jsonl_documents(os.path.join(tmp, _CORPUS)),
                                     os.path.join(tmp, _VOCAB[:-len(".model")]), WORLD_VOCAB)
    if os.path.isdir(local.directory):
      os.rmdir(local.directory)            # empty (checked above); rename needs it gone
    os.rename(tmp, local.directory)
  except OSError:
    if not (os.path.exists(local.corpus) and os.path.exists(local.vocabulary)):
      raise
    # Another run made it first: use theirs.
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return local


def local_batch_size(rows: int = 16, num_microbatches: Optional[int] = None) -> int:
  """`rows`, raised to a multiple of `num_microbatches` so that each microbatch keeps at
  least one row. `num_microbatches=None` reads the run's gin macro NUM_MICROBATCHES
  (1 when the run has none, as evaluation runs)."""
  if num_microbatches is None:
    num_microbatches = _gin_macro("NUM_MICROBATCHES", 1)
  if not integer_at_least(num_microbatches, 1):
    raise UserError(f"NUM_MICROBATCHES must be an integer >= 1, found {num_microbatches!r}.")
  return -(-max(rows, num_microbatches) // num_microbatches) * num_microbatches


def _gin_macro(name: str, default):
  import gin
  try:
    return gin.query_parameter(f"%{name}")
  except ValueError:
    return default


def local_dataset(dataset: data.DatasetConfig, data_dir: Optional[str] = None,
                  corpus: Optional[Union[str, Sequence[str]]] = None,
                  vocabulary: Optional[str] = None) -> data.DatasetConfig:
  """`dataset` pointed at local data; its batch size, lengths, seed and packing stay.

  `c4_<kind>` -> `local_<kind>` reading the LocalCorpus `corpus` (default: the world's
  corpus); `local_<kind>` keeps its LocalCorpus source; a prompted mixture -> `world_mtf`,
  one task per (world training family, prompt), examples-proportional as the T0 mixture,
  with no source. `vocabulary` defaults to the world's (with `corpus` of your own, give
  yours).
  """
  from arch_objective.data import registry
  from arch_objective.prompts import mixture
  if corpus is not None and vocabulary is None:
    raise UserError("local_dataset: LOCAL_CORPUS is set but LOCAL_VOCABULARY is not; give "
                    "the SentencePiece .model that tokenises it (the world's vocabulary "
                    "only knows the world's words).")
  local = prepare(data_dir) if vocabulary is None or (corpus is None) else None
  vocabulary = vocabulary or local.vocabulary
  if dataset.prompted:
    registry.register(mixture.PromptedMixture(
        WORLD_MTF, tuple(_world().training_tasks()), vocabulary,
        extra_ids=dataset.extra_ids, inputs_length=dataset.inputs_length,
        targets_length=dataset.targets_length))
    return dataclasses.replace(dataset, task=WORLD_MTF, source=None, vocabulary=vocabulary)
  task = dataset.task
  if task.startswith("c4_"):
    task = "local_" + task[len("c4_"):]
  elif not task.startswith("local_"):
    raise UserError(f"local_dataset: task {task!r} is neither a C4 task (c4_<kind>), a "
                    f"local corpus task (local_<kind>) nor a prompted mixture; the local "
                    f"overlay does not know what to read for it.")
  own = dataset.source if isinstance(dataset.source, source_lib.LocalCorpus) else None
  if dataset.task.startswith("local_") and own is not None and corpus is None:
    source = own
  elif corpus is None:
    source = source_lib.LocalCorpus(local.corpus)
  else:
    source = source_lib.LocalCorpus(corpus, field=own.field if own else "text",
                                    layout=own.layout if own else "line")
  return dataclasses.replace(dataset, task=task, source=source, vocabulary=vocabulary)


def local_suite(data_dir: Optional[str] = None) -> list:
  """The world's held-out families, for T0-Eval (`eval_t0.suite`)."""
  del data_dir  # the suite is made in memory from the world's seed
  return _world().heldout_suite()


def harness_task_names() -> list[str]:
  """The lm-eval task names `local_harness_tasks` writes: one per held-out family."""
  from arch_objective.data.world import prompts as world_prompts
  return list(world_prompts.HELDOUT_PROMPTS)


def local_harness_tasks(data_dir: Optional[str] = None) -> str:
  """A folder of lm-eval YAML tasks, one multiple-choice task per held-out family of the
  world (its first prompt, the validation examples); returns the folder (an lm-eval
  `include_path`). Written once into LOCAL_DATA_DIR."""
  local = prepare(data_dir)
  folder = os.path.join(local.directory, example_data.HARNESS_DIR)
  if all(os.path.exists(os.path.join(folder, f"{n}.yaml")) for n in harness_task_names()):
    return folder
  example_data.write_world_harness_tasks(folder, local_suite())
  return folder
