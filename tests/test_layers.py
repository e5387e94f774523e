"""Unit tests of `arch_objective.layers` against hand-written arrays and plain numpy.

Every expected value here is either written out by hand (masks, buckets) or computed
by an independent numpy reimplementation inside the test; nothing is copied from a
run of the code under test.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_objective import layers

KEY = jax.random.PRNGKey(0)


def abstract_variables(module, *args, **kwargs):
  """The variable tree of `module.init(KEY, *args)` as shapes only (no compile, no RNG)."""
  return jax.eval_shape(lambda key: module.init(key, *args, **kwargs), KEY)


def random_params(module, *args, seed=0, scale=0.5, **kwargs):
  """Hand-made float32 params with the module's tree structure, drawn with numpy.

  Using these rather than `init` keeps the forward tests independent of the
  initialisers (and fast: random initialisers are slow to compile on CPU).
  """
  rng = np.random.RandomState(seed)
  shapes = nn.meta.unbox(abstract_variables(module, *args, **kwargs)["params"])
  return jax.tree_util.tree_map(
      lambda s: (scale * rng.randn(*s.shape)).astype(np.float32), shapes)


def J(fn, *args, **kwargs):
  """`fn(*args, **kwargs)` under one `jax.jit`: array leaves are traced, the rest static.

  Eager dispatch compiles every primitive separately, which is slow on CPU; one jit
  per call keeps the file fast. Python numbers, bools, strings, dtypes, methods and
  None stay static, so shape arguments (qlen, klen) and flags keep their meaning.
  """
  leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
  dynamic = [isinstance(leaf, (np.ndarray, jax.Array)) for leaf in leaves]

  def inner(arrays):
    it = iter(arrays)
    full = [next(it) if d else leaf for leaf, d in zip(leaves, dynamic)]
    a, kw = jax.tree_util.tree_unflatten(treedef, full)
    return fn(*a, **kw)

  return jax.jit(inner)([leaf for leaf, d in zip(leaves, dynamic) if d])


def f64(params):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)


def np_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def np_gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------
def test_decoder_mask_causal_with_padding():
  targets = np.array([[5, 6, 7, 8, 9, 0]], np.int32)   # last position is padding
  mask = J(layers.make_decoder_mask, targets)
  expected = np.array([[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 1, 0],
                       [0, 0, 0, 0, 0, 0]], np.float32)
  assert mask.shape == (1, 1, 6, 6)
  assert mask.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(mask)[0, 0], expected)


def test_decoder_mask_non_causal_prefix():
  # A 2-token prefix: dca marks the 2 inputs plus one position; no padding.
  targets = np.array([[5, 6, 7, 8, 9, 3]], np.int32)
  dca = np.array([[1, 1, 1, 0, 0, 0]], np.int32)
  mask = J(layers.make_decoder_mask, targets, decoder_causal_attention=dca)
  expected = np.array([[1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 1, 0],
                       [1, 1, 1, 1, 1, 1]], np.float32)
  np.testing.assert_array_equal(np.asarray(mask)[0, 0], expected)

  # The same with the last position padding (the docstring's example).
  targets_pad = np.array([[5, 6, 7, 8, 1, 0]], np.int32)
  mask_pad = J(layers.make_decoder_mask, targets_pad, decoder_causal_attention=dca)
  expected_pad = expected.copy()
  expected_pad[5, :] = 0
  expected_pad[:, 5] = 0
  np.testing.assert_array_equal(np.asarray(mask_pad)[0, 0], expected_pad)


def test_decoder_mask_packed_prefix_lm():
  # Two packed prefix-LM examples: segment 1 = positions 0..2 (1 input token, so dca
  # marks positions 0,1), segment 2 = positions 3..4 (1 input token: dca at 3,4),
  # position 5 is padding (segment 0, target 0).
  targets = np.array([[5, 6, 7, 8, 9, 0]], np.int32)
  segments = np.array([[1, 1, 1, 2, 2, 0]], np.int32)
  dca = np.array([[1, 1, 0, 1, 1, 0]], np.int32)
  mask = J(layers.make_decoder_mask, targets, decoder_causal_attention=dca,
                                  decoder_segment_ids=segments)
  expected = np.array([[1, 1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [0, 0, 0, 1, 1, 0],
                       [0, 0, 0, 1, 1, 0],
                       [0, 0, 0, 0, 0, 0]], np.float32)
  m = np.asarray(mask)[0, 0]
  np.testing.assert_array_equal(m, expected)
  # Never across segments; padding row and column all zero.
  assert not np.any(m[np.not_equal.outer(segments[0], segments[0])])
  assert not m[5].any() and not m[:, 5].any()

  # A causal decoder on the same packed row (no dca): causal within each segment.
  mask_cd = J(layers.make_decoder_mask, targets, decoder_segment_ids=segments)
  expected_cd = np.array([[1, 0, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0, 0],
                          [1, 1, 1, 0, 0, 0],
                          [0, 0, 0, 1, 0, 0],
                          [0, 0, 0, 1, 1, 0],
                          [0, 0, 0, 0, 0, 0]], np.float32)
  np.testing.assert_array_equal(np.asarray(mask_cd)[0, 0], expected_cd)


def test_decoder_mask_batch_rows_are_independent():
  targets = np.array([[4, 4, 4, 0], [4, 4, 4, 4]], np.int32)
  dca = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.int32)
  mask = np.asarray(J(layers.make_decoder_mask, targets, decoder_causal_attention=dca))
  expected = np.array([[[1, 1, 0, 0],
                        [1, 1, 0, 0],
                        [1, 1, 1, 0],
                        [0, 0, 0, 0]],
                       [[1, 0, 0, 0],
                        [1, 1, 0, 0],
                        [1, 1, 1, 0],
                        [1, 1, 1, 1]]], np.float32)
  np.testing.assert_array_equal(mask[:, 0], expected)


def test_decoder_mask_without_targets_and_errors():
  # Prefill: no targets, so no padding term; the shape comes from dca.
  dca = np.array([[1, 1, 0]], np.int32)
  mask = J(layers.make_decoder_mask, None, decoder_causal_attention=dca)
  np.testing.assert_array_equal(np.asarray(mask)[0, 0],
                                np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1]], np.float32))
  with pytest.raises(ValueError):
    J(layers.make_decoder_mask, None)


def test_make_attention_mask():
  q = np.array([[1, 1, 0]], np.int32)
  k = np.array([[1, 0, 1, 1]], np.int32)
  mask = J(layers.make_attention_mask, q > 0, k > 0)
  expected = np.array([[1, 0, 1, 1],
                       [1, 0, 1, 1],
                       [0, 0, 0, 0]], np.float32)
  assert mask.shape == (1, 1, 3, 4) and mask.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(mask)[0, 0], expected)
  # pairwise_fn = equal (segment ids).
  seg = np.array([[1, 1, 2]], np.int32)
  eq = J(layers.make_attention_mask, seg, seg, jnp.equal)
  np.testing.assert_array_equal(np.asarray(eq)[0, 0],
                                np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32))


def test_make_causal_mask():
  mask = J(layers.make_causal_mask, np.zeros((2, 4), np.int32))
  expected = np.array([[1, 0, 0, 0],
                       [1, 1, 0, 0],
                       [1, 1, 1, 0],
                       [1, 1, 1, 1]], np.float32)
  assert mask.shape == (2, 1, 4, 4)
  np.testing.assert_array_equal(np.asarray(mask)[0, 0], expected)
  np.testing.assert_array_equal(np.asarray(mask)[1, 0], expected)


def test_combine_masks():
  assert layers.combine_masks() is None
  assert J(layers.combine_masks, None, None) is None
  a = np.array([[[[1, 1, 0]]]], np.float32)
  b = np.array([[[[0, 1, 1]]]], np.float32)
  only = J(layers.combine_masks, None, a, None)
  np.testing.assert_array_equal(np.asarray(only), a)
  both = J(layers.combine_masks, a, None, b)
  assert both.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(both), np.array([[[[0, 1, 0]]]], np.float32))
  as_bool = J(layers.combine_masks, a, b, dtype=jnp.bool_)
  assert as_bool.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(as_bool), np.array([[[[False, True, False]]]]))


def test_make_step_mask():
  mask = J(layers.make_step_mask, jnp.array([0, 2, 4], jnp.int32), 5)
  expected = np.array([[[[1, 0, 0, 0, 0]]],
                       [[[1, 1, 1, 0, 0]]],
                       [[[1, 1, 1, 1, 1]]]], np.float32)
  assert mask.shape == (3, 1, 1, 5)
  np.testing.assert_array_equal(np.asarray(mask), expected)


def test_mask_to_bias():
  assert J(layers.mask_to_bias, None, jnp.float32) is None
  mask = np.array([[[[1, 0], [0, 1]]]], np.float32)
  bias = J(layers.mask_to_bias, mask, jnp.float32)
  assert bias.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(bias),
                                np.array([[[[0.0, -1e10], [-1e10, 0.0]]]], np.float32))
  assert layers.NEG_INF == -1e10
  bias_bf16 = J(layers.mask_to_bias, mask, jnp.bfloat16)
  assert bias_bf16.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(bias_bf16, np.float32)))


# ---------------------------------------------------------------------------
# Relative position buckets (32 buckets, max_distance 128)
# ---------------------------------------------------------------------------
# Unidirectional: n = max(q - k, 0); n < 16 exact; otherwise
#   bucket = 16 + floor(log(n/16) / log(8) * 16), capped at 31.
#   n=16: log(1)=0                          -> 16
#   n=18: log(1.125)=0.11778; /2.07944*16 = 0.906  -> 16
#   n=19: log(1.1875)=0.17185; /2.07944*16 = 1.322 -> 17
#   n=20: log(1.25)=0.22314;  /2.07944*16 = 1.717  -> 17
#   n=21: log(1.3125)=0.27193; /2.07944*16 = 2.092 -> 18
#   n=32: log(2)=0.69315;     /2.07944*16 = 5.333  -> 21
#   n=64: log(4)=1.38629;     /2.07944*16 = 10.667 -> 26
#   n=100: log(6.25)=1.83258; /2.07944*16 = 14.100 -> 30
#   n=127: log(7.9375)=2.07160; /2.07944*16 = 15.940 -> 31
#   n=128: 16 + 16 = 32 -> capped 31;  n=1000 -> 31
UNI_CASES = [  # (relative_position = key - query, bucket)
    (5, 0), (1, 0), (300, 0),                      # keys after the query -> bucket 0
    (0, 0), (-1, 1), (-7, 7), (-8, 8), (-15, 15),   # exact
    (-16, 16), (-18, 16), (-19, 17), (-20, 17), (-21, 18), (-32, 21), (-64, 26),
    (-100, 30), (-127, 31), (-128, 31), (-1000, 31)]

# Bidirectional: 16 buckets per direction, n = |q - k|, +16 when the key is after the
# query; n < 8 exact; otherwise bucket = 8 + floor(log(n/8) / log(16) * 8), capped 15.
#   n=11: log(1.375)=0.31845; /2.77259*8 = 0.919 -> 8
#   n=12: log(1.5)=0.40547;   /2.77259*8 = 1.170 -> 9
#   n=20: log(2.5)=0.91629;   /2.77259*8 = 2.644 -> 10
#   n=23: log(2.875)=1.05605; /2.77259*8 = 3.047 -> 11
#   n=40: log(5)=1.60944;     /2.77259*8 = 4.644 -> 12
#   n=50: log(6.25)=1.83258;  /2.77259*8 = 5.288 -> 13
#   n=80: log(10)=2.30259;    /2.77259*8 = 6.644 -> 14
#   n=100: log(12.5)=2.52573; /2.77259*8 = 7.288 -> 15;  n=1000 -> 15
BI_CASES = [
    (0, 0), (-1, 1), (-7, 7), (1, 17), (7, 23),
    (-8, 8), (-11, 8), (-12, 9), (-20, 10), (-23, 11), (-40, 12), (-50, 13), (-80, 14),
    (-100, 15), (-1000, 15),
    (8, 24), (11, 24), (12, 25), (20, 26), (23, 27), (40, 28), (50, 29), (80, 30),
    (100, 31), (1000, 31)]


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jnp"])
def test_relative_position_bucket_unidirectional(xp):
  call = J if xp is jnp else (lambda fn, *a, **kw: fn(*a, **kw))   # jnp path: traced
  rel = xp.asarray(np.array([r for r, _ in UNI_CASES], np.int32))
  got = np.asarray(call(layers.relative_position_bucket, rel, bidirectional=False,
                        num_buckets=32, max_distance=128))
  np.testing.assert_array_equal(got, np.array([b for _, b in UNI_CASES]))


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jnp"])
def test_relative_position_bucket_bidirectional(xp):
  call = J if xp is jnp else (lambda fn, *a, **kw: fn(*a, **kw))   # jnp path: traced
  rel = xp.asarray(np.array([r for r, _ in BI_CASES], np.int32))
  got = np.asarray(call(layers.relative_position_bucket, rel, bidirectional=True,
                        num_buckets=32, max_distance=128))
  np.testing.assert_array_equal(got, np.array([b for _, b in BI_CASES]))


def _bucket_by_thresholds(rel, bidirectional):
  """Independent bucketing from the hand-derived lower edges of the log buckets.

  Bucket `max_exact + i` starts at the first integer n >= max_exact * r**(i/half) with
  r = 128/max_exact: unidirectional 16 * 8**(i/16), bidirectional 8 * 16**(i/8).
  """
  if bidirectional:
    edges = [8, 12, 16, 23, 32, 46, 64, 91]           # buckets 8..15
    offset, n = (rel > 0) * 16, np.abs(rel)
  else:
    edges = [16, 19, 21, 24, 27, 31, 35, 40, 46, 52, 59, 67, 77, 87, 99, 113]  # 16..31
    offset, n = 0, np.maximum(-rel, 0)
  max_exact = edges[0]
  log_bucket = max_exact - 1 + np.searchsorted(np.array(edges), n, side="right")
  return offset + np.where(n < max_exact, n, log_bucket)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_grid_numpy_jnp_and_thresholds(bidirectional):
  rel = np.arange(-300, 301)
  got_np = layers.relative_position_bucket(rel, bidirectional, 32, 128)
  got_jnp = J(layers.relative_position_bucket, jnp.asarray(rel, jnp.int32), bidirectional,
              32, 128)
  assert isinstance(got_np, np.ndarray) and isinstance(got_jnp, jax.Array)
  np.testing.assert_array_equal(np.asarray(got_np), np.asarray(got_jnp))
  np.testing.assert_array_equal(np.asarray(got_np), _bucket_by_thresholds(rel, bidirectional))


def hand_table(h, num_buckets=32):
  """rel_embedding[h, b] = 100*h + b: every gathered value names its head and bucket."""
  return (100.0 * np.arange(h)[:, None] + np.arange(num_buckets)[None, :]).astype(np.float32)


def test_relative_position_biases_gather():
  h, qlen, klen = 3, 5, 7
  module = layers.RelativePositionBiases(num_buckets=32, max_distance=128, num_heads=h,
                                         dtype=jnp.float32)
  shapes = nn.meta.unbox(abstract_variables(module, qlen, klen, True)["params"])
  assert shapes["rel_embedding"].shape == (h, 32)
  table = hand_table(h)
  variables = {"params": {"rel_embedding": table}}
  for bidirectional in (True, False):
    out = np.asarray(J(module.apply, variables, qlen, klen, bidirectional))
    assert out.shape == (1, h, qlen, klen)
    expected = np.zeros((1, h, qlen, klen), np.float32)
    for i in range(qlen):
      for j in range(klen):
        b = _bucket_by_thresholds(np.array(j - i), bidirectional)
        expected[0, :, i, j] = table[:, b]
    np.testing.assert_array_equal(out, expected)
  # Literal spot checks, head 1 (values 100 + bucket). Unidirectional: keys at or after
  # the query -> bucket 0, key 3 before -> bucket 3. Bidirectional: key 2 after -> 18.
  uni = np.asarray(J(module.apply, variables, qlen, klen, False))
  np.testing.assert_array_equal(uni[0, 1, 3], np.array([103, 102, 101, 100, 100, 100, 100]))
  bi = np.asarray(J(module.apply, variables, qlen, klen, True))
  np.testing.assert_array_equal(bi[0, 1, 3], np.array([103, 102, 101, 100, 117, 118, 119]))


def test_relative_position_biases_query_positions_match_full_rows():
  h, length = 2, 150   # long enough to reach the capped log buckets (n > 128)
  module = layers.RelativePositionBiases(num_buckets=32, max_distance=128, num_heads=h,
                                         dtype=jnp.float32)
  variables = {"params": {"rel_embedding": np.random.RandomState(0).randn(h, 32).astype(
      np.float32)}}
  positions = jnp.array([0, 17, 64, 149], jnp.int32)
  for bidirectional in (True, False):
    full = np.asarray(J(module.apply, variables, length, length, bidirectional))
    step = np.asarray(J(module.apply, variables, 1, length, bidirectional,
                                   query_positions=positions))
    assert step.shape == (4, h, 1, length)
    for row, p in enumerate(np.asarray(positions)):
      np.testing.assert_array_equal(step[row, :, 0], full[0, :, p])


# ---------------------------------------------------------------------------
# RMSNorm, DenseGeneral, Embed
# ---------------------------------------------------------------------------
def test_rmsnorm_matches_numpy():
  x = np.random.RandomState(0).randn(2, 3, 8).astype(np.float32)
  norm = layers.RMSNorm()
  variables = jax.jit(norm.init)(KEY, x)
  scale = nn.meta.unbox(variables["params"])["scale"]
  assert scale.shape == (8,) and scale.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(scale), np.ones(8, np.float32))
  x64 = x.astype(np.float64)
  rms = np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(J(norm.apply, variables, x)), x64 / rms,
                             rtol=1e-5, atol=1e-6)
  # A non-trivial scale.
  new_scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
  out = np.asarray(J(norm.apply, {"params": {"scale": new_scale}}, x))
  np.testing.assert_allclose(out, x64 / rms * new_scale, rtol=1e-5, atol=1e-6)
  # No mean subtraction: a constant row c maps to c / sqrt(c^2 + 1e-6), not to 0;
  # for c = 1e-3 the epsilon matters: 1e-3 / sqrt(2e-6).
  const = np.full((1, 8), 1e-3, np.float32)
  np.testing.assert_allclose(np.asarray(J(norm.apply, variables, const)),
                             np.full((1, 8), 1e-3 / math.sqrt(2e-6)), rtol=1e-5)


def test_rmsnorm_dtypes():
  x = np.random.RandomState(1).randn(2, 8).astype(np.float32) * 3
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  x_exact = np.asarray(x_bf16, np.float64)         # the values the bf16 input holds
  expected = x_exact / np.sqrt(np.mean(x_exact ** 2, -1, keepdims=True) + 1e-6)
  variables = {"params": {"scale": np.ones(8, np.float32)}}
  # bf16 in, float32 out: the math is float32, so it is accurate to float32 precision
  # (a bf16 computation would be off by ~1e-2).
  out32 = J(layers.RMSNorm(dtype=jnp.float32).apply, variables, x_bf16)
  assert out32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out32), expected, rtol=1e-5, atol=1e-6)
  # bf16 in, bf16 out: the float32 result rounded once to bf16.
  out16 = J(layers.RMSNorm(dtype=jnp.bfloat16).apply, variables, x_bf16)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out16, np.float32),
                                np.asarray(jnp.asarray(expected, jnp.bfloat16), np.float32))
  shapes = nn.meta.unbox(abstract_variables(layers.RMSNorm(dtype=jnp.bfloat16), x_bf16))
  assert shapes["params"]["scale"].dtype == jnp.float32   # the param stays float32


def test_dense_general_multi_feature_kernel_is_2d():
  x = np.random.RandomState(2).randn(2, 3, 16).astype(np.float32)
  dense = layers.DenseGeneral(features=(4, 8))
  shapes = nn.meta.unbox(abstract_variables(dense, x)["params"])
  assert shapes["kernel"].shape == (16, 32)
  params = random_params(dense, x, seed=1)
  out = np.asarray(J(dense.apply, {"params": params}, x))
  assert out.shape == (2, 3, 4, 8)
  kernel = np.asarray(params["kernel"], np.float64)
  expected = np.einsum("bld,dhe->blhe", x.astype(np.float64), kernel.reshape(16, 4, 8))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_dense_general_contracts_two_axes():
  x = np.random.RandomState(3).randn(2, 3, 4, 5).astype(np.float32)
  dense = layers.DenseGeneral(features=6, axis=(-2, -1))
  shapes = nn.meta.unbox(abstract_variables(dense, x)["params"])
  assert shapes["kernel"].shape == (20, 6)
  params = random_params(dense, x, seed=2)
  out = np.asarray(J(dense.apply, {"params": params}, x))
  assert out.shape == (2, 3, 6)
  kernel = np.asarray(params["kernel"], np.float64)
  expected = np.einsum("blhe,hef->blf", x.astype(np.float64), kernel.reshape(4, 5, 6))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # Equivalently: flatten the contracted axes, then a plain matmul with the 2-D kernel.
  np.testing.assert_allclose(out, x.reshape(2, 3, 20).astype(np.float64) @ kernel,
                             rtol=1e-5, atol=1e-5)


def test_embed_lookup_attend_and_dtype_check():
  embed = layers.Embed(num_embeddings=7, features=4)
  tokens = np.array([[0, 3, 6]], np.int32)
  shapes = nn.meta.unbox(abstract_variables(embed, tokens)["params"])
  assert shapes["embedding"].shape == (7, 4)
  table = np.random.RandomState(3).randn(7, 4).astype(np.float32)
  variables = {"params": {"embedding": table}}
  np.testing.assert_array_equal(np.asarray(J(embed.apply, variables, tokens)), table[[[0, 3, 6]]])
  query = np.random.RandomState(4).randn(2, 3, 4).astype(np.float32)
  logits = J(embed.apply, variables, query, method=layers.Embed.attend)
  assert logits.shape == (2, 3, 7) and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), query.astype(np.float64) @ table.T,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError):
    J(embed.apply, variables, tokens.astype(np.float32))


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------
def np_attention(params, x_q, x_kv, heads, head_dim, mask=None, bias=None):
  """Unscaled multi-head attention in float64 numpy, from the 2-D kernels."""
  params = f64(params)
  b, q, d = x_q.shape
  k = x_kv.shape[1]
  proj = lambda x, name, n: (x.astype(np.float64) @ params[name]["kernel"]).reshape(
      b, n, heads, head_dim)
  query, key, value = proj(x_q, "query", q), proj(x_kv, "key", k), proj(x_kv, "value", k)
  logits = np.einsum("bqhe,bkhe->bhqk", query, key)          # no 1/sqrt(head_dim)
  if mask is not None:
    logits = logits + np.where(np.asarray(mask) > 0, 0.0, -1e10)
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  weights = np_softmax(logits, axis=-1)                       # over keys
  ctx = np.einsum("bhqk,bkhe->bqhe", weights, value).reshape(b, q, heads * head_dim)
  return ctx @ params["out"]["kernel"]


def test_attention_param_names_and_shapes():
  attn = layers.MultiHeadDotProductAttention(num_heads=2, head_dim=3)
  x = np.zeros((1, 4, 5), np.float32)
  params = nn.meta.unbox(abstract_variables(attn, x, x)["params"])
  assert set(params) == {"query", "key", "value", "out"}
  for name in ("query", "key", "value"):
    assert set(params[name]) == {"kernel"}
    assert params[name]["kernel"].shape == (5, 6)
  assert params["out"]["kernel"].shape == (6, 5)


def test_attention_query_init_is_scaled_by_rsqrt_head_dim():
  # d=256, h*e=4*16=64: 16384 samples per kernel, so each sample std has a relative
  # standard error of about 1/sqrt(2*16384) = 0.6%; the tolerance is 5%.
  d, h, e = 256, 4, 16
  attn = layers.MultiHeadDotProductAttention(num_heads=h, head_dim=e)
  x = np.zeros((1, 1, d), np.float32)
  params = nn.meta.unbox(jax.jit(attn.init)(jax.random.PRNGKey(1), x, x)["params"])
  std = {n: float(np.std(np.asarray(params[n]["kernel"]))) for n in params}
  mean = {n: float(np.mean(np.asarray(params[n]["kernel"]))) for n in params}
  # variance_scaling(1, fan_in, normal): std 1/sqrt(fan_in) with fan_in = d.
  assert std["key"] == pytest.approx(1 / math.sqrt(d), rel=0.05)
  assert std["value"] == pytest.approx(1 / math.sqrt(d), rel=0.05)
  assert std["query"] == pytest.approx(1 / math.sqrt(d) / math.sqrt(e), rel=0.05)
  assert std["query"] / std["key"] == pytest.approx(1 / math.sqrt(e), rel=0.05)
  # out: fan_in = h*e = 64.
  assert std["out"] == pytest.approx(1 / math.sqrt(h * e), rel=0.05)
  for n in params:   # zero-mean: |mean| well within 5 standard errors (std/128)
    assert abs(mean[n]) < 5 * std[n] / math.sqrt(params[n]["kernel"].size)
  # Independent draws: the query is not just a rescaled key.
  assert not np.allclose(np.asarray(params["query"]["kernel"]) * math.sqrt(e),
                         np.asarray(params["key"]["kernel"]))


def test_attention_matches_numpy():
  b, q, k, d, h, e = 2, 3, 4, 8, 2, 4
  rng = np.random.RandomState(5)
  x_q = rng.randn(b, q, d).astype(np.float32)
  x_kv = rng.randn(b, k, d).astype(np.float32)
  mask = np.ones((b, 1, q, k), np.float32)
  mask[0, 0, :, 3] = 0     # batch 0: key 3 hidden from every query
  mask[1, 0, 2, :2] = 0    # batch 1: query 2 does not see keys 0,1
  bias = rng.randn(1, h, q, k).astype(np.float32)
  attn = layers.MultiHeadDotProductAttention(num_heads=h, head_dim=e)
  params = random_params(attn, x_q, x_kv, seed=3)
  variables = {"params": params}
  out = np.asarray(J(attn.apply, variables, x_q, x_kv, mask=mask, bias=bias))
  assert out.shape == (b, q, d)
  expected = np_attention(params, x_q, x_kv, h, e, mask, bias)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  # Without mask or bias.
  out_plain = np.asarray(J(attn.apply, variables, x_q, x_kv))
  np.testing.assert_allclose(out_plain, np_attention(params, x_q, x_kv, h, e),
                             rtol=1e-4, atol=1e-5)
  # A fully masked key gets exactly zero weight: changing its value changes nothing.
  x_kv2 = x_kv.copy()
  x_kv2[0, 3] += 10.0
  out2 = np.asarray(J(attn.apply, variables, x_q, x_kv2, mask=mask, bias=bias))
  np.testing.assert_allclose(out2[0], out[0], rtol=1e-5, atol=1e-6)


def test_attention_is_not_scaled_at_runtime():
  # One head, head_dim 4, identity-like kernels: the logits must be q.k, not q.k/2.
  d, e = 4, 4
  eye = np.eye(d, dtype=np.float32)
  params = {"query": {"kernel": eye}, "key": {"kernel": eye}, "value": {"kernel": eye},
            "out": {"kernel": eye}}
  x_q = np.array([[[1.0, 0.0, 0.0, 0.0]]], np.float32)                       # [1, 1, 4]
  x_kv = np.array([[[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]], np.float32)  # [1, 2, 4]
  attn = layers.MultiHeadDotProductAttention(num_heads=1, head_dim=e)
  out = np.asarray(J(attn.apply, {"params": params}, x_q, x_kv))
  # logits = [2, 0]; weights = [e^2, 1] / (e^2 + 1); output = weights[0] * [2, 0, 0, 0].
  w0 = np.exp(2.0) / (np.exp(2.0) + 1.0)
  np.testing.assert_allclose(out, np.array([[[2 * w0, 0, 0, 0]]]), rtol=1e-6, atol=1e-7)


def test_attention_cache_prefill_then_step_matches_causal_forward():
  b, length, d, h, e = 2, 6, 8, 2, 4
  rng = np.random.RandomState(6)
  x = rng.randn(b, length, d).astype(np.float32)
  attn = layers.MultiHeadDotProductAttention(num_heads=h, head_dim=e)
  relpos = layers.RelativePositionBiases(num_buckets=32, max_distance=128, num_heads=h,
                                         dtype=jnp.float32)
  rp_vars = {"params": {"rel_embedding": rng.randn(h, 32).astype(np.float32)}}
  full_bias = J(relpos.apply, rp_vars, length, length, False)
  causal = J(layers.make_causal_mask, np.zeros((b, length), np.int32))
  params = random_params(attn, x, x, seed=4)
  full = np.asarray(J(attn.apply, {"params": params}, x, x, mask=causal, bias=full_bias))
  np.testing.assert_allclose(full, np_attention(params, x, x, h, e, causal, full_bias),
                             rtol=1e-4, atol=1e-5)

  # Prefill the cache with every position.
  out_prefill, state = J(attn.apply, {"params": params}, x, x, mask=causal, bias=full_bias,
                                  mode=layers.MODE_PREFILL, mutable=["cache"])
  np.testing.assert_allclose(np.asarray(out_prefill), full, rtol=1e-5, atol=1e-6)
  assert state["cache"]["cached_key"].shape == (b, length, h, e)
  np.testing.assert_allclose(np.asarray(state["cache"]["cached_key"]),
                             (x.astype(np.float64) @ params["key"]["kernel"]).reshape(
                                 b, length, h, e), rtol=1e-5, atol=1e-5)

  # One step per batch row at different positions.
  pos = jnp.array([2, 5], jnp.int32)
  x_step = x[np.arange(b), np.asarray(pos)][:, None, :]                # [b, 1, d]
  step_bias = J(relpos.apply, rp_vars, 1, length, False, query_positions=pos)
  out_step, _ = J(attn.apply, {"params": params, "cache": state["cache"]},
                           x_step, x_step, mask=J(layers.make_step_mask, pos, length),
                           bias=step_bias, mode=layers.MODE_AUTOREGRESSIVE, decode_position=pos,
                           mutable=["cache"])
  out_step = np.asarray(out_step)
  assert out_step.shape == (b, 1, d)
  for row, p in enumerate(np.asarray(pos)):
    np.testing.assert_allclose(out_step[row, 0], full[row, p], rtol=1e-4, atol=1e-5)


def test_attention_cache_incremental_decoding_from_empty_cache():
  b, length, d, h, e = 2, 5, 8, 2, 4
  x = np.random.RandomState(7).randn(b, length, d).astype(np.float32)
  attn = layers.MultiHeadDotProductAttention(num_heads=h, head_dim=e)
  params = random_params(attn, x, x, seed=5)
  cache_shapes = abstract_variables(attn, x, x, mode=layers.MODE_PREFILL)["cache"]
  assert cache_shapes["cached_key"].shape == (b, length, h, e)
  assert cache_shapes["cached_value"].shape == (b, length, h, e)
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
  causal = J(layers.make_causal_mask, np.zeros((b, length), np.int32))
  full = np.asarray(J(attn.apply, {"params": params}, x, x, mask=causal))
  step = jax.jit(lambda cache, xs, pos: attn.apply(
      {"params": params, "cache": cache}, xs, xs, mask=layers.make_step_mask(pos, length),
      mode=layers.MODE_AUTOREGRESSIVE, decode_position=pos, mutable=["cache"]))
  for p in range(length):
    pos = jnp.full((b,), p, jnp.int32)
    out, state = step(cache, x[:, p:p + 1], pos)
    cache = state["cache"]
    np.testing.assert_allclose(np.asarray(out)[:, 0], full[:, p], rtol=1e-4, atol=1e-5)
    # The cache now holds the first p+1 keys; later slots are still zero.
    assert not np.asarray(cache["cached_key"])[:, p + 1:].any()
  # The mode is stated, never guessed: a step needs its position, one token per row and
  # a prefilled cache.
  with pytest.raises(ValueError, match="needs decode_position"):
    J(attn.apply, {"params": params, "cache": cache}, x[:, :1], x[:, :1],
      mode=layers.MODE_AUTOREGRESSIVE, mutable=["cache"])
  with pytest.raises(ValueError, match="one token per row"):
    J(attn.apply, {"params": params, "cache": cache}, x[:, :2], x[:, :2],
      mode=layers.MODE_AUTOREGRESSIVE, decode_position=pos, mutable=["cache"])
  with pytest.raises(ValueError, match="cache of a mode='prefill' call"):
    J(attn.apply, {"params": params}, x[:, :1], x[:, :1], mode=layers.MODE_AUTOREGRESSIVE,
      decode_position=pos, mutable=["cache"])
  with pytest.raises(ValueError, match="valid modes: train, prefill, autoregressive"):
    J(attn.apply, {"params": params}, x, x, mode="decode")


def test_attention_takes_key_values_projected_once_for_several_query_rows():
  # Two prompts' keys/values, projected once, serve four query rows (rows 0, 2 -> prompt 1;
  # rows 1, 3 -> prompt 0) exactly as projecting each row's own copy does.
  b, q, k, d, h, e = 4, 3, 5, 8, 2, 4
  rng = np.random.RandomState(12)
  x_q = rng.randn(b, q, d).astype(np.float32)
  prompts = rng.randn(2, k, d).astype(np.float32)
  rows = np.array([1, 0, 1, 0])
  mask = np.ones((b, 1, q, k), np.float32)
  mask[2, 0, :, 4] = 0
  attn = layers.MultiHeadDotProductAttention(num_heads=h, head_dim=e)
  params = random_params(attn, x_q, prompts[rows], seed=9)
  full = np.asarray(J(attn.apply, {"params": params}, x_q, prompts[rows], mask))
  np.testing.assert_allclose(full, np_attention(params, x_q, prompts[rows], h, e, mask),
                             rtol=1e-4, atol=1e-5)
  kv = J(attn.apply, {"params": params}, prompts, method=attn.project_key_value)
  assert isinstance(kv, layers.KeyValue) and kv.key.shape == kv.value.shape == (2, k, h, e)
  np.testing.assert_allclose(np.asarray(kv.value),
                             (prompts @ params["value"]["kernel"]).reshape(2, k, h, e),
                             rtol=1e-5, atol=1e-5)
  per_row = layers.KeyValue(kv.key[rows], kv.value[rows])
  out = np.asarray(J(attn.apply, {"params": params}, x_q, None, mask, key_value=per_row))
  np.testing.assert_allclose(out, full, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="not both"):
    J(attn.apply, {"params": params}, x_q, prompts[rows], key_value=per_row)
  with pytest.raises(ValueError, match="needs inputs_kv"):
    J(attn.apply, {"params": params}, x_q, None)
  with pytest.raises(ValueError, match="takes no cache"):
    J(attn.apply, {"params": params}, x_q, None, key_value=per_row,
      mode=layers.MODE_PREFILL, mutable=["cache"])


def test_decoding_states_its_mode_and_checks_what_a_step_needs():
  assert layers.MODES == ("train", "prefill", "autoregressive")
  assert layers.Decoding.TRAIN == layers.Decoding() and layers.Decoding.TRAIN.position is None
  assert layers.Decoding.PREFILL.mode == layers.MODE_PREFILL
  step = layers.Decoding.step(jnp.array([3, 5], jnp.int32), 8)
  assert step.mode == layers.MODE_AUTOREGRESSIVE and step.cache_length == 8
  assert step.position.tolist() == [3, 5]
  with pytest.raises(ValueError, match="needs position"):
    layers.Decoding(layers.MODE_AUTOREGRESSIVE)
  with pytest.raises(ValueError, match="cache_length must be a positive int"):
    layers.Decoding.step(jnp.zeros((2,), jnp.int32), 0)
  with pytest.raises(ValueError, match="takes no position or cache_length"):
    layers.Decoding(layers.MODE_PREFILL, cache_length=8)
  with pytest.raises(ValueError, match="unknown mode 'decode'; valid modes"):
    layers.Decoding("decode")


def test_attention_dropout_is_broadcast_over_queries():
  # One-hot values (value[j] = e_j) make the output row equal the attention weights;
  # zero queries give uniform weights 1/k before dropout.
  b, q, k, h = 2, 3, 8, 2
  query = np.zeros((b, q, h, k), np.float32)
  key = np.random.RandomState(10).randn(b, k, h, k).astype(np.float32)
  value = np.broadcast_to(np.eye(k, dtype=np.float32)[None, :, None, :], (b, k, h, k)).copy()
  out = np.asarray(J(layers.dot_product_attention, query, key, value,
                     dropout_rng=jax.random.PRNGKey(3), dropout_rate=0.5, deterministic=False))
  weights = np.transpose(out, (0, 2, 1, 3))                  # [b, h, q, k]
  kept = weights != 0
  assert kept.any() and not kept.all()
  # The same keys are dropped for every query of a (batch, head).
  np.testing.assert_array_equal(kept, np.broadcast_to(kept[:, :, :1], kept.shape))
  # Kept weights are rescaled by 1/keep_prob: (1/8) / 0.5 = 0.25.
  np.testing.assert_allclose(weights[kept], 0.25, rtol=1e-6)
  # Deterministic: no dropout, uniform 1/8.
  out_det = np.asarray(J(layers.dot_product_attention, query, key, value,
                         dropout_rng=jax.random.PRNGKey(3), dropout_rate=0.5))
  np.testing.assert_allclose(out_det, np.full((b, q, h, k), 1 / 8), rtol=1e-6)
  with pytest.raises(ValueError):
    layers.dot_product_attention(query[0], key[0], value[0])


# ---------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------
def test_mlp_block_matches_numpy_geglu():
  x = np.random.RandomState(8).randn(2, 3, 6).astype(np.float32)
  mlp = layers.MlpBlock(intermediate_dim=10)
  shapes = nn.meta.unbox(abstract_variables(mlp, x)["params"])
  assert set(shapes) == {"wi_0", "wi_1", "wo"}
  assert shapes["wi_0"]["kernel"].shape == (6, 10)
  assert shapes["wi_1"]["kernel"].shape == (6, 10)
  assert shapes["wo"]["kernel"].shape == (10, 6)
  params = random_params(mlp, x, seed=6, scale=1.0)
  p = f64(params)
  x64 = x.astype(np.float64)
  expected = (np_gelu_tanh(x64 @ p["wi_0"]["kernel"]) * (x64 @ p["wi_1"]["kernel"])
              ) @ p["wo"]["kernel"]
  np.testing.assert_allclose(np.asarray(J(mlp.apply, {"params": params}, x)), expected,
                             rtol=1e-4, atol=1e-4)
  # The gelu is the tanh approximation, not the exact erf form: at x = 2 the two differ
  # by ~3.6e-4 (tanh: 0.5*2*(1+tanh(0.79788*(2+0.35772))) = 1.954598; erf: 1.954500).
  one = {"wi_0": {"kernel": np.array([[2.0]], np.float32)},
         "wi_1": {"kernel": np.array([[1.0]], np.float32)},
         "wo": {"kernel": np.array([[1.0]], np.float32)}}
  y = float(J(layers.MlpBlock(intermediate_dim=1).apply, {"params": one},
                                                      np.ones((1, 1, 1), np.float32))[0, 0, 0])
  assert y == pytest.approx(np_gelu_tanh(2.0), abs=1e-6)
  assert y == pytest.approx(1.954598, abs=2e-6)


def test_mlp_block_single_activation_and_errors():
  x = np.random.RandomState(9).randn(1, 2, 4).astype(np.float32)
  mlp = layers.MlpBlock(intermediate_dim=5, activations=("relu",))
  params = random_params(mlp, x, seed=7)
  assert set(params) == {"wi", "wo"}
  p = f64(params)
  expected = np.maximum(x.astype(np.float64) @ p["wi"]["kernel"], 0) @ p["wo"]["kernel"]
  np.testing.assert_allclose(np.asarray(J(mlp.apply, {"params": params}, x)), expected,
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError):
    J(layers.MlpBlock(intermediate_dim=5, activations=("swish2",)).apply, {"params": params}, x)


def test_mlp_dropout_is_broadcast_over_length():
  # Identity kernels and a linear activation: the output is dropout(ones).
  m = 16
  eye = np.eye(m, dtype=np.float32)
  mlp = layers.MlpBlock(intermediate_dim=m, activations=("linear",),
                        intermediate_dropout_rate=0.5)
  x = np.ones((2, 5, m), np.float32)
  out = np.asarray(J(mlp.apply, {"params": {"wi": {"kernel": eye}, "wo": {"kernel": eye}}},
                     x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(4)}))
  assert set(np.unique(out)) <= {0.0, 2.0}              # kept units scaled by 1/0.5
  assert (out == 0).any() and (out == 2).any()
  np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))


# ---------------------------------------------------------------------------
# Logical axis names
# ---------------------------------------------------------------------------
def test_params_carry_logical_axes():
  P = jax.sharding.PartitionSpec
  x = np.zeros((1, 3, 8), np.float32)
  tokens = np.zeros((1, 3), np.int32)
  cases = {
      "embed": (layers.Embed(num_embeddings=11, features=8), (tokens,)),
      "norm": (layers.RMSNorm(), (x,)),
      "dense": (layers.DenseGeneral(4, kernel_axes=("embed", "mlp")), (x,)),
      "attn": (layers.MultiHeadDotProductAttention(num_heads=2, head_dim=4), (x, x)),
      "mlp": (layers.MlpBlock(intermediate_dim=16), (x,)),
      "relpos": (layers.RelativePositionBiases(32, 128, 2, jnp.float32), (3, 3, False)),
  }
  boxed = {name: abstract_variables(module, *args)["params"]
           for name, (module, args) in cases.items()}
  specs = {name: nn.get_partition_spec(tree) for name, tree in boxed.items()}
  assert specs["embed"] == {"embedding": P("vocab", "embed")}
  assert specs["norm"] == {"scale": P("embed")}
  assert specs["dense"] == {"kernel": P("embed", "mlp")}
  assert specs["attn"] == {"query": {"kernel": P("embed", "joined_kv")},
                           "key": {"kernel": P("embed", "joined_kv")},
                           "value": {"kernel": P("embed", "joined_kv")},
                           "out": {"kernel": P("joined_kv", "embed")}}
  assert specs["mlp"] == {"wi_0": {"kernel": P("embed", "mlp")},
                          "wi_1": {"kernel": P("embed", "mlp")},
                          "wo": {"kernel": P("mlp", "embed")}}
  assert specs["relpos"] == {"rel_embedding": P("heads", "relpos_buckets")}
  # Every leaf is a boxed nn.Partitioned with one known name per dimension.
  for name, tree in boxed.items():
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda v: isinstance(v, nn.Partitioned))
    assert leaves, name
    for leaf in leaves:
      assert isinstance(leaf, nn.Partitioned), name
      assert len(leaf.names) == len(leaf.value.shape), name
      assert all(n in layers.PARAM_AXES for n in leaf.names), name
