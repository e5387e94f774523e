"""A model and its parameters from one of our checkpoints, for evaluation."""
from __future__ import annotations

from typing import Optional

from arch_objective import models
from arch_objective.training import checkpoints

_DECODER_ONLY = (models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER)


def load_model(checkpoint: str, arch: Optional[str] = None, dtype: str = "float32"):
  """(model, params, meta, step) of a model directory or `.../checkpoints/<step>`.

  The architecture and config come from the checkpoint; `arch` may switch a causal
  decoder checkpoint to the non-causal decoder or back (same parameters), nothing else.
  Activations run in `dtype` (float32 for T0-Eval, as the paper).
  """
  params, meta, step = checkpoints.load_params(checkpoint)
  if "config" not in meta or "arch" not in meta:
    raise ValueError(f"checkpoint {checkpoint!r} has no model metadata (arch, config); was it "
                     f"written by `arch-objective train` or `convert`?")
  trained = meta["arch"]
  arch = arch or trained
  if arch != trained and not (arch in _DECODER_ONLY and trained in _DECODER_ONLY):
    raise ValueError(f"checkpoint {checkpoint!r} holds a {trained} model; it cannot be read as "
                     f"{arch} (only the causal and non-causal decoders share parameters).")
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
  config["dtype"] = dtype
  config["dropout_rate"] = 0.0
  model = models.build_model(arch, "tiny", **config)
  return model, params, meta, step
