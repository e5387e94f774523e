"""Scoring answer choices: the summed log-likelihood of each choice given its prompt.

A request is a prompt's token ids (no EOS) and its choices' token ids (each ending in
EOS, so P(EOS) counts, spec §8.3). The score of a choice is the sum of the log
probabilities of its tokens (optionally divided by their number). `RankScorer` cuts
prompts and choices to their first tokens, as seqio does, and scores them with
`scoring.Scorer` in packed rows (how each architecture reads a request, and how rows are
batched, is described there). `naive_scores`, one forward pass per choice, is the
reference the scorer must equal.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from arch_objective import architectures, models
from arch_objective.evaluation import scoring
from arch_objective.evaluation.scoring import Request

__all__ = ["RankScorer", "Request", "naive_scores"]


def _truncate(tokens, length: int) -> np.ndarray:
  return np.asarray(tokens, np.int32)[:length]


class RankScorer:
  """Scores requests with one model's parameters.

  `max_tokens` bounds the tokens of one batch (rows x length; None: the scorer's
  default, `scoring.DEFAULT_MAX_TOKENS`);
  `inputs_length` / `targets_length` truncate prompts and choices (the first N tokens,
  as seqio does; T0-Eval uses 1024 / 256). `computed` holds the positions the last
  `score` call computed, padding included (how much work the batching costs against the
  requests' own tokens; see `scoring.Scorer`).
  """

  def __init__(self, model: models.BaseModel, params, *, inputs_length: int = 1024,
               targets_length: int = 256, max_tokens: Optional[int] = None):
    self.model, self.params = model, params
    self.inputs_length, self.targets_length = inputs_length, targets_length
    self.scorer = scoring.Scorer(model, params, max_tokens=max_tokens)
    self.max_tokens = self.scorer.max_tokens

  @property
  def computed(self) -> dict[str, int]:
    return self.scorer.computed

  def score(self, requests: Sequence[Request], normalize: bool = False) -> list[np.ndarray]:
    """Per request, the scores of its choices `[num_choices]` (float64)."""
    requests = [Request(_truncate(r.prompt, self.inputs_length),
                        tuple(_truncate(c, self.targets_length) for c in r.choices))
                for r in requests]
    return [r.scores for r in self.scorer.score(requests, normalize=normalize)]


def naive_scores(model: models.BaseModel, params, requests: Sequence[Request],
                 normalize: bool = False) -> list[np.ndarray]:
  """One full forward pass per (prompt, choice): the reference the scorer must equal.
  Reads only `model.name` (its architecture's layout) and `model.score_batch`."""
  layout = architectures.get(model.name).layout
  out = []
  for r in requests:
    scores = []
    for c in r.choices:
      s = float(model.score_batch(params, layout.reference_batch(r.prompt, c))[0])
      scores.append(s / len(c) if normalize else s)
    out.append(np.asarray(scores))
  return out
