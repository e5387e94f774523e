"""Summed log-likelihoods of continuations given a context, batched, for the CD, ND and ED.

A `Request` is a context's token ids (`prompt`, possibly empty) and one or more
continuations' token ids (`choices`, none empty). `Scorer.score` returns per request a
`Result`: per continuation the sum of log p(token) over its tokens (optionally divided by
their number) and, when asked, whether every one of them is the model's argmax (lm-eval's
`is_greedy`). Nothing is added or cut here: EOS and truncation are the caller's.

How each architecture reads a request (the same features as training, spec §3.3):
  decoder-only  one row `prompt ++ choice` per choice; `decoder_causal_attention` on the
                prompt plus one position (bidirectional for the ND); loss weights on the
                choice
  ED            the prompt is encoded ONCE per batch, and each decoder layer's
                cross-attention keys and values are projected once per prompt
                (`[P, enc_len, heads, head_dim]`); each of its choices is decoded against
                them from start token 0, each layer gathering its rows' prompts, so a choice
                costs only the decoder's own work; an empty prompt is an all-padding row
Batches hold at most `max_tokens` tokens (rows x padded length). Their shapes (`shapes`):
  packed     (the default) several requests share a row, each a segment of its own that
             attends only to itself; relative positions do not depend on where a segment
             starts, so it scores as it would alone (to float rounding). Rows are of one
             length per class: every request up to `PACKED_ROW_TOKENS` tokens in rows of
             the longest one's `fine_bucket`, a longer one in rows of its own bucket.
             Decoder-only: rows of `prompt ++ choice` segments. ED: prompts packed into
             encoder rows; the choices of each `PACKED_CROSS_ROWS` encoder rows packed
             into decoder rows that read those rows' keys and values (projected once per
             prompt), each choice's cross-attention kept to its prompt's segment; the decoder length is the one
             of a few buckets from the longest choice's up that computes the fewest
             positions; prompts without tokens share an all-padding encoder row. A call
             compiles about two programs a length class (one, decoder-only), and row
             counts are rounded only to a sixteenth of their power of two (`packed_rows`)
  fine       lengths and row counts of the form 2^k or 3 x 2^(k-1) (16, 24, 32, 48, ...: at
             most a third of a batch is padding); an ED batch's prompts are encoded by one
             program and its choices decoded by another, grouped by their own length,
             except that a group whose own program would cost more to compile than its
             padding to the next longer group costs to compute rides with that group
             (`new_program_cost`, `merge_length_groups`)
  pow2       lengths and row counts are powers of two; an ED batch is one program
  one_shape  every batch padded to the longest request: one compilation for a whole suite
so that a whole suite compiles a handful of programs.

Compilation: each `score` call first walks its batches without running them, lowering
every program it needs that is not compiled yet, then compiles those on a pool of
threads (`compile_workers`; XLA's compiler releases the GIL, so the first pass of a
suite waits for its longest compilations, not their sum), then runs the batches.
Compiled programs are kept per (program, model, argument shapes) for the process, so
scorers of one model share them; the persistent compilation cache serves repeat runs.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arch_objective import architectures, losses, models

PACKED, FINE, POW2, ONE_SHAPE = "packed", "fine", "pow2", "one_shape"
SHAPES = (PACKED, FINE, POW2, ONE_SHAPE)
DEFAULT_MAX_TOKENS = 16384
# `PACKED` rows are full, so its batches hold more requests in fewer tokens; on the 2-core
# CPU batches of about 4,096 tokens ran a pass faster than one of 16,384 (the large
# batch's buffers are fresh memory on every run).
DEFAULT_PACKED_MAX_TOKENS = 4096
# The most bytes of cross-attention keys and values one ED batch holds (all decoder layers,
# its prompts padded): the paper's ED at 16,384 encoder tokens in bf16 would hold 6.4 GB.
DEFAULT_CROSS_KV_MAX_BYTES = 2 << 30
# What compiling one more decoder program is worth, in padded decoder positions: on a
# 2-core CPU a small ED's decode program compiles in about 2.2 s, the time its forward
# pass takes over about 3,400 positions.
DEFAULT_NEW_PROGRAM_COST = 2048
# `PACKED`: rows of at most this many tokens hold several requests; a longer request gets
# rows of its own length bucket. (Attention over a packed row's other segments is masked
# work: at 512 it costs a small model about a sixth more per position.)
PACKED_ROW_TOKENS = 512
# `PACKED`, ED: decoder row lengths tried from the longest choice's bucket up.
PACKED_DECODER_LENGTHS = 5
# `PACKED`, ED: the encoder rows one decoder row reads (their keys and values one after
# another). Two fill decoder rows with the choices of twice as many prompts (on the
# scoring benchmark's suite 2,880 decoder positions instead of 3,584), for twice the
# cross-attention keys per position and their gathering: on the 2-core CPU that pass ran
# 1.07x slower (medians of 5 alternated passes), so one it is.
PACKED_CROSS_ROWS = 1


@dataclasses.dataclass(frozen=True)
class Request:
  """A context and the continuations to score against it."""
  prompt: np.ndarray                 # [p] int32, p >= 0
  choices: tuple[np.ndarray, ...]    # each [c] int32, c >= 1


@dataclasses.dataclass(frozen=True)
class Result:
  """The scores of one request's choices."""
  scores: np.ndarray                 # [num_choices] float64
  greedy: Optional[np.ndarray]       # [num_choices] bool, or None when not asked


