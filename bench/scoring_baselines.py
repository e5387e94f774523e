"""The scoring benchmark's baselines: the ED's requests in length buckets, not packed.

`FineScorer` scores what `scoring.Scorer` scores (summed log-likelihoods of each
request's choices), each prompt in an encoder row of its own and each choice in a decoder
row of its own, so that `bench.scoring` measures in the same run what packing buys, and
what projecting the cross-attention keys and values once per prompt buys:

  lengths    encoder rows of `fine_bucket(prompt, 16)` tokens, decoder rows of
             `fine_bucket(choice, 4)`: lengths and row counts of the form 2^k or
             3 x 2^(k-1) (16, 24, 32, 48, ...: at most a third of a batch is padding)
  batches    prompts of one encoder length in runs within `max_tokens` (`ed_chunks`);
             a run's prompts encoded by one program and its choices decoded by another,
             grouped by their own length, except that a group whose own program would
             cost more to compile than its padding to the next longer group costs to
             compute rides with that group (`new_program_cost`, `merge_length_groups`)
  keys and   `cross_kv_per_prompt=True`: projected once per prompt and gathered per
  values     decoder row; False: projected per decoder row from the prompt's encoder
             output gathered per row (the reference of the two)

The programs are compiled and run as a plan of `scoring.programs.Step`s, as the scorer's
are: a call's new programs compile together on `compile_workers` threads. Scores only
(no greedy flags), and no bound on the keys and values one batch holds (the suite's are
far below `scoring.DEFAULT_CROSS_KV_MAX_BYTES`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arch_objective import layouts, losses, models
from arch_objective.evaluation import scoring
from arch_objective.evaluation.scoring import programs
from arch_objective.evaluation.scoring.shapes import fine_bucket

DEFAULT_MAX_TOKENS = 16384
# What compiling one more decoder program is worth, in padded decoder positions: on a
# 2-core CPU a small ED's decode program compiles in about 2.2 s, the time its forward
# pass takes over about 3,400 positions.
DEFAULT_NEW_PROGRAM_COST = 2048


# ----------------------------------------------------------------------------------------
# Shapes and batches
# ----------------------------------------------------------------------------------------
def ed_chunks(group: Sequence[int], requests: Sequence[scoring.Request], enc_len: int,
              max_tokens: int, choice_bucket: Callable[[int], int] = scoring.bucket
              ) -> Iterator[list[int]]:
  """Consecutive runs of `group` (indices into `requests`) whose encoder rows (`enc_len`
  each) and decoder rows (`choice_bucket(len(choice))` each) together stay within
  `max_tokens`; a request over the budget alone is a run of its own."""
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


def merge_length_groups(groups: Sequence[tuple[int, int]], new_program_cost: int,
                        known: Callable[[int, int], bool] = lambda rows, length: False,
                        rows_of: Callable[[int], int] = fine_bucket) -> list[tuple[int, int]]:
  """How to decode length groups: `groups` are (padded length, rows) pairs by ascending
  length; the result is the runs `(start, stop)` (slices of `groups`) that each become
  one batch of `rows_of(their rows)` rows at their longest length. The runs minimise the
  positions computed plus `new_program_cost` for each batch shape `(rows, length)` that
  is neither `known` (compiled already) nor used by an earlier run, so a small group
  joins the next longer one when padding it costs less than compiling its own program.

  >>> merge_length_groups([(4, 2), (8, 1), (48, 6)], 0)       # programs are free
  [(0, 1), (1, 2), (2, 3)]
  >>> merge_length_groups([(4, 2), (8, 1), (48, 6)], 20)      # 3 rows of 8: 24 + 20
  [(0, 2), (2, 3)]
  >>> merge_length_groups([(4, 2), (8, 1), (48, 6)], 1000)    # 12 rows of 48: 576 + 1000
  [(0, 3)]
  """
  # best[b]: (cost, runs, shapes) of the cheapest runs over groups[:b]
  best: list[tuple[float, list, frozenset]] = [(0.0, [], frozenset())]
  for stop in range(1, len(groups) + 1):
    length = groups[stop - 1][0]
    options = []
    for start in range(stop):
      cost, runs, shapes = best[start]
      shape = (rows_of(sum(rows for _, rows in groups[start:stop])), length)
      new = not known(*shape) and shape not in shapes
      options.append((cost + shape[0] * length + (new_program_cost if new else 0),
                      runs + [(start, stop)], shapes | {shape}))
    best.append(min(options, key=lambda option: option[0]))
  return best[-1][1]


def encoder_batch(prompts: Sequence[np.ndarray], length: int, rows: int) -> np.ndarray:
  """Encoder input tokens `[rows, length]` (int32): prompt p in row p, 0-padded."""
  enc = np.zeros((rows, length), np.int32)
  for p, prompt in enumerate(prompts):
    enc[p, :len(prompt)] = prompt
  return enc


def ed_decoder_batch(rows: Sequence[tuple[int, np.ndarray]], length: int, num_rows: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """`(idx [num_rows] int32, targets [num_rows, length] int32)` of (prompt row, choice)
  pairs: row r decodes its choice against encoder row `idx[r]` (padding rows: row 0 and
  all-0 targets, which weigh nothing)."""
  idx = np.zeros((num_rows,), np.int32)
  targets = np.zeros((num_rows, length), np.int32)
  for r, (p, choice) in enumerate(rows):
    idx[r] = p
    targets[r, :len(choice)] = choice
  return idx, targets


# ----------------------------------------------------------------------------------------
# The programs
# ----------------------------------------------------------------------------------------
# `normalize` is traced (a scalar bool: one program serves both); `greedy` is static (it
# adds an argmax over the logits); `FineScorer` asks for none.
def _summed(logits, targets, weights, normalize, greedy):
  """`([b] summed log p(target) over weighted positions, divided by their number where
  `normalize`; [b] every one the argmax, or None)` of `logits [b, l, v]`, `targets [b, l]`,
  `weights [b, l]`."""
  weights = weights.astype(jnp.float32)
  total = jnp.sum(losses.token_log_likelihoods(logits, targets) * weights, axis=-1)
  total = jnp.where(normalize, total / jnp.maximum(jnp.sum(weights, axis=-1), 1.0), total)
  if not greedy:
    return total, None
  is_greedy = (jnp.argmax(logits, axis=-1) == targets) | (weights == 0)
  return total, jnp.all(is_greedy, axis=-1)


@functools.partial(jax.jit, static_argnums=(0,))
def _ed_encode(model, params, enc):
  return model.encode(params, enc)                                     # [P, i, d]


@functools.partial(jax.jit, static_argnums=(0,))
def _ed_encode_kv(model, params, enc):
  return model.cross_key_values(params, model.encode(params, enc))   # [layers, P, i, h, e]


def _shifted(targets):
  """Decoder inputs: `targets [R, t]` shifted right, start token 0 first."""
  return jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def _ed_decoded(model, params, encoded, enc, idx, targets, normalize, greedy):
  """Row r of `targets [R, t]` decoded against prompt `idx[r]` of `encoded [P, i, d]`: the
  cross-attention keys and values are projected per row (the reference)."""
  logits = model.decode_logits(params, encoded[idx], enc[idx], _shifted(targets),
                               targets)                                # [R, t, v]
  return _summed(logits, targets, targets > 0, normalize, greedy)


def _ed_decoded_kv(model, params, key_values, enc, idx, targets, normalize, greedy):
  """Row r of `targets [R, t]` decoded against prompt `idx[r]` of the cross-attention
  keys and values `key_values` (`[layers, P, i, h, e]`, projected once per prompt)."""
  logits = model.decode_logits(params, None, enc, _shifted(targets), targets,
                               cross_key_values=key_values, cross_rows=idx)  # [R, t, v]
  return _summed(logits, targets, targets > 0, normalize, greedy)


_ed_decode_scores = jax.jit(_ed_decoded, static_argnums=(0, 7))
_ed_decode_kv_scores = jax.jit(_ed_decoded_kv, static_argnums=(0, 7))


# ----------------------------------------------------------------------------------------
# The scorer
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rows:
  """Where a decode batch's per-row totals go: row k's to its (request, choice) `where[k]`."""
  where: list[tuple[int, int]]


class FineScorer:
  """Scores an ED's requests in length buckets (see the module docstring).

  `computed` holds the positions the last `score` call computed, padding included, as
  `scoring.Scorer.computed` does (`batches`, `encoder_positions`, `decoder_positions`,
  `cross_attention_key_positions`, `programs_compiled`). Batch shapes compiled by earlier
  calls of this scorer count as free in `merge_length_groups`.
  """

  def __init__(self, model: models.BaseModel, params, *, max_tokens: int = DEFAULT_MAX_TOKENS,
               cross_kv_per_prompt: bool = True,
               new_program_cost: int = DEFAULT_NEW_PROGRAM_COST,
               compile_workers: Optional[int] = None):
    if model.layout.family != layouts.ENCODER_DECODER.family:
      raise ValueError(f"FineScorer scores an encoder-decoder; found the "
                       f"{model.layout.family} layout of {model.name}.")
    self.model, self.params = model, jax.device_put(params)
    self._params_signature = programs.signature(params)
    self.max_tokens = max_tokens
    self.cross_kv_per_prompt = bool(cross_kv_per_prompt)
    self.new_program_cost = new_program_cost
    self.compile_workers = compile_workers or programs.default_compile_workers()
    self._decode_shapes: set[tuple[int, ...]] = set()   # (prompts, enc_len, rows, dec_len)
    self.computed = dict.fromkeys(("batches", "encoder_positions", "decoder_positions",
                                   "cross_attention_key_positions", "programs_compiled"), 0)

  def score(self, requests: Sequence[scoring.Request], normalize: bool = False
            ) -> list[np.ndarray]:
    """Per request, the scores of its choices `[num_choices]` (float64)."""
    self.computed = dict.fromkeys(self.computed, 0)
    scores = [np.zeros(len(r.choices)) for r in requests]
    if not requests:
      return scores
    known = set(self._decode_shapes)
    steps = self._plan(requests, bool(normalize), known)
    compiled, self.computed["programs_compiled"] = programs.compile_plan(
        steps, self.model, self.params, params_signature=self._params_signature,
        workers=self.compile_workers)
    for rows, (totals, _) in programs.run_plan(steps, compiled, self.params):
      for k, (i, j) in enumerate(rows.where):
        scores[i][j] = totals[k]
    self._decode_shapes = known
    return scores

  def _count(self, encoder: int = 0, decoder: int = 0, cross: int = 0, batches: int = 1):
    c = self.computed
    c["batches"] += batches
    c["encoder_positions"] += int(encoder)
    c["decoder_positions"] += int(decoder)
    c["cross_attention_key_positions"] += int(cross)

  def _plan(self, requests, normalize: bool, known: set) -> list[programs.Step]:
    """The steps of a call: per run of prompts of one encoder length (shortest first),
    one encode step and its decode steps. Adds the decode shapes used to `known`."""
    steps: list[programs.Step] = []
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
    enc_bucket = lambda n: fine_bucket(n, 16)
    i = 0
    while i < len(order):
      enc_len = enc_bucket(len(requests[order[i]].prompt))
      group = []                  # the prompts of this encoder length
      while i < len(order) and enc_bucket(len(requests[order[i]].prompt)) == enc_len:
        group.append(order[i])
        i += 1
      for chunk in ed_chunks(group, requests, enc_len, self.max_tokens,
                             lambda n: fine_bucket(n, 4)):
        self._plan_chunk(requests, chunk, enc_len, normalize, known, steps)
    return steps

  def _plan_chunk(self, requests, chunk, enc_len, normalize, known, steps):
    """Encode the chunk's prompts once, then decode its choices grouped by their own
    length bucket, so that a long choice does not pad every other row of the chunk."""
    enc = encoder_batch([requests[g].prompt for g in chunk], enc_len, fine_bucket(len(chunk)))
    rows_by_length: dict[int, list] = {}
    for p, g in enumerate(chunk):
      for j, c in enumerate(requests[g].choices):
        rows_by_length.setdefault(fine_bucket(len(c), 4), []).append((p, g, j, c))
    per_prompt = self.cross_kv_per_prompt
    # [P, i, d], or per decoder layer the keys and values [layers, P, i, h, e]
    steps.append(programs.Step(_ed_encode_kv if per_prompt else _ed_encode, (enc,)))
    encoded = programs.Output(len(steps) - 1)
    self._count(encoder=enc.size, cross=enc.size if per_prompt else 0, batches=0)
    lengths = sorted(rows_by_length)
    runs = merge_length_groups(
        [(n, len(rows_by_length[n])) for n in lengths], self.new_program_cost,
        known=lambda rows, length: (enc.shape[0], enc_len, rows, length) in known)
    decode = _ed_decode_kv_scores if per_prompt else _ed_decode_scores
    for start, stop in runs:
      dec_len = lengths[stop - 1]
      rows = [row for n in lengths[start:stop] for row in rows_by_length[n]]
      per_batch = max(1, self.max_tokens // (dec_len + enc_len))
      for first in range(0, len(rows), per_batch):
        part = rows[first:first + per_batch]
        idx, targets = ed_decoder_batch([(p, c) for p, _, _, c in part], dec_len,
                                        fine_bucket(len(part)))
        known.add((enc.shape[0], enc_len, *targets.shape))
        steps.append(programs.Step(decode, (encoded, enc, idx, targets, normalize), (False,),
                                   Rows([(g, j) for _, g, j, _ in part])))
        self._count(decoder=targets.size, cross=0 if per_prompt else len(idx) * enc_len)
