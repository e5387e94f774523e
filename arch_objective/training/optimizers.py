"""Adafactor as t5x configures it, and the paper's learning-rate schedules.

t5x's `adafactor.Adafactor(decay_rate=0.8)` with its defaults (spec §2.8):
  factored second moments for dims >= 128 (row and column means), no momentum,
  beta2_t = 1 - (t + 1)^-0.8 with t the step, epsilon1 = 1e-30 added to g^2,
  update clipping at RMS 1.0, and steps scaled by max(RMS(param), epsilon2 = 1e-3).
optax's `adafactor` implements the same update rule with these arguments.

`adafactor` builds it two ways, with the same numbers and the same optimiser state:
  "fused" (default)  `fused_adafactor`: a factored matrix costs four reading passes and
                     one writing pass, all fused with their elementwise math: the row
                     and the column means of g^2, the squared update's sum (the clipping
                     RMS, as g^2 weighted by the squared row and column factors), RMS
                     of the parameter, and the new parameter itself (reading g and the
                     parameter once more) when `optax.apply_updates` follows in the
                     same jit;
  "optax"            `optax.adafactor`'s chain of transformations (the reference): it
                     also writes g^2 + eps, the unclipped update and the parameter-scale
                     select to memory and reads them back, and reduces RMS(param) twice.
The state of both is optax's chain state, `(FactoredState(count, v_row, v_col, v),
clipping, ScaleByScheduleState(count), parameter scale, [EmaState,] scale(-1))`, so
checkpoints written by either restore into the other.
"""
from __future__ import annotations

import string
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arch_objective.errors import UserError

Schedule = Callable[[int], float]


def rsqrt_decay(base_learning_rate: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
  """`base / sqrt(max(step, warmup_steps))`: flat 0.01 for 10k steps, then decaying."""
  if warmup_steps < 1:
    raise UserError(f"warmup_steps must be >= 1, found {warmup_steps}.")

  def schedule(step):
    return base_learning_rate / jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32),
                                                     warmup_steps))
  return schedule


def constant(base_learning_rate: float = 1e-3) -> Schedule:
  """A fixed learning rate (the paper's MT-F: 1e-3)."""
  return lambda step: jnp.full((), base_learning_rate, jnp.float32)


SCHEDULES = {"rsqrt_decay": rsqrt_decay, "constant": constant}


def make_schedule(name: str = "rsqrt_decay", base_learning_rate: float = 1.0,
                  warmup_steps: int = 10_000) -> Schedule:
  if name not in SCHEDULES:
    raise UserError(f"unknown learning-rate schedule {name!r}; valid: {', '.join(SCHEDULES)}.")
  if name == "constant":
    return constant(base_learning_rate)
  return rsqrt_decay(base_learning_rate, warmup_steps)


IMPLEMENTATIONS = ("fused", "optax")


def adafactor(learning_rate: Schedule, decay_rate: float = 0.8, step_offset: int = 0,
              min_dim_size_to_factor: int = 128, clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = True, epsilon1: float = 1e-30,
              momentum: Optional[float] = None, factored: bool = True,
              implementation: str = "fused") -> optax.GradientTransformation:
  """t5x's Adafactor defaults (see the module docstring).

  `implementation` is "fused" (`fused_adafactor`) or "optax" (`optax.adafactor`, the
  reference); both take the same hyperparameters and keep the same state.
  """
  kwargs = dict(learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                decay_rate=decay_rate, decay_offset=step_offset,
                multiply_by_parameter_scale=multiply_by_parameter_scale,
                clipping_threshold=clipping_threshold, momentum=momentum, eps=epsilon1,
                factored=factored)
  if implementation == "fused":
    return fused_adafactor(**kwargs)
  if implementation == "optax":
    return optax.adafactor(**kwargs)
  raise UserError(f"unknown Adafactor implementation {implementation!r}; valid: "
                  f"{', '.join(IMPLEMENTATIONS)}.")


