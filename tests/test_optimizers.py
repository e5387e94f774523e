"""`training/optimizers.py`: the learning-rate schedules (rsqrt decay after a flat warmup,
constant, chosen by name) and Adafactor's update rule as t5x configures it, against an
independent numpy implementation from the paper's formulas (factored second moments of
matrices, full ones of vectors, update clipping, parameter scaling, momentum). The fused
implementation against the optax one it replaces: test_optimizer_speed_path.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arch_objective.training import optimizers


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------
def test_rsqrt_decay_is_flat_through_the_warmup_then_falls_as_one_over_sqrt_step():
  schedule = optimizers.rsqrt_decay()               # the paper's: base 1, 10k warmup steps
  assert [float(schedule(s)) for s in (0, 5_000, 10_000, 40_000, 1_000_000)] == \
      pytest.approx([0.01, 0.01, 0.01, 0.005, 0.001])
  other = optimizers.rsqrt_decay(2.0, warmup_steps=100)
  assert [float(other(s)) for s in (0, 100, 400)] == pytest.approx([0.2, 0.2, 0.1])
  with pytest.raises(ValueError, match="warmup_steps must be >= 1, found 0"):
    optimizers.rsqrt_decay(warmup_steps=0)


def test_constant_is_the_same_float32_rate_at_every_step():
  schedule = optimizers.constant()
  assert schedule(0).dtype == jnp.float32
  assert [float(schedule(s)) for s in (0, 7, 10**6)] == pytest.approx([1e-3] * 3)
  assert float(optimizers.constant(0.5)(3)) == 0.5


def test_a_schedule_is_chosen_by_name():
  assert float(optimizers.make_schedule()(40_000)) == pytest.approx(0.005)   # rsqrt_decay
  rsqrt = optimizers.make_schedule("rsqrt_decay", 2.0, warmup_steps=100)
  assert float(rsqrt(400)) == pytest.approx(0.1)
  constant = optimizers.make_schedule("constant", 0.5, warmup_steps=100)    # no warmup
  assert float(constant(0)) == float(constant(10**6)) == 0.5
  with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosine'; valid: "
                                       "rsqrt_decay, constant"):
    optimizers.make_schedule("cosine")


# ---------------------------------------------------------------------------
# Adafactor against numpy
# ---------------------------------------------------------------------------
def numpy_adafactor(params, gradients, learning_rate, min_dim_size_to_factor, momentum=None,
                    decay_rate=0.8, clipping_threshold=1.0, epsilon1=1e-30):
  """The parameters after one Adafactor step per gradient tree, in float64 (Shazeer and
  Stern, 2018, as t5x configures it): beta_t = 1 - t^-0.8 (t from 1); a matrix whose
  smaller side is at least `min_dim_size_to_factor` keeps the moving averages R of its
  rows' and C of its columns' mean g^2 (+ epsilon1) and estimates V = R C^T / mean(R),
  anything else the moving average V of g^2 + epsilon1 itself; u = g / sqrt(V), divided
  by max(1, RMS(u) / clipping_threshold), times the learning rate and max(RMS(param),
  1e-3), averaged with the previous step's (`momentum`); param -= u."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  moments, averages = {}, {}
  for t, grads in enumerate(gradients, start=1):
    beta = 1.0 - t ** -decay_rate
    for name, p in params.items():
      g = np.asarray(grads[name], np.float64)
      if p.ndim == 2 and min(p.shape) >= min_dim_size_to_factor:
        r, c = moments.get(name, (0.0, 0.0))
        r = beta * r + (1 - beta) * ((g * g).mean(axis=1) + epsilon1)
        c = beta * c + (1 - beta) * ((g * g).mean(axis=0) + epsilon1)
        moments[name] = (r, c)
        v = np.outer(r, c) / r.mean()
      else:
        v = beta * moments.get(name, 0.0) + (1 - beta) * (g * g + epsilon1)
        moments[name] = v
      u = g / np.sqrt(v)
      u = u / max(1.0, np.sqrt(np.mean(u * u)) / clipping_threshold)
      u = learning_rate * u * max(np.sqrt(np.mean(p * p)), 1e-3)
      if momentum is not None:
        u = (1 - momentum) * u + momentum * averages.get(name, 0.0)
        averages[name] = u
      params[name] = p - u
  return params


@pytest.mark.parametrize("implementation", optimizers.IMPLEMENTATIONS)
@pytest.mark.parametrize("momentum", [None, 0.9])
def test_adafactor_steps_follow_the_formulas(implementation, momentum):
  rng = np.random.default_rng(0)
  params = {"matrix": rng.normal(size=(4, 3)),      # factored (its smaller side is 3)
            "wide": rng.normal(size=(2, 5)),        # not factored (its smaller side is 2)
            "vector": rng.normal(size=(3,)),
            "small": np.full((2,), 1e-4)}           # RMS below 1e-3: scaled by 1e-3
  params = {k: v.astype(np.float32) for k, v in params.items()}
  # Four steps; the last gradient is large enough for the update to be clipped.
  gradients = [{k: (rng.normal(size=v.shape) * scale).astype(np.float32)
                for k, v in params.items()} for scale in (1.0, 0.5, 2.0, 300.0)]
  tx = optimizers.adafactor(optimizers.constant(0.05), min_dim_size_to_factor=3,
                            momentum=momentum, implementation=implementation)
  state = tx.init(params)
  if implementation == "fused":
    assert state[0].v_row["matrix"].shape == (3,) and state[0].v["matrix"].shape == (1,)
    assert state[0].v["wide"].shape == (2, 5)
  got = params
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  for grads in gradients:
    updates, state = step(got, state, grads)
    got = optax.apply_updates(got, updates)
  expected = numpy_adafactor(params, gradients, 0.05, 3, momentum)
  for name in params:
    np.testing.assert_allclose(np.asarray(got[name]), expected[name], rtol=1e-5, atol=1e-7,
                               err_msg=name)
    # The steps moved each parameter by far more than the tolerance.
    assert np.abs(expected[name] - params[name]).max() > 1e-5, name
