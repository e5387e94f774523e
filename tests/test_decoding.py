"""`decoding.py`: choosing tokens (greedy, temperature, top-k, top-p) and the decoding loop
(each token fed back at its position, the cache carried from step to step, padding after
the end-of-sequence token), on toy step functions and through a tiny model's
`predict_batch` (seeded sampling)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_objective import decoding, models

from helpers import tiny_model as tiny

CD, ND = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER


@pytest.fixture(scope="module")
def params(tiny_params):
  """Tiny float32 parameters: decoder-only (shared by CD and ND) and ED (conftest)."""
  return tiny_params


# ---------------------------------------------------------------------------
# Choosing a token
# ---------------------------------------------------------------------------
def test_without_a_key_or_at_temperature_zero_the_choice_is_greedy():
  logits = jnp.array([[0.1, 2.0, -1.0, 1.9], [5.0, 0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(decoding.sample_logits(logits, None), [1, 0])
  greedy = decoding.sample_logits(logits, jax.random.PRNGKey(0), temperature=0.0, topk=3)
  assert greedy.dtype == jnp.int32
  np.testing.assert_array_equal(greedy, [1, 0])


@pytest.mark.parametrize("temperature,topk,probabilities", [
    (1.0, 0, [0.1, 0.2, 0.3, 0.4]),
    (1.0, 2, [0.0, 0.0, 0.3 / 0.7, 0.4 / 0.7]),          # the two best, renormalised
    (0.5, 0, np.array([0.01, 0.04, 0.09, 0.16]) / 0.30),  # softmax(logits / 0.5): p^2
], ids=["plain", "top2", "temperature 0.5"])
def test_samples_follow_the_tempered_top_k_distribution(temperature, topk, probabilities):
  n = 20_000
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]] * n))
  tokens = np.asarray(decoding.sample_logits(logits, jax.random.PRNGKey(0), temperature, topk))
  frequencies = np.bincount(tokens, minlength=4) / n
  np.testing.assert_allclose(frequencies, probabilities, atol=0.015)
  if topk:
    assert set(np.unique(tokens)) == {2, 3}


@pytest.mark.parametrize("topp,topk,probabilities", [
    (0.5, 0, [0.0, 0.0, 0.3 / 0.7, 0.4 / 0.7]),      # 0.4 < 0.5: the second best joins
    (0.4, 0, [0.0, 0.0, 0.0, 1.0]),                  # the best alone reaches 0.4
    (0.75, 0, [0.0, 0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]),
    (0.75, 2, [0.0, 0.0, 0.3 / 0.7, 0.4 / 0.7]),     # top-k first, then top-p
    (1.0, 0, [0.1, 0.2, 0.3, 0.4]),
], ids=["p0.5", "p0.4", "p0.75", "p0.75 top2", "p1"])
def test_samples_follow_the_nucleus_distribution(topp, topk, probabilities):
  """Top-p keeps the fewest best tokens whose probabilities reach `topp`; the 20,000 draws'
  frequencies lie within 0.015 (more than 4 standard errors) of the renormalised ones."""
  n = 20_000
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]] * n))
  tokens = np.asarray(decoding.sample_logits(logits, jax.random.PRNGKey(1), topk=topk,
                                             topp=topp))
  frequencies = np.bincount(tokens, minlength=4) / n
  np.testing.assert_allclose(frequencies, probabilities, atol=0.015)
  assert set(np.unique(tokens)) == {i for i, p in enumerate(probabilities) if p > 0}


def test_sequence_log_probs_sum_the_chosen_tokens_through_the_first_eos():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]] * 2))
  tokens = jnp.array([[2, 1, 0],                   # EOS (1), then padding: not counted
                      [0, 2, 2]])                  # a generated 0 before any EOS counts
  np.testing.assert_allclose(decoding.sequence_log_probs(logits, tokens),
                             [np.log(0.25) + np.log(0.6),
                              np.log(0.5) + np.log(0.3) + np.log(0.6)], rtol=1e-6)
  np.testing.assert_allclose(decoding.sequence_log_probs(logits, tokens, eos_id=None)[0],
                             np.log(0.25) + np.log(0.6) + np.log(0.2), rtol=1e-6)


def test_a_negative_temperature_or_topk_or_a_topp_outside_0_1_is_refused():
  logits, key = jnp.zeros((1, 4)), jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="temperature must be >= 0, found -1.0"):
    decoding.sample_logits(logits, key, temperature=-1.0)
  with pytest.raises(ValueError, match="topk must be >= 0, found -2"):
    decoding.sample_logits(logits, key, topk=-2)
  for topp in (0.0, 1.5):
    with pytest.raises(ValueError, match=f"topp must be in \\(0, 1\\], found {topp}"):
      decoding.sample_logits(logits, key, topp=topp)


# ---------------------------------------------------------------------------
# The decoding loop, on toy step functions
# ---------------------------------------------------------------------------
V = 5


def one_hot(tokens):
  return jax.nn.one_hot(tokens, V) * 10.0


def position_step(cache, tokens, positions):
  """The next token is (token + its position) mod 5; the cache is not used."""
  return one_hot((tokens + positions) % V), cache


def test_each_token_is_fed_back_at_its_position():
  # Row 0 starts at position 0 with token 4: 4, (4+0)%5=4, (4+1)%5=0, (0+2)%5=2.
  # Row 1 starts at position 3 with token 1: 1, (1+3)%5=4, (4+4)%5=3, (3+5)%5=3.
  result = decoding.decode(position_step, None, one_hot(jnp.array([4, 1])),
                           jnp.array([0, 3]), 4, eos_id=None)
  np.testing.assert_array_equal(result.tokens, [[4, 4, 0, 2], [1, 4, 3, 3]])
  assert result.tokens.dtype == jnp.int32 and result.logits.shape == (2, 4, V)
  # The logits each token was chosen from: the first are the caller's.
  np.testing.assert_array_equal(result.logits[:, 0], one_hot(jnp.array([4, 1])))
  np.testing.assert_array_equal(result.logits.argmax(-1), result.tokens)


def test_rows_pad_with_zeros_after_the_end_of_sequence_token():
  result = decoding.decode(position_step, None, one_hot(jnp.array([4, 1])),
                           jnp.array([0, 3]), 4, eos_id=4)
  np.testing.assert_array_equal(result.tokens, [[4, 0, 0, 0], [1, 4, 0, 0]])


def test_the_cache_is_carried_from_step_to_step():
  def counting_step(cache, tokens, positions):
    """The next token is the number of steps taken so far, plus 1 (mod 5)."""
    return one_hot(jnp.broadcast_to((cache + 1) % V, tokens.shape)), cache + 1

  result = decoding.decode(counting_step, jnp.int32(0), one_hot(jnp.array([0, 3])),
                           jnp.array([0, 0]), 6, eos_id=None)
  np.testing.assert_array_equal(result.tokens, [[0, 1, 2, 3, 4, 0], [3, 1, 2, 3, 4, 0]])


def test_seeded_sampling_in_the_loop_repeats_and_another_key_differs():
  def uniform_step(cache, tokens, positions):
    return jnp.zeros((tokens.shape[0], 50)), cache

  sample = jax.jit(lambda key: decoding.decode(uniform_step, None, jnp.zeros((8, 50)),
                                                jnp.zeros((8,), jnp.int32), 6, rng=key,
                                                eos_id=None).tokens)
  a, b, c = (np.asarray(sample(jax.random.PRNGKey(seed))) for seed in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len(set(a.ravel().tolist())) > 10       # the steps and rows draw different tokens


def test_fewer_than_one_step_is_refused():
  with pytest.raises(ValueError, match="num_steps must be >= 1, found 0"):
    decoding.decode(position_step, None, one_hot(jnp.array([1])), jnp.array([0]), 0)


# ---------------------------------------------------------------------------
# Through a model
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sampling_is_seeded_and_eos_pads_the_rest(params):
  model = tiny(CD)
  batch = {"decoder_input_tokens": np.array([[0, 5, 6]] * 4, np.int32),
           "decoder_causal_attention": np.array([[1, 1, 1]] * 4, np.int32)}
  a = np.asarray(model.predict_batch(params["dec"], batch, jax.random.PRNGKey(1),
                                     max_decode_steps=8, topk=0, eos_id=None))
  b = np.asarray(model.predict_batch(params["dec"], batch, jax.random.PRNGKey(1),
                                     max_decode_steps=8, topk=0, eos_id=None))
  c = np.asarray(model.predict_batch(params["dec"], batch, jax.random.PRNGKey(2),
                                     max_decode_steps=8, topk=0, eos_id=None))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # With the first sampled token declared the EOS id, the rest of that row is padding.
  eos = int(a[0, 0])
  d = np.asarray(model.predict_batch(params["dec"], batch, jax.random.PRNGKey(1),
                                     max_decode_steps=8, topk=0, eos_id=eos))
  assert d[0, 0] == eos and np.all(d[0, 1:] == 0)


@pytest.mark.slow
def test_topk_one_sampling_is_greedy(params):
  model = tiny(ND)
  batch = {"decoder_input_tokens": np.array([[0, 5, 6, 7]] * 2, np.int32),
           "decoder_causal_attention": np.array([[1, 1, 1, 1]] * 2, np.int32)}
  greedy = model.predict_batch(params["dec"], batch, max_decode_steps=4, eos_id=None)
  top1 = model.predict_batch(params["dec"], batch, jax.random.PRNGKey(3), max_decode_steps=4,
                             topk=1, eos_id=None)
  np.testing.assert_array_equal(np.asarray(greedy), np.asarray(top1))
