"""Registering our tasks with seqio, so `seqio.get_dataset(name, ...)` serves them in t5x's
contract: task features `inputs`/`targets` (or `targets`) at the TASK_FEATURE_LENGTHS
asked for, model features from seqio's own converters.

  our task                          t5x TASK_FEATURE_LENGTHS (626)      seqio converter
  <corpus>_full_lm                  {'targets': 626}                    LM / Decoder
  <corpus>_prefix_lm_decoder        {'inputs': 626, 'targets': 626}     PrefixLM / Decoder
  <corpus>_prefix_lm_encoder_decoder {'inputs': 626, 'targets': 626}    EncDec
  <corpus>_span_corruption          {'inputs': 512, 'targets': 114}     EncDec, PrefixLM
  a prompted mixture (t0_train)     {'inputs': 1024, 'targets': 256}    EncDec, PrefixLM

The prefix LM's chunk is `inputs` long (t5's `prefix_lm`) and `targets` must hold any
split's rest (>= inputs - 1). Packed, the encoder-decoder's rows are the paper's ED:PLM
rows (two chunks with complementary splits per 626 / 626 row); the decoders' packed
PrefixLM rows are 1252 long and hold two paper rows (626 each) as two segments, the
paper's ND:PLM row geometry being one chunk per 626-token row (`registry.TaskSpec.rows`).

`tasks.seqio_providers` holds the providers (it imports TensorFlow; this module does
not until something is registered).
"""
from __future__ import annotations

from arch_objective.data import registry

_ENABLED = False


def enabled() -> bool:
  """Whether new specs are also registered with seqio (after `import tasks.seqio_tasks`)."""
  return _ENABLED


def enable():
  """Register every spec and prompted mixture with seqio, now and from now on."""
  from arch_objective.prompts import mixture as mixture_lib

  global _ENABLED
  _ENABLED = True
  for name in registry.names():
    spec = registry.get(name)
    if isinstance(spec, (registry.TaskSpec, mixture_lib.PromptedMixture)):
      register(spec)


def register(spec):
  """Add (or replace) the seqio task of a `TaskSpec`, or the seqio tasks and mixture of a
  `PromptedMixture`. Imports seqio and TensorFlow."""
  from arch_objective.prompts import mixture as mixture_lib
  from tasks import seqio_providers

  if isinstance(spec, registry.TaskSpec):
    return seqio_providers.register_spec(spec)
  if isinstance(spec, mixture_lib.PromptedMixture):
    return seqio_providers.register_prompted_mixture(spec)
  raise TypeError(f"{type(spec).__name__} {getattr(spec, 'name', spec)!r} has no seqio form; "
                  f"seqio registers TaskSpec and PromptedMixture.")