def factored_dims(shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int
                  ) -> Optional[tuple[int, int]]:
  """`(d1, d0)`, the second largest and the largest axis of `shape` (ties as
  `np.argsort` orders them), when its second largest size is at least
  `min_dim_size_to_factor` and the array has two or more axes; else None (a full
  second moment)."""
  if not factored or len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


def _decay_rate_pow(step, exponent: float):
  """`beta2_t = 1 - (step + 1)^-exponent`."""
  t = jnp.array(step + 1, jnp.float32)
  return 1.0 - t ** (-exponent)


def _weighted_square_sum(grad, row_weight, col_weight, d0: int, d1: int):
  """`sum(grad^2 * expand(row_weight, d0) * expand(col_weight, d1))`.

  `grad^2` is weighted by `row_weight` first, then contracted with `col_weight`: the two
  weights (up to 1/eps each) never multiply each other, and a matrix's weights are
  contraction operands rather than arrays broadcast to `grad`'s shape.
  """
  letters = string.ascii_letters[:grad.ndim]
  row = letters.replace(letters[d0], "")
  col = letters.replace(letters[d1], "")
  weighted = jnp.einsum(f"{letters},{letters},{row}->{letters}", grad, grad, row_weight)
  if grad.ndim == 2:
    return jnp.einsum(f"{col},{letters}->", col_weight, weighted)
  return jnp.sum(col_weight * jnp.sum(weighted, axis=d1))


