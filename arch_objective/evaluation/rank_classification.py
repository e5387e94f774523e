"""Scoring answer choices: the summed log-likelihood of each choice given its prompt.

A request is a prompt's token ids (no EOS) and its choices' token ids (each ending in
EOS, so P(EOS) counts, spec §8.3). The score of a choice is the sum of the log
probabilities of its tokens (optionally divided by their number).

How each architecture reads a request (the same features as training, spec §3.3):
  decoder-only  one row `prompt ++ choice`; `decoder_causal_attention` on the prompt plus
                one position (bidirectional for the ND); loss weights on the choice
  ED            the prompt is encoded ONCE and every choice is decoded against it
Rows are grouped into length buckets and batch shapes of the form 2^k or 3 x 2^(k-1)
(16, 24, 32, 48, ...: at most a third of a batch is padding), so a whole suite compiles a
handful of programs.
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


def _fine_bucket(n: int, minimum: int = 1) -> int:
  """The least of 2^k and 3 x 2^(k-1) (1, 2, 3, 4, 6, 8, 12, 16, 24, ...) >= max(n, minimum)."""
  n = max(int(n), minimum, 1)
  power = 1 << (n - 1).bit_length()          # the least power of two >= n
  three_quarters = 3 * power // 4
  return three_quarters if three_quarters >= n and power >= 4 else power


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
    # Positions the last `score` call computed, padding included (how much work the
    # batching costs against the requests' own tokens).
    self.computed = {"batches": 0, "encoder_positions": 0, "decoder_positions": 0,
                     "cross_attention_key_positions": 0}

  def score(self, requests: Sequence[Request], normalize: bool = False) -> list[np.ndarray]:
    """Per request, the scores of its choices `[num_choices]` (float64)."""
    requests = [Request(_truncate(r.prompt, self.inputs_length),
                        tuple(_truncate(c, self.targets_length) for c in r.choices))
                for r in requests]
    self.computed = dict.fromkeys(self.computed, 0)
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
      key = longest if self.one_shape else _fine_bucket(len(row[2]) + len(row[3]), 16)
      by_bucket.setdefault(key, []).append(row)
    for length, group in sorted(by_bucket.items()):
      batch_rows = _batch_rows(self.max_tokens, length)
      for start in range(0, len(group), batch_rows):
        chunk = group[start:start + batch_rows]
        rows = batch_rows if self.one_shape else min(batch_rows, _fine_bucket(len(chunk)))
        batch = _decoder_batch([(p, c) for _, _, p, c in chunk], length, rows)
        self._count(decoder=rows * length)
        scores = np.asarray(_decoder_scores(self.model, self.params, batch, normalize))
        for (i, j, _, _), s in zip(chunk, scores):
          out[i][j] = s
    return out

  # -- encoder-decoder ---------------------------------------------------------------
  def _score_ed(self, requests, normalize):
    out = [np.zeros(len(r.choices)) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
    enc_bucket = (lambda n: _bucket(max(len(r.prompt) for r in requests))) if self.one_shape \
        else (lambda n: _fine_bucket(n, 16))
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
      chunks = list(_ed_chunks(group, requests, enc_len, self.max_tokens,
                               choice_bucket=(_bucket if self.one_shape
                                              else lambda n: _fine_bucket(n, 4))))
      widest = max(len(c) for c in chunks)
      for chunk in chunks:
        if self.one_shape:
          self._score_ed_chunk_one_shape(requests, chunk, enc_len, longest_choice,
                                         _pow2(widest), _pow2(widest * most_choices),
                                         normalize, out)
        else:
          self._score_ed_chunk(requests, chunk, enc_len, normalize, out)
    return out

  def _count(self, encoder: int = 0, decoder: int = 0, cross: int = 0, batches: int = 1):
    c = self.computed
    c["batches"] += batches
    c["encoder_positions"] += int(encoder)
    c["decoder_positions"] += int(decoder)
    c["cross_attention_key_positions"] += int(cross)

  def _score_ed_chunk(self, requests, chunk, enc_len, normalize, out):
    """Encode the chunk's prompts once, then decode its choices grouped by their own
    length bucket, so a long choice does not pad every other row of the chunk."""
    enc = np.zeros((_fine_bucket(len(chunk)), enc_len), np.int32)
    rows_by_length: dict[int, list] = {}
    for p, g in enumerate(chunk):
      enc[p, :len(requests[g].prompt)] = requests[g].prompt
      for j, c in enumerate(requests[g].choices):
        rows_by_length.setdefault(_fine_bucket(len(c), 4), []).append((p, g, j, c))
    encoded = _ed_encode(self.model, self.params, enc)
    self._count(encoder=enc.size, batches=0)
    for dec_len, rows in sorted(rows_by_length.items()):
      per_batch = max(1, self.max_tokens // (dec_len + enc_len))
      for start in range(0, len(rows), per_batch):
        part = rows[start:start + per_batch]
        idx = np.zeros((_fine_bucket(len(part)),), np.int32)
        targets = np.zeros((len(idx), dec_len), np.int32)
        for r, (p, _, _, c) in enumerate(part):
          idx[r] = p
          targets[r, :len(c)] = c
        scores = np.asarray(_ed_decode_scores(self.model, self.params, encoded, enc, idx,
                                              targets, normalize))
        self._count(decoder=targets.size, cross=len(idx) * enc_len)
        for (_, g, j, _), score in zip(part, scores):
          out[g][j] = score

  def _score_ed_chunk_one_shape(self, requests, chunk, enc_len, dec_len, num_prompts,
                                num_rows, normalize, out):
    """One program for the whole suite: every batch padded to the suite's largest."""
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
    self._count(encoder=enc.size, decoder=targets.size, cross=num_rows * enc_len)
    for (g, j), s in zip(where, scores):
      out[g][j] = s


def _pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def _batch_rows(max_tokens: int, length: int) -> int:
  return max(1, 1 << (max(max_tokens // length, 1).bit_length() - 1))


def _ed_chunks(group, requests, enc_len, max_tokens, choice_bucket=_bucket):
  """Prompts whose encoder rows and decoder rows together stay within `max_tokens`."""
  chunk, tokens = [], 0
  for g in group:
    cost = enc_len + sum(choice_bucket(len(c)) for c in requests[g].choices)
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


@functools.partial(jax.jit, static_argnums=(0,))
def _ed_encode(model, params, enc):
  return model.encode(params, enc)                          # [P, i, d]


@functools.partial(jax.jit, static_argnums=(0, 6))
def _ed_decode_scores(model, params, encoded, enc, idx, targets, normalize):
  """Scores of `targets [R, t]`, row r decoded against prompt `idx[r]` of `encoded`."""
  inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  logits = model.decode_logits(params, encoded[idx], enc[idx], inputs, targets)
  return _summed(logits, targets, (targets > 0).astype(jnp.float32), normalize)


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
