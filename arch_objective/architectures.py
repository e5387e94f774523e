"""The three architectures by name, and the facts about them that data code may know.

No JAX here: `objectives/`, `data/` and `prompts/` import this module, never `models`,
so the input pipeline runs (and is tested) without building a network.

  name                short  stacks
  causal_decoder      CD     one decoder, causal attention everywhere
  non_causal_decoder  ND     one decoder, bidirectional over the prefix (inputs)
  encoder_decoder     ED     an encoder and a decoder
"""
from __future__ import annotations

CAUSAL_DECODER = "causal_decoder"
NON_CAUSAL_DECODER = "non_causal_decoder"
ENCODER_DECODER = "encoder_decoder"
ARCHITECTURES = (CAUSAL_DECODER, NON_CAUSAL_DECODER, ENCODER_DECODER)
SHORT_NAMES = {CAUSAL_DECODER: "CD", NON_CAUSAL_DECODER: "ND", ENCODER_DECODER: "ED"}
DECODER_ONLY = (CAUSAL_DECODER, NON_CAUSAL_DECODER)


def check(arch: str, what: str = "arch") -> str:
  """`arch` if it names an architecture, else a ValueError listing the names."""
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown {what} {arch!r}; valid architectures: "
                     f"{', '.join(ARCHITECTURES)}.")
  return arch
