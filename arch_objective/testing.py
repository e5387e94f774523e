"""Synthetic batches for tests and benchmarks: random token ids in the model features of
an architecture (numpy only, so benchmarks that avoid TensorFlow can import it).

  >>> b = synthetic_batch("non_causal_decoder", rows=2, length=6, vocab_size=50)
  >>> sorted(b)
  ['decoder_causal_attention', 'decoder_input_tokens', 'decoder_loss_weights', 'decoder_target_tokens']
  >>> b["decoder_causal_attention"][0].tolist()
  [1, 1, 1, 1, 0, 0]
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from arch_objective import architectures

PREFIXES = ("half", "random")


def synthetic_batch(arch: str, rows: int, length: int, *, vocab_size: int,
                    inputs_length: Optional[int] = None, targets_length: Optional[int] = None,
                    seed: int = 0, weighted: float = 1.0, prefix: str = "half"
                    ) -> dict[str, np.ndarray]:
  """A batch of random ids in `[2, vocab_size)`, every array `[rows, length]` int32 (the
  loss weights float32), with the decoder inputs the targets shifted right by one.

  Decoder-only: `length` positions. Encoder-decoder: `inputs_length` encoder and
  `targets_length` decoder positions (default: `length - length // 2` and
  `length // 2`). A model with a bidirectional prefix also gets
  `decoder_causal_attention`: over the first `length // 2 + 1` positions (`prefix="half"`)
  or a random split per row (`"random"`). `weighted < 1` keeps each target's loss weight
  with that probability (the rest 0).
  """
  spec = architectures.get(arch)
  if prefix not in PREFIXES:
    raise ValueError(f"synthetic_batch: unknown prefix {prefix!r}; valid: {', '.join(PREFIXES)}.")
  rng = np.random.default_rng(seed)
  ids = lambda n: rng.integers(2, vocab_size, (rows, n)).astype(np.int32)
  shift = lambda t: np.pad(t[:, :-1], ((0, 0), (1, 0)))
  weights = lambda t: (np.ones(t.shape, np.float32) if weighted >= 1 else
                       (rng.random(t.shape) < weighted).astype(np.float32))
  if spec.has_encoder:
    targets = ids(length // 2 if targets_length is None else targets_length)
    encoder = ids(length - length // 2 if inputs_length is None else inputs_length)
    return {"encoder_input_tokens": encoder, "decoder_target_tokens": targets,
            "decoder_input_tokens": shift(targets), "decoder_loss_weights": weights(targets)}
  targets = ids(length)
  batch = {"decoder_target_tokens": targets, "decoder_input_tokens": shift(targets),
           "decoder_loss_weights": weights(targets)}
  if spec.bidirectional_prefix:
    split = (np.full((rows, 1), length // 2) if prefix == "half" else
             rng.integers(1, max(length - 1, 2), (rows, 1)))
    batch["decoder_causal_attention"] = (np.arange(length)[None] <= split).astype(np.int32)
  return batch
