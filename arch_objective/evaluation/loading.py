"""A model and its parameters from one of our checkpoints, for evaluation.

Evaluation opens a model directory through `training.checkpoints.open_model_dir` on the
reference path: whatever the run trained with (a fused attention kernel,
rematerialisation, scanned layers), scoring runs the reference einsum attention, which
every backend and dtype supports, with dropout off. The execution options do not change
the function, so the numbers are the run's.
"""
from __future__ import annotations

from typing import Optional

from arch_objective.training import checkpoints
from arch_objective.training import evaluate as evaluate_lib


def load_model(checkpoint: str, arch: Optional[str] = None, dtype: str = "float32"):
  """(model, params, meta, step) of a model directory or `.../checkpoints/<step>`,
  local or remote (`gs://...`), on the reference path (`open_model_dir(...,
  reference=True)`). `arch` may read a causal decoder checkpoint as the non-causal
  decoder or back; activations run in `dtype` (float32 for T0-Eval, as the paper);
  the parameters stay as restored (float32)."""
  return checkpoints.open_model_dir(checkpoint, arch=arch, dtype=dtype, reference=True)


# The vocabulary an evaluation tokenises with, against the one the checkpoint trained with
# (the training layer's `evaluate` checks it too, so the check lives there).
check_vocabulary = evaluate_lib.check_vocabulary
vocabulary_record = evaluate_lib.vocabulary_record
