"""T0-Eval: rank classification over promptsource prompts, median over prompts.

For every dataset of the suite and every prompt: each validation example is rendered,
every answer choice scored (`RankScorer`, summed log-likelihood including EOS; per-token
normalisation on request), the best choice taken; accuracy per prompt, the median over
prompts per dataset, and the mean of the medians over datasets (spec §4.1).

Results (`results.json`):
  {"datasets": {name: {"prompts": {prompt: accuracy}, "median": m, "examples": n,
                       "random": r, "skipped": {prompt: reason}}},
   "average": a, "random_average": b, ...run metadata}
Accuracies are percentages.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Optional, Sequence

import numpy as np

from arch_objective import paths
from arch_objective.evaluation.rank_classification import RankScorer, Request
from arch_objective.prompts import datasets as datasets_lib
from arch_objective.prompts import t0, templates

EOS_ID = 1


class _Tokens:
  """Memoised tokenisation (answer choices repeat across examples)."""

  def __init__(self, encode: Callable[[str], list[int]]):
    self._encode, self._cache = encode, {}

  def __call__(self, text: str, eos: bool) -> np.ndarray:
    key = (text, eos)
    if key not in self._cache:
      ids = list(self._encode(text)) + ([EOS_ID] if eos else [])
      self._cache[key] = np.asarray(ids, np.int32)
    return self._cache[key]


def _examples_and_prompts(spec, data_dir, mapping):
  """A suite entry's examples and prompts: loaded for a `t0.EvalDataset`, given inline by
  any other entry (an object with `name`, `random`, `prompts` and `examples`)."""
  if isinstance(spec, t0.EvalDataset):
    examples = datasets_lib.load_examples(*_data_args(spec), spec.split, data_dir, mapping)
    return examples, templates.load_prompts(spec.dataset, spec.subset, spec.prompts)
  return list(spec.examples), list(spec.prompts)


def evaluate_suite(scorer: RankScorer, encode: Callable[[str], list[int]], *,
                   suite: Sequence = t0.T0_EVAL,
                   data_dir: Optional[str] = None, mapping: Optional[dict] = None,
                   max_examples: Optional[int] = None, normalize: bool = False,
                   bootstrap: int = 0, seed: int = 0,
                   log: Callable[[str], None] = print) -> dict:
  """Evaluate every dataset of `suite`; returns the results dict (module docstring).

  With `bootstrap=B`, `average_ci` is the 95% interval of the average over B resamplings
  of each dataset's examples (the same resampled examples for all its prompts).
  """
  tokens = _Tokens(encode)
  results, start = {}, time.time()
  correctness: dict[str, dict[str, np.ndarray]] = {}
  for n, spec in enumerate(suite, 1):
    examples, prompts = _examples_and_prompts(spec, data_dir, mapping)
    if not examples:
      raise ValueError(f"{spec.name}: the evaluation split is empty.")
    if max_examples:
      examples = examples[:max_examples]
    accuracies, skipped = {}, {}
    correctness[spec.name] = {}
    for prompt in prompts:
      if not prompt.has_choices:
        skipped[prompt.name] = "the template has no answer choices"
        continue
      requests, golds, rows = [], [], []
      for i, example in enumerate(examples):
        rendered = prompt.render(example)
        if rendered is None or not rendered.gold:
          continue
        requests.append(Request(tokens(rendered.inputs, eos=False),
                                tuple(tokens(c, eos=True) for c in rendered.choices)))
        golds.append(rendered.gold)
        rows.append(i)
      if not requests:
        skipped[prompt.name] = "no example renders under this template"
        continue
      scores = scorer.score(requests, normalize=normalize)
      correct = [int(np.argmax(s)) in g for s, g in zip(scores, golds)]
      accuracies[prompt.name] = 100.0 * float(np.mean(correct))
      per_example = np.full(len(examples), np.nan)
      per_example[rows] = correct
      correctness[spec.name][prompt.name] = per_example
    if not accuracies:
      raise ValueError(f"{spec.name}: no prompt could be scored ({skipped}).")
    median = float(np.median(list(accuracies.values())))
    results[spec.name] = {"prompts": accuracies, "median": median, "examples": len(examples),
                          "random": 100.0 * spec.random, "skipped": skipped}
    elapsed = time.time() - start
    log(f"[{n}/{len(suite)}] {spec.name}: median {results[spec.name]['median']:.1f} over "
        f"{len(accuracies)} prompts, {len(examples)} examples ({elapsed:.0f}s, ETA "
        f"{elapsed / n * (len(suite) - n):.0f}s)")
  out = {"datasets": results,
         "average": float(np.mean([r["median"] for r in results.values()])),
         "random_average": float(np.mean([r["random"] for r in results.values()])),
         "normalize": normalize, "max_examples": max_examples}
  if bootstrap:
    out["average_ci"] = bootstrap_interval(correctness, bootstrap, seed)
  return out


def bootstrap_interval(correctness: dict[str, dict[str, np.ndarray]], resamples: int,
                       seed: int = 0) -> list[float]:
  """95% percentile interval of the suite average (median over prompts, mean over
  datasets) when each dataset's examples are resampled with replacement."""
  rng = np.random.default_rng(seed)
  averages = []
  for _ in range(resamples):
    medians = []
    for prompts in correctness.values():
      n = len(next(iter(prompts.values())))
      idx = rng.integers(0, n, n)
      medians.append(np.median([100.0 * np.nanmean(c[idx]) if np.any(~np.isnan(c[idx]))
                                else 0.0 for c in prompts.values()]))
    averages.append(np.mean(medians))
  return [float(np.percentile(averages, 2.5)), float(np.percentile(averages, 97.5))]


