"""Summed log-likelihoods of continuations given a context, in packed rows, for the CD,
ND and ED.

A `Request` is a context's token ids (`prompt`, possibly empty) and one or more
continuations' token ids (`choices`, none empty). `Scorer.score` returns per request a
`Result`: per continuation the sum of log p(token) over its tokens (optionally divided by
their number) and, when asked, whether every one of them is the model's argmax (lm-eval's
`is_greedy`). Nothing is added or cut here: EOS and truncation are the caller's.

Requests are packed: several share a row, each a segment of its own that attends only to
itself; relative positions do not depend on where a segment starts, so a request scores
as it would alone (to float rounding). Rows are of one length per class: every request up
to `PACKED_ROW_TOKENS` tokens in rows of the longest one's `fine_bucket`, a longer one in
rows of its own bucket. A batch holds at most `max_tokens` tokens (rows x length), and
the batches of a class share one shape, their row counts rounded only to a sixteenth of
their power of two (`packed_rows`). The model's layout family (`model.layout.family`)
picks how a request is read (the same features as training, spec §3.3):

  decoder          rows of `prompt ++ choice` segments; `decoder_causal_attention` on
                   each prompt plus one position (bidirectional for the ND), loss
                   weights on the choice. One program a length class.
  encoder_decoder  prompts packed into encoder rows, encoded once, and each decoder
                   layer's cross-attention keys and values projected once per prompt
                   (`[layers, P, i, heads, head_dim]`); the choices of each
                   `PACKED_CROSS_ROWS` encoder rows packed into decoder rows (from
                   start token 0) that read those rows' keys and values, each choice's
                   cross-attention kept to its prompt's segment, so a choice costs only
                   the decoder's own work. The decoder length is the one of a few
                   buckets from the longest choice's up that computes the fewest
                   positions; prompts without tokens share an all-padding encoder row.
                   Two programs a length class; `cross_kv_max_bytes` bounds the keys and
                   values one batch holds.

A call turns its requests into a `Plan` (`programs.Step`s: a program, its arguments,
and the `Segments` its scores go to), compiles the programs the plan needs that no
earlier call compiled (`programs.compile_plan`, on `compile_workers` threads), then
runs it and sums each choice's token scores on the host, in float64.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arch_objective import layouts, models
from arch_objective.errors import UserError, integer_at_least
from arch_objective.evaluation.scoring import programs
from arch_objective.evaluation.scoring.shapes import (deal, fine_bucket, length_classes,
                                                      pack, packed_rows)
from arch_objective.features import (DECODER_CAUSAL_ATTENTION, DECODER_INPUT_TOKENS,
                                     DECODER_LOSS_WEIGHTS, DECODER_POSITIONS,
                                     DECODER_SEGMENT_IDS, DECODER_TARGET_TOKENS,
                                     ENCODER_POSITIONS)

# Rows are full, so batches hold more requests in fewer tokens; on the 2-core CPU batches
# of about 4,096 tokens ran a pass faster than one of 16,384 (the large batch's buffers
# are fresh memory on every run).
DEFAULT_MAX_TOKENS = 4096
# The most bytes of cross-attention keys and values one ED batch holds (all decoder layers,
# its prompts padded): the paper's ED at 16,384 encoder tokens in bf16 would hold 6.4 GB.
DEFAULT_CROSS_KV_MAX_BYTES = 2 << 30
# Rows of at most this many tokens hold several requests; a longer request gets rows of
# its own length bucket. (Attention over a packed row's other segments is masked work: at
# 512 it costs a small model about a sixth more per position.)
PACKED_ROW_TOKENS = 512
# ED: decoder row lengths tried from the longest choice's bucket up.
PACKED_DECODER_LENGTHS = 5
# ED: the encoder rows one decoder row reads (their keys and values one after another).
# Two fill decoder rows with the choices of twice as many prompts (on the scoring
# benchmark's suite 2,880 decoder positions instead of 3,584), for twice the
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


@dataclasses.dataclass(frozen=True)
class Segments:
  """Where a packed batch's token scores go: `slots [rows, length] int64` numbers the
  choice of each position (-1: none), `where[slot]` is that choice's (request, choice)
  and `lengths[slot]` its number of tokens."""
  where: list[tuple[int, int]]
  slots: np.ndarray
  lengths: np.ndarray

  def collect(self, token_scores, equal, normalize: bool, scores, flags):
    """Each choice's score from its tokens' log-likelihoods `token_scores [rows, length]`
    (0 off its tokens), summed in float64 into `scores[request][choice]`; with `flags`,
    whether every one of its tokens is the argmax (`equal [rows, length]`)."""
    on = self.slots >= 0
    totals = np.bincount(self.slots[on], weights=token_scores[on].astype(np.float64),
                         minlength=len(self.where))
    if normalize:
      totals = totals / np.maximum(self.lengths, 1)
    misses = None if equal is None else np.bincount(self.slots[on], weights=~equal[on],
                                                    minlength=len(self.where))
    for k, (i, j) in enumerate(self.where):
      scores[i][j] = totals[k]
      if flags is not None:
        flags[i][j] = misses[k] == 0


@dataclasses.dataclass
class Plan:
  """A call's work, in the order it runs (`steps`), and the positions it computes,
  padding included (`Scorer.computed`, less `programs_compiled`)."""
  steps: list[programs.Step] = dataclasses.field(default_factory=list)
  computed: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(
      ("batches", ENCODER_POSITIONS, DECODER_POSITIONS,
       "cross_attention_key_positions", "cross_kv_bytes"), 0))

  def add(self, step: programs.Step) -> programs.Output:
    """Appends `step`; its output, as a later step's argument."""
    self.steps.append(step)
    return programs.Output(len(self.steps) - 1)

  def count(self, *, encoder: int = 0, decoder: int = 0, cross: int = 0,
            kv_bytes: int = 0):
    """One batch more, of `encoder` and `decoder` positions and `cross` encoder positions
    whose keys and values it projects, holding `kv_bytes` of them."""
    c = self.computed
    c["batches"] += 1
    c[ENCODER_POSITIONS] += int(encoder)
    c[DECODER_POSITIONS] += int(decoder)
    c["cross_attention_key_positions"] += int(cross)
    c["cross_kv_bytes"] = max(c["cross_kv_bytes"], int(kv_bytes))


