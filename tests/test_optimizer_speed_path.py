"""The fused Adafactor (`optimizers.adafactor`, the default) against the optax chain it
replaces (`implementation="optax"`): the same updates, parameters and optimiser state over
many steps, the same state structure (checkpoints of either restore into the other), and
the same `trainer.train_step` loss trajectory."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arch_objective import build_model, models, testing
from arch_objective.training import optimizers, trainer

TOLERANCE = 1e-6      # max abs difference of parameters and updates (float32)
MOMENT_RTOL = 1e-5    # second moments are ~g^2: compared relative to their size

# Shapes beside the tiny models' leaves: a scalar, vectors, matrices at, above and below
# the factoring threshold (128), and 3-D kernels, factored or not.
ODD_SHAPES = {
    "scalar": (), "vector": (7,), "long_vector": (300,), "square": (128, 128),
    "tall": (300, 130), "wide": (129, 257), "below_threshold": (127, 300),
    "thin": (300, 5), "kernel_3d": (130, 4, 140), "kernel_3d_middle": (2, 130, 129),
    "kernel_3d_reversed": (256, 3, 200), "kernel_3d_small": (6, 200, 3),
}


def _tree(seed: int = 0) -> dict:
  """Tiny ED and CD parameters, the odd shapes, and an all-zero vector (RMS(param) below
  the 1e-3 floor)."""
  tree = {}
  for arch in (models.ENCODER_DECODER, models.CAUSAL_DECODER):
    model = build_model(arch, "tiny", dtype="float32", vocab_size=160)
    shapes = models.default_input_shapes(arch, 1, 8, 8, 8)
    tree[arch] = jax.jit(lambda rng, model=model, shapes=shapes: model.get_initial_variables(
        rng, shapes)["params"])(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed + 1)
  tree["odd"] = {name: jnp.asarray(rng.standard_normal(shape).astype(np.float32) * 0.5)
                 for name, shape in ODD_SHAPES.items()}
  tree["odd"]["zeros"] = jnp.zeros((64,))
  return tree


def _gradients(params, step: int) -> dict:
  """Random gradients whose scale jumps between steps (so clipping engages), with whole
  rows and columns of zeros (embedding rows of absent tokens)."""
  rng = np.random.default_rng(step)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  out = []
  for leaf in leaves:
    g = rng.standard_normal(leaf.shape).astype(np.float32) * 10.0 ** rng.uniform(-5, 0)
    if leaf.ndim >= 2:
      g[rng.random(leaf.shape[0]) < 0.2] = 0.0
      g[..., rng.random(leaf.shape[-1]) < 0.1] = 0.0
    out.append(jnp.asarray(g))
  return treedef.unflatten(out)


def _max_abs(a, b) -> float:
  diffs = jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0)), a, b)
  return max(jax.tree_util.tree_leaves(diffs), default=0.0)


def _assert_close(reference, fused, rtol: float, where: str):
  """Every leaf within TOLERANCE (+ rtol x |reference|), NaN nowhere."""
  for (path, r), f in zip(jax.tree_util.tree_leaves_with_path(reference),
                          jax.tree_util.tree_leaves(fused)):
    r, f = np.asarray(r), np.asarray(f)
    assert np.isfinite(r).all() and np.isfinite(f).all(), where
    np.testing.assert_allclose(f, r, rtol=rtol, atol=TOLERANCE,
                               err_msg=f"{where} {jax.tree_util.keystr(path)}")


def _compare_states(reference, fused, where: str):
  assert jax.tree_util.tree_structure(reference) == jax.tree_util.tree_structure(fused), where
  for (path, r), f in zip(jax.tree_util.tree_leaves_with_path(reference),
                          jax.tree_util.tree_leaves(fused)):
    name = f"{where} {jax.tree_util.keystr(path)}"
    assert r.shape == f.shape and r.dtype == f.dtype, name
    if jnp.issubdtype(r.dtype, jnp.integer):
      np.testing.assert_array_equal(np.asarray(f), np.asarray(r), err_msg=name)
    else:
      np.testing.assert_allclose(np.asarray(f), np.asarray(r), rtol=MOMENT_RTOL,
                                 atol=TOLERANCE, err_msg=name)


def _step_fn(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates
  return jax.jit(step)


# name: (adafactor arguments, first optimiser count, relative tolerance of parameters and
# updates beside TOLERANCE). Without clipping or the parameter scale an update's entries
# reach 1e2 and more, so one float32 rounding of them exceeds TOLERANCE.
CONFIGS = {
    "t5x": ({}, 0, 0.0),
    "factor_small_dims": (dict(min_dim_size_to_factor=32), 0, 0.0),
    "momentum": (dict(momentum=0.9), 0, 0.0),
    "no_clipping_no_param_scale": (dict(clipping_threshold=None,
                                        multiply_by_parameter_scale=False), 0, 1e-6),
    "unfactored_fine_tuning": (dict(factored=False, step_offset=3, decay_rate=0.5), 3, 0.0),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.slow
def test_fused_adafactor_equals_the_optax_reference_over_20_steps(config):
  kwargs, first_count, rtol = CONFIGS[config]
  params = _tree()
  schedule = optimizers.rsqrt_decay()   # t5x: 0.01 for the first 10k steps
  reference = optimizers.adafactor(schedule, implementation="optax", **kwargs)
  fused = optimizers.adafactor(schedule, **kwargs)
  r_state, f_state = reference.init(params), fused.init(params)
  _compare_states(r_state, f_state, "init")
  r_state = trainer.set_optimizer_count(r_state, first_count)
  f_state = trainer.set_optimizer_count(f_state, first_count)
  r_step, f_step = _step_fn(reference), _step_fn(fused)
  r_params = f_params = params
  for step in range(20):
    grads = _gradients(params, step)
    r_params, r_state, r_updates = r_step(r_params, r_state, grads)
    f_params, f_state, f_updates = f_step(f_params, f_state, grads)
    where = f"{config} step {step}"
    _assert_close(r_updates, f_updates, rtol, where)
    _assert_close(r_params, f_params, rtol, where)
    _compare_states(r_state, f_state, where)
  # The steps moved the parameters: the comparison is not between two no-ops.
  assert _max_abs(params, f_params) > 1e-3
  assert int(f_state[0].count) == first_count + 20


def test_the_update_clips_and_uses_the_parameter_scale_floor():
  # One step from a zero state: beta = 0, so v is g^2 (+ eps) and an unfactored update is
  # sign(g) with RMS 1 (no clipping); scaled by the learning rate and max(RMS(p), 1e-3).
  params = {"w": jnp.full((5,), 2.0), "z": jnp.zeros((3,))}
  grads = {"w": jnp.array([1.0, -2.0, 3.0, -4.0, 5.0]), "z": jnp.array([1.0, 0.0, -1.0])}
  tx = optimizers.adafactor(optimizers.constant(0.1))
  updates, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 2.0 * np.sign(grads["w"]), rtol=1e-6)
  np.testing.assert_allclose(updates["z"], [-1e-4, 0.0, 1e-4], rtol=1e-5, atol=1e-12)
  # A second, 100x larger gradient: RMS(g / sqrt(v)) > 1 and the update is clipped to 1.
  big = jax.tree_util.tree_map(lambda g: 100.0 * g, grads)
  updates, _ = tx.update(big, state, params)
  rms = float(jnp.sqrt(jnp.mean((updates["w"] / (0.1 * 2.0)) ** 2)))
  assert rms == pytest.approx(1.0, rel=1e-5)


@pytest.mark.slow
def test_checkpointed_state_continues_across_implementations():
  # Five steps with the reference, then either implementation continues from its state:
  # the fused one takes the reference's state (and the other way round) unchanged.
  params = _tree(seed=3)
  schedule = optimizers.rsqrt_decay()
  reference = optimizers.adafactor(schedule, implementation="optax")
  fused = optimizers.adafactor(schedule)
  r_step, f_step = _step_fn(reference), _step_fn(fused)
  p, s = params, reference.init(params)
  for step in range(5):
    p, s, _ = r_step(p, s, _gradients(params, step))
  r_p, r_s, f_p, f_s = p, s, p, s
  for step in range(5, 10):
    grads = _gradients(params, step)
    r_p, r_s, _ = r_step(r_p, r_s, grads)
    f_p, f_s, _ = f_step(f_p, f_s, grads)
  assert _max_abs(r_p, f_p) <= TOLERANCE
  _compare_states(r_s, f_s, "continued")
  back_p, back_s, _ = r_step(f_p, f_s, _gradients(params, 10))
  ref_p, ref_s, _ = r_step(r_p, r_s, _gradients(params, 10))
  assert _max_abs(back_p, ref_p) <= TOLERANCE
  _compare_states(ref_s, back_s, "back")


def test_unknown_implementation_is_refused():
  with pytest.raises(ValueError, match="fused, optax"):
    optimizers.adafactor(optimizers.rsqrt_decay(), implementation="torch")
  with pytest.raises(ValueError, match="params"):
    optimizers.adafactor(optimizers.rsqrt_decay()).update({"w": jnp.ones(3)},
                                                          optimizers.adafactor(
                                                              optimizers.rsqrt_decay()
                                                          ).init({"w": jnp.ones(3)}))


def test_factored_dims_follow_optax():
  from optax._src import factorized
  for shape in list(ODD_SHAPES.values()) + [(64, 64), (512, 384), (32128, 512), (6, 32)]:
    for factored in (True, False):
      for threshold in (32, 128):
        assert optimizers.factored_dims(shape, factored, threshold) == \
            factorized._factored_dims(shape, factored, threshold), (shape, factored, threshold)


def _batch(arch: str, seed: int, rows: int = 4, length: int = 12) -> dict:
  return testing.synthetic_batch(arch, rows, length, inputs_length=length,
                                 targets_length=length, vocab_size=160, seed=seed,
                                 weighted=0.8)


@pytest.mark.parametrize("arch", [models.ENCODER_DECODER, models.CAUSAL_DECODER])
@pytest.mark.slow
def test_train_step_loss_trajectory_matches_the_reference(arch):
  model = build_model(arch, "tiny", dtype="float32", vocab_size=160, dropout_rate=0.1)
  schedule = optimizers.constant(0.01)
  losses, finals = {}, {}
  for implementation in ("optax", "fused"):
    tx = optimizers.adafactor(schedule, min_dim_size_to_factor=32,
                              implementation=implementation)
    state = trainer.init_state(model, tx, models.default_input_shapes(arch, 1, 8, 8, 8),
                               jax.random.PRNGKey(0))
    step = jax.jit(lambda s, b, r, tx=tx: trainer.train_step(model, tx, schedule, 2, s, b, r),
                   donate_argnums=(0,))
    losses[implementation] = []
    for i in range(8):
      state, metrics = step(state, _batch(arch, i % 3), jax.random.PRNGKey(1))
      losses[implementation].append(float(metrics["loss"]))
    finals[implementation] = state
  reference, fused = np.array(losses["optax"]), np.array(losses["fused"])
  assert reference[6] < reference[3] < reference[0]     # it trains (the same batch)
  np.testing.assert_allclose(fused, reference, rtol=1e-5)
  assert _max_abs(finals["optax"].params, finals["fused"].params) <= 1e-5
  _compare_states(finals["optax"].opt_state, finals["fused"].opt_state, arch)