def _data_args(spec: t0.EvalDataset):
  dataset, _, subset = spec.data_key.partition("/")
  return dataset, subset or None


def select(names: Optional[Sequence[str]]) -> tuple[t0.EvalDataset, ...]:
  """Suite entries by name (`super_glue/rte`, `anli/r1`, ...); all if None."""
  if not names:
    return t0.T0_EVAL
  unknown = [n for n in names if n not in t0.T0_EVAL_BY_NAME]
  if unknown:
    raise ValueError(f"unknown T0-Eval dataset(s) {unknown}; valid: "
                     f"{', '.join(t0.T0_EVAL_BY_NAME)}.")
  return tuple(t0.T0_EVAL_BY_NAME[n] for n in names)


def markdown(results: dict, title: str = "T0-Eval", paper: bool = False) -> str:
  """The results as a markdown table (and the paper's numbers if asked)."""
  lines = [f"## {title}", "", "| dataset | prompts | median accuracy | random |",
           "|---|---|---|---|"]
  for name, r in results["datasets"].items():
    lines.append(f"| {name} | {len(r['prompts'])} | {r['median']:.1f} | {r['random']:.1f} |")
  lines.append(f"| **average** | | **{results['average']:.1f}** | "
               f"{results['random_average']:.1f} |")
  if paper:
    lines += ["", "The paper's T0-Eval averages (11 datasets, spec §6):", "",
              "| model | T0-Eval |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t0.PAPER_T0_EVAL.items()]
  return "\n".join(lines) + "\n"


def write(results: dict, out_dir: str, paper: bool = False) -> tuple[str, str]:
  """Write `results.json` and `results.md` into `out_dir` (local or remote); returns
  their paths."""
  out_dir = paths.normalize(out_dir, "output directory")
  paths.makedirs(out_dir)
  json_path = paths.join(out_dir, "results.json")
  md_path = paths.join(out_dir, "results.md")
  paths.write_text(json_path, json.dumps(results, indent=2))
  paths.write_text(md_path, markdown(results, paper=paper))
  return json_path, md_path
