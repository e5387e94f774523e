"""Autoregressive sampling over a key/value cache: greedy, temperature and top-k.

The model supplies a step function `step_fn(cache, tokens [b], positions [b]) ->
(logits [b, v], cache)`; this module only chooses tokens. The loop is a `lax.scan`
of a fixed number of steps, so it jits once per shape.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from arch_objective.errors import UserError

Array = jax.Array
StepFn = Callable[[Any, Array, Array], tuple[Array, Any]]


class DecodeResult(NamedTuple):
  tokens: Array   # [b, steps] int32; 0 (padding) after the end-of-sequence token
  logits: Array   # [b, steps, v] float32: the logits each token was chosen from


def sample_logits(logits: Array, rng: Optional[Array], temperature: float = 1.0,
                  topk: int = 0) -> Array:
  """Choose one token per row: `logits [b, v]` -> `[b]` int32.

  Greedy (argmax) when `rng` is None or `temperature == 0`; otherwise a draw from
  softmax(logits / temperature) restricted to the `topk` best tokens (all if 0).
  """
  if rng is None or temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if temperature < 0:
    raise UserError(f"temperature must be >= 0, found {temperature}.")
  logits = logits.astype(jnp.float32) / temperature
  if topk:
    if topk < 0:
      raise UserError(f"topk must be >= 0, found {topk}.")
    kth = lax.top_k(logits, topk)[0][..., -1:]                            # [b, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def decode(step_fn: StepFn, cache: Any, first_logits: Array, start_positions: Array,
           num_steps: int, *, rng: Optional[Array] = None, temperature: float = 1.0,
           topk: int = 0, eos_id: Optional[int] = 1) -> DecodeResult:
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
    token = sample_logits(logits, step_rng, temperature, topk)
    token = jnp.where(done, 0, token)
    if eos_id is not None:
      done = done | (token == eos_id)
    next_logits, cache = step_fn(cache, token, start_positions + step)
    return (next_logits, cache, done), (token, logits)

  init = (first_logits, cache, jnp.zeros((batch,), jnp.bool_))
  _, (tokens, logits) = lax.scan(body, init, jnp.arange(num_steps))
  return DecodeResult(tokens=jnp.transpose(tokens), logits=jnp.transpose(logits, (1, 0, 2)))
