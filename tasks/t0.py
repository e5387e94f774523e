"""The T0 training mixture (`t0_train`, promptsource's `d4_train`) and ad-hoc prompted
mixtures over any promptsource datasets."""
from __future__ import annotations

from typing import Optional, Sequence

from arch_objective.data import registry, vocabularies
from arch_objective.prompts import datasets as datasets_lib
from arch_objective.prompts import mixture, t0
from arch_objective.training import sources
from tasks import seqio_bridge

T0_TRAIN = sources.T0_TRAIN


def parse_datasets(names: Sequence[str]) -> list[tuple[str, Optional[str]]]:
  """'super_glue/rte' -> ('super_glue', 'rte'); 'imdb' -> ('imdb', None)."""
  out = []
  for name in names:
    dataset, _, subset = name.partition("/")
    out.append((dataset, subset or None))
  return out


def register_prompted_mixture(name: str = T0_TRAIN, *, datasets: Optional[Sequence[str]] = None,
                              data_dir: Optional[str] = None, mapping: Optional[str] = None,
                              vocabulary: str = vocabularies.DEFAULT_VOCABULARY_PATH,
                              extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS,
                              inputs_length: int = 1024, targets_length: int = 256,
                              with_seqio: Optional[bool] = None) -> mixture.PromptedMixture:
  """Register a mixture of every prompt of `datasets` (default: T0's d4_train list).

  `with_seqio=None` registers its seqio tasks and mixture too once `tasks.seqio_tasks` was
  imported (`tasks.seqio_providers.register_prompted_mixture`)."""
  pairs = parse_datasets(datasets) if datasets else list(t0.D4_TRAIN)
  spec = mixture.from_promptsource(
      name, pairs, vocabulary=vocabulary, data_dir=data_dir,
      mapping=datasets_lib.load_mapping(mapping), extra_ids=extra_ids,
      excluded_prompts=t0.D4_TRAIN_EXCLUDED_PROMPTS, inputs_length=inputs_length,
      targets_length=targets_length)
  registry.register(spec)
  if with_seqio is None:
    with_seqio = seqio_bridge.enabled()
  if with_seqio:
    seqio_bridge.register(spec)
  return spec
