"""arch-objective: architectures x pretraining objectives for zero-shot generalisation.

`build_model(arch, size, **overrides)` builds the causal decoder, the non-causal
(prefix) decoder or the encoder-decoder; see `arch_objective.models`. The package
imports JAX only when a model is asked for: the data code (`data`, `objectives`,
`prompts`) runs without it.
"""
from arch_objective.architectures import ARCHITECTURES

__all__ = ["ARCHITECTURES", "SIZES", "build_model"]
__version__ = "0.1.0"


def __getattr__(name):
  if name == "build_model":
    from arch_objective.models import build_model
    return build_model
  if name == "SIZES":
    from arch_objective.architectures import SIZES
    return SIZES
  raise AttributeError(f"module 'arch_objective' has no attribute {name!r}")
