"""Weighted cross-entropy with z-loss and label smoothing (t5x's loss semantics).

The paper's loss (spec §2.8, §8.2) is a **sum** over weighted tokens of
`cross_entropy + z_loss * log(Z)^2`, with no normalisation by token count or batch
size (`loss_normalizing_factor=None`). A number divides the sum by that constant;
`PER_TOKEN` divides it by the number of weighted tokens (a per-token mean).
"""
from __future__ import annotations

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from arch_objective.errors import UserError

Array = jax.Array

PER_TOKEN = "per_token"
LossNormalizingFactor = Optional[Union[float, int, str]]


def cross_entropy_with_logits(logits: Array, targets: Array, z_loss: float = 0.0
                              ) -> tuple[Array, Array]:
  """Cross-entropy against a target distribution, plus `z_loss * log(Z)^2`.

  `logits [..., v]`, `targets [..., v]` (one-hot or smoothed) -> (loss `[...]`
  including the z-loss term, z-loss `[...]`). Computed in float32.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)                               # [...]
  log_softmax = logits - log_z[..., None]
  loss = -jnp.sum(targets * log_softmax, axis=-1)
  total_z_loss = z_loss * jnp.square(log_z)
  return loss + total_z_loss, total_z_loss


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def label_cross_entropy(logits: Array, targets: Array, confidence: float,
                        low_confidence: float, z_loss: float) -> tuple[Array, Array]:
  """`cross_entropy_with_logits` against the smoothed one-hot of integer `targets`
  (`confidence` on the label, `low_confidence` on every other entry), without building
  the `[..., v]` target distribution.

  `logits [..., v]` float32, `targets [...]` int32 -> (loss `[...]` including the z-loss
  term, z-loss `[...]`). With `m` the total target mass `confidence + (v - 1) *
  low_confidence`, the loss is `m * log Z - sum_j t_j x_j + z_loss * log(Z)^2`; the
  gradient, written out as t5x does, is `softmax * (m + 2 z_loss log Z) - t`, one pass
  over the logits instead of the several that differentiating the expression takes.
  """
  return _label_cross_entropy_fwd(logits, targets, confidence, low_confidence, z_loss)[0]


def _target_mass(vocab_size: int, confidence: float, low_confidence: float) -> float:
  return confidence + (vocab_size - 1) * low_confidence


def _label_cross_entropy_fwd(logits, targets, confidence, low_confidence, z_loss):
  peak = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  log_z = jnp.log(jnp.sum(jnp.exp(logits - peak), axis=-1)) + peak[..., 0]    # [...]
  label_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  mass = _target_mass(logits.shape[-1], confidence, low_confidence)
  loss = mass * log_z - (confidence - low_confidence) * label_logit
  if low_confidence:
    loss = loss - low_confidence * jnp.sum(logits, axis=-1)
  z = z_loss * jnp.square(log_z)
  return (loss + z, z), (logits, targets, log_z)


def _label_cross_entropy_bwd(confidence, low_confidence, z_loss, residuals, cotangents):
  logits, targets, log_z = residuals
  g_loss, g_z = cotangents                                                  # [...] each
  mass = _target_mass(logits.shape[-1], confidence, low_confidence)
  scale = g_loss * (mass + 2.0 * z_loss * log_z) + g_z * (2.0 * z_loss * log_z)
  is_label = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == targets[..., None]
  target = jnp.where(is_label, confidence, low_confidence)
  grad = jnp.exp(logits - log_z[..., None]) * scale[..., None] - target * g_loss[..., None]
  return grad, None


label_cross_entropy.defvjp(_label_cross_entropy_fwd, _label_cross_entropy_bwd)


def compute_weighted_cross_entropy(
    logits: Array, targets: Array, weights: Optional[Array] = None,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    loss_normalizing_factor: LossNormalizingFactor = None
) -> tuple[Array, Array, Array]:
  """`logits [b, l, v]`, integer `targets [b, l]`, `weights [b, l]` ->
  (total loss, total z-loss, weight sum), each a scalar.

  With label smoothing the target puts `1 - s` on the label and `s / (v - 1)` on the
  others, and the entropy of that distribution is subtracted (so a perfect model
  scores 0), as t5x does.
  """
  if logits.ndim != targets.ndim + 1:
    raise UserError(f"logits must have one more axis than targets; found logits "
                    f"{logits.shape} and targets {targets.shape}.")
  vocab_size = logits.shape[-1]
  # Python numbers: `label_cross_entropy` specialises its gradient on them.
  label_smoothing, z_loss = float(label_smoothing), float(z_loss)
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(
      confidence * jnp.log(confidence)
      + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  loss, z = label_cross_entropy(logits.astype(jnp.float32), targets.astype(jnp.int32),
                                confidence, low_confidence, z_loss)
  loss = loss - normalizing_constant
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  weight_sum = jnp.sum(weights)
  loss, z = jnp.sum(loss * weights), jnp.sum(z * weights)
  divisor = normalizing_divisor(loss_normalizing_factor, weight_sum)
  if divisor is not None:
    loss, z = loss / divisor, z / divisor
  return loss, z, weight_sum


def normalizing_divisor(factor: LossNormalizingFactor, weight_sum: Array) -> Optional[Array]:
  """What the summed loss is divided by: None (the paper), a constant, or the tokens."""
  if factor is None:
    return None
  if isinstance(factor, str):
    if factor != PER_TOKEN:
      raise UserError(f"loss_normalizing_factor: unknown value {factor!r}; valid: None, "
                      f"a positive number, or {PER_TOKEN!r}.")
    return jnp.maximum(weight_sum, 1e-8)
  if factor <= 0:
    raise UserError(f"loss_normalizing_factor must be positive, found {factor!r}.")
  return jnp.asarray(factor, jnp.float32)


def compute_weighted_accuracy(logits: Array, targets: Array,
                              weights: Optional[Array] = None) -> tuple[Array, Array]:
  """(number of weighted positions whose target has the largest logit, weight sum).

  A target that ties with another entry for the largest logit counts as correct (an
  argmax would count it only when it is the first of the tied entries). Comparing the
  target's logit with the maximum, rather than taking an argmax, lets XLA share the
  maximum with the cross-entropy's: no extra pass over the `[b, l, v]` logits.
  """
  label_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32),
                                    axis=-1)[..., 0]
  correct = (label_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)


def token_log_likelihoods(logits: Array, targets: Array) -> Array:
  """log p(target) at each position: `logits [b, l, v]`, `targets [b, l]` -> `[b, l]`."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
