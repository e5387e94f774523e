"""The pure train step: microbatching is a memory knob only, with and without dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_objective import layers
from arch_objective.training import optimizers, trainer

from helpers import tiny_model_and_params

ARCHS = ("causal_decoder", "non_causal_decoder", "encoder_decoder")


def _grads(model, params, batch, rng, k):
  fn = jax.jit(lambda p, b, r: trainer.loss_and_grads(model, p, b, r, k))
  return fn(params, batch, rng)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.slow
def test_microbatched_gradients_equal_the_one_batch_gradients(arch, dropout):
  model, params, batch = tiny_model_and_params(arch, dropout)
  rng = jax.random.PRNGKey(7) if dropout else None
  grads_1, metrics_1 = _grads(model, params, batch, rng, 1)
  for k in (2, 8):
    grads_k, metrics_k = _grads(model, params, batch, rng, k)
    # Summed losses (spec §8.2): k microbatches add up to the whole batch's sums, and
    # each row draws the same dropout masks as in one batch.
    for name in ("loss", "num_tokens", "correct", "z_loss"):
      np.testing.assert_allclose(float(metrics_k[name]), float(metrics_1[name]), rtol=2e-5,
                                 err_msg=f"{arch} dropout={dropout} k={k}: {name}")
    flat_1 = jax.tree_util.tree_leaves_with_path(grads_1)
    flat_k = jax.tree_util.tree_leaves(grads_k)
    for (path, g1), gk in zip(flat_1, flat_k):
      scale = float(jnp.max(jnp.abs(g1))) + 1e-6
      np.testing.assert_allclose(np.asarray(gk), np.asarray(g1), atol=2e-5 * scale, rtol=0,
                                 err_msg=f"{arch} dropout={dropout} k={k} "
                                         f"{jax.tree_util.keystr(path)}")


@pytest.mark.slow
def test_dropout_changes_the_loss_and_the_step_rng_changes_the_masks():
  # The equality above is not vacuous: dropout is active, and another key gives
  # other masks.
  model, params, batch = tiny_model_and_params("non_causal_decoder", 0.1)
  _, none = _grads(model, params, batch, None, 1)
  _, one = _grads(model, params, batch, jax.random.PRNGKey(7), 2)
  _, other = _grads(model, params, batch, jax.random.PRNGKey(8), 2)
  assert abs(float(one["loss"]) - float(none["loss"])) > 1e-3
  assert abs(float(one["loss"]) - float(other["loss"])) > 1e-3


def test_train_step_runs_with_microbatches_and_no_dropout():
  # The paper's pretraining files: dropout 0 and NUM_MICROBATCHES 8.
  model, params, batch = tiny_model_and_params("causal_decoder", 0.0)
  tx = optimizers.adafactor(optimizers.rsqrt_decay())
  state = trainer.TrainState.create(params, tx)
  step = jax.jit(lambda s, b, r: trainer.train_step(model, tx, optimizers.rsqrt_decay(), 8,
                                                    s, b, r))
  new_state, metrics = step(state, batch, jax.random.PRNGKey(0))
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert float(metrics["grad_norm"]) > 0


def test_dropout_masks_are_drawn_per_row_from_the_row_offset():
  key = jax.random.PRNGKey(3)
  whole = np.asarray(layers.dropout_keep_mask(key, 0.5, (6, 4, 10), broadcast_dims=(-2,)))
  with layers.dropout_row_offset(4):
    tail = np.asarray(layers.dropout_keep_mask(key, 0.5, (2, 4, 10), broadcast_dims=(-2,)))
  np.testing.assert_array_equal(tail, whole[4:])
  # Broadcast over the length axis (t5x's broadcast_dims=(-2,)), distinct across rows.
  np.testing.assert_array_equal(whole, np.broadcast_to(whole[:, :1], whole.shape))
  assert len({whole[r, 0].tobytes() for r in range(6)}) == 6
  assert 0.3 < whole[:, 0].mean() < 0.7
  with pytest.raises(ValueError, match="batch axis"):
    layers.dropout_keep_mask(key, 0.5, (2, 3), broadcast_dims=(0,))