# ----------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------
def pow2(n: int) -> int:
  """The least power of two >= n (1 for n <= 1)."""
  return 1 << max(int(n) - 1, 0).bit_length()


def bucket(n: int, minimum: int = 16) -> int:
  """`pow2(n)`, at least `minimum`: 16, 32, 64, ..."""
  return max(minimum, pow2(n))


def fine_bucket(n: int, minimum: int = 1) -> int:
  """The least of 2^k and 3 x 2^(k-1) (1, 2, 3, 4, 6, 8, 12, 16, 24, ...) >= max(n, minimum)."""
  n = max(int(n), minimum, 1)
  power = 1 << (n - 1).bit_length()          # the least power of two >= n
  three_quarters = 3 * power // 4
  return three_quarters if three_quarters >= n and power >= 4 else power


def batch_rows(max_tokens: int, length: int) -> int:
  """The most rows of `length` tokens within `max_tokens`, a power of two (at least 1)."""
  return max(1, 1 << (max(max_tokens // length, 1).bit_length() - 1))


def ed_chunks(group: Sequence[int], requests: Sequence[Request], enc_len: int,
              max_tokens: int, choice_bucket: Callable[[int], int] = bucket
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


def packed_rows(n: int) -> int:
  """`n` rows rounded up to a multiple of a sixteenth of `pow2(n)` (1, 2, ..., 16, 18, 20,
  ..., 32, 36, 40, ...): at most one row in eight is padding, and batches of similar
  sizes share a shape."""
  step = max(1, pow2(n) // 16)
  return -(-max(int(n), 1) // step) * step


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
  """Indices of `lengths` (each <= `capacity`) in bins of `capacity`: the longest item
  not placed opens a bin, which the shortest ones then fill while they fit. Linear after
  sorting, so that 10^5 prompts pack at once.

  >>> pack([5, 1, 4, 2, 3], 6)
  [[0, 1], [2, 3], [4]]
  """
  order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
  bins, first, last = [], 0, len(order) - 1
  while first <= last:
    k = order[first]
    first += 1
    room, row = capacity - lengths[k], [k]
    while first <= last and lengths[order[last]] <= room:
      room -= lengths[order[last]]
      row.append(order[last])
      last -= 1
    bins.append(row)
  return bins


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


# ----------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------
def decoder_batch(pairs: Sequence[tuple[np.ndarray, np.ndarray]], length: int, rows: int
                  ) -> dict[str, np.ndarray]:
  """A decoder-only batch `[rows, length]` (int32) of (prompt, choice) pairs, one row each
  (`len(prompt) + len(choice) <= length`, `len(pairs) <= rows`; the rest is padding).

  `decoder_target_tokens` is `prompt ++ choice`, `decoder_input_tokens` the targets shifted
  right by one (0 first), `decoder_loss_weights` 1 on the choice, `decoder_causal_attention`
  1 on the prompt and the position after it.
  """
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
# The scorer
# ----------------------------------------------------------------------------------------
class Scorer:
  """Scores requests with one model's parameters (see the module docstring).

  `max_tokens` bounds the tokens of one batch (rows x padded length; default
  `DEFAULT_PACKED_MAX_TOKENS` packed, else `DEFAULT_MAX_TOKENS`); `shapes` is one of
  `SHAPES`. `computed` holds the positions the last `score` call computed, padding
  included: `batches`, `encoder_positions`, `decoder_positions`,
  `cross_attention_key_positions` (the encoder positions whose cross-attention keys and
  values were projected, all layers counted once).

  `cross_kv_per_prompt` (ED only): True (the default) projects the cross-attention keys
  and values once per prompt; False once per choice row, from the prompt's encoder
  output gathered per row (the reference the default is tested and timed against; not
  with `PACKED`, which always projects them once per prompt).
  Per prompt, a batch holds every decoder layer's keys and values of its prompts at once:
  `cross_kv_max_bytes` bounds that (prompts padded), splitting a batch's prompts where
  needed (at least one prompt per batch); `computed['cross_kv_bytes']` is the most one
  batch held.

  `compile_workers`: threads that compile a call's new programs (default: the CPUs this
  process may use, at most 8; 1 compiles them one after another).
  `computed['programs_compiled']` counts the programs the last call compiled.

  `new_program_cost` (ED, `FINE` only): what compiling one more decode program is worth
  in decoder positions; a batch's choices of one length bucket ride with the next longer
  bucket when padding them costs fewer positions than that (shapes compiled by earlier
  calls of this scorer count as free). 0 decodes every bucket apart. Scores do not
  depend on it beyond float rounding.
  """

  def __init__(self, model: models.BaseModel, params, *, max_tokens: Optional[int] = None,
               shapes: str = PACKED, cross_kv_per_prompt: bool = True,
               cross_kv_max_bytes: int = DEFAULT_CROSS_KV_MAX_BYTES,
               new_program_cost: int = DEFAULT_NEW_PROGRAM_COST,
               compile_workers: Optional[int] = None):
    if shapes not in SHAPES:
      raise ValueError(f"unknown shapes {shapes!r}; expected one of {', '.join(SHAPES)}.")
    if max_tokens is None:
      max_tokens = DEFAULT_PACKED_MAX_TOKENS if shapes == PACKED else DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
      raise ValueError(f"max_tokens must be a positive number of tokens, found "
                       f"{max_tokens!r}.")
    if shapes == PACKED and not cross_kv_per_prompt:
      raise ValueError("cross_kv_per_prompt=False (keys and values projected per choice "
                       "row) is a reference for the unpacked shapes; shapes='packed' "
                       "projects them once per prompt. Use shapes='fine' with it.")
    if isinstance(cross_kv_max_bytes, bool) or not isinstance(cross_kv_max_bytes, int) or (
        cross_kv_max_bytes < 1):
      raise ValueError(f"cross_kv_max_bytes must be a positive number of bytes, found "
                       f"{cross_kv_max_bytes!r}.")
    if isinstance(new_program_cost, bool) or not isinstance(new_program_cost, int) or (
        new_program_cost < 0):
      raise ValueError(f"new_program_cost must be a number of positions >= 0, found "
                       f"{new_program_cost!r}.")
    if compile_workers is None:
      compile_workers = default_compile_workers()
    if isinstance(compile_workers, bool) or not isinstance(compile_workers, int) or (
        compile_workers < 1):
      raise ValueError(f"compile_workers must be a positive number of threads, found "
                       f"{compile_workers!r}.")
    # On the device once: parameters read from a checkpoint are host arrays, which every
    # batch would otherwise copy to the accelerator.
    self.model, self.params = model, jax.device_put(params)
    self.compile_workers = compile_workers
    self._params_signature = _signature(params)
    self._planning = False
    self._planned: dict = {}      # while planning: program key -> its lowering
    self._layouts: dict = {}      # during a call (`PACKED`): how its requests are laid out
    self.max_tokens, self.shapes = max_tokens, shapes
    self.new_program_cost = new_program_cost
    self._decode_shapes: set[tuple[int, ...]] = set()   # (prompts, enc_len, rows, dec_len)
    self.cross_kv_per_prompt = bool(cross_kv_per_prompt)
    self.cross_kv_max_bytes = cross_kv_max_bytes
    self.has_encoder = architectures.get(model.name).has_encoder
    self.computed = {"batches": 0, "encoder_positions": 0, "decoder_positions": 0,
                     "cross_attention_key_positions": 0, "cross_kv_bytes": 0,
                     "programs_compiled": 0}

  def cross_kv_bytes(self, prompts: int, enc_len: int) -> int:
    """Bytes of the cross-attention keys and values of `prompts` encoder rows of
    `enc_len` tokens over all decoder layers, in the activation dtype."""
    c = self.model.config
    return (2 * c.num_decoder_layers * prompts * enc_len * c.num_heads * c.head_dim
            * jnp.dtype(c.dtype).itemsize)

  def _within_kv_budget(self, chunks: list[list[int]], enc_len: int) -> list[list[int]]:
    """`chunks` split so that each one's padded prompts' keys and values fit
    `cross_kv_max_bytes` (one prompt a chunk at least)."""
    if not self.cross_kv_per_prompt:
      return chunks
    pad = fine_bucket if self.shapes == FINE else pow2
    most = len(max(chunks, key=len))
    while most > 1 and self.cross_kv_bytes(pad(most), enc_len) > self.cross_kv_max_bytes:
      most -= 1
    return [c[k:k + most] for c in chunks for k in range(0, len(c), most)]

  def score(self, requests: Sequence[Request], *, normalize: bool = False,
            greedy: bool = False) -> list[Result]:
    """Per request, its choices' summed log-likelihoods (divided by each choice's length
    with `normalize`) and, with `greedy`, whether each choice is the greedy continuation.
    Raises ValueError naming the first request without choices or with an empty one."""
    self.computed = dict.fromkeys(self.computed, 0)
    for i, r in enumerate(requests):
      if not r.choices or any(len(c) == 0 for c in r.choices):
        raise ValueError(f"request {i} has an empty choice list or an empty choice.")
    scores = [np.zeros(len(r.choices)) for r in requests]
    flags = [np.zeros(len(r.choices), bool) for r in requests] if greedy else None
    if requests:
      if self.shapes == PACKED:
        score = self._score_ed_packed if self.has_encoder else self._score_decoder_packed
      else:
        score = self._score_ed if self.has_encoder else self._score_decoder
      # Plan: the same walk over the batches, lowering the programs not compiled yet and
      # running nothing; then compile them together; then the walk that runs. The
      # decode shapes seen are restored between the two, so both make the same choices.
      # (`PACKED` lays a call's requests out once: `_layouts` keeps it for the run.)
      seen = set(self._decode_shapes)
      self._planning, self._planned, self._layouts = True, {}, {}
      try:
        score(requests, normalize, greedy, scores, flags)
        self._planning = False
        compiled = self._compile(self._planned)
      except BaseException:
        self._layouts = {}
        raise
      finally:
        self._planning, self._planned = False, {}
        self._decode_shapes = seen
      self.computed = dict.fromkeys(self.computed, 0)
      self.computed["programs_compiled"] = compiled
      try:
        score(requests, normalize, greedy, scores, flags)
      finally:
        self._layouts = {}
    if flags is None:
      return [Result(s, None) for s in scores]
    return [Result(s, f) for s, f in zip(scores, flags)]

  def _run(self, program, *args, greedy: Optional[bool] = None):
    """`program(model, params, *args[, greedy])` (one of this module's jitted programs)
    through the compiled programs; while planning, lowers it when it is not compiled
    and returns zeros of its output's shapes instead of running it."""
    key = (program, self.model, greedy, self._params_signature, _signature(args))
    static = () if greedy is None else (greedy,)
    entry = _PROGRAMS.get(key)
    if self._planning:
      if entry is None:
        lowered = self._planned.get(key)
        if lowered is None:
          lowered = self._planned[key] = program.lower(self.model, self.params, *args, *static)
        out_info = lowered.out_info
      else:
        out_info = entry[1]
      return jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), out_info)
    if entry is None:       # (planned programs are compiled; this is a safety net)
      lowered = program.lower(self.model, self.params, *args, *static)
      entry = _PROGRAMS[key] = (lowered.compile(), lowered.out_info)
      self.computed["programs_compiled"] += 1
    return entry[0](self.params, *args)

  def _compile(self, planned: dict) -> int:
    """Compile the lowered programs of `planned` on `compile_workers` threads into
    `_PROGRAMS`; returns how many."""
    items = list(planned.items())
    workers = min(self.compile_workers, len(items))
    if workers <= 1:
      for key, lowered in items:
        _PROGRAMS[key] = (lowered.compile(), lowered.out_info)
      return len(items)
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    futures = {pool.submit(lowered.compile): (key, lowered) for key, lowered in items}
    try:
      for future in concurrent.futures.as_completed(futures):
        key, lowered = futures[future]
        _PROGRAMS[key] = (future.result(), lowered.out_info)   # kept as each one finishes
    finally:
      pool.shutdown(wait=True, cancel_futures=True)   # on an error, start no more
    return len(items)

  def _count(self, encoder: int = 0, decoder: int = 0, cross: int = 0, batches: int = 1):
    c = self.computed
    c["batches"] += batches
    c["encoder_positions"] += int(encoder)
    c["decoder_positions"] += int(decoder)
    c["cross_attention_key_positions"] += int(cross)

  def _held(self, kv_bytes: int):
    self.computed["cross_kv_bytes"] = max(self.computed["cross_kv_bytes"], int(kv_bytes))

  @staticmethod
  def _store(where, totals, is_greedy, scores, flags):
    for k, (i, j) in enumerate(where):
      scores[i][j] = totals[k]
      if flags is not None:
        flags[i][j] = is_greedy[k]

  # -- decoder-only ------------------------------------------------------------------
  def _score_decoder(self, requests, normalize, greedy, scores, flags):
    rows = [(i, j, r.prompt, c) for i, r in enumerate(requests) for j, c in enumerate(r.choices)]
    longest = bucket(max(len(p) + len(c) for _, _, p, c in rows))
    length_of = {FINE: lambda n: fine_bucket(n, 16), POW2: bucket,
                 ONE_SHAPE: lambda n: longest}[self.shapes]
    by_length: dict[int, list] = {}
    for row in rows:
      by_length.setdefault(length_of(len(row[2]) + len(row[3])), []).append(row)
    for length, group in sorted(by_length.items()):
      per_batch = batch_rows(self.max_tokens, length)
      for start in range(0, len(group), per_batch):
        chunk = group[start:start + per_batch]
        num_rows = per_batch if self.shapes == ONE_SHAPE else min(
            per_batch, (fine_bucket if self.shapes == FINE else pow2)(len(chunk)))
        batch = decoder_batch([(p, c) for _, _, p, c in chunk], length, num_rows)
        self._count(decoder=num_rows * length)
        totals, is_greedy = jax.device_get(
            self._run(_decoder_scores, batch, normalize, greedy=greedy))
        self._store([(i, j) for i, j, _, _ in chunk], totals, is_greedy, scores, flags)

  # -- encoder-decoder ---------------------------------------------------------------
  def _score_ed(self, requests, normalize, greedy, scores, flags):
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
    longest_prompt = bucket(max(len(r.prompt) for r in requests))
    longest_choice = bucket(max(len(c) for r in requests for c in r.choices))
    most_choices = max(len(r.choices) for r in requests)
    enc_bucket = {FINE: lambda n: fine_bucket(n, 16), POW2: bucket,
                  ONE_SHAPE: lambda n: longest_prompt}[self.shapes]
    choice_bucket = (lambda n: fine_bucket(n, 4)) if self.shapes == FINE else bucket
    i = 0
    while i < len(order):
      enc_len = enc_bucket(len(requests[order[i]].prompt))
      group = []                  # the prompts of this encoder length
      while i < len(order) and enc_bucket(len(requests[order[i]].prompt)) == enc_len:
        group.append(order[i])
        i += 1
      chunks = self._within_kv_budget(
          list(ed_chunks(group, requests, enc_len, self.max_tokens, choice_bucket)), enc_len)
      widest = max(len(c) for c in chunks)
      for chunk in chunks:
        args = (requests, chunk, enc_len, normalize, greedy, scores, flags)
        if self.shapes == FINE:
          self._score_ed_split(*args)
        elif self.shapes == ONE_SHAPE:
          self._score_ed_joint(*args, dec_len=longest_choice, num_prompts=pow2(widest),
                               num_rows=pow2(widest * most_choices))
        else:
          self._score_ed_joint(
              *args, dec_len=bucket(max(len(c) for g in chunk for c in requests[g].choices)),
              num_prompts=pow2(len(chunk)),
              num_rows=pow2(sum(len(requests[g].choices) for g in chunk)))

  def _score_ed_split(self, requests, chunk, enc_len, normalize, greedy, scores, flags):
    """Encode the chunk's prompts once, then decode its choices grouped by their own
    length bucket, so that a long choice does not pad every other row of the chunk."""
    enc = encoder_batch([requests[g].prompt for g in chunk], enc_len, fine_bucket(len(chunk)))
    rows_by_length: dict[int, list] = {}
    for p, g in enumerate(chunk):
      for j, c in enumerate(requests[g].choices):
        rows_by_length.setdefault(fine_bucket(len(c), 4), []).append((p, g, j, c))
    per_prompt = self.cross_kv_per_prompt
    # [P, i, d], or per decoder layer the keys and values [layers, P, i, h, e]
    encoded = self._run(_ed_encode_kv if per_prompt else _ed_encode, enc)
    self._count(encoder=enc.size, cross=enc.size if per_prompt else 0, batches=0)
    if per_prompt:
      self._held(self.cross_kv_bytes(*enc.shape))
    lengths = sorted(rows_by_length)
    runs = merge_length_groups(
        [(n, len(rows_by_length[n])) for n in lengths], self.new_program_cost,
        known=lambda rows, length: (enc.shape[0], enc_len, rows, length) in self._decode_shapes)
    for start, stop in runs:
      dec_len = lengths[stop - 1]
      rows = [row for n in lengths[start:stop] for row in rows_by_length[n]]
      per_batch = max(1, self.max_tokens // (dec_len + enc_len))
      for first in range(0, len(rows), per_batch):
        part = rows[first:first + per_batch]
        idx, targets = ed_decoder_batch([(p, c) for p, _, _, c in part], dec_len,
                                        fine_bucket(len(part)))
        self._decode_shapes.add((enc.shape[0], enc_len, *targets.shape))
        decode = _ed_decode_kv_scores if per_prompt else _ed_decode_scores
        totals, is_greedy = jax.device_get(self._run(
            decode, encoded, enc, idx, targets, normalize, greedy=greedy))
        self._count(decoder=targets.size, cross=0 if per_prompt else len(idx) * enc_len)
        self._store([(g, j) for _, g, j, _ in part], totals, is_greedy, scores, flags)

  def _score_ed_joint(self, requests, chunk, enc_len, normalize, greedy, scores, flags, *,
                      dec_len, num_prompts, num_rows):
    """One program encodes the chunk's prompts `[num_prompts, enc_len]` and decodes all
    their choices `[num_rows, dec_len]`."""
    enc = encoder_batch([requests[g].prompt for g in chunk], enc_len, num_prompts)
    rows = [(p, g, j, c) for p, g in enumerate(chunk)
            for j, c in enumerate(requests[g].choices)]
    idx, targets = ed_decoder_batch([(p, c) for p, _, _, c in rows], dec_len, num_rows)
    program = _ed_kv_scores if self.cross_kv_per_prompt else _ed_scores
    totals, is_greedy = jax.device_get(
        self._run(program, enc, idx, targets, normalize, greedy=greedy))
    self._count(encoder=enc.size, decoder=targets.size,
                cross=enc.size if self.cross_kv_per_prompt else num_rows * enc_len)
    if self.cross_kv_per_prompt:
      self._held(self.cross_kv_bytes(num_prompts, enc_len))
    self._store([(g, j) for _, g, j, _ in rows], totals, is_greedy, scores, flags)


  # -- packed rows -------------------------------------------------------------------
  @staticmethod
  def _batches(num_rows: int, fits: Callable[[list], bool], at_least: int = 1,
               weights: Optional[Sequence[float]] = None) -> list:
    """`range(num_rows)` dealt into parts for which `fits(parts)` holds (it checks the
    parts' padded shape against the budgets), so that the parts share one shape with
    little padding: without `weights`, part b takes rows b, b + parts, ... (rows laid out
    in order of size mix evenly); with them, each row, heaviest first, goes to the part
    that weighs least so far (each part's rows in ascending order). Tries `at_least`
    parts (a lower bound from the positions to compute), then about 3% more each time;
    one row a part at most."""
    parts = max(1, min(int(at_least), num_rows))
    while True:
      if weights is None:
        split = [range(b, num_rows, parts) for b in range(parts)]
      else:
        split, totals = [[] for _ in range(parts)], [0.0] * parts
        for row in sorted(range(num_rows), key=lambda r: (-weights[r], r)):
          lightest = min(range(parts), key=lambda b: (totals[b], b))
          split[lightest].append(row)
          totals[lightest] += weights[row]
        split = [sorted(part) for part in split]
      if parts >= num_rows or fits(split):
        return split
      parts = min(num_rows, parts + max(1, parts // 32))

  @staticmethod
  def _length_classes(lengths: Sequence[int], minimum: int) -> dict[int, list[int]]:
    """Item indices by the row length they pack into: every item up to
    `PACKED_ROW_TOKENS` into rows of the longest one's `fine_bucket`, a longer one into
    rows of its own bucket."""
    short = [n for n in lengths if n <= PACKED_ROW_TOKENS]
    first = fine_bucket(max(short), minimum) if short else 0
    classes: dict[int, list[int]] = {}
    for k, n in enumerate(lengths):
      classes.setdefault(first if n <= PACKED_ROW_TOKENS else fine_bucket(n, minimum),
                         []).append(k)
    return dict(sorted(classes.items()))

  @staticmethod
  def _sum_segments(where, token_scores, equal, slots, lengths, normalize, scores, flags):
    """Each choice's score from its tokens' log-likelihoods `token_scores [R, L]` (0 off
    its tokens), summed in float64: `slots [R, L]` numbers a position's choice (-1: none),
    `where[slot]` is its (request, choice)."""
    on = slots >= 0
    totals = np.bincount(slots[on], weights=token_scores[on].astype(np.float64),
                         minlength=len(where))
    if normalize:
      totals = totals / np.maximum(lengths, 1)
    misses = None if equal is None else np.bincount(slots[on], weights=~equal[on],
                                                    minlength=len(where))
    for k, (i, j) in enumerate(where):
      scores[i][j] = totals[k]
      if flags is not None:
        flags[i][j] = misses[k] == 0

  def _score_decoder_packed(self, requests, normalize, greedy, scores, flags):
    """Rows `prompt ++ choice` packed into rows of a length class, each a segment of its
    own (causal within it; the ND's prefix both ways within it)."""
    items = [(i, j) for i, r in enumerate(requests) for j in range(len(r.choices))]
    lengths = [len(requests[i].prompt) + len(requests[i].choices[j]) for i, j in items]
    for length, members in self._length_classes(lengths, 16).items():
      key = ("decoder", length)
      if key not in self._layouts:         # (laid out once a call: planning, then running)
        rows = [[members[k] for k in row]
                for row in pack([lengths[m] for m in members], length)]
        fits = lambda parts: packed_rows(max(map(len, parts))) * length <= self.max_tokens
        self._layouts[key] = (rows, self._batches(
            len(rows), fits, -(-len(rows) * length // self.max_tokens)))
      rows, parts = self._layouts[key]
      num_rows = packed_rows(max(map(len, parts)))        # one shape for the class's batches
      for part in parts:
        batch = {name: np.zeros((num_rows, length), np.int32) for name in (
            "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
            "decoder_causal_attention", "decoder_loss_weights")}
        slots = np.full((num_rows, length), -1, np.int64)
        where = []
        for r, row in enumerate(rows[k] for k in part):
          start = 0
          for segment, m in enumerate(row, 1):
            i, j = items[m]
            prompt, choice = requests[i].prompt, requests[i].choices[j]
            n, stop = len(prompt), start + lengths[m]
            tokens = np.concatenate([prompt, choice])
            batch["decoder_target_tokens"][r, start:stop] = tokens
            batch["decoder_input_tokens"][r, start + 1:stop] = tokens[:-1]
            batch["decoder_segment_ids"][r, start:stop] = segment
            batch["decoder_causal_attention"][r, start:start + n + 1] = 1
            batch["decoder_loss_weights"][r, start + n:stop] = 1
            slots[r, start + n:stop] = len(where)
            where.append((i, j))
            start = stop
        self._count(decoder=num_rows * length)
        token_scores, equal = jax.device_get(
            self._run(_decoder_packed_scores, batch, greedy=greedy))
        self._sum_segments(where, token_scores, equal, slots,
                           np.asarray([len(requests[i].choices[j]) for i, j in where]),
                           normalize, scores, flags)

  def _ed_layout(self, requests, prompts: list[int], enc_len: int):
    """How the prompts `prompts` (indices into `requests`) of one length class are laid
    out: `(encoder rows, groups, decoder rows per group, decoder length, batches)`.

    An encoder row is a list of prompts (each a segment; the prompts without tokens share
    one row of padding of their own, which their choices' cross-attention reads as the
    unpacked scorer does). A group is `PACKED_CROSS_ROWS` consecutive encoder rows (the
    row of padding alone; one row where such a group alone would not fit a batch's
    budgets) and a decoder row a list of (prompt, choice) pairs of one
    group, which reads that group's keys and values. The decoder length is the one of
    `PACKED_DECODER_LENGTHS` buckets from the longest choice's up that computes the
    fewest positions. The batches are the groups dealt into parts (`_batches`) whose
    shape, one for them all, stays within `max_tokens` and `cross_kv_max_bytes`."""
    key = (enc_len, len(prompts))
    if key in self._layouts:
      return self._layouts[key]
    full = [g for g in prompts if len(requests[g].prompt)]
    empty = [g for g in prompts if not len(requests[g].prompt)]
    enc_rows = [[full[k] for k in row]
                for row in pack([len(requests[g].prompt) for g in full], enc_len)]
    filled = len(enc_rows)
    if empty:
      enc_rows.append(empty)
    longest = max(len(c) for g in prompts for c in requests[g].choices)
    # Groups of `PACKED_CROSS_ROWS` rows, or of one where a group alone would not fit.
    for cross in sorted({PACKED_CROSS_ROWS, 1}, reverse=True):
      groups = [list(range(a, min(a + cross, filled))) for a in range(0, filled, cross)]
      if empty:
        groups.append([filled])
      choices = [[(g, j) for row in group for g in enc_rows[row]
                  for j in range(len(requests[g].choices))] for group in groups]
      best = None
      length = fine_bucket(longest, 4)
      for _ in range(PACKED_DECODER_LENGTHS):
        dec_rows = [[[pairs[i] for i in d] for d in pack(
            [len(requests[g].choices[j]) for g, j in pairs], length)] for pairs in choices]
        positions = sum(map(len, dec_rows)) * length
        if best is None or positions < best[0]:
          best = (positions, dec_rows, length)
        length = fine_bucket(length + 1)
      _, dec_rows, dec_len = best

      def fits(parts, groups=groups, dec_rows=dec_rows, dec_len=dec_len):
        p = packed_rows(max(sum(len(groups[x]) for x in part) for part in parts))
        d = packed_rows(max(sum(len(dec_rows[x]) for x in part) for part in parts))
        return (p * enc_len + d * dec_len <= self.max_tokens
                and self.cross_kv_bytes(p, enc_len) <= self.cross_kv_max_bytes)

      if cross == 1 or all(fits([[x]]) for x in range(len(groups))):
        break

    positions = len(enc_rows) * enc_len + sum(map(len, dec_rows)) * dec_len
    parts = self._batches(len(groups), fits, -(-positions // self.max_tokens),
                          [len(g) * enc_len + len(d) * dec_len
                           for g, d in zip(groups, dec_rows)])
    layout = self._layouts[key] = (enc_rows, groups, dec_rows, dec_len, parts)
    return layout

  def _score_ed_packed(self, requests, normalize, greedy, scores, flags):
    """Prompts packed into encoder rows, each prompt a segment (numbered across the
    batch); each group of encoder rows' choices packed into decoder rows that read the
    group's keys and values (projected once per prompt; a group of one row reads it
    twice, which leaves the attention's weighted sum as it is), each choice a segment
    that reads its prompt's."""
    prompt_lengths = [len(r.prompt) for r in requests]
    for enc_len, prompts in self._length_classes(prompt_lengths, 16).items():
      enc_rows, groups, dec_rows, dec_len, parts = self._ed_layout(requests, prompts, enc_len)
      k = max(map(len, groups))             # the encoder rows a decoder row reads
      # One shape for all of the class's batches: two programs.
      num_prompts = packed_rows(max(sum(len(groups[x]) for x in part) for part in parts))
      num_rows = packed_rows(max(sum(len(dec_rows[x]) for x in part) for part in parts))
      for part in parts:
        enc = np.zeros((num_prompts, enc_len), np.int32)
        enc_seg = np.zeros_like(enc)
        segment_of, row_of = {}, {}
        for row in (row for x in part for row in groups[x]):
          p = row_of[row] = len(row_of)
          start = 0
          for g in enc_rows[row]:
            prompt = requests[g].prompt
            segment_of[g] = len(segment_of) + 1
            enc[p, start:start + len(prompt)] = prompt
            enc_seg[p, start:start + len(prompt)] = segment_of[g]
            start += len(prompt)
        idx = np.zeros((num_rows, k), np.int32)
        arrays = {name: np.zeros((num_rows, dec_len), np.int32)
                  for name in ("inputs", "targets", "segments", "cross")}
        slots = np.full((num_rows, dec_len), -1, np.int64)
        where = []
        r = 0
        for x in part:
          read = [row_of[row] for row in groups[x]]
          read += read[:1] * (k - len(read))
          for row in dec_rows[x]:
            idx[r], start = read, 0
            for segment, (g, j) in enumerate(row, 1):
              choice = requests[g].choices[j]
              stop = start + len(choice)
              arrays["targets"][r, start:stop] = choice
              arrays["inputs"][r, start + 1:stop] = choice[:-1]
              arrays["segments"][r, start:stop] = segment
              arrays["cross"][r, start:stop] = segment_of[g]
              slots[r, start:stop] = len(where)
              where.append((g, j))
              start = stop
            r += 1
        key_values = self._run(_ed_packed_encode_kv, enc, enc_seg)
        self._count(encoder=enc.size, decoder=num_rows * dec_len, cross=enc.size)
        self._held(self.cross_kv_bytes(num_prompts, enc_len))
        token_scores, equal = jax.device_get(self._run(
            _ed_packed_decode_scores, key_values, enc, enc_seg, idx, arrays["inputs"],
            arrays["targets"], arrays["segments"], arrays["cross"], greedy=greedy))
        self._sum_segments(where, token_scores, equal, slots,
                           np.asarray([len(requests[g].choices[j]) for g, j in where]),
                           normalize, scores, flags)


# ----------------------------------------------------------------------------------------
# The compiled programs
# ----------------------------------------------------------------------------------------
# (program, model, greedy, params' signature, arguments' signature) -> (compiled, output
# shapes): what `Scorer._run` calls, for the process.
_PROGRAMS: dict = {}


def clear_programs():
  """Drop every compiled scoring program of this process (the next call compiles again)."""
  _PROGRAMS.clear()


def default_compile_workers() -> int:
  """The CPUs this process may use, at most 8 (each compilation holds its own memory)."""
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:                 # (not on every platform)
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, 8))


def _signature(tree) -> tuple:
  """The structure and per-leaf (shape, dtype, weak type) of `tree` (a Python scalar: its
  type), and the default device programs are placed on."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return treedef, jax.config.jax_default_device, tuple(
      (tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)))
      if hasattr(x, "dtype") else type(x) for x in leaves)


# `normalize` is traced (a scalar bool: one program serves both); `greedy` is static (it
# adds an argmax over the logits, which plain scoring does not pay for).
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


@functools.partial(jax.jit, static_argnums=(0, 4))
def _decoder_scores(model, params, batch, normalize, greedy):
  logits = model.compute_logits(params, batch)                         # [b, l, v]
  return _summed(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                 normalize, greedy)


@functools.partial(jax.jit, static_argnums=(0,))
def _ed_encode(model, params, enc):
  return model.encode(params, enc)                                     # [P, i, d]


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


@functools.partial(jax.jit, static_argnums=(0,))
def _ed_encode_kv(model, params, enc):
  return model.cross_key_values(params, model.encode(params, enc))   # [layers, P, i, h, e]


@functools.partial(jax.jit, static_argnums=(0, 6))
def _ed_scores(model, params, enc, idx, targets, normalize, greedy):
  encoded = model.encode(params, enc)                                  # [P, i, d]: once
  return _ed_decoded(model, params, encoded, enc, idx, targets, normalize, greedy)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _ed_kv_scores(model, params, enc, idx, targets, normalize, greedy):
  key_values = model.cross_key_values(params, model.encode(params, enc))  # once per prompt
  return _ed_decoded_kv(model, params, key_values, enc, idx, targets, normalize, greedy)


def _token_scores(logits, targets, weights, greedy):
  """`([b, l] log p(target) where `weights`, else 0; [b, l] the target is the argmax, or
  None)`: packed rows sum them per segment on the host."""
  scores = losses.token_log_likelihoods(logits, targets) * (weights > 0)
  return scores, (jnp.argmax(logits, axis=-1) == targets) if greedy else None


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decoder_packed_scores(model, params, batch, greedy):
  logits = model.compute_logits(params, batch)                         # [b, l, v]
  return _token_scores(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                       greedy)


@functools.partial(jax.jit, static_argnums=(0,))
def _ed_packed_encode_kv(model, params, enc, enc_seg):
  encoded = model.encode(params, enc, encoder_segment_ids=enc_seg)     # [P, i, d]
  return model.cross_key_values(params, encoded)                       # [layers, P, i, h, e]


@functools.partial(jax.jit, static_argnums=(0, 10))
def _ed_packed_decode_scores(model, params, key_values, enc, enc_seg, idx, inputs, targets,
                             segments, cross, greedy):
  """Decoder row r, packed choices (`segments`), against the keys and values of the
  prompt rows `idx[r]` (`[R, k]`, one after another), each position reading its prompt's
  segment (`cross`) of `enc_seg`."""
  logits = model.decode_logits(params, None, enc, inputs, targets, cross_key_values=key_values,
                               cross_rows=idx, encoder_segment_ids=enc_seg,
                               decoder_segment_ids=segments, cross_segment_ids=cross)
  return _token_scores(logits, targets, targets, greedy)
