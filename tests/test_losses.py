"""Unit tests of `arch_objective.losses` against hand-computed numbers and plain numpy.

The paper's loss (spec §2.8, §8.2) is the SUM over weighted tokens of
cross_entropy + 1e-4 * log(Z)^2, with no normalisation.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_objective import losses


def J(fn, *args, **kwargs):
  """`fn(*args, **kwargs)` under one `jax.jit`: array leaves traced, the rest static
  (eager dispatch compiles each primitive separately, which is slow on CPU)."""
  leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
  dynamic = [isinstance(leaf, (np.ndarray, jax.Array)) for leaf in leaves]

  def inner(arrays):
    it = iter(arrays)
    full = [next(it) if d else leaf for leaf, d in zip(leaves, dynamic)]
    a, kw = jax.tree_util.tree_unflatten(treedef, full)
    return fn(*a, **kw)

  return jax.jit(inner)([leaf for leaf, d in zip(leaves, dynamic) if d])


def xent(*args, **kwargs):
  return tuple(float(v) for v in J(losses.compute_weighted_cross_entropy, *args, **kwargs))


# Batch 1, length 2, vocab 3.
LOGITS = np.array([[[1.0, 2.0, 3.0],
                    [0.5, -1.0, 2.0]]], np.float32)
TARGETS = np.array([[2, 0]], np.int32)
# By hand:
#   Z0 = e^1 + e^2 + e^3 = 2.71828 + 7.38906 + 20.08554 = 30.19288, log Z0 = 3.40761
#   CE0 = log Z0 - 3 = 0.40761
#   Z1 = e^0.5 + e^-1 + e^2 = 1.64872 + 0.36788 + 7.38906 = 9.40566, log Z1 = 2.24132
#   CE1 = log Z1 - 0.5 = 1.74132
LOG_Z = np.array([np.log(np.exp(1.0) + np.exp(2.0) + np.exp(3.0)),
                  np.log(np.exp(0.5) + np.exp(-1.0) + np.exp(2.0))])
CE = LOG_Z - np.array([3.0, 0.5])
Z_LOSS = 1e-4 * LOG_Z ** 2


def test_hand_numbers_are_what_the_comments_say():
  np.testing.assert_allclose(LOG_Z, [3.40761, 2.24132], atol=1e-5)
  np.testing.assert_allclose(CE, [0.40761, 1.74132], atol=1e-5)


def test_cross_entropy_is_a_sum_without_normalisation():
  loss, z, wsum = xent(LOGITS, TARGETS)
  assert loss == pytest.approx(CE.sum(), rel=1e-6)
  assert z == 0.0
  assert wsum == 2.0
  # With the paper's z-loss 1e-4: the loss includes it, and it is also returned alone.
  loss, z, wsum = xent(LOGITS, TARGETS, z_loss=1e-4)
  assert loss == pytest.approx(CE.sum() + Z_LOSS.sum(), rel=1e-6)
  assert z == pytest.approx(Z_LOSS.sum(), rel=1e-5)
  # 1e-4 * (3.40761^2 + 2.24132^2) = 1e-4 * (11.61181 + 5.02352) = 0.00166353
  assert z == pytest.approx(0.00166353, rel=1e-4)
  assert wsum == 2.0


def test_weights_zero_and_scale_positions():
  loss, z, wsum = xent(LOGITS, TARGETS, np.array([[1.0, 0.0]], np.float32), z_loss=1e-4)
  assert loss == pytest.approx(CE[0] + Z_LOSS[0], rel=1e-6)
  assert z == pytest.approx(Z_LOSS[0], rel=1e-5)
  assert wsum == 1.0
  loss, z, wsum = xent(LOGITS, TARGETS, np.array([[0.0, 1.0]], np.float32), z_loss=1e-4)
  assert loss == pytest.approx(CE[1] + Z_LOSS[1], rel=1e-6)
  assert wsum == 1.0
  w = np.array([[0.5, 2.0]], np.float32)
  loss, z, wsum = xent(LOGITS, TARGETS, w, z_loss=1e-4)
  assert loss == pytest.approx(0.5 * (CE[0] + Z_LOSS[0]) + 2.0 * (CE[1] + Z_LOSS[1]), rel=1e-6)
  assert z == pytest.approx(0.5 * Z_LOSS[0] + 2.0 * Z_LOSS[1], rel=1e-5)
  assert wsum == 2.5
  # Integer weights are accepted and mean the same.
  loss_int, _, wsum_int = xent(LOGITS, TARGETS, np.array([[1, 0]], np.int32), z_loss=1e-4)
  assert loss_int == pytest.approx(CE[0] + Z_LOSS[0], rel=1e-6) and wsum_int == 1.0


def test_loss_normalizing_factor_constant_and_per_token():
  total = CE + Z_LOSS
  w = np.array([[1.0, 1.0]], np.float32)
  loss, z, wsum = xent(LOGITS, TARGETS, w, z_loss=1e-4, loss_normalizing_factor=4.0)
  assert loss == pytest.approx(total.sum() / 4.0, rel=1e-6)
  assert z == pytest.approx(Z_LOSS.sum() / 4.0, rel=1e-5)
  assert wsum == 2.0                       # the weight sum is not divided
  loss, _, _ = xent(LOGITS, TARGETS, w, z_loss=1e-4, loss_normalizing_factor=3)
  assert loss == pytest.approx(total.sum() / 3.0, rel=1e-6)
  # per_token: the mean over weighted tokens.
  loss, z, wsum = xent(LOGITS, TARGETS, w, z_loss=1e-4, loss_normalizing_factor="per_token")
  assert loss == pytest.approx(total.mean(), rel=1e-6)
  assert z == pytest.approx(Z_LOSS.mean(), rel=1e-5)
  loss, _, wsum = xent(LOGITS, TARGETS, np.array([[0.0, 1.0]], np.float32), z_loss=1e-4,
                       loss_normalizing_factor=losses.PER_TOKEN)
  assert loss == pytest.approx(total[1], rel=1e-6) and wsum == 1.0
  w = np.array([[0.5, 2.0]], np.float32)
  loss, _, _ = xent(LOGITS, TARGETS, w, z_loss=1e-4, loss_normalizing_factor="per_token")
  assert loss == pytest.approx((0.5 * total[0] + 2.0 * total[1]) / 2.5, rel=1e-6)
  # No weighted token: 0, not NaN.
  loss, z, wsum = xent(LOGITS, TARGETS, np.zeros((1, 2), np.float32), z_loss=1e-4,
                       loss_normalizing_factor="per_token")
  assert loss == 0.0 and z == 0.0 and wsum == 0.0


@pytest.mark.parametrize("factor", ["PER_TOKEN", "per_sequence", "", "mean"])
def test_invalid_factor_string_raises(factor):
  with pytest.raises(ValueError):
    J(losses.compute_weighted_cross_entropy, LOGITS, TARGETS, loss_normalizing_factor=factor)


@pytest.mark.parametrize("factor", [0, 0.0, -1, -2.5])
def test_non_positive_factor_raises(factor):
  with pytest.raises(ValueError):
    J(losses.compute_weighted_cross_entropy, LOGITS, TARGETS, loss_normalizing_factor=factor)


def test_rank_mismatch_raises():
  with pytest.raises(ValueError):
    J(losses.compute_weighted_cross_entropy, LOGITS[0], TARGETS)   # [2, 3] vs [1, 2]


def np_weighted_xent(logits, targets, weights, smoothing, z_loss):
  """Independent float64 numpy: sum_w [CE(p, softmax) - H(p) + z * logZ^2]."""
  logits = logits.astype(np.float64)
  v = logits.shape[-1]
  p = np.full(logits.shape, smoothing / (v - 1))
  np.put_along_axis(p, targets[..., None], 1.0 - smoothing, axis=-1)
  m = logits.max(-1, keepdims=True)
  log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  log_q = logits - log_z[..., None]
  entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), -1)
  per_token = -np.sum(p * log_q, -1) - entropy + z_loss * log_z ** 2
  return np.sum(per_token * weights), np.sum(z_loss * log_z ** 2 * weights)


def test_random_batch_matches_numpy():
  rng = np.random.RandomState(0)
  logits = (3 * rng.randn(2, 5, 7)).astype(np.float32)
  targets = rng.randint(0, 7, size=(2, 5)).astype(np.int32)
  weights = (rng.rand(2, 5) > 0.3).astype(np.float32)
  for smoothing in (0.0, 0.1):
    loss, z, wsum = xent(logits, targets, weights, label_smoothing=smoothing, z_loss=1e-4)
    exp_loss, exp_z = np_weighted_xent(logits, targets, weights, smoothing, 1e-4)
    assert loss == pytest.approx(exp_loss, rel=1e-5)
    assert z == pytest.approx(exp_z, rel=1e-5)
    assert wsum == weights.sum()


def test_label_smoothing_is_kl_to_smoothed_target():
  s = 0.1
  # v = 3: the smoothed target of label 2 is p = [0.05, 0.05, 0.9];
  # its entropy H(p) = -(0.9 log 0.9 + 2 * 0.05 log 0.05) = 0.09482 + 0.29957 = 0.39440.
  p0 = np.array([0.05, 0.05, 0.9])
  p1 = np.array([0.9, 0.05, 0.05])
  entropy = -(0.9 * np.log(0.9) + 2 * 0.05 * np.log(0.05))
  assert entropy == pytest.approx(0.39440, abs=1e-5)
  log_q = LOGITS[0].astype(np.float64) - LOG_Z[:, None]
  kl = np.array([-(p0 * log_q[0]).sum() - entropy, -(p1 * log_q[1]).sum() - entropy])
  loss, z, wsum = xent(LOGITS, TARGETS, label_smoothing=s)
  assert loss == pytest.approx(kl.sum(), rel=1e-5)
  assert z == 0.0 and wsum == 2.0
  # With the z-loss and a zero weight: only position 1, KL + z-loss.
  loss, z, _ = xent(LOGITS, TARGETS, np.array([[0.0, 1.0]], np.float32), label_smoothing=s,
                    z_loss=1e-4)
  assert loss == pytest.approx(kl[1] + Z_LOSS[1], rel=1e-5)
  assert z == pytest.approx(Z_LOSS[1], rel=1e-5)
  # It is not the plain cross entropy against the one-hot label.
  assert abs(kl.sum() - CE.sum()) > 1e-2


def test_label_smoothing_perfect_prediction_scores_zero():
  s, v = 0.1, 5
  targets = np.array([[0, 3, 4]], np.int32)
  p = np.full((1, 3, v), s / (v - 1))
  p[0, np.arange(3), targets[0]] = 1.0 - s
  logits = (np.log(p) + 7.0).astype(np.float32)     # softmax(logits) == p exactly
  loss, _, _ = xent(logits, targets, label_smoothing=s)
  assert abs(loss) < 1e-5
  # Any other prediction is worse (KL > 0).
  worse, _, _ = xent(logits[:, :, ::-1].copy(), targets, label_smoothing=s)
  assert worse > 0.1
  # Without smoothing, a very peaked correct prediction also scores ~0
  # (per token log(1 + 4 e^-30) ~ 4e-13).
  peaked = np.where(np.arange(v)[None, None] == targets[..., None], 30.0, 0.0).astype(np.float32)
  loss0, _, _ = xent(peaked, targets)
  assert abs(loss0) < 1e-5


def test_bfloat16_logits_are_computed_in_float32():
  logits_bf16 = jnp.asarray(LOGITS * 1.37, jnp.bfloat16)
  exact = np.asarray(logits_bf16, np.float64)            # the values bf16 holds
  exp_loss, exp_z = np_weighted_xent(exact, TARGETS, np.ones((1, 2)), 0.0, 1e-4)
  loss, z, _ = xent(logits_bf16, TARGETS, z_loss=1e-4)
  assert loss == pytest.approx(exp_loss, rel=1e-6)
  assert z == pytest.approx(exp_z, rel=1e-5)


def test_weighted_accuracy_literal():
  logits = np.array([[[0.1, 0.2, 0.9],      # argmax 2
                      [3.0, 1.0, 2.0],      # argmax 0
                      [0.0, 5.0, 1.0],      # argmax 1
                      [0.0, 2.0, 1.0]]], np.float32)   # argmax 1
  targets = np.array([[2, 1, 1, 0]], np.int32)
  # correct = [1, 0, 1, 0]
  correct, wsum = J(losses.compute_weighted_accuracy, logits, targets)
  assert float(correct) == 2.0 and float(wsum) == 4.0
  correct, wsum = J(losses.compute_weighted_accuracy, logits, targets,
                    np.array([[1, 1, 0, 1]], np.float32))
  assert float(correct) == 1.0 and float(wsum) == 3.0
  correct, wsum = J(losses.compute_weighted_accuracy, logits, targets,
                    np.array([[0.5, 1, 2, 1]], np.float32))
  assert float(correct) == 2.5 and float(wsum) == 4.5


def test_weighted_accuracy_counts_a_tie_with_the_maximum_and_matches_argmax_otherwise():
  logits = np.array([[[1.0, 1.0, 0.0],      # the target ties for the maximum: correct
                      [2.0, 2.0, 0.0]]], np.float32)   # target 2 is below it: wrong
  correct, _ = J(losses.compute_weighted_accuracy, logits, np.array([[1, 2]], np.int32))
  assert float(correct) == 1.0
  rng = np.random.RandomState(3)
  logits = rng.randn(3, 7, 50).astype(np.float32)
  targets = rng.randint(0, 50, size=(3, 7)).astype(np.int32)
  targets[0, :4] = logits[0, :4].argmax(-1)            # some positions correct
  weights = rng.rand(3, 7).astype(np.float32)
  expected = float(np.sum((logits.argmax(-1) == targets) * weights))
  correct, _ = J(losses.compute_weighted_accuracy, logits, targets, weights)
  assert float(correct) == pytest.approx(expected, rel=1e-6) and expected > 0


def test_token_log_likelihoods_match_numpy():
  rng = np.random.RandomState(1)
  logits = (4 * rng.randn(2, 4, 6)).astype(np.float32)
  logits[1, 2] += 1000.0                    # large logits stay finite
  targets = rng.randint(0, 6, size=(2, 4)).astype(np.int32)
  got = np.asarray(J(losses.token_log_likelihoods, logits, targets))
  assert got.shape == (2, 4)
  x = logits.astype(np.float64)
  m = x.max(-1, keepdims=True)
  log_probs = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
  expected = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Literal: uniform logits over 4 symbols -> log(1/4) everywhere.
  uniform = np.zeros((1, 2, 4), np.float32)
  np.testing.assert_allclose(
      np.asarray(J(losses.token_log_likelihoods, uniform, np.array([[0, 3]], np.int32))),
      np.full((1, 2), np.log(0.25)), rtol=1e-6)
  # On the hand example: log p(target) = -CE.
  np.testing.assert_allclose(np.asarray(J(losses.token_log_likelihoods, LOGITS, TARGETS)),
                             -CE[None], rtol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("factor", [None, 2.0, "per_token"])
def test_gradient_is_softmax_minus_target_plus_z_term(smoothing, factor):
  rng = np.random.RandomState(2)
  logits = (2 * rng.randn(2, 3, 5)).astype(np.float32)
  targets = rng.randint(0, 5, size=(2, 3)).astype(np.int32)
  weights = np.array([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]], np.float32)
  z_loss = 1e-2                             # large enough for its term to matter
  grad = np.asarray(J(jax.grad(lambda l: losses.compute_weighted_cross_entropy(
      l, targets, weights, label_smoothing=smoothing, z_loss=z_loss,
      loss_normalizing_factor=factor)[0]), logits))
  x = logits.astype(np.float64)
  m = x.max(-1, keepdims=True)
  log_z = m + np.log(np.exp(x - m).sum(-1, keepdims=True))
  softmax = np.exp(x - log_z)
  target = np.full(x.shape, smoothing / 4)
  np.put_along_axis(target, targets[..., None], 1.0 - smoothing, axis=-1)
  expected = weights[..., None] * (softmax - target + 2 * z_loss * log_z * softmax)
  divisor = {None: 1.0, 2.0: 2.0, "per_token": weights.sum()}[factor]
  np.testing.assert_allclose(grad, expected / divisor, rtol=1e-4, atol=1e-6)
  # Zero-weight positions get no gradient at all.
  assert not grad[0, 1].any() and not grad[1, 2].any()
  # The z-loss term is really there: dropping it misses the target.
  assert not np.allclose(grad, weights[..., None] * (softmax - target) / divisor,
                         rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_cross_entropy_matches_the_dense_reference_in_values_and_vjps(smoothing):
  """`label_cross_entropy` (integer labels, a written-out gradient) against
  `cross_entropy_with_logits` on the dense smoothed one-hot, differentiated by JAX:
  both outputs and the vector-Jacobian products of both, with logits far from zero."""
  rng = np.random.RandomState(5)
  v = 7
  logits = np.concatenate([(3 * rng.randn(2, 4, v)), 300 + 3 * rng.randn(1, 4, v)]
                          ).astype(np.float32)                  # a row where exp overflows
  targets = rng.randint(0, v, size=(3, 4)).astype(np.int32)
  confidence = 1.0 - smoothing
  low = smoothing / (v - 1)
  dense = (np.eye(v, dtype=np.float32)[targets] * (confidence - low) + low)
  z_loss = 1e-2
  cot = (rng.randn(3, 4).astype(np.float32), rng.randn(3, 4).astype(np.float32))

  def run(fn):
    out, vjp = jax.vjp(fn, logits)
    return out, vjp(cot)[0]

  (ours, ours_z), ours_grad = J(lambda: run(lambda x: losses.label_cross_entropy(
      x, targets, confidence, low, z_loss)))
  (ref, ref_z), ref_grad = J(lambda: run(lambda x: losses.cross_entropy_with_logits(
      x, dense, z_loss)))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(ours_z, ref_z, rtol=1e-5)
  np.testing.assert_allclose(ours_grad, ref_grad, rtol=1e-4, atol=1e-5)
  assert np.isfinite(ours_grad).all() and np.abs(ours_grad).max() > 0.1
