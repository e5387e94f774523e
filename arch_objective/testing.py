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

from arch_objective import architectures, layouts
from arch_objective.errors import UserError

PREFIXES = layouts.PREFIXES


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
  layout = architectures.get(arch).layout
  if prefix not in PREFIXES:
    raise UserError(f"synthetic_batch: unknown prefix {prefix!r}; valid: {', '.join(PREFIXES)}.")
  rng = np.random.default_rng(seed)
  ids = lambda n: rng.integers(2, vocab_size, (rows, n)).astype(np.int32)
  weights = lambda t: (np.ones(t.shape, np.float32) if weighted >= 1 else
                       (rng.random(t.shape) < weighted).astype(np.float32))
  return layout.synthetic_batch(rng, ids, weights, rows=rows, length=length,
                                inputs_length=inputs_length, targets_length=targets_length,
                                prefix=prefix)
