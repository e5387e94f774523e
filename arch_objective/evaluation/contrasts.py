"""Paired comparisons of two evaluations on the same examples.

T0-Eval's score of a model is the mean over datasets of the median over prompts of the
accuracy over examples. Two models scored on the same examples (and prompts) are
compared by the difference of their scores; its uncertainty comes from a paired
bootstrap: each resampling draws every dataset's example indices once, with
replacement, and scores both models on those same examples under every prompt, so the
examples' shared difficulty cancels out of the difference. That interval is far
narrower than the two models' separate intervals suggest.

A correctness table is `{dataset: {prompt: [n] values}}` of 1 (right), 0 (wrong) or
None/NaN (the example was not scored under that prompt): `per_example["correct"]` of
`t0_eval.evaluate_suite`'s results.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from arch_objective.errors import UserError

Correctness = Mapping[str, Mapping[str, Sequence[float]]]


def _as_arrays(table: Correctness) -> dict[str, dict[str, np.ndarray]]:
  return {d: {p: np.array([np.nan if x is None else x for x in v], np.float64)
              for p, v in prompts.items()}
          for d, prompts in table.items()}


def _check_paired(a: dict, b: dict, names: tuple[str, str]):
  if sorted(a) != sorted(b):
    raise UserError(f"{names[0]} and {names[1]} were scored on different datasets: "
                    f"{sorted(a)} vs {sorted(b)}; a paired comparison needs the same ones.")
  for dataset in a:
    if sorted(a[dataset]) != sorted(b[dataset]):
      raise UserError(f"{dataset}: {names[0]} and {names[1]} used different prompts "
                      f"({sorted(a[dataset])} vs {sorted(b[dataset])}).")
    sizes = {len(v) for v in a[dataset].values()} | {len(v) for v in b[dataset].values()}
    if len(sizes) != 1:
      raise UserError(f"{dataset}: {names[0]} and {names[1]} have different numbers of "
                      f"examples ({sorted(sizes)}); a paired comparison needs the same "
                      f"examples.")


def suite_score(table: Correctness, indices: Mapping[str, np.ndarray] | None = None) -> float:
  """Mean over datasets of the median over prompts of the accuracy (%) over examples
  (`indices[dataset]`: the examples to use, e.g. a bootstrap draw; all by default).
  A prompt with no scored example among them counts 0."""
  medians = []
  for dataset, prompts in _as_arrays(table).items():
    accuracies = []
    for values in prompts.values():
      chosen = values if indices is None else values[indices[dataset]]
      scored = chosen[~np.isnan(chosen)]
      accuracies.append(100.0 * float(scored.mean()) if scored.size else 0.0)
    medians.append(float(np.median(accuracies)))
  return float(np.mean(medians))


def _suite_scores(table: dict[str, dict[str, np.ndarray]],
                  draws: Mapping[str, np.ndarray]) -> np.ndarray:
  """`suite_score` of `table` under each of R draws at once (`draws[dataset]`: [R, n]
  example indices) -> [R]."""
  medians = []
  for dataset, prompts in table.items():
    accuracies = []
    for values in prompts.values():
      chosen = values[draws[dataset]]                                   # [R, n]
      scored = ~np.isnan(chosen)
      count = scored.sum(axis=1)
      total = np.where(scored, chosen, 0.0).sum(axis=1)
      accuracies.append(np.where(count > 0, 100.0 * (total / np.maximum(count, 1)), 0.0))
    medians.append(np.median(np.stack(accuracies), axis=0))           # [R]
  return np.mean(np.stack(medians), axis=0)


def paired_difference(a: Correctness, b: Correctness, *, resamples: int = 1000,
                      seed: int = 0, names: tuple[str, str] = ("a", "b")) -> dict:
  """`score(a) - score(b)` with a paired bootstrap 95% percentile interval.

  Returns {"difference", "ci": [low, high], "score_a", "score_b", "resamples",
  "excludes_zero"}; `excludes_zero` says whether the interval lies on one side of 0.
  """
  out = paired_combination([a, b], [1.0, -1.0], resamples=resamples, seed=seed, names=names)
  score_a, score_b = out.pop("scores")
  return {"difference": out["value"], "ci": out["ci"], "score_a": score_a,
          "score_b": score_b, "resamples": resamples, "excludes_zero": out["excludes_zero"]}


def paired_combination(tables: Sequence[Correctness], weights: Sequence[float], *,
                       resamples: int = 1000, seed: int = 0,
                       names: Sequence[str] | None = None) -> dict:
  """`sum_i weights[i] * score(tables[i])` with a paired bootstrap 95% percentile
  interval: each resampling draws the same examples for every table. With weights
  (1, -1, -1, 1) over (A, B at one width; A, B at another) it is how much the contrast
  A - B changes between them.

  Returns {"value", "ci": [low, high], "scores": [score of each table], "resamples",
  "excludes_zero"}.
  """
  if len(tables) != len(weights) or not tables:
    raise UserError(f"paired_combination needs one weight per table, found "
                    f"{len(tables)} tables and {len(weights)} weights.")
  names = list(names or [f"table {i}" for i in range(len(tables))])
  if len(names) != len(tables):
    raise UserError(f"paired_combination needs one name per table, found {len(tables)} "
                    f"tables and {len(names)} names.")
  arrays = [_as_arrays(t) for t in tables]
  for i in range(1, len(arrays)):
    _check_paired(arrays[0], arrays[i], (names[0], names[i]))
  if resamples < 1:
    raise UserError(f"resamples must be >= 1, found {resamples}.")
  rng = np.random.default_rng(seed)
  sizes = {d: len(next(iter(p.values()))) for d, p in arrays[0].items()}
  # The draws in the order a loop over resamplings, then datasets, takes them.
  draws = {d: np.empty((resamples, n), np.int64) for d, n in sizes.items()}
  for r in range(resamples):
    for d, n in sizes.items():
      draws[d][r] = rng.integers(0, n, n)
  values = sum(w * _suite_scores(t, draws) for w, t in zip(weights, arrays))
  low, high = np.percentile(values, [2.5, 97.5])
  scores = [suite_score(t) for t in arrays]
  return {"value": float(sum(w * s for w, s in zip(weights, scores))),
          "ci": [float(low), float(high)], "scores": scores, "resamples": resamples,
          "excludes_zero": bool(low > 0 or high < 0)}


def shared_examples(tables: Sequence[Correctness],
                    golds: Sequence[Mapping[str, Sequence[int]]] | None = None,
                    names: Sequence[str] | None = None) -> list[dict]:
  """`tables` cut to the examples they share: per dataset, the first n examples, n the
  smallest count among them. For evaluations whose example i does not depend on how many
  were scored (the study's world, a dataset's first `max_examples`), so that a run
  scored on 300 examples pairs with one scored on 150.

  `golds` (each table's `per_example["gold"]`: {dataset: [n] gold answers}) are checked
  on the shared examples: a dataset whose gold answers differ there was not scored on
  the same examples, and is named in the error. Datasets and prompts must match as in
  `paired_combination`.
  """
  names = list(names or [f"table {i}" for i in range(len(tables))])
  if len(names) != len(tables) or (golds is not None and len(golds) != len(tables)):
    raise UserError(f"shared_examples needs one name (and gold table) per table, found "
                    f"{len(tables)} tables, {len(names)} names and "
                    f"{'no' if golds is None else len(golds)} gold tables.")
  if not tables:
    return []
  for i in range(1, len(tables)):
    if sorted(tables[0]) != sorted(tables[i]):
      raise UserError(f"{names[0]} and {names[i]} were scored on different datasets: "
                      f"{sorted(tables[0])} vs {sorted(tables[i])}.")
  counts = {d: min(len(v) for t in tables for v in t[d].values()) for d in tables[0]}
  if golds is not None:
    for d, n in counts.items():
      first = list(golds[0].get(d, []))[:n]
      for i in range(1, len(golds)):
        other = list(golds[i].get(d, []))[:n]
        if len(first) != n or other != first:
          raise UserError(f"{d}: {names[0]} and {names[i]} have different gold answers on "
                          f"their first {n} examples, so they were not scored on the same "
                          f"examples and cannot be paired.")
  return [{d: {p: list(v)[:counts[d]] for p, v in t[d].items()} for d in t} for t in tables]
