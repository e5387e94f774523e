"""The data contract: every model feature a batch may hold, declared once.

A batch is a dict of arrays `[batch, length]` under seqio/t5x's feature names. Batch
validation (`architectures.Architecture.check_batch`), the feature converters, the
scoring and generation batches (`layouts`), `testing` and the seqio bridge read the
declarations here; code names a feature by its constant (`DECODER_CAUSAL_ATTENTION`).

  feature                   stack    role
  decoder_input_tokens      decoder  tokens     the targets shifted right, 0 first
  decoder_target_tokens     decoder  tokens     what the decoder predicts
  decoder_loss_weights      decoder  weights    1 where a target counts (float allowed)
  decoder_segment_ids       decoder  segments   packed example of each position (0 pad)
  decoder_positions         decoder  positions  position within its example (ignored)
  decoder_causal_attention  decoder  prefix     1 on the inputs plus one position (ND)
  encoder_input_tokens      encoder  tokens     the encoder's inputs (ED)
  encoder_segment_ids       encoder  segments
  encoder_positions         encoder  positions
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

DECODER_INPUT_TOKENS = "decoder_input_tokens"
DECODER_TARGET_TOKENS = "decoder_target_tokens"
DECODER_LOSS_WEIGHTS = "decoder_loss_weights"
DECODER_SEGMENT_IDS = "decoder_segment_ids"
DECODER_POSITIONS = "decoder_positions"
DECODER_CAUSAL_ATTENTION = "decoder_causal_attention"
ENCODER_INPUT_TOKENS = "encoder_input_tokens"
ENCODER_SEGMENT_IDS = "encoder_segment_ids"
ENCODER_POSITIONS = "encoder_positions"


@dataclasses.dataclass(frozen=True)
class Feature:
  """One model feature (seqio/t5x's names): an array `[batch, length]`.

  stack: the stack that reads it, 'decoder' or 'encoder'.
  role: 'tokens' (ids of the vocabulary), 'weights' (the loss weight of each target
    position), 'segments' (the packed example a position belongs to, 0 for padding),
    'positions' (the position within its example; accepted and ignored, the networks use
    relative positions) or 'prefix' (1 where the non-causal decoder attends
    bidirectionally: the inputs plus one position).
  dtype: what converters write. Every feature may also be any integer or bool dtype;
    weights may be float (`accepts`).
  """
  name: str
  stack: str
  role: str
  dtype: str = "int32"

  def accepts(self, dtype: Any) -> bool:
    """Whether a batch may hold this feature in `dtype`."""
    dtype = np.dtype(dtype)
    return (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)
            or (self.role == "weights" and np.issubdtype(dtype, np.floating)))


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature(DECODER_INPUT_TOKENS, "decoder", "tokens"),
    Feature(DECODER_TARGET_TOKENS, "decoder", "tokens"),
    Feature(DECODER_LOSS_WEIGHTS, "decoder", "weights"),
    Feature(DECODER_SEGMENT_IDS, "decoder", "segments"),
    Feature(DECODER_POSITIONS, "decoder", "positions"),
    Feature(DECODER_CAUSAL_ATTENTION, "decoder", "prefix"),
    Feature(ENCODER_INPUT_TOKENS, "encoder", "tokens"),
    Feature(ENCODER_SEGMENT_IDS, "encoder", "segments"),
    Feature(ENCODER_POSITIONS, "encoder", "positions"),
)}
DECODER_FEATURES = tuple(name for name, f in FEATURES.items() if f.stack == "decoder")
ENCODER_FEATURES = tuple(name for name, f in FEATURES.items() if f.stack == "encoder")
# Features that hold token ids (of the vocabulary), the task features included.
TOKEN_FEATURES = ("targets", "inputs") + tuple(
    name for name, f in FEATURES.items() if f.role == "tokens")
