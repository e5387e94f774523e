"""Scoring answer choices: the summed log-likelihood of each choice given its prompt.

A request is a prompt's token ids (no EOS) and its choices' token ids (each ending in
EOS, so P(EOS) counts, spec §8.3). The score of a choice is the sum of the log
probabilities of its tokens (optionally divided by their number).

How each architecture reads a request (the same features as training, spec §3.3):
  decoder-only  one row `prompt ++ choice`; `decoder_causal_attention` on the prompt plus
                one position (bidirectional for the ND); loss weights on the choice
  ED            the prompt is encoded ONCE and every choice is decoded against it
Rows are grouped into length buckets (powers of two) and fixed batch shapes, so a
whole suite compiles a handful of programs.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arch_objective import losses, models


@dataclasses.dataclass(frozen=True)
class Request:
  prompt: np.ndarray                 # [p] int32, no EOS
  choices: tuple[np.ndarray, ...]    # each [c] int32, ending in EOS


def _bucket(n: int, minimum: int = 16) -> int:
  return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


def _truncate(tokens, length: int) -> np.ndarray:
  return np.asarray(tokens, np.int32)[:length]


class RankScorer:
  """Scores requests with one model's parameters.

  `max_tokens` bounds the tokens of one batch (rows x padded length);
  `inputs_length` / `targets_length` truncate prompts and choices (the first N tokens,
  as seqio does; T0-Eval uses 1024 / 256).
  """

  def __init__(self, model: models.BaseModel, params, *, inputs_length: int = 1024,
               targets_length: int = 256, max_tokens: int = 16384, one_shape: bool = False):
    self.model, self.params = model, params
    self.inputs_length, self.targets_length = inputs_length, targets_length
    self.max_tokens = max_tokens
    self.one_shape = one_shape  # pad every batch to the longest request: one compilation
    self.is_ed = model.name == models.ENCODER_DECODER

  def score(self, requests: Sequence[Request], normalize: bool = False) -> list[np.ndarray]:
    """Per request, the scores of its choices `[num_choices]` (float64)."""
    requests = [Request(_truncate(r.prompt, self.inputs_length),
                        tuple(_truncate(c, self.targets_length) for c in r.choices))
                for r in requests]
    for i, r in enumerate(requests):
      if not r.choices or any(len(c) == 0 for c in r.choices):
        raise ValueError(f"request {i} has an empty choice list or an empty choice.")
    if self.is_ed:
      return self._score_ed(requests, normalize)
    return self._score_decoder(requests, normalize)

  # -- decoder-only ------------------------------------------------------------------
  def _score_decoder(self, requests, normalize):
    rows = [(i, j, r.prompt, c) for i, r in enumerate(requests) for j, c in enumerate(r.choices)]
    out = [np.zeros(len(r.choices)) for r in requests]
    by_bucket: dict[int, list] = {}
    longest = _bucket(max(len(p) + len(c) for _, _, p, c in rows))
    for row in rows:
      key = longest if self.one_shape else _bucket(len(row[2]) + len(row[3]))
      by_bucket.setdefault(key, []).append(row)
    for length, group in sorted(by_bucket.items()):
      batch_rows = _batch_rows(self.max_tokens, length)
      for start in range(0, len(group), batch_rows):
        chunk = group[start:start + batch_rows]
        batch = _decoder_batch([(p, c) for _, _, p, c in chunk], length, batch_rows)
        scores = np.asarray(_decoder_scores(self.model, self.params, batch, normalize))
        for (i, j, _, _), s in zip(chunk, scores):
          out[i][j] = s
    return out

  # -- encoder-decoder ---------------------------------------------------------------
  def _score_ed(self, requests, normalize):
    out = [np.zeros(len(r.choices)) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
    enc_bucket = (lambda n: _bucket(max(len(r.prompt) for r in requests))) if self.one_shape \
        else _bucket
    longest_choice = _bucket(max(len(c) for r in requests for c in r.choices))
    most_choices = max(len(r.choices) for r in requests)
    i = 0
    while i < len(order):
      enc_len = enc_bucket(len(requests[order[i]].prompt))
      # prompts of this encoder bucket, as many as fit with their choices
      group = []
      while i < len(order) and enc_bucket(len(requests[order[i]].prompt)) == enc_len:
        group.append(order[i])
        i += 1
      chunks = list(_ed_chunks(group, requests, enc_len, self.max_tokens))
      widest = max(len(c) for c in chunks)
      for chunk in chunks:
        dec_len = _bucket(max(len(c) for g in chunk for c in requests[g].choices))
        num_prompts = _pow2(len(chunk))
        num_rows = _pow2(sum(len(requests[g].choices) for g in chunk))
        if self.one_shape:
          dec_len, num_prompts = longest_choice, _pow2(widest)
          num_rows = _pow2(widest * most_choices)
        enc = np.zeros((num_prompts, enc_len), np.int32)
        idx = np.zeros((num_rows,), np.int32)
        targets = np.zeros((num_rows, dec_len), np.int32)
        where = []
        row = 0
        for p, g in enumerate(chunk):
          prompt = requests[g].prompt
          enc[p, :len(prompt)] = prompt
          for j, c in enumerate(requests[g].choices):
            idx[row] = p
            targets[row, :len(c)] = c
            where.append((g, j))
            row += 1
        scores = np.asarray(_ed_scores(self.model, self.params, enc, idx, targets, normalize))
        for (g, j), s in zip(where, scores):
          out[g][j] = s
    return out


def _pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def _batch_rows(max_tokens: int, length: int) -> int:
  return max(1, 1 << (max(max_tokens // length, 1).bit_length() - 1))


def _ed_chunks(group, requests, enc_len, max_tokens):
  """Prompts whose encoder rows and decoder rows together stay within `max_tokens`."""
  chunk, tokens = [], 0
  for g in group:
    cost = enc_len + sum(_bucket(len(c)) for c in requests[g].choices)
    if chunk and tokens + cost > max_tokens:
      yield chunk
      chunk, tokens = [], 0
    chunk.append(g)
    tokens += cost
  if chunk:
    yield chunk


def _decoder_batch(pairs, length: int, rows: int) -> dict[str, np.ndarray]:
  targets = np.zeros((rows, length), np.int32)
  weights = np.zeros((rows, length), np.int32)
  dca = np.zeros((rows, length), np.int32)
  for r, (prompt, choice) in enumerate(pairs):
    n = len(prompt)
    targets[r, :n] = prompt
    targets[r, n:n + len(choice)] = choice
    weights[r, n:n + len(choice)] = 1
    dca[r, :n + 1] = 1
  inputs = np.zeros_like(targets)
  inputs[:, 1:] = targets[:, :-1]
  return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_loss_weights": weights, "decoder_causal_attention": dca}


def _summed(logits, targets, weights, normalize):
  ll = losses.token_log_likelihoods(logits, targets) * weights
  total = jnp.sum(ll, axis=-1)
  if normalize:
    total = total / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
  return total


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decoder_scores(model, params, batch, normalize):
  logits = model.compute_logits(params, batch)
  return _summed(logits, batch["decoder_target_tokens"],
                 batch["decoder_loss_weights"].astype(jnp.float32), normalize)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _ed_scores(model, params, enc, idx, targets, normalize):
  encoded = model.encode(params, enc)                       # [P, i, d]: once per prompt
  enc_rows, encoded_rows = enc[idx], encoded[idx]           # one per choice
  inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  logits = model.decode_logits(params, encoded_rows, enc_rows, inputs, targets)
  return _summed(logits, targets, (targets > 0).astype(jnp.float32), normalize)


def naive_scores(model: models.BaseModel, params, requests: Sequence[Request],
                 normalize: bool = False) -> list[np.ndarray]:
  """One full forward pass per (prompt, choice): the reference the scorer must equal."""
  out = []
  for r in requests:
    scores = []
    for c in r.choices:
      if model.name == models.ENCODER_DECODER:
        targets = np.asarray(c, np.int32)[None]
        batch = {"encoder_input_tokens": np.asarray(r.prompt, np.int32)[None],
                 "decoder_target_tokens": targets,
                 "decoder_input_tokens": np.concatenate([[[0]], targets[:, :-1]], axis=1),
                 "decoder_loss_weights": np.ones_like(targets)}
      else:
        batch = _decoder_batch([(r.prompt, c)], len(r.prompt) + len(c), 1)
      s = float(model.score_batch(params, batch)[0])
      scores.append(s / len(c) if normalize else s)
    out.append(np.asarray(scores))
  return out