def fused_adafactor(learning_rate: Optional[Union[float, Schedule]] = None,
                    min_dim_size_to_factor: int = 128, decay_rate: float = 0.8,
                    decay_offset: int = 0, multiply_by_parameter_scale: bool = True,
                    clipping_threshold: Optional[float] = 1.0,
                    momentum: Optional[float] = None, dtype_momentum: Any = jnp.float32,
                    eps: float = 1e-30, factored: bool = True
                    ) -> optax.GradientTransformationExtraArgs:
  """`optax.adafactor` (same arguments, weight decay aside) as one transformation.

  Per parameter, with `beta = 1 - (count - decay_offset + 1)^-decay_rate`:
    factored (`factored_dims`): v_row = beta v_row + (1 - beta) mean(g^2 + eps, d0),
      v_col the same over d1; u = g * (v_row / mean(v_row))^-1/2 * v_col^-1/2;
    otherwise: v = beta v + (1 - beta) (g^2 + eps); u = g * v^-1/2;
  then u / max(1, RMS(u) / clipping_threshold), times the learning rate at `count`,
  times max(RMS(param), 1e-3), through the momentum average if any, negated. Every
  elementwise step is optax's, in optax's order; the means of g^2 add `eps` after the
  mean, and RMS(u) of a factored parameter is computed from g^2 and the two factors,
  which changes only the rounding of the reductions.

  Each reduction of a factored parameter's gradient reads its own copy of `g` (an
  optimisation barrier keeps the copies apart), so that each is fused with the square it
  reduces instead of sharing a `g^2` written to memory. The state is `optax.adafactor`'s
  (see the module docstring).
  """
  schedule = learning_rate if callable(learning_rate) else None

  def init_fn(params):
    def v_state(param):
      dims = factored_dims(param.shape, factored, min_dim_size_to_factor)
      one = jnp.zeros((1,), param.dtype)
      if dims is None:
        return one, one, jnp.zeros_like(param)
      d1, d0 = dims
      drop = lambda axis: jnp.zeros(param.shape[:axis] + param.shape[axis + 1:], param.dtype)
      return drop(d0), drop(d1), one

    leaves, treedef = jax.tree_util.tree_flatten(params)
    rows, cols, vs = zip(*(v_state(p) for p in leaves)) if leaves else ((), (), ())
    states = [optax.FactoredState(
        count=jnp.zeros([], jnp.int32), v_row=treedef.unflatten(rows),
        v_col=treedef.unflatten(cols), v=treedef.unflatten(vs))]
    if clipping_threshold is not None:
      states.append(optax.EmptyState())
    if learning_rate is not None:
      states.append(optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))
                    if schedule is not None else optax.EmptyState())
    if multiply_by_parameter_scale:
      states.append(optax.EmptyState())
    if momentum is not None:
      states.append(optax.EmaState(count=jnp.zeros([], jnp.int32), ema=jax.tree_util.tree_map(
          lambda p: jnp.zeros_like(p, dtype=dtype_momentum), params)))
    states.append(optax.EmptyState())
    return tuple(states)

  def leaf_update(grad, param, v_row, v_col, v, ema, beta, step_size):
    dtype = param.dtype
    dims = factored_dims(param.shape, factored, min_dim_size_to_factor)
    one = jnp.zeros((1,), dtype)
    if dims is not None:
      d1, d0 = dims
      g_row, g_col, g_clip = jax.lax.optimization_barrier((grad, grad, grad))
      new_v_row = beta * v_row + (1.0 - beta) * (jnp.mean(g_row * g_row, axis=d0) + eps)
      new_v_col = beta * v_col + (1.0 - beta) * (jnp.mean(g_col * g_col, axis=d1) + eps)
      new_v_row, new_v_col = new_v_row.astype(dtype), new_v_col.astype(dtype)
      reduced_d1 = d1 - 1 if d1 > d0 else d1
      row_col_mean = jnp.mean(new_v_row, axis=reduced_d1, keepdims=True)
      row_factor = (new_v_row / row_col_mean) ** -0.5
      col_factor = new_v_col ** -0.5
      update = grad * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
      new_v = one
      if clipping_threshold is not None:
        square_sum = _weighted_square_sum(g_clip, row_factor * row_factor,
                                          col_factor * col_factor, d0, d1)
    else:
      new_v = (beta * v + (1.0 - beta) * (grad * grad + eps)).astype(dtype)
      new_v_row = new_v_col = one
      update = grad * new_v ** -0.5
      if clipping_threshold is not None:
        square_sum = jnp.sum(update * update)
    if clipping_threshold is not None:
      clip_denom = jnp.maximum(1.0, jnp.sqrt(square_sum / update.size) / clipping_threshold)
      update = update / clip_denom
    if step_size is not None:
      update = jnp.array(step_size, dtype=update.dtype) * update
    if multiply_by_parameter_scale:
      rms = jnp.sqrt(jnp.mean(param * param))
      update = update * jnp.where(rms <= 1e-3, 1e-3, rms)
    new_ema = None
    if momentum is not None:
      update = (1 - momentum) * update + momentum * ema
      new_ema = update.astype(dtype_momentum)
    return -1 * update, new_v_row, new_v_col, new_v, new_ema

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise UserError("Adafactor scales its updates by the parameters: pass `params` to "
                      "`update`.")
    state = list(state)
    rms_state = state[0]
    beta = _decay_rate_pow(rms_state.count - decay_offset, decay_rate)
    position = 1 + (clipping_threshold is not None)
    step_size = None
    if learning_rate is not None:
      if schedule is not None:
        step_size = schedule(state[position].count)
        state[position] = optax.ScaleByScheduleState(
            count=optax.safe_increment(state[position].count))
      else:
        step_size = learning_rate
    ema_index = position + (learning_rate is not None) + multiply_by_parameter_scale
    ema_state = state[ema_index] if momentum is not None else None

    grads, treedef = jax.tree_util.tree_flatten(updates)
    flat = lambda tree: treedef.flatten_up_to(tree)
    emas = flat(ema_state.ema) if ema_state is not None else [None] * len(grads)
    out = [leaf_update(*args, beta, step_size) for args in zip(
        grads, flat(params), flat(rms_state.v_row), flat(rms_state.v_col), flat(rms_state.v),
        emas)]
    unflatten = lambda i: treedef.unflatten([o[i] for o in out])
    state[0] = optax.FactoredState(count=optax.safe_increment(rms_state.count),
                                   v_row=unflatten(1), v_col=unflatten(2), v=unflatten(3))
    if ema_state is not None:
      state[ema_index] = optax.EmaState(count=optax.safe_increment(ema_state.count),
                                        ema=unflatten(4))
    return unflatten(0), tuple(state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
