"""T0-Eval: rank classification over promptsource prompts, median over prompts.

For every dataset of the suite and every prompt: each validation example is rendered,
every answer choice scored (`RankScorer`, summed log-likelihood including EOS; per-token
normalisation on request), the best choice taken; accuracy per prompt, the median over
prompts per dataset, and the mean of the medians over datasets (spec §4.1).

Results (`results.json`):
  {"datasets": {name: {"prompts": {prompt: accuracy}, "median": m, "examples": n,
                       "random": r, "skipped": {prompt: reason}}},
   "average": a, "random_average": b,
   "per_example": {"correct": {name: {prompt: [1 | 0 | None per example]}},
                   "predicted": {name: {prompt: [choice index | None per example]}},
                   "gold": {name: [gold choice index per example]}},
   ...run metadata}
(`per_example` feeds paired comparisons between models: `evaluation/contrasts.py`.)
Accuracies are percentages. Every dataset is read and rendered before any is scored; a
run that stops midway leaves the datasets it scored in `results.partial.json`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Callable, Optional, Sequence

import numpy as np

from arch_objective import paths
from arch_objective.errors import UserError, integer_at_least
from arch_objective.evaluation.rank_classification import RankScorer, Request
from arch_objective.prompts import datasets as datasets_lib
from arch_objective.prompts import t0, templates

EOS_ID = 1
RESULTS_FILE = "results.json"
PARTIAL_FILE = "results.partial.json"   # the datasets scored so far (see `evaluate_suite`)


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


def _prefixed(prefix: Sequence[int], ids: np.ndarray) -> np.ndarray:
  return np.concatenate([np.asarray(prefix, np.int32), ids]) if len(prefix) else ids


@dataclasses.dataclass
class _Prepared:
  """A suite entry read and rendered, ready to score: per prompt, the rendered examples
  with a gold answer (`rows`: their indices) or the reason the prompt is skipped."""
  spec: object
  num_examples: int
  rendered: dict[str, tuple[list[int], list[templates.Rendered]]]
  skipped: dict[str, str]


def _examples_and_prompts(spec, data_dir, mapping):
  """A suite entry's examples and prompts: loaded for a `t0.EvalDataset`, given inline by
  any other entry (an object with `name`, `random`, `prompts` and `examples`)."""
  if isinstance(spec, t0.EvalDataset):
    examples = datasets_lib.load_examples(*_data_args(spec), spec.split, data_dir, mapping)
    return examples, templates.load_prompts(spec.dataset, spec.subset, spec.prompts)
  return list(spec.examples), list(spec.prompts)


def _source(spec, data_dir, mapping) -> str:
  if isinstance(spec, t0.EvalDataset):
    return datasets_lib.source(*_data_args(spec), spec.split, data_dir, mapping)
  return "examples given inline"


def _prepare(spec, data_dir, mapping, max_examples) -> _Prepared:
  """Read a suite entry's examples and render them under every prompt; any error names
  the entry and where its examples come from."""
  try:
    examples, prompts = _examples_and_prompts(spec, data_dir, mapping)
    if not examples:
      raise UserError("the evaluation split is empty.")
    if max_examples:
      examples = examples[:max_examples]
    rendered, skipped = {}, {}
    for prompt in prompts:
      if not prompt.has_choices:
        skipped[prompt.name] = "the template has no answer choices"
        continue
      rows, outs = [], []
      for i, example in enumerate(examples):
        out = prompt.render(example)
        if out is not None and out.gold:
          rows.append(i)
          outs.append(out)
      if not outs:
        skipped[prompt.name] = "no example renders under this template"
        continue
      rendered[prompt.name] = (rows, outs)
    if not rendered:
      raise UserError(f"no prompt could be scored ({skipped}).")
  except (ValueError, OSError) as e:
    source = _source(spec, data_dir, mapping)
    if source != str(e):
      message = f"T0-Eval dataset {spec.name} ({source}): {e}"
    else:  # the file cannot be located: `source` is this very message; say it once
      message = (f"T0-Eval dataset {e}" if str(e).startswith(f"{spec.name} ") else
                 f"T0-Eval dataset {spec.name}: {e}")
    try:
      error = type(e)(message)
    except TypeError:  # e.g. UnicodeDecodeError takes other arguments
      error = ValueError(message)
    raise error from e
  return _Prepared(spec, len(examples), rendered, skipped)


def _prepare_all(suite, data_dir, mapping, max_examples) -> list[_Prepared]:
  """`_prepare` of every suite entry; the errors of all entries that fail, as one."""
  prepared, errors = [], []
  for spec in suite:
    try:
      prepared.append(_prepare(spec, data_dir, mapping, max_examples))
    except (ValueError, OSError) as e:
      errors.append(e)
  if len(errors) == 1:
    raise errors[0]
  if errors:
    kind = (FileNotFoundError if all(isinstance(e, FileNotFoundError) for e in errors)
            else ValueError)
    details = " ".join(str(e).replace("T0-Eval dataset ", "", 1) for e in errors)
    raise kind(f"T0-Eval: {len(errors)} datasets cannot be read. {details}") \
        from errors[0]
  return prepared


def evaluate_suite(scorer: RankScorer, encode: Callable[[str], list[int]], *,
                   suite: Sequence = t0.T0_EVAL,
                   data_dir: Optional[str] = None, mapping: Optional[dict] = None,
                   max_examples: Optional[int] = None, normalize: bool = False,
                   bootstrap: int = 0, seed: int = 0,
                   log: Optional[Callable[[str], None]] = None,
                   partial_dir: Optional[str] = None,
                   metadata: Optional[dict] = None,
                   prompt_prefix: Sequence[int] = ()) -> dict:
  """Evaluate every dataset of `suite`; returns the results dict (module docstring).
  `prompt_prefix` (token ids, e.g. a UL2 paradigm token) starts every prompt.

  Every dataset is read and rendered under every prompt before anything is scored, so
  a missing or malformed file stops the run at once, naming every dataset at fault and
  its file.
  With `bootstrap=B`, `average_ci` is the 95% interval of the average over B resamplings
  of each dataset's examples (the same resampled examples for all its prompts).

  With `partial_dir`, `results.partial.json` there holds the datasets scored so far
  (`write_partial`, with `metadata`) after each dataset, and when the run stops on an
  exception or an interrupt (which is then raised again) the error too; `write` removes
  it once the complete results are written. Progress lines go to `log` (default: this
  module's logger at INFO).
  """
  log = log or logging.getLogger(__name__).info
  if max_examples is not None and not integer_at_least(max_examples, 1):
    raise UserError(f"max_examples must be a positive number of examples (or None for "
                    f"all of them), found {max_examples!r}.")
  if not integer_at_least(bootstrap, 0):
    raise UserError(f"bootstrap must be a number of resamplings >= 0 (0: no interval), "
                    f"found {bootstrap!r}.")
  prepared = _prepare_all(suite, data_dir, mapping, max_examples)
  tokens = _Tokens(encode)
  results, start = {}, time.time()
  correctness: dict[str, dict[str, np.ndarray]] = {}
  predicted: dict[str, dict[str, list]] = {}
  gold: dict[str, list] = {}
  run = {"normalize": normalize, "max_examples": max_examples, **(metadata or {})}
  try:
    for n, entry in enumerate(prepared, 1):
      spec = entry.spec
      accuracies = {}
      correctness[spec.name] = {}
      # One call for all of the dataset's prompts: fuller batches, and the programs they
      # need compile together.
      requests = [Request(_prefixed(prompt_prefix, tokens(o.inputs, eos=False)),
                          tuple(tokens(c, eos=True) for c in o.choices))
                  for _, outs in entry.rendered.values() for o in outs]
      every_score = scorer.score(requests, normalize=normalize) if requests else []
      offset = 0
      for name, (rows, outs) in entry.rendered.items():
        scores = every_score[offset:offset + len(outs)]
        offset += len(outs)
        correct = [int(np.argmax(s)) in o.gold for s, o in zip(scores, outs)]
        accuracies[name] = 100.0 * float(np.mean(correct))
        per_example = np.full(entry.num_examples, np.nan)
        per_example[rows] = correct
        correctness[spec.name][name] = per_example
        chosen = [None] * entry.num_examples
        for row, s, o in zip(rows, scores, outs):
          chosen[row] = int(np.argmax(s))
          gold.setdefault(spec.name, [None] * entry.num_examples)[row] = min(o.gold)
        predicted.setdefault(spec.name, {})[name] = chosen
      median = float(np.median(list(accuracies.values())))
      results[spec.name] = {"prompts": accuracies, "median": median,
                            "examples": entry.num_examples, "random": 100.0 * spec.random,
                            "skipped": entry.skipped}
      elapsed = time.time() - start
      log(f"[{n}/{len(suite)}] {spec.name}: median {median:.1f} over {len(accuracies)} "
          f"prompts, {entry.num_examples} examples ({elapsed:.0f}s, ETA "
          f"{elapsed / n * (len(suite) - n):.0f}s)")
      if partial_dir:
        write_partial(results, suite, partial_dir, run)
  except BaseException as e:
    if partial_dir and results:
      try:
        path = write_partial(results, suite, partial_dir, run, error=e)
        log(f"stopped after {len(results)} of {len(suite)} datasets "
            f"({type(e).__name__}); their results are in {path}")
      except Exception as write_error:  # keep the original error
        log(f"could not write the partial results to {partial_dir}: {write_error}")
    raise
  out = {"datasets": results,
         "average": float(np.mean([r["median"] for r in results.values()])),
         "random_average": float(np.mean([r["random"] for r in results.values()])),
         "normalize": normalize, "max_examples": max_examples,
         "per_example": {
             "correct": {d: {p: [None if np.isnan(v) else int(v) for v in values]
                             for p, values in prompts.items()}
                         for d, prompts in correctness.items()},
             "predicted": predicted, "gold": gold}}
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
    raise UserError(f"unknown T0-Eval dataset(s) {unknown}; valid: "
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
  """Write `results.json` and `results.md` into `out_dir` (local or remote), then remove
  the `results.partial.json` of an earlier, stopped run there; returns their paths."""
  out_dir = paths.normalize(out_dir, "output directory")
  paths.makedirs(out_dir)
  json_path = paths.join(out_dir, RESULTS_FILE)
  md_path = paths.join(out_dir, "results.md")
  paths.write_text(json_path, json.dumps(results, indent=2))
  paths.write_text(md_path, markdown(results, paper=paper))
  partial = paths.join(out_dir, PARTIAL_FILE)
  if paths.exists(partial):
    paths.remove(partial)
  return json_path, md_path


def write_partial(results: dict, suite: Sequence, out_dir: str, run: dict,
                  error: Optional[BaseException] = None) -> str:
  """Write `results.partial.json` into `out_dir`: `{"partial": true, "completed": [...],
  "remaining": [...], "datasets": {...}, "error": "<type>: <message>" (if stopped by
  one)}` and the run's settings `run`; no average (the suite is incomplete). Returns
  its path. `results.json` is left as it is."""
  out_dir = paths.normalize(out_dir, "output directory")
  paths.makedirs(out_dir)
  path = paths.join(out_dir, PARTIAL_FILE)
  body = {"partial": True, "completed": list(results),
          "remaining": [s.name for s in suite if s.name not in results],
          "datasets": results, **run}
  if error is not None:
    body["error"] = type(error).__name__ + (f": {error}" if str(error) else "")
  paths.write_text(path, json.dumps(body, indent=2))
  return path
