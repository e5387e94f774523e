"""Pretraining objectives over token streams, in numpy (no TensorFlow needed).

  chunking           documents -> fixed-length chunks (concatenate, split)
  span_corruption    T5's MLM: random spans -> sentinels (inputs, targets)
  prefix_lm          prefix LM rows for the decoder and for the encoder-decoder
  feature_converters task features -> packed model features for each architecture
  pipeline           one table: (objective, architecture) -> rows the model reads

Randomness is stateless and keyed per example: example `i` of a stream with seed `s`
draws from `example_rng(s, salt, i)`, so the same seed gives the same examples and a
resumed stream sees the same data.
"""
