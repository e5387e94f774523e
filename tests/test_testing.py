"""`arch_objective.testing.synthetic_batch`: the features, shapes and masks of each
architecture's synthetic batch."""
import numpy as np
import pytest

from arch_objective import testing


def test_decoder_only_batches_shift_their_targets_right():
  b = testing.synthetic_batch("causal_decoder", rows=3, length=5, vocab_size=40, seed=1)
  assert sorted(b) == ["decoder_input_tokens", "decoder_loss_weights",
                       "decoder_target_tokens"]
  assert b["decoder_target_tokens"].shape == (3, 5) and b["decoder_target_tokens"].dtype == np.int32
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 0], [0, 0, 0])
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], b["decoder_target_tokens"][:, :-1])
  assert b["decoder_target_tokens"].min() >= 2 and b["decoder_target_tokens"].max() < 40
  np.testing.assert_array_equal(b["decoder_loss_weights"], np.ones((3, 5), np.float32))


def test_the_prefix_of_the_non_causal_decoder():
  half = testing.synthetic_batch("non_causal_decoder", rows=2, length=6, vocab_size=40)
  np.testing.assert_array_equal(half["decoder_causal_attention"],
                                [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
  rand = testing.synthetic_batch("non_causal_decoder", rows=64, length=12, vocab_size=40,
                                 prefix="random", seed=3)["decoder_causal_attention"]
  lengths = rand.sum(axis=1)
  assert lengths.min() >= 2 and lengths.max() <= 11 and len(set(lengths)) > 3
  # Each row's prefix is contiguous from position 0.
  for row, n in zip(rand, lengths):
    np.testing.assert_array_equal(row, (np.arange(12) < n).astype(np.int32))


def test_encoder_decoder_lengths_default_to_halves():
  b = testing.synthetic_batch("encoder_decoder", rows=2, length=9, vocab_size=40)
  assert b["encoder_input_tokens"].shape == (2, 5) and b["decoder_target_tokens"].shape == (2, 4)
  c = testing.synthetic_batch("encoder_decoder", rows=2, length=0, vocab_size=40,
                              inputs_length=7, targets_length=3)
  assert c["encoder_input_tokens"].shape == (2, 7) and c["decoder_loss_weights"].shape == (2, 3)
  assert "decoder_causal_attention" not in c


def test_weighted_keeps_about_that_share_and_seeds_repeat():
  b = testing.synthetic_batch("causal_decoder", rows=100, length=100, vocab_size=40,
                              weighted=0.8, seed=5)
  share = float(b["decoder_loss_weights"].mean())
  assert abs(share - 0.8) < 0.02        # 10,000 draws: 5 standard deviations is 0.02
  again = testing.synthetic_batch("causal_decoder", rows=100, length=100, vocab_size=40,
                                  weighted=0.8, seed=5)
  for k in b:
    np.testing.assert_array_equal(b[k], again[k])


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="unknown arch 'decoder'"):
    testing.synthetic_batch("decoder", rows=1, length=4, vocab_size=10)
  with pytest.raises(ValueError, match="unknown prefix 'all'.*half, random"):
    testing.synthetic_batch("non_causal_decoder", rows=1, length=4, vocab_size=10, prefix="all")
