"""The three architectures by name, and the facts about them that data code may know.

No JAX here: `objectives/`, `data/` and `prompts/` import this module, never `models`,
so the input pipeline runs (and is tested) without building a network.

  name                short  stacks
  causal_decoder      CD     one decoder, causal attention everywhere
  non_causal_decoder  ND     one decoder, bidirectional over the prefix (inputs)
  encoder_decoder     ED     an encoder and a decoder
"""
from __future__ import annotations

from typing import Any

CAUSAL_DECODER = "causal_decoder"
NON_CAUSAL_DECODER = "non_causal_decoder"
ENCODER_DECODER = "encoder_decoder"
ARCHITECTURES = (CAUSAL_DECODER, NON_CAUSAL_DECODER, ENCODER_DECODER)
SHORT_NAMES = {CAUSAL_DECODER: "CD", NON_CAUSAL_DECODER: "ND", ENCODER_DECODER: "ED"}
DECODER_ONLY = (CAUSAL_DECODER, NON_CAUSAL_DECODER)

# The model features (what a batch holds), by stack; every one is [batch, length].
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")
ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
# Features that hold token ids (of the vocabulary), task features included.
TOKEN_FEATURES = ("targets", "inputs", "decoder_target_tokens", "decoder_input_tokens",
                  "encoder_input_tokens")


def model_features(arch: str) -> tuple[tuple[str, ...], ...]:
  """The feature groups a batch of `arch` may hold; features of a group share one length.
  Only the non-causal decoder reads `decoder_causal_attention` (the causal decoder
  accepts and ignores it)."""
  check(arch)
  if arch == ENCODER_DECODER:
    return (ENCODER_FEATURES,
            tuple(f for f in DECODER_FEATURES if f != "decoder_causal_attention"))
  return (DECODER_FEATURES,)


def check(arch: str, what: str = "arch") -> str:
  """`arch` if it names an architecture, else a ValueError listing the names."""
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown {what} {arch!r}; valid architectures: "
                     f"{', '.join(ARCHITECTURES)}.")
  return arch


# The size presets (`network.make_config`). Layer counts are per stack: decoder-only models have as many layers as each stack
# of the encoder-decoder, so ED costs about as much per token (paper §3.1).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128, layers=2),
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, layers=8),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, layers=24),
    "xl": dict(emb_dim=2048, num_heads=32, head_dim=64, mlp_dim=5120, layers=24),
    "paper": dict(emb_dim=4096, num_heads=64, head_dim=64, mlp_dim=10240, layers=24),
}
