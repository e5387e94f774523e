"""A model and its parameters from one of our checkpoints, for evaluation."""
from __future__ import annotations

import dataclasses
from typing import Optional

from arch_objective import models, network
from arch_objective.training import checkpoints
from arch_objective.training import evaluate as evaluate_lib

# TransformerConfig fields that choose how a model executes, not what it computes.
EXECUTION_OPTIONS = ("attention_impl", "remat_policy", "scan_layers")


def model_from_meta(meta: dict, checkpoint: str, arch: Optional[str] = None,
                    dtype: str = "float32") -> models.BaseModel:
  """The model a checkpoint's meta describes (no parameters are read).

  The architecture and config come from the meta; `arch` may switch a causal decoder
  checkpoint to the non-causal decoder or back (same parameters), nothing else.
  Activations run in `dtype`; dropout is off; the execution options the run trained
  with (`EXECUTION_OPTIONS`) are reset to the reference path.
  """
  # How the run trained (fused kernel, rematerialisation, layer scan) does not change the
  # function; scoring runs the reference path, which every backend and dtype supports.
  reference = {f.name: f.default for f in dataclasses.fields(network.TransformerConfig)
               if f.name in EXECUTION_OPTIONS}
  return models.from_meta(meta, checkpoint, arch, dtype=dtype, dropout_rate=0.0, **reference)



def load_model(checkpoint: str, arch: Optional[str] = None, dtype: str = "float32"):
  """(model, params, meta, step) of a model directory or `.../checkpoints/<step>`,
  local or remote (`gs://...`); see `model_from_meta` for `arch` and `dtype` (float32
  for T0-Eval, as the paper)."""
  meta, _ = checkpoints.load_meta(checkpoint)
  model = model_from_meta(meta, checkpoint, arch, dtype)   # a bad `arch` fails before reading
  params, meta, step = checkpoints.load_params(checkpoint)
  return model, params, meta, step


# The vocabulary an evaluation tokenises with, against the one the checkpoint trained with
# (the training layer's `evaluate` checks it too, so the check lives there).
check_vocabulary = evaluate_lib.check_vocabulary
vocabulary_record = evaluate_lib.vocabulary_record
