"""The corpora of the pretraining tasks: TFDS C4 and local text/JSONL files."""
from __future__ import annotations

from typing import Optional, Sequence

from arch_objective import architectures, layouts
from arch_objective.data import registry, sources, vocabularies
from arch_objective.errors import UserError
from arch_objective.objectives import pipeline
from arch_objective.training import sources as source_lib
from tasks import seqio_bridge, seqio_source, t0

C4_VERSION = sources.C4_VERSION  # the paper used 2.2.0; both are known to tensorflow-datasets
C4_TASKS = tuple(f"c4_{kind}" for kind in registry.TASK_KINDS)
VALIDATION_EVERY = 100  # local corpora: every 100th document is held out for validation


def register_corpus(name: str, source: registry.TextSource, *,
                    vocabulary: str = vocabularies.DEFAULT_VOCABULARY_PATH,
                    extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS,
                    length: int = pipeline.PAPER_LENGTH,
                    splits: Sequence[str] = ("train", "validation"),
                    description: str = "", with_seqio: Optional[bool] = None) -> list[str]:
  """Register `<name>_<kind>` for every task kind; returns the task names.

  `with_seqio=None` registers them with seqio too once `tasks.seqio_tasks` was imported.
  """
  if with_seqio is None:
    with_seqio = seqio_bridge.enabled()
  registered = []
  for kind in registry.TASK_KINDS:
    spec = registry.register(registry.TaskSpec(
        name=f"{name}_{kind}", kind=kind, source=source, vocabulary=vocabulary, extra_ids=extra_ids,
        length=length,
        splits=tuple(splits), description=description))
    if with_seqio:
      seqio_bridge.register(spec)
    registered.append(spec.name)
  return registered


def _c4_source(version: str, data_dir: Optional[str]) -> registry.TextSource:
  def source(split="train", seed=0, shard_index=0, num_shards=1, start=None):
    return sources.tfds_positioned("c4/en", version=version, split=split, data_dir=data_dir,
                                   shard_index=shard_index, num_shards=num_shards, start=start)
  return source


def configure_c4(version: str = C4_VERSION, data_dir: Optional[str] = None,
                 vocabulary: str = vocabularies.DEFAULT_VOCABULARY_PATH,
                 length: int = pipeline.PAPER_LENGTH, with_seqio: Optional[bool] = None
                 ) -> list[str]:
  """(Re-)register the C4 tasks for a TFDS version and data directory."""
  return register_corpus("c4", _c4_source(version, data_dir), vocabulary=vocabulary,
                         length=length, description=f"TFDS c4/en:{version}",
                         with_seqio=with_seqio)


def _local_source(patterns, field: str, layout: str, validation_every: int
                  ) -> registry.TextSource:
  def source(split="train", seed=0, shard_index=0, num_shards=1, start=None):
    held_out = split == "validation"
    texts = sources.local_positioned(patterns, field=field, layout=layout,
                                     shard_index=shard_index, num_shards=num_shards,
                                     start=start)
    return ((t, p) for t, p in texts if (p["n"] % validation_every == 0) == held_out)
  return source


def register_local_corpus(name: str, patterns, *, vocabulary: str,
                          extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS, field: str = "text",
                          layout: str = "line", length: int = pipeline.PAPER_LENGTH,
                          validation_every: int = VALIDATION_EVERY,
                          with_seqio: Optional[bool] = None) -> list[str]:
  """Register the four tasks over local text/JSONL files (globs allowed).

  Every `validation_every`-th document of a host's share (`sources.byte_share`; of the
  whole corpus on one host) forms the validation split. Files are checked now, so a bad
  pattern fails at registration, not mid-training.
  """
  sources.expand_patterns(patterns)
  if validation_every < 2:
    raise UserError(f"validation_every must be >= 2, found {validation_every}.")
  return register_corpus(name, _local_source(patterns, field, layout, validation_every),
                         vocabulary=vocabulary, extra_ids=extra_ids, length=length,
                         description=f"local corpus {patterns}", with_seqio=with_seqio)


