"""Our tasks as seqio providers, in t5x's contract (imports seqio and TensorFlow).

A corpus task (`registry.TaskSpec`) becomes a `seqio.Task` whose examples are the task
features of `pipeline.Objective.task_examples` (`{'targets'}` or `{'inputs', 'targets'}`),
made at the lengths `get_dataset` is asked for (t5x's TASK_FEATURE_LENGTHS, see
`pipeline.task_feature_lengths`), so seqio's own feature converters make the model
features:

  source          `CorpusSource`: the tokenised documents of the shard `get_dataset`
                  asks for, `{'targets': [n]}`, from the spec's corpus (any sharding)
  preprocessors   `seqio.CacheDatasetPlaceholder()`, then `pretraining_objective`: the
                  numpy objective over the document stream at `sequence_length`
                  (the spec's own length when it is None)
  randomness      keyed as the numpy pipeline keys it, by `get_dataset`'s `seed` (None
                  reads as 0) and `shard_info`: `get_dataset(L, split, seed=s,
                  shard_info=ShardInfo(i, n), shuffle=False)` yields
                  `spec.task_examples(split, seed=s, shard_index=i, num_shards=n)` of the
                  spec at length L, bit for bit
  caching         `supports_caching`: a cache holds the tokenised documents; the
                  objective runs after it, at the lengths and seed of each read. seqio's
                  cache job reshuffles documents, so cached reads are deterministic given
                  the cache and the seed but are not the numpy pipeline's examples.

A prompted mixture (`prompts.mixture.PromptedMixture`, e.g. `t0_train`) becomes one
`seqio.Task` per (dataset, prompt), `<mixture>_<dataset>_<subset>_<prompt>`, with features
`inputs` (no EOS) and `targets` (EOS appended, `seqio.preprocessors.append_eos`), examples
in the dataset's order (rendered and tokenised as the mixture renders them, skipped and
`<NO LABEL>` examples alike), cacheable; and one `seqio.Mixture` under the mixture's
name with the mixture's rates (`PromptedMixture.rates('train')`: examples-proportional,
capped). seqio samples a mixture its own way, so the mixture's stream of examples is
not the numpy one; each task's examples are.

Tokenisation is the Python SentencePiece library's (`vocabularies.SentencePieceVocabulary`,
as in the numpy pipeline); TF Text's tokenizer splits a few texts differently.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import re
from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from arch_objective import architectures, layouts
from arch_objective.data import registry
from arch_objective.errors import UserError
from arch_objective.objectives import pipeline
from arch_objective.prompts import mixture as mixture_lib

# Shards a corpus source lists (what seqio's cache job processes in parallel); reads
# shard at any count.
CACHE_SHARDS = 16

# (seed, shard_info) of the `CorpusTask.get_dataset` call building a dataset now.
_READ: contextvars.ContextVar = contextvars.ContextVar("arch_objective_seqio_read",
                                                       default=(None, None))


def _int_seed(seed) -> int:
  return 0 if seed is None else int(seed)


def _shard(shard_info) -> tuple[int, int]:
  return (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)


def task_feature_lengths(spec: registry.TaskSpec) -> dict[str, int]:
  """TASK_FEATURE_LENGTHS of a spec's seqio task at the spec's length (626:
  `{'inputs': 512, 'targets': 114}` for span corruption)."""
  return pipeline.task_feature_lengths(spec.objective_name, spec.length)


def feature_converter(arch: str, pack: bool = True) -> seqio.FeatureConverter:
  """seqio's converter of an architecture: `EncDecFeatureConverter` for the
  encoder-decoder, `DecoderFeatureConverter` (LM for `{'targets'}`, prefix LM for
  `{'inputs', 'targets'}` lengths) for the decoders."""
  converter = layouts.by_family(_SEQIO_CONVERTERS, architectures.get(arch).layout,
                                "seqio's feature converters")
  return converter(pack=pack)


_SEQIO_CONVERTERS = {layouts.DECODER.family: seqio.DecoderFeatureConverter,
                     layouts.ENCODER_DECODER.family: seqio.EncDecFeatureConverter}


class CorpusSource(seqio.DataSource):
  """The tokenised documents (no EOS) of a spec's corpus, `{'targets': [n]}` int32, of the
  shard `get_dataset` asks for: `spec.documents(split, shard_index=i, num_shards=n)`."""

  def __init__(self, spec: registry.TaskSpec):
    super().__init__(splits=spec.splits, caching_permitted=True)
    self._spec = spec

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> list[str]:
    return [f"{self._spec.name}-{split}-{i:05d}-of-{CACHE_SHARDS:05d}"
            for i in range(CACHE_SHARDS)]

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del shuffle, sequence_length, use_cached, num_epochs  # the corpus's order, one pass
    spec = self._spec
    if split not in spec.splits:
      raise UserError(f"task {spec.name!r} has splits {list(spec.splits)}, not {split!r}.")
    index, count = _shard(shard_info)

    def documents():
      for doc in spec.documents(split, seed=_int_seed(seed), shard_index=index,
                                num_shards=count):
        yield {"targets": doc}

    return tf.data.Dataset.from_generator(
        documents, output_signature={"targets": tf.TensorSpec([None], tf.int32)})


class CorpusTask(seqio.Task):
  """A `seqio.Task` whose objective preprocessor reads the `seed` and `shard_info` of the
  `get_dataset` call (the numpy objective keys its randomness by both)."""

  def get_dataset(self, *args, **kwargs) -> tf.data.Dataset:
    bound = inspect.signature(seqio.Task.get_dataset).bind(self, *args, **kwargs)
    token = _READ.set((bound.arguments.get("seed"), bound.arguments.get("shard_info")))
    try:
      return super().get_dataset(*args, **kwargs)
    finally:
      _READ.reset(token)


def objective_preprocessor(spec: registry.TaskSpec):
  """The seqio preprocessor making a spec's task features from its documents at the
  `sequence_length` seqio passes (`pipeline.objective_length`; the spec's length when
  None)."""
  names = registry.TASK_FEATURES[spec.kind]
  signature = {k: tf.TensorSpec([None], tf.int32) for k in names}

  def pretraining_objective(dataset: tf.data.Dataset,
                            sequence_length: Optional[Mapping[str, int]] = None
                            ) -> tf.data.Dataset:
    length = spec.length
    if sequence_length and any(v is not None for v in sequence_length.values()):
      length = pipeline.objective_length(spec.objective_name, sequence_length, spec.name)
    objective = pipeline.Objective(spec.objective_name, spec.default_architecture, length)
    seed, shard_info = _READ.get()
    seed = registry.shard_seed(_int_seed(seed), *_shard(shard_info))
    vocab = spec.vocab()

    def examples():
      documents = (ex["targets"] for ex in dataset.as_numpy_iterator())
      for ex in objective.task_examples(documents, seed=seed,
                                        sentinel_start=vocab.vocab_size - 1,
                                        num_extra_ids=vocab.extra_ids):
        yield {k: ex[k] for k in names}

    return tf.data.Dataset.from_generator(examples, output_signature=signature)

  return pretraining_objective


def _replace_task(name: str, **kwargs) -> seqio.Task:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def register_spec(spec: registry.TaskSpec) -> seqio.Task:
  """Add (or replace) the seqio task of a corpus spec (see the module docstring)."""
  vocabulary = seqio.SentencePieceVocabulary(spec.vocabulary, extra_ids=spec.extra_ids)
  output_features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=False, dtype=tf.int32)
                     for k in registry.TASK_FEATURES[spec.kind]}
  return _replace_task(spec.name, source=CorpusSource(spec), output_features=output_features,
                       preprocessors=[seqio.CacheDatasetPlaceholder(),
                                      objective_preprocessor(spec)],
                       task_cls=CorpusTask)


def prompted_task_name(mixture_name: str, task_name: str) -> str:
  """The seqio name of a prompted task: 'super_glue/rte/GPT_3_style' in mixture 'mtf' ->
  'mtf_super_glue_rte_GPT_3_style'."""
  return re.sub(r"[^\w.]", "_", f"{mixture_name}_{task_name}")


def render(mixture: mixture_lib.PromptedMixture, task: mixture_lib.PromptedTask,
           example: dict) -> Optional[tuple[str, str]]:
  """(inputs, targets) text of an example as the mixture renders it, or None when it is
  skipped (no pair, or empty inputs; empty targets become `mixture.no_label`, or skip
  when that is None)."""
  if hasattr(task.prompt, "apply"):
    pair = task.prompt.apply(example)
  else:
    rendered = task.prompt.render(example)
    pair = None if rendered is None else (rendered.inputs, rendered.targets)
  if pair is None or not pair[0]:
    return None
  if not pair[1]:
    return (pair[0], mixture.no_label) if mixture.no_label else None
  return pair


def _prompted_dataset(mixture: mixture_lib.PromptedMixture, task: mixture_lib.PromptedTask,
                      split: str, shuffle_files: bool, seed: Optional[int] = None
                      ) -> tf.data.Dataset:
  """Every rendered example of a task's split, in order: `{'inputs' [n], 'targets' [m]}`
  (tokens, no EOS) and their `*_pretokenized` texts."""
  del shuffle_files, seed
  vocab = mixture.vocab()

  def examples():
    for example in task.examples(split):
      pair = render(mixture, task, example)
      if pair is not None:
        yield {"inputs": np.asarray(vocab.encode(pair[0]), np.int32),
               "targets": np.asarray(vocab.encode(pair[1]), np.int32),
               "inputs_pretokenized": pair[0], "targets_pretokenized": pair[1]}

  tokens, text = tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.string)
  return tf.data.Dataset.from_generator(examples, output_signature={
      "inputs": tokens, "targets": tokens, "inputs_pretokenized": text,
      "targets_pretokenized": text})


def register_prompted_mixture(mixture: mixture_lib.PromptedMixture) -> seqio.Mixture:
  """Add (or replace) one seqio task per (dataset, prompt) of `mixture` and the seqio
  mixture of them under `mixture.name`, at the mixture's rates (read when seqio first
  asks for them, which loads the datasets' train splits)."""
  vocabulary = seqio.SentencePieceVocabulary(mixture.vocabulary, extra_ids=mixture.extra_ids)
  output_features = {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=False, dtype=tf.int32),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, dtype=tf.int32)}
  rates = functools.lru_cache(maxsize=1)(lambda: mixture.rates("train"))
  entries, seen = [], {}
  for index, task in enumerate(mixture.tasks):
    name = prompted_task_name(mixture.name, task.name)
    if name in seen:
      raise UserError(f"mixture {mixture.name!r}: prompts {seen[name]!r} and {task.name!r} "
                      f"both become seqio task {name!r}.")
    seen[name] = task.name
    _replace_task(name, source=seqio.FunctionDataSource(
        functools.partial(_prompted_dataset, mixture, task), splits=mixture.splits),
                  output_features=output_features,
                  preprocessors=[seqio.preprocessors.append_eos,
                                 seqio.CacheDatasetPlaceholder()])
    entries.append((name, lambda _, index=index: float(rates()[index])))
  if mixture.name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(mixture.name)
  return seqio.MixtureRegistry.add(mixture.name, entries)
