"""Prompted training mixtures for multitask finetuning (MT-F), e.g. T0's `d4_train`.

One task per (dataset, prompt). Mixing is examples-proportional as promptsource does:
a task's rate is its dataset's training size, or `cap // number of prompts` when the
dataset has more than `cap` (500,000) examples. Each draw picks a task with probability
proportional to its rate (keyed per draw and per host), then the task's next example in
a per-epoch shuffled order. Inputs have no EOS, targets end in EOS (spec §3.2).

Examples a prompt does not apply to are handled as promptsource's seqio tasks (which T0
trained on) handle them: an example the template yields no `inputs ||| targets` pair for,
or empty inputs, is skipped (T0 filters it out); an example with an empty target is kept
with the target `NO_LABEL` ('<NO LABEL>', T0's target for them; `no_label=None` skips
them instead). Neither is silent: `render_counts()` holds the numbers per task, and a
warning names the task and its numbers after each pass over its examples.

Rows per architecture (spec §3.3): decoder-only models read `inputs ++ targets` packed in
rows of `inputs_length + targets_length` (1024 + 256), loss on targets, the ND attending
bidirectionally over the inputs; the ED reads packed 1024 / 256 rows.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from arch_objective import architectures
from arch_objective.data import registry
from arch_objective.data import task as task_lib
from arch_objective.errors import UserError
from arch_objective.objectives import chunking, feature_converters
from arch_objective.prompts import datasets as datasets_lib
from arch_objective.prompts import templates

EOS_ID = 1
_SALT = 17
# The target T0's tasks give an example whose template renders an empty target
# (promptsource `seqio_tasks/utils.py`, `apply_template`).
NO_LABEL = "<NO LABEL>"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PromptedTask:
  """One (dataset, prompt) task: `examples(split)` gives raw HF-format examples."""
  name: str
  prompt: Any                 # .apply(example) -> (inputs, targets) | None (a promptsource
                              # `templates.Prompt`), or .render(example) -> Rendered | None
  examples: Callable[[str], Sequence[dict]]
  num_prompts: int                             # prompts of the same dataset (for the cap)


@dataclasses.dataclass(frozen=True)
class PromptedMixture(task_lib.Task):
  """A mixture readable by the trainer (a `data.task.Task`)."""
  name: str
  tasks: tuple[PromptedTask, ...]
  vocabulary: str
  extra_ids: int = 100
  inputs_length: int = 1024
  targets_length: int = 256
  cap: int = 500_000
  splits: tuple[str, ...] = ("train", "validation")
  no_label: Optional[str] = NO_LABEL        # target of empty-target examples; None skips
  # task name -> {"examples", "skipped", "no_label"} over every stream of this mixture
  _counts: dict = dataclasses.field(default_factory=dict, init=False, compare=False,
                                    repr=False)

  @property
  def architectures(self):
    return architectures.ARCHITECTURES

  @property
  def default_architecture(self) -> str:
    """Decoder-only rows (`inputs ++ targets`) when no architecture is named."""
    return architectures.CAUSAL_DECODER

  def vocab(self):
    return registry.load_vocabulary(self.vocabulary, self.extra_ids)

  def rates(self, split: str = "train") -> np.ndarray:
    sizes = [len(t.examples(split)) for t in self.tasks]
    return np.asarray([n if n <= self.cap else self.cap // t.num_prompts
                       for n, t in zip(sizes, self.tasks)], np.float64)

  def task_examples(self, split: str = "train", *, arch: Optional[str] = None, seed: int = 0,
                    shard_index: int = 0, num_shards: int = 1, start: Optional[dict] = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Endless tokenised `{'inputs', 'targets'}` examples drawn from the mixture.

    Each example is a `chunking.Tagged` dict whose `where` is the mixture's state before
    its draw, `{"draw": d, "positions": [examples read of each task]}`; with
    `start=where` the stream continues at that draw without rendering anything before
    it (the orders of the tasks' examples are keyed by (seed, task, epoch)). The
    skipped/no-label warnings count from the restart.
    """
    del arch
    rates = self.rates(split)
    if rates.sum() == 0:
      raise UserError(f"mixture {self.name!r}: every task's {split} split is empty.")
    probs = rates / rates.sum()
    vocab = self.vocab()
    encode = functools.lru_cache(maxsize=65536)(vocab.encode)
    positions = [0] * len(self.tasks)
    draw = 0
    if start:
      if len(start["positions"]) != len(self.tasks):
        raise UserError(f"mixture {self.name!r}: the saved state has positions for "
                        f"{len(start['positions'])} tasks, the mixture has "
                        f"{len(self.tasks)}; resume with the same datasets and prompts.")
      positions, draw = [int(p) for p in start["positions"]], int(start["draw"])
    passes = [dict.fromkeys(_OUTCOMES, 0) for _ in self.tasks]
    orders: dict[tuple[int, int], np.ndarray] = {}
    seed = registry.shard_seed(seed, shard_index, num_shards)
    while True:
      where = {"draw": draw, "positions": list(positions)}
      rng = np.random.default_rng([seed & 0xFFFFFFFF, _SALT, draw])
      draw += 1
      t = int(rng.choice(len(self.tasks), p=probs))
      task = self.tasks[t]
      examples = task.examples(split)
      # Examples a prompt does not apply to are skipped within the task, so every task
      # keeps its share of the mixture (as filtering inside a seqio task does).
      for _ in range(len(examples)):
        epoch, offset = divmod(positions[t], len(examples))
        positions[t] += 1
        if (t, epoch) not in orders:
          orders = {k: v for k, v in orders.items() if k[0] != t}
          orders[(t, epoch)] = np.random.default_rng(
              [seed & 0xFFFFFFFF, _SALT, t, epoch]).permutation(len(examples))
        pair = self._apply(task, examples[int(orders[(t, epoch)][offset])], passes[t])
        if offset == len(examples) - 1:
          self._report(task, split, len(examples), passes[t])
        if pair is not None:
          break
      else:
        empty = "" if self.no_label else " or an empty target"
        raise UserError(f"mixture {self.name!r}: task {task.name!r} renders none of its "
                        f"{len(examples)} {split} examples (for each the template yields "
                        f"no 'inputs ||| targets' pair, empty inputs{empty}).")
      inputs, targets = pair
      yield chunking.tag({"inputs": np.asarray(encode(inputs), np.int32),
                          "targets": np.asarray(list(encode(targets)) + [EOS_ID], np.int32)},
                         where)

  def _apply(self, task: PromptedTask, example: dict, this_pass: dict
             ) -> Optional[tuple[str, str]]:
    """(inputs, targets) of one example, or None when it is skipped; counts both."""
    if hasattr(task.prompt, "apply"):
      pair = task.prompt.apply(example)
    else:
      rendered = task.prompt.render(example)
      pair = None if rendered is None else (rendered.inputs, rendered.targets)
    if pair is not None and not pair[0]:
      pair = None
    outcome = "examples"
    if pair is None:
      outcome = "skipped"
    elif not pair[1]:
      outcome = "no_label"
      pair = (pair[0], self.no_label) if self.no_label else None
    for counts in (self._counts.setdefault(task.name, dict.fromkeys(_OUTCOMES, 0)),
                   this_pass):
      counts["examples"] += 1
      if outcome != "examples":
        counts[outcome] += 1
    return pair

  def _report(self, task: PromptedTask, split: str, size: int, this_pass: dict):
    """After a pass over a task's examples: a warning if any were skipped or had an
    empty target, then a fresh count for the next pass."""
    skipped, no_label = this_pass["skipped"], this_pass["no_label"]
    if skipped or no_label:
      what = []
      if skipped:
        what.append(f"{skipped} yield no example under the template (skipped, as T0 does)")
      if no_label:
        what.append(f"{no_label} have an empty target (" + (
            f"trained on {self.no_label!r}, as T0 does)" if self.no_label else "skipped)"))
      log.warning("mixture %r, task %s: of its %d %s examples, %s.", self.name, task.name,
                  size, split, " and ".join(what))
    this_pass.update(dict.fromkeys(_OUTCOMES, 0))

  def render_counts(self) -> dict[str, dict[str, int]]:
    """Per task, over every example this mixture's streams have read so far: how many
    (`examples`), how many were skipped because the template yields no example for them
    (`skipped`), and how many had an empty target (`no_label`: trained on `no_label`, or
    skipped too when it is None). Tasks not read yet are absent."""
    return {name: dict(counts) for name, counts in self._counts.items()}

  def positioned_rows(self, split: str = "train", *, arch: Optional[str] = None, seed: int = 0,
                      shard_index: int = 0, num_shards: int = 1, pack: bool = True,
                      start: Optional[dict] = None) -> Iterator[dict[str, np.ndarray]]:
    """Model rows for `arch` (`default_architecture` when None), each tagged with the mixture
    state its first example was drawn at (`task_examples`); `start` continues there."""
    examples = self.task_examples(split, seed=seed, shard_index=shard_index,
                                  num_shards=num_shards, start=start)
    return feature_converters.inputs_targets_rows(arch or self.default_architecture,
                                                  examples, self.inputs_length,
                                                  self.targets_length, pack)


_OUTCOMES = ("examples", "skipped", "no_label")


def from_promptsource(name: str, dataset_names: Sequence[tuple[str, Optional[str]]], *,
                      vocabulary: str, data_dir: Optional[str] = None,
                      mapping: Optional[dict] = None,
                      excluded_prompts: Optional[dict] = None, **kwargs) -> PromptedMixture:
  """A mixture of every promptsource prompt of the given (dataset, subset) pairs."""
  tasks = []
  for dataset, subset in dataset_names:
    @functools.lru_cache(maxsize=None)
    def examples(split, dataset=dataset, subset=subset):
      return datasets_lib.load_examples(dataset, subset, split, data_dir, mapping)
    excluded = (excluded_prompts or {}).get((dataset, subset), ())
    prompts = [p for p in templates.load_prompts(dataset, subset)
               if not any(p.name.startswith(x) for x in excluded)]
    for p in prompts:
      tasks.append(PromptedTask(f"{templates.dataset_key(dataset, subset)}/{p.name}", p,
                                examples, len(prompts)))
  if not tasks:
    raise UserError(f"mixture {name!r}: no prompts for {list(dataset_names)}.")
  return PromptedMixture(name, tuple(tasks), vocabulary, **kwargs)