configure_c4()


def resolve(task: str, *, source: Optional[source_lib.Source] = None,
            vocabulary: str = vocabularies.DEFAULT_VOCABULARY_PATH,
            extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS,
            length: int = pipeline.PAPER_LENGTH, arch: Optional[str] = None,
            inputs_length: int = 1024, targets_length: int = 256,
            with_seqio: Optional[bool] = None):
  """The spec of `task`, registering what `source` describes first
  (`arch_objective.training.sources`: what each source registers, and the defaults of
  `source=None`).

  `<corpus>_prefix_lm` names the packing of `arch`: `..._prefix_lm_encoder_decoder` for
  the encoder-decoder, `..._prefix_lm_decoder` otherwise. A prompted mixture (`t0_train`,
  or any name with a PromptedDatasets source that names datasets) is made at
  `inputs_length` / `targets_length`.

  Any other name registered with seqio (a task or mixture of `seqio.TaskRegistry` or
  `seqio.MixtureRegistry`, not ours) is read through seqio (`tasks.seqio_source.SeqioTask`):
  at `{'targets': length}` when its examples have only targets, else at
  `{'inputs': inputs_length, 'targets': targets_length}`.
  """
  source_lib.check(source, "tasks.resolve's source")
  spec = register_source(task, source, vocabulary=vocabulary, extra_ids=extra_ids,
                         length=length, inputs_length=inputs_length,
                         targets_length=targets_length, with_seqio=with_seqio)
  if spec is not None:
    return spec
  if task.endswith("_prefix_lm"):
    # The prefix LM's examples depend on the layout that reads them (spec §3.3):
    # `<task>_decoder` or `<task>_encoder_decoder`; a decoder's without an architecture.
    task += "_" + (layouts.DECODER if arch is None else architectures.get(arch).layout).family
  if task not in registry.names() and seqio_source.registered(task):
    return seqio_source.SeqioTask(task, length=length, inputs_length=inputs_length,
                                  targets_length=targets_length)
  return registry.get(task)


def register_source(task: str, source: Optional[source_lib.Source], *, vocabulary: str,
                    extra_ids: int, length: int, inputs_length: int, targets_length: int,
                    with_seqio: Optional[bool] = None):
  """Register the tasks `source` describes for `task` (the one place that reads a
  source's kind); returns the spec of a prompted mixture, None otherwise (the task is
  then looked up by name).

    PromptedDatasets, or `t0_train`   the mixture, registered under `task`
    LocalCorpus                       `local_<kind>` over its files (`task` must be one)
    C4, or `c4_<kind>`                `c4_<kind>` at its version and data directory
  """
  if source_lib.is_prompted(task, source):
    prompted = (source if isinstance(source, source_lib.PromptedDatasets)
                else source_lib.PromptedDatasets())
    return t0.register_prompted_mixture(
        task, datasets=prompted.datasets, data_dir=prompted.data_dir,
        mapping=prompted.mapping, vocabulary=vocabulary, extra_ids=extra_ids,
        inputs_length=inputs_length, targets_length=targets_length)
  if isinstance(source, source_lib.LocalCorpus):
    if not task.startswith("local_"):
      raise UserError(f"a local corpus (LocalCorpus.files, --corpus) registers the tasks "
                      f"local_<kind>; the task must be one of "
                      f"{', '.join('local_' + k for k in registry.TASK_KINDS)}, found "
                      f"{task!r}.")
    register_local_corpus("local", source.files, vocabulary=vocabulary, extra_ids=extra_ids,
                          field=source.field, layout=source.layout, length=length,
                          with_seqio=with_seqio)
  elif task.startswith("c4_"):
    c4 = source if isinstance(source, source_lib.C4) else source_lib.C4()
    configure_c4(c4.version, c4.data_dir, vocabulary, length, with_seqio=with_seqio)
  elif task.startswith("local_"):
    raise UserError(f"task {task!r} reads a local corpus: give its files (LocalCorpus.files: "
                    f"CORPUS in the run files, or --corpus).")
  return None
