"""arch-objective: architectures x pretraining objectives for zero-shot generalisation.

`build_model(arch, size, **overrides)` builds the causal decoder, the non-causal
(prefix) decoder or the encoder-decoder; see `arch_objective.models`.
"""
from arch_objective.models import ARCHITECTURES, build_model
from arch_objective.network import SIZES

__all__ = ["ARCHITECTURES", "SIZES", "build_model"]
__version__ = "0.1.0"
