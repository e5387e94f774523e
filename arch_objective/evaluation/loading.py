"""A model and its parameters from one of our checkpoints, for evaluation."""
from __future__ import annotations

from typing import Optional

from arch_objective import architectures, models
from arch_objective.training import checkpoints


def model_from_meta(meta: dict, checkpoint: str, arch: Optional[str] = None,
                    dtype: str = "float32") -> models.BaseModel:
  """The model a checkpoint's meta describes (no parameters are read).

  The architecture and config come from the meta; `arch` may switch a causal decoder
  checkpoint to the non-causal decoder or back (same parameters), nothing else.
  Activations run in `dtype`; dropout is off; the execution options the run trained
  with (`EXECUTION_OPTIONS`) are reset to the reference path.
  """
  if "config" not in meta or "arch" not in meta:
    raise ValueError(f"checkpoint {checkpoint!r} has no model metadata (arch, config); was it "
                     f"written by `arch-objective train` or `convert`?")
  trained = meta["arch"]
  arch = arch or trained
  if arch != trained and not architectures.share_parameters(arch, trained):
    raise ValueError(f"checkpoint {checkpoint!r} holds a {trained} model; it cannot be read as "
                     f"{arch} (only the causal and non-causal decoders share parameters).")
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
  config["dtype"] = dtype
  config["dropout_rate"] = 0.0
  # How the run trained (fused kernel, rematerialisation, layer scan) does not change the
  # function; scoring runs the reference path, which every backend and dtype supports.
  for name in EXECUTION_OPTIONS:
    config.pop(name, None)
  return models.build_model(arch, "tiny", **config)


# TransformerConfig fields that choose how a model executes, not what it computes.
EXECUTION_OPTIONS = ("attention_impl", "remat_policy", "scan_layers")


def load_model(checkpoint: str, arch: Optional[str] = None, dtype: str = "float32"):
  """(model, params, meta, step) of a model directory or `.../checkpoints/<step>`,
  local or remote (`gs://...`); see `model_from_meta` for `arch` and `dtype` (float32
  for T0-Eval, as the paper)."""
  meta, _ = checkpoints.load_meta(checkpoint)
  model = model_from_meta(meta, checkpoint, arch, dtype)   # a bad `arch` fails before reading
  params, meta, step = checkpoints.load_params(checkpoint)
  return model, params, meta, step
