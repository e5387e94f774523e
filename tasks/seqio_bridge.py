"""Registering a `TaskSpec` with seqio, so `seqio.get_mixture_or_task(name)` serves it.

The seqio task's source runs the same numpy pipeline (`TaskSpec.task_examples`) inside
`tf.data.Dataset.from_generator`; its output features are the spec's task features.
"""
from __future__ import annotations

from arch_objective import architectures
from arch_objective.data import registry

_ENABLED = False


def enabled() -> bool:
  """Whether new specs are also registered with seqio (after `import tasks.seqio_tasks`)."""
  return _ENABLED


def enable():
  """Register every spec with seqio, now and from now on."""
  global _ENABLED
  _ENABLED = True
  for name in registry.names():
    spec = registry.get(name)
    if isinstance(spec, registry.TaskSpec):  # prompted mixtures are not bridged
      register(spec)


def register(spec: registry.TaskSpec):
  """Add (or replace) the seqio task of `spec`. Imports seqio and TensorFlow."""
  import seqio
  import tensorflow as tf

  names = registry.TASK_FEATURES[spec.kind]
  signature = {k: tf.TensorSpec([None], tf.int32) for k in names}

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files  # document order is the source's; randomness is keyed per example
    return tf.data.Dataset.from_generator(
        lambda: spec.task_examples(split, seed=seed or 0), output_signature=signature)

  vocabulary = seqio.SentencePieceVocabulary(spec.vocabulary, extra_ids=spec.extra_ids)
  output_features = {
      k: seqio.Feature(vocabulary=vocabulary if k in architectures.TOKEN_FEATURES
                       else seqio.PassThroughVocabulary(size=0),
                       add_eos=False, dtype=tf.int32)
      for k in names}
  if spec.name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(spec.name)
  seqio.TaskRegistry.add(spec.name, source=seqio.FunctionDataSource(
      dataset_fn, splits=spec.splits), preprocessors=[], output_features=output_features)