class EncoderDecoderRows(NamedTuple):
  """How the prompts of one ED length class are packed (`Scorer.pack_encoder_decoder`)."""
  encoder_rows: list[list[int]]             # per encoder row, its requests (segments)
  groups: list[list[int]]                   # per group, its encoder rows
  decoder_rows: list[list[list[tuple[int, int]]]]   # per group, rows of (request, choice)
  decoder_length: int
  parts: list                               # per batch, its groups


class Scorer:
  """Scores requests with one model's parameters (see the module docstring).

  `max_tokens` bounds the tokens of one batch (rows x length; default
  `DEFAULT_MAX_TOKENS`). `computed` holds the positions the last `score` call computed,
  padding included: `batches`, `encoder_positions`, `decoder_positions`,
  `cross_attention_key_positions` (the encoder positions whose cross-attention keys and
  values were projected, all layers counted once).

  ED: a batch holds every decoder layer's keys and values of its prompts at once;
  `cross_kv_max_bytes` bounds that (encoder rows padded), splitting a class's prompts
  over more batches where needed (at least one encoder row a batch);
  `computed['cross_kv_bytes']` is the most one batch held.

  `compile_workers`: threads that compile a call's new programs (default: the CPUs this
  process may use, at most 8; 1 compiles them one after another).
  `computed['programs_compiled']` counts the programs the last call compiled.
  """

  def __init__(self, model: models.BaseModel, params, *, max_tokens: Optional[int] = None,
               cross_kv_max_bytes: int = DEFAULT_CROSS_KV_MAX_BYTES,
               compile_workers: Optional[int] = None):
    if max_tokens is None:
      max_tokens = DEFAULT_MAX_TOKENS
    if not integer_at_least(max_tokens, 1):
      raise UserError(f"max_tokens must be a positive number of tokens, found "
                      f"{max_tokens!r}.")
    if not integer_at_least(cross_kv_max_bytes, 1):
      raise UserError(f"cross_kv_max_bytes must be a positive number of bytes, found "
                      f"{cross_kv_max_bytes!r}.")
    if compile_workers is None:
      compile_workers = programs.default_compile_workers()
    if not integer_at_least(compile_workers, 1):
      raise UserError(f"compile_workers must be a positive number of threads, found "
                      f"{compile_workers!r}.")
    self._plan_requests = layouts.by_family(PACKINGS, model.layout, "the scorer's layouts")
    # On the device once: parameters read from a checkpoint are host arrays, which every
    # batch would otherwise copy to the accelerator.
    self.model, self.params = model, jax.device_put(params)
    self._params_signature = programs.signature(params)
    self.max_tokens = max_tokens
    self.cross_kv_max_bytes = cross_kv_max_bytes
    self.compile_workers = compile_workers
    self.computed = dict(Plan().computed, programs_compiled=0)

  def cross_kv_bytes(self, prompts: int, enc_len: int) -> int:
    """Bytes of the cross-attention keys and values of `prompts` encoder rows of
    `enc_len` tokens over all decoder layers, in the activation dtype."""
    c = self.model.config
    return (2 * c.num_decoder_layers * prompts * enc_len * c.num_heads * c.head_dim
            * jnp.dtype(c.dtype).itemsize)

  def score(self, requests: Sequence[Request], *, normalize: bool = False,
            greedy: bool = False) -> list[Result]:
    """Per request, its choices' summed log-likelihoods (divided by each choice's length
    with `normalize`) and, with `greedy`, whether each choice is the greedy continuation.
    Raises a UserError naming the first request without choices or with an empty one."""
    self.computed = dict.fromkeys(self.computed, 0)
    for i, r in enumerate(requests):
      if not r.choices or any(len(c) == 0 for c in r.choices):
        raise UserError(f"request {i} has an empty choice list or an empty choice.")
    scores = [np.zeros(len(r.choices)) for r in requests]
    flags = [np.zeros(len(r.choices), bool) for r in requests] if greedy else None
    if requests:
      plan = self.plan(requests, greedy=greedy)
      compiled, count = programs.compile_plan(
          plan.steps, self.model, self.params, params_signature=self._params_signature,
          workers=self.compile_workers)
      self.computed = dict(plan.computed, programs_compiled=count)
      for segments, (token_scores, equal) in programs.run_plan(plan.steps, compiled,
                                                               self.params):
        segments.collect(token_scores, equal, normalize, scores, flags)
    if flags is None:
      return [Result(s, None) for s in scores]
    return [Result(s, f) for s, f in zip(scores, flags)]

  def plan(self, requests: Sequence[Request], *, greedy: bool = False) -> Plan:
    """The steps that score `requests` (each with choices, none empty) in packed rows of
    the model's layout family, and the positions they compute. Runs nothing."""
    plan = Plan()
    self._plan_requests(self, requests, bool(greedy), plan)
    return plan

  # -- decoder-only ------------------------------------------------------------------
  def _plan_decoder(self, requests, greedy: bool, plan: Plan):
    """Rows `prompt ++ choice` packed into rows of a length class, each a segment of its
    own (causal within it; the ND's prefix both ways within it)."""
    items = [(i, j) for i, r in enumerate(requests) for j in range(len(r.choices))]
    lengths = [len(requests[i].prompt) + len(requests[i].choices[j]) for i, j in items]
    for length, members in length_classes(lengths, 16, PACKED_ROW_TOKENS).items():
      rows = [[members[k] for k in row] for row in pack([lengths[m] for m in members], length)]
      fits = lambda parts: packed_rows(max(map(len, parts))) * length <= self.max_tokens
      parts = deal(len(rows), fits, -(-len(rows) * length // self.max_tokens))
      num_rows = packed_rows(max(map(len, parts)))        # one shape for the class's batches
      for part in parts:
        batch = {name: np.zeros((num_rows, length), np.int32) for name in (
            DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS, DECODER_SEGMENT_IDS,
            DECODER_CAUSAL_ATTENTION, DECODER_LOSS_WEIGHTS)}
        slots = np.full((num_rows, length), -1, np.int64)
        where = []
        for r, row in enumerate(rows[k] for k in part):
          start = 0
          for segment, m in enumerate(row, 1):
            i, j = items[m]
            prompt, choice = requests[i].prompt, requests[i].choices[j]
            n, stop = len(prompt), start + lengths[m]
            tokens = np.concatenate([prompt, choice])
            batch[DECODER_TARGET_TOKENS][r, start:stop] = tokens
            batch[DECODER_INPUT_TOKENS][r, start + 1:stop] = tokens[:-1]
            batch[DECODER_SEGMENT_IDS][r, start:stop] = segment
            batch[DECODER_CAUSAL_ATTENTION][r, start:start + n + 1] = 1
            batch[DECODER_LOSS_WEIGHTS][r, start + n:stop] = 1
            slots[r, start + n:stop] = len(where)
            where.append((i, j))
            start = stop
        plan.count(decoder=num_rows * length)
        plan.add(programs.Step(programs.decoder_packed_scores, (batch,), (greedy,),
                               _segments(requests, where, slots)))

  # -- encoder-decoder ---------------------------------------------------------------
  def pack_encoder_decoder(self, requests: Sequence[Request], prompts: list[int],
                           enc_len: int) -> EncoderDecoderRows:
    """How the prompts `prompts` (indices into `requests`) of one length class are packed.

    An encoder row is a list of prompts (each a segment; the prompts without tokens share
    one row of padding of their own, which their choices' cross-attention reads as an
    unpacked row of padding would). A group is `PACKED_CROSS_ROWS` consecutive encoder
    rows (the row of padding alone; one row where such a group alone would not fit a
    batch's budgets) and a decoder row a list of (prompt, choice) pairs of one group,
    which reads that group's keys and values. The decoder length is the one of
    `PACKED_DECODER_LENGTHS` buckets from the longest choice's up that computes the
    fewest positions. The parts are the groups dealt into batches (`shapes.deal`) whose
    shape, one for them all, stays within `max_tokens` and `cross_kv_max_bytes`."""
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
    parts = deal(len(groups), fits, -(-positions // self.max_tokens),
                 [len(g) * enc_len + len(d) * dec_len for g, d in zip(groups, dec_rows)])
    return EncoderDecoderRows(enc_rows, groups, dec_rows, dec_len, parts)

  def _plan_encoder_decoder(self, requests, greedy: bool, plan: Plan):
    """Prompts packed into encoder rows, each prompt a segment (numbered across the
    batch); each group of encoder rows' choices packed into decoder rows that read the
    group's keys and values (projected once per prompt; a group of one row reads it
    twice, which leaves the attention's weighted sum as it is), each choice a segment
    that reads its prompt's."""
    prompt_lengths = [len(r.prompt) for r in requests]
    for enc_len, prompts in length_classes(prompt_lengths, 16, PACKED_ROW_TOKENS).items():
      enc_rows, groups, dec_rows, dec_len, parts = self.pack_encoder_decoder(
          requests, prompts, enc_len)
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
        key_values = plan.add(programs.Step(programs.ed_packed_encode_kv, (enc, enc_seg)))
        plan.count(encoder=enc.size, decoder=num_rows * dec_len, cross=enc.size,
                   kv_bytes=self.cross_kv_bytes(num_prompts, enc_len))
        plan.add(programs.Step(
            programs.ed_packed_decode_scores,
            (key_values, enc, enc_seg, idx, arrays["inputs"], arrays["targets"],
             arrays["segments"], arrays["cross"]), (greedy,),
            _segments(requests, where, slots)))


def _segments(requests: Sequence[Request], where: list[tuple[int, int]], slots: np.ndarray
              ) -> Segments:
  return Segments(where, slots,
                  np.asarray([len(requests[i].choices[j]) for i, j in where]))


# The packed layout of each layout family (`model.layout.family`).
PACKINGS = {layouts.DECODER.family: Scorer._plan_decoder,
            layouts.ENCODER_DECODER.family: Scorer._plan_encoder_decoder}
