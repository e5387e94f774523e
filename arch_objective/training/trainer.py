"""The train state and the pure, module-level train and eval steps.

`train_step(model, optimizer, num_microbatches, state, batch, base_rng)`:
  * the step's RNG is `fold_in(base_rng, state.step)`; dropout draws each row's masks from
    it and the row's index in the batch, so microbatching does not change them;
  * the batch `[B, L]` is split into `num_microbatches` microbatches of `B / k` rows whose
    gradients and metrics are **summed** (the paper's loss is a sum, spec §8.2);
  * one optimiser update.
Metrics are sums over the step (loss, z_loss, cross_ent_loss, num_tokens, correct) plus
the learning rate and the global gradient norm; `summarize` turns them into means.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from arch_objective import layers
from arch_objective.errors import UserError

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def set_optimizer_count(opt_state: Any, value) -> Any:
  """Every `count` of an optax state set to `value` (the schedule's and Adafactor's
  decay position)."""
  def fix(path, leaf):
    last = path[-1] if path else None
    name = getattr(last, "name", getattr(last, "key", None))
    return jnp.full_like(leaf, value) if name == "count" else leaf
  return jax.tree_util.tree_map_with_path(fix, opt_state)


def init_state(model, optimizer, input_shapes: Mapping[str, tuple[int, ...]], rng: Array
               ) -> TrainState:
  params = model.get_initial_variables(rng, input_shapes)["params"]
  return TrainState.create(params, optimizer)


def _split_microbatches(batch: Mapping[str, Array], k: int) -> dict[str, Array]:
  out = {}
  for name, value in batch.items():
    if value.shape[0] % k:
      raise UserError(f"batch size {value.shape[0]} is not divisible by num_microbatches={k}.")
    out[name] = value.reshape((k, value.shape[0] // k) + value.shape[1:])
  return out


SUMMED_METRICS = ("loss", "z_loss", "cross_ent_loss", "num_tokens", "correct")


def _summable(metrics: Mapping[str, Array]) -> dict[str, Array]:
  """The model's metrics as sums (accuracy -> number of correct tokens)."""
  out = {k: metrics[k] for k in SUMMED_METRICS if k != "correct"}
  out["correct"] = metrics["accuracy"] * jnp.maximum(metrics["num_tokens"], 1.0)
  return out


def loss_and_grads(model, params, batch, rng, num_microbatches: int = 1):
  """Summed metrics and gradients over `num_microbatches` microbatches.

  `rng` is the step's dropout key (None: no dropout). Every microbatch uses it with
  its rows' offset in the batch (`layers.dropout_row_offset`), so each row draws the
  dropout masks it would draw in one whole batch: the summed gradients equal the
  one-batch gradients for any `num_microbatches`, with or without dropout.
  """
  def one(mb, offset):
    with layers.dropout_row_offset(offset):
      (_, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, mb, rng)
    return grads, _summable(metrics)

  if num_microbatches <= 1:
    return one(batch, 0)
  micro = _split_microbatches(batch, num_microbatches)
  rows = next(iter(micro.values())).shape[1]

  def body(carry, xs):
    grads_acc, metrics_acc = carry
    mb, i = xs
    grads, metrics = one(mb, i * rows)
    return (jax.tree_util.tree_map(jnp.add, grads_acc, grads),
            jax.tree_util.tree_map(jnp.add, metrics_acc, metrics)), None

  zeros_g = jax.tree_util.tree_map(jnp.zeros_like, params)
  zeros_m = {k: jnp.zeros((), jnp.float32) for k in SUMMED_METRICS}
  (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m),
                                     (micro, jnp.arange(num_microbatches, dtype=jnp.uint32)))
  return grads, metrics


def train_step(model, optimizer: optax.GradientTransformation, schedule: Callable,
               num_microbatches: int, state: TrainState, batch: Mapping[str, Array],
               base_rng: Array) -> tuple[TrainState, dict[str, Array]]:
  """One optimiser step (pure; jit it with the model, optimizer, schedule static)."""
  rng = jax.random.fold_in(base_rng, state.step)
  dropout_rng = rng if model.config.dropout_rate > 0 else None
  grads, metrics = loss_and_grads(model, state.params, batch, dropout_rng, num_microbatches)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, learning_rate=schedule(state.step),
                 grad_norm=optax.global_norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(model, params, batch: Mapping[str, Array]) -> dict[str, Array]:
  """Summed evaluation metrics of one batch (no dropout)."""
  return _summable(model.loss_fn(params, batch, None)[1])


def summarize(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host-side means: loss (as optimised), per-token loss and accuracy."""
  m = {k: float(v) for k, v in metrics.items()}
  tokens = max(m.get("num_tokens", 0.0), 1.0)
  out = {"loss": m["loss"], "z_loss": m["z_loss"], "cross_ent_loss": m["cross_ent_loss"],
         "loss_per_token": m["loss"] / tokens, "accuracy": m["correct"] / tokens,
         "num_tokens": m["num_tokens"]}
  for key in ("learning_rate", "grad_norm"):
    if key in m:
      out[key] = m[key]
  return out
