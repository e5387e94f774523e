"""Autoregressive decoding over a key/value cache: greedy, sampling (temperature, top-k,
top-p) and beam search (t5x's, with its brevity penalty).

The model supplies a step function `step_fn(cache, tokens [b], positions [b]) ->
(logits [b, v], cache)`; this module only chooses tokens. `decode` is a `lax.scan` of a
fixed number of steps, so it jits once per shape; `beam_search` a `lax.while_loop` that
stops as soon as no live beam can beat the finished ones.

Beam search follows t5x's `decoding.beam_search`: at each step the `2k` best
continuations of the `k` live beams are drawn; those ending in EOS join the finished
set (scored `log p / ((5 + L) / 6) ** alpha`, L the tokens generated including EOS), the
`k` best others stay live; the search ends when every row holds `k` finished sequences
none of which a live beam can beat, or after `num_steps` tokens. A row with no finished
sequence returns its live beams, scored by their log-probability. With `alpha = 0`
the score is the log-probability itself. Slots of a row that has fewer than `k`
finished sequences are filled with its best live beams, after the finished ones (t5x
leaves them empty).

Hugging Face's `generate(num_beams=k, length_penalty=lp)` differs in three rules
(`rules="hf"` follows them; tests/test_beam_search.py checks it against `generate`): the
penalty is `L ** lp`; only the `k` best of the `2k` continuations may finish (t5x lets
any of them); at the last step the `k` best live continuations finish too (t5x keeps
only sequences that ended in EOS). t5x's `alpha` therefore equals HF's `length_penalty`
only under `rules="hf"`; with `alpha = length_penalty = 0` both rank by the
log-probability, and the two searches return the same sequences except where those rules
bite.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from arch_objective.errors import UserError

Array = jax.Array
StepFn = Callable[[Any, Array, Array], tuple[Array, Any]]


# A log-probability no sequence reaches; finite, so that sums stay comparable (t5x's).
NEG_INF = -1.0e7


class DecodeResult(NamedTuple):
  tokens: Array   # [b, steps] int32; 0 (padding) after the end-of-sequence token
  logits: Array   # [b, steps, v] float32: the logits each token was chosen from


class BeamResult(NamedTuple):
  tokens: Array     # [b, k, steps] int32, best first; 0 (padding) after EOS
  scores: Array     # [b, k] float32: what the search ranks by (log_probs / brevity penalty)
  log_probs: Array  # [b, k] float32: each sequence's summed log-probability (EOS included)


def sample_logits(logits: Array, rng: Optional[Array], temperature: float = 1.0,
                  topk: int = 0, topp: float = 1.0) -> Array:
  """Choose one token per row: `logits [b, v]` -> `[b]` int32.

  Greedy (argmax) when `rng` is None or `temperature == 0`; otherwise a draw from
  softmax(logits / temperature) restricted to the `topk` best tokens (all if 0) and to
  the smallest set of best tokens whose probability reaches `topp` (all if 1; the best
  token is always kept).
  """
  if rng is None or temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  check_sampling(temperature, topk, topp)
  logits = logits.astype(jnp.float32) / temperature
  if topk:
    kth = lax.top_k(logits, topk)[0][..., -1:]                            # [b, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if topp < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]                        # [b, v] descending
    before = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1) - jax.nn.softmax(
        ordered, axis=-1)                                                 # mass of the better ones
    kept = jnp.where(before < topp, ordered, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)                     # [b, 1]
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def check_sampling(temperature: float, topk: int, topp: float):
  """UserError naming the sampling option out of range (temperature >= 0, topk >= 0,
  0 < topp <= 1)."""
  if temperature < 0:
    raise UserError(f"temperature must be >= 0, found {temperature}.")
  if topk < 0:
    raise UserError(f"topk must be >= 0, found {topk}.")
  if not 0.0 < topp <= 1.0:
    raise UserError(f"topp must be in (0, 1], found {topp}.")


def sequence_log_probs(logits: Array, tokens: Array, eos_id: Optional[int] = 1) -> Array:
  """The summed log-probability `[b]` of `tokens [b, steps]` up to and including the
  first `eos_id` (the padding after it not counted; every token without EOS or with
  `eos_id` None) under `logits [b, steps, v]`, the logits each token was chosen from
  (temperature 1)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  chosen = jnp.take_along_axis(log_probs, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if eos_id is None:
    return jnp.sum(chosen, axis=-1)
  is_eos = (tokens == eos_id).astype(jnp.int32)
  after_eos = (jnp.cumsum(is_eos, axis=-1) - is_eos) > 0
  return jnp.sum(jnp.where(after_eos, 0.0, chosen), axis=-1)


def decode(step_fn: StepFn, cache: Any, first_logits: Array, start_positions: Array,
           num_steps: int, *, rng: Optional[Array] = None, temperature: float = 1.0,
           topk: int = 0, topp: float = 1.0, eos_id: Optional[int] = 1) -> DecodeResult:
  """Generate `num_steps` tokens per row.

  `first_logits [b, v]` predict the first new token, which is then fed at
  `start_positions [b]`, and so on. Rows that emitted `eos_id` emit 0 afterwards.
  The caller's cache must hold `start_positions + num_steps` positions.
  """
  if num_steps < 1:
    raise UserError(f"num_steps must be >= 1, found {num_steps}.")
  batch = first_logits.shape[0]

  def body(carry, step):
    logits, cache, done = carry
    step_rng = None if rng is None else jax.random.fold_in(rng, step)
    token = sample_logits(logits, step_rng, temperature, topk, topp)
    token = jnp.where(done, 0, token)
    if eos_id is not None:
      done = done | (token == eos_id)
    next_logits, cache = step_fn(cache, token, start_positions + step)
    return (next_logits, cache, done), (token, logits)

  init = (first_logits, cache, jnp.zeros((batch,), jnp.bool_))
  _, (tokens, logits) = lax.scan(body, init, jnp.arange(num_steps))
  return DecodeResult(tokens=jnp.transpose(tokens), logits=jnp.transpose(logits, (1, 0, 2)))


BEAM_RULES = ("t5x", "hf")


def brevity_penalty(alpha: float, length: Array, rules: str = "t5x") -> Array:
  """What a finished beam of `length` tokens (EOS included) divides its log-probability
  by: t5x's `((5 + length) / 6) ** alpha`, or Hugging Face's `length ** alpha` (its
  `length_penalty`)."""
  length = jnp.asarray(length, jnp.float32)
  return jnp.power(length if rules == "hf" else (5.0 + length) / 6.0, alpha)


class _Beams(NamedTuple):
  step: Array              # [] int32: tokens generated so far
  live_log_probs: Array    # [b, k]
  live_tokens: Array       # [b, k, steps]
  live_logits: Array       # [b, k, v]: the next token's logits of each live beam
  cache: Any               # rows b * k, beam-major within a prompt
  finished_scores: Array   # [b, k]
  finished_log_probs: Array
  finished_tokens: Array   # [b, k, steps]
  finished: Array          # [b, k] bool: the slot holds a finished sequence
  done: Array              # [b] bool: the row admits no more finished sequences


def _top(values: Array, k: int) -> tuple[Array, Array]:
  """The `k` largest of `values [b, n]`, best first (ties: the lower index first)."""
  return lax.top_k(values, k)


def _take(x: Array, index: Array) -> Array:
  """`x [b, n, ...]` rows `index [b, m]` -> `[b, m, ...]`."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(step_fn: StepFn, cache: Any, first_logits: Array, start_positions: Array,
                num_steps: int, *, num_decodes: int = 4, alpha: float = 0.6,
                eos_id: int = 1, cache_batch_axis: int = 0, rules: str = "t5x"
                ) -> BeamResult:
  """The `num_decodes` best continuations of each prompt (see the module docstring).

  The caller hands over `b * k` rows (`k = num_decodes`), each prompt repeated `k`
  times one after another: `cache` (its arrays' rows on axis `cache_batch_axis`),
  `first_logits [b * k, v]` and `start_positions [b * k]`, as for `decode`. Returns
  `BeamResult` of `[b, k, num_steps]` tokens, best first.

  `rules="t5x"` (the default) is t5x's search. `rules="hf"` is Hugging Face's
  `generate(num_beams=k, length_penalty=alpha, early_stopping=False)`: the penalty is
  `L ** alpha`; only the `k` best of the `2k` continuations may finish; at the last step
  the `k` best continuations finish whether or not they end in EOS; a row stops
  admitting finished sequences once its best live beam, divided by the penalty of the
  tokens generated so far, cannot beat its worst finished one.
  """
  k = num_decodes
  if rules not in BEAM_RULES:
    raise UserError(f"beam search rules must be one of {', '.join(BEAM_RULES)}, found "
                    f"{rules!r}.")
  if not isinstance(k, int) or k < 1:
    raise UserError(f"num_decodes (beams) must be a positive integer, found {k!r}.")
  if num_steps < 1:
    raise UserError(f"num_steps must be >= 1, found {num_steps}.")
  if eos_id is None:
    raise UserError("beam search needs an eos_id: a beam finishes on it.")
  rows, vocab = first_logits.shape
  if rows % k:
    raise UserError(f"beam_search: {rows} rows of first_logits are not {k} copies of each "
                    f"prompt.")
  if 2 * k > vocab:
    raise UserError(f"num_decodes {k} needs a vocabulary of at least {2 * k} tokens, "
                    f"found {vocab}.")
  b = rows // k
  hf = rules == "hf"
  positions = start_positions.reshape(b, k)
  rank = jnp.arange(2 * k)[None, :]

  def gather_cache(cache, index):                      # index [b, k] of beams
    flat = (jnp.arange(b)[:, None] * k + index).reshape(-1)
    return jax.tree_util.tree_map(lambda x: jnp.take(x, flat, axis=cache_batch_axis), cache)

  def worst_finished(s: _Beams) -> Array:               # [b]; NEG_INF until k are finished
    return jnp.where(jnp.all(s.finished, axis=1), s.finished_scores[:, -1], NEG_INF)

  def body(s: _Beams) -> _Beams:
    log_probs = jax.nn.log_softmax(s.live_logits.astype(jnp.float32), axis=-1)
    log_probs = log_probs + s.live_log_probs[..., None]                  # [b, k, v]
    top_log_probs, top_index = _top(log_probs.reshape(b, k * vocab), 2 * k)   # [b, 2k]
    top_beam, top_token = top_index // vocab, top_index % vocab
    top_tokens = _take(s.live_tokens, top_beam)                          # [b, 2k, steps]
    top_tokens = lax.dynamic_update_slice_in_dim(
        top_tokens, top_token[..., None].astype(jnp.int32), s.step, axis=2)
    ended = top_token == eos_id                                          # [b, 2k]
    # The k best continuations that did not end stay live.
    live_log_probs, pick = _top(jnp.where(ended, NEG_INF, top_log_probs), k)
    live_tokens = _take(top_tokens, pick)
    beam = jnp.take_along_axis(top_beam, pick, axis=1)                   # [b, k]
    cache = gather_cache(s.cache, beam)
    token = jnp.take_along_axis(top_token, pick, axis=1).reshape(-1).astype(jnp.int32)
    logits, cache = step_fn(cache, token, (jnp.take_along_axis(positions, beam, axis=1)
                                           + s.step).reshape(-1))
    # Those that finish join the finished ones; the k best of both are kept.
    finishing = ended
    if hf:
      finishing = (ended | (s.step + 1 >= num_steps)) & (rank < k) & ~s.done[:, None]
    scores = jnp.where(finishing, top_log_probs / brevity_penalty(alpha, s.step + 1, rules),
                       NEG_INF)
    best_scores, best = _top(jnp.concatenate([s.finished_scores, scores], axis=1), k)
    pool = lambda old, new: _take(jnp.concatenate([old, new], axis=1), best)
    s = _Beams(step=s.step + 1, live_log_probs=live_log_probs, live_tokens=live_tokens,
               live_logits=logits.reshape(b, k, vocab), cache=cache,
               finished_scores=best_scores,
               finished_log_probs=pool(s.finished_log_probs, top_log_probs),
               finished_tokens=pool(s.finished_tokens, top_tokens),
               finished=pool(s.finished, finishing), done=s.done)
    if hf:
      best_possible = live_log_probs[:, 0] / brevity_penalty(alpha, s.step, rules)
      s = s._replace(done=s.done | ~(best_possible > worst_finished(s)))
    return s

  def searching(s: _Beams) -> Array:
    if hf:
      return (s.step < num_steps) & ~jnp.all(s.done)
    best_live = s.live_log_probs[:, 0] / brevity_penalty(alpha, num_steps + 1)  # as t5x
    return (s.step < num_steps) & ~jnp.all(worst_finished(s) > best_live)

  init = _Beams(
      step=jnp.zeros((), jnp.int32),
      live_log_probs=jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1)),
      live_tokens=jnp.zeros((b, k, num_steps), jnp.int32),
      live_logits=first_logits.reshape(b, k, vocab), cache=cache,
      finished_scores=jnp.full((b, k), NEG_INF, jnp.float32),
      finished_log_probs=jnp.full((b, k), NEG_INF, jnp.float32),
      finished_tokens=jnp.zeros((b, k, num_steps), jnp.int32),
      finished=jnp.zeros((b, k), jnp.bool_), done=jnp.zeros((b,), jnp.bool_))
  s = lax.while_loop(searching, body, init)
  # The finished sequences, best first, then the best live beams in the slots left
  # (t5x leaves those slots empty; a row with none finished returns its live beams).
  count = jnp.sum(s.finished, axis=1, keepdims=True)                     # [b, 1]
  slot = jnp.arange(k)[None, :]
  from_live = jnp.clip(slot - count, 0, k - 1)                           # [b, k]
  use_live = slot >= count
  live_scores = s.live_log_probs / brevity_penalty(alpha, num_steps, rules)
  pick = lambda finished, live: jnp.where(
      use_live.reshape(use_live.shape + (1,) * (finished.ndim - 2)), _take(live, from_live),
      finished)
  return BeamResult(tokens=pick(s.finished_tokens, s.live_tokens),
                    scores=pick(s.finished_scores, live_scores),
                    log_probs=pick(s.finished_log_probs, s.live_log_probs))
