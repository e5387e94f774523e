"""Whether a model's answers carry information about the gold answers: Cohen's kappa.

Accuracy alone does not separate a model that answers one class whatever the input from
one that reads the input: both can sit at the majority baseline. Cohen's kappa compares
the accuracy p_o with the accuracy p_e that the model's own answer frequencies would get
if its answers were independent of the gold ones, p_e = sum_k P(answer k) P(gold k):

  kappa = (p_o - p_e) / (1 - p_e)

0 when the answers carry no information (always so for a constant answer), 1 when they
are all right, negative when they are worse than independent. A family's kappa is the
median over its prompts, as its score is; its interval comes from a bootstrap over the
examples that draws the same examples under every prompt.

`predicted` is `{prompt: [n] answer indices}` and `gold` `[n]` answer indices, with None
for an example that was not scored (it is left out).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from arch_objective.errors import UserError


def _kappa(weights: np.ndarray, predicted: np.ndarray, gold: np.ndarray,
           num_choices: int) -> np.ndarray:
  """Kappa of one prompt under each row of `weights` [r, n] (how often each example is
  drawn); `predicted` and `gold` are [n] with -1 for an unscored example. Returns [r]."""
  scored = (predicted >= 0) & (gold >= 0)
  w = weights * scored
  total = w.sum(-1)
  eye = np.eye(num_choices)
  answers = eye[np.where(scored, predicted, 0)]  # [n, k]
  golds = eye[np.where(scored, gold, 0)]
  with np.errstate(invalid="ignore", divide="ignore"):
    observed = (w * (predicted == gold)).sum(-1) / total
    expected = ((w @ answers) * (w @ golds)).sum(-1) / total ** 2
    kappa = (observed - expected) / (1.0 - expected)
  # One answer for everything that is also the one gold answer: p_o = p_e = 1, and the
  # answers say nothing about the input.
  return np.where(np.isclose(expected, 1.0) | (total == 0), 0.0, kappa)


def _as_array(values: Sequence[Optional[int]]) -> np.ndarray:
  return np.array([-1 if v is None else v for v in values], np.int64)


def kappa(predicted: Sequence[Optional[int]], gold: Sequence[Optional[int]],
          num_choices: int) -> float:
  """Cohen's kappa of one prompt's answers against the gold answers."""
  p, g = _as_array(predicted), _as_array(gold)
  if p.shape != g.shape:
    raise UserError(f"{len(p)} answers against {len(g)} gold answers; kappa needs one "
                    f"answer per gold answer.")
  return float(_kappa(np.ones((1, len(g))), p, g, num_choices)[0])


def family_kappa(predicted: Mapping[str, Sequence[Optional[int]]],
                 gold: Sequence[Optional[int]], num_choices: int, *, resamples: int = 1000,
                 seed: int = 0) -> dict:
  """The median over prompts of each prompt's kappa, with a bootstrap 95% interval.

  Returns {"kappa": float, "ci": [low, high]}."""
  g = _as_array(gold)
  answers = {name: _as_array(values) for name, values in predicted.items()}
  for name, values in answers.items():
    if values.shape != g.shape:
      raise UserError(f"prompt {name}: {len(values)} answers against {len(g)} gold "
                      f"answers; kappa needs one answer per gold answer.")
  n = len(g)
  draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
  weights = np.zeros((resamples, n))
  np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
  point = np.median([_kappa(np.ones((1, n)), a, g, num_choices)[0]
                     for a in answers.values()])
  resampled = np.median([_kappa(weights, a, g, num_choices) for a in answers.values()],
                        axis=0)
  low, high = np.percentile(resampled, [2.5, 97.5])
  return {"kappa": float(point), "ci": [float(low), float(high)]}
