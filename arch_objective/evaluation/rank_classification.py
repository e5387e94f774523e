"""Scoring answer choices: the summed log-likelihood of each choice given its prompt.

A request is a prompt's token ids (no EOS) and its choices' token ids (each ending in
EOS, so P(EOS) counts, spec §8.3). The score of a choice is the sum of the log
probabilities of its tokens (optionally divided by their number). `RankScorer` cuts
prompts and choices to their first tokens, as seqio does, and scores them with
`scoring.Scorer` (how each architecture reads a request, and how rows are batched, is
described there): packed rows by default, or any of `scoring.SHAPES`; `one_shape` is one
batch shape for a whole suite.
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

  `max_tokens` bounds the tokens of one batch (rows x padded length; None: the scorer's
  default for `shapes`);
  `inputs_length` / `targets_length` truncate prompts and choices (the first N tokens,
  as seqio does; T0-Eval uses 1024 / 256). `shapes` is how batches are laid out
  (`scoring.SHAPES`; `one_shape=True` is `shapes="one_shape"`: every batch padded to the
  longest request, one compilation). `computed` holds the positions the last `score` call
  computed, padding included (how much work the batching costs against the requests' own
  tokens; see `scoring.Scorer`).
  """

  def __init__(self, model: models.BaseModel, params, *, inputs_length: int = 1024,
               targets_length: int = 256, max_tokens: Optional[int] = None,
               one_shape: bool = False, shapes: str = scoring.PACKED):
    self.model, self.params = model, params
    self.inputs_length, self.targets_length = inputs_length, targets_length
    self.one_shape = one_shape
    self.scorer = scoring.Scorer(model, params, max_tokens=max_tokens,
                                 shapes=scoring.ONE_SHAPE if one_shape else shapes)
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
  """One full forward pass per (prompt, choice): the reference the scorer must equal."""
  has_encoder = architectures.get(model.name).has_encoder
  out = []
  for r in requests:
    scores = []
    for c in r.choices:
      if has_encoder:
        targets = np.asarray(c, np.int32)[None]
        batch = {"encoder_input_tokens": np.asarray(r.prompt, np.int32)[None],
                 "decoder_target_tokens": targets,
                 "decoder_input_tokens": np.concatenate([[[0]], targets[:, :-1]], axis=1),
                 "decoder_loss_weights": np.ones_like(targets)}
      else:
        batch = scoring.decoder_batch([(r.prompt, c)], len(r.prompt) + len(c), 1)
      s = float(model.score_batch(params, batch)[0])
      scores.append(s / len(c) if normalize else s)
    out.append(np.asarray(scores))
  return out
