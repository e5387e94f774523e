"""Adafactor as t5x configures it, and the paper's learning-rate schedules.

t5x's `adafactor.Adafactor(decay_rate=0.8)` with its defaults (spec §2.8):
  factored second moments for dims >= 128 (row and column means), no momentum,
  beta2_t = 1 - (t + 1)^-0.8 with t the step, epsilon1 = 1e-30 added to g^2,
  update clipping at RMS 1.0, and steps scaled by max(RMS(param), epsilon2 = 1e-3).
optax's `adafactor` implements the same update rule with these arguments.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp
import optax

Schedule = Callable[[int], float]


def rsqrt_decay(base_learning_rate: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
  """`base / sqrt(max(step, warmup_steps))`: flat 0.01 for 10k steps, then decaying."""
  if warmup_steps < 1:
    raise ValueError(f"warmup_steps must be >= 1, found {warmup_steps}.")

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
    raise ValueError(f"unknown learning-rate schedule {name!r}; valid: {', '.join(SCHEDULES)}.")
  if name == "constant":
    return constant(base_learning_rate)
  return rsqrt_decay(base_learning_rate, warmup_steps)


def adafactor(learning_rate: Schedule, decay_rate: float = 0.8, step_offset: int = 0,
              min_dim_size_to_factor: int = 128, clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = True, epsilon1: float = 1e-30,
              momentum: Optional[float] = None, factored: bool = True
              ) -> optax.GradientTransformation:
  """t5x's Adafactor defaults (see the module docstring)."""
  return optax.adafactor(
      learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, decay_offset=step_offset,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum, eps=epsilon1,
      factored=factored)
