"""This package's own model directories (orbax, `training/checkpoints.py`) as a sink.

A model directory holds `MODEL_DIR/checkpoints/<step>/{state, data, meta}`: the train
state `{step, params, opt_state}`, the data position and the meta JSON (arch, config,
vocabulary, vocab_size, task, lineage).

  write_model_dir(out, arch, config, params, ...)   a new model directory with a fresh
                                                    Adafactor state at a given step
  switch_arch(src, arch, dst)                       CD <-> ND: same weights, new meta

Reading one is `training.checkpoints.open_model_dir` (the model, its parameters, meta
and step), as for every other reader of a model directory. Model directories may be
local or remote (`gs://...`, see `arch_objective.paths`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from arch_objective import architectures, models, network, paths
from arch_objective.convert import param_tree
from arch_objective.errors import UserError
from arch_objective.training import checkpoints, optimizers, trainer

CHECKPOINTS = "checkpoints"
# Embeddings hold the vocabulary's ids padded to this multiple (`padded_vocab_size`).
_PAD_MULTIPLE = 128
COMMIT_FILE = ocp.path.atomicity.COMMIT_SUCCESS_FILE   # marks a complete step on gs://


def _padded(vocab_size: int) -> int:
  """`vocab_size` rounded up to `_PAD_MULTIPLE` (0 for no ids): 32100 -> 32128."""
  return -(-max(int(vocab_size), 0) // _PAD_MULTIPLE) * _PAD_MULTIPLE


def _fresh_state(params: Mapping[str, Any], step: int) -> trainer.TrainState:
  """A TrainState at `step` with a fresh Adafactor (the paper's schedule).

  Every optimiser counter (`count`) is set to `step`, so the learning-rate schedule and
  Adafactor's decay continue where a run at `step` would be; the second-moment
  estimates start at zero (update clipping bounds the first steps).
  """
  tx = optimizers.adafactor(optimizers.rsqrt_decay())
  params = jax.tree_util.tree_map(jnp.asarray, params)
  state = trainer.TrainState.create(params, tx)

  def set_count(path, leaf):
    last = path[-1] if path else None
    name = getattr(last, "name", getattr(last, "key", None))
    return jnp.full_like(leaf, step) if name == "count" else leaf

  opt_state = jax.tree_util.tree_map_with_path(set_count, state.opt_state)
  return trainer.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                            opt_state=opt_state)


def check_vocab_size(vocab_size: Optional[int], rows: int) -> None:
  """A ValueError naming both numbers unless `vocab_size` ids (the vocabulary's, extra
  ids included) fit an embedding of `rows` rows: at most `rows`, and `rows` at most
  `vocab_size` padded to a multiple of 128 (T5: 32100 ids, 32128 rows)."""
  if vocab_size is None:
    return
  if vocab_size > rows:
    raise UserError(f"vocab_size {vocab_size} is larger than the model's embedding "
                    f"({rows} rows); pass the vocabulary the model was trained with "
                    f"(--vocab_size).")
  if _padded(vocab_size) < rows:
    raise UserError(f"vocab_size {vocab_size} is too small for the model's embedding of "
                    f"{rows} rows: the embedding holds the vocabulary's ids padded to a "
                    f"multiple of {_PAD_MULTIPLE} (at most {_padded(vocab_size)} rows for "
                    f"{vocab_size} ids); pass the number of ids the model was trained "
                    f"with, extra ids included (--vocab_size; T5: 32100 for 32128 rows).")


def write_model_dir(out: str, arch: str, config: network.TransformerConfig,
                    params: Mapping[str, Any], *, step: int = 0,
                    vocabulary: Optional[str] = None, vocab_size: Optional[int] = None,
                    task: Optional[str] = None, lineage: Optional[list] = None) -> str:
  """Save `params` as MODEL_DIR `out` at `step` with a fresh optimiser; returns the
  step directory. Training with `restore_checkpoint=out` continues from it."""
  model = models.from_meta({"arch": arch, "config": dataclasses.asdict(config)}, out)
  report = param_tree.match_model(params, param_tree.model_shapes(model))
  if not report.ok:
    raise UserError(f"cannot write {out}: the parameters do not fit a {arch} with this "
                    f"config: {report.describe()}.")
  check_vocab_size(vocab_size, config.vocab_size)
  out = paths.normalize(out, "model directory")
  directory = paths.join(out, CHECKPOINTS)
  if any(n.isdigit() for n in paths.listdir(directory)):
    raise UserError(f"{out} already holds checkpoints; write to a new MODEL_DIR so no run "
                    f"resumes from a mix of the two.")
  meta = {"arch": arch, "config": dataclasses.asdict(config), "vocabulary": vocabulary,
          "vocab_size": vocab_size, "task": task, "lineage": list(lineage or [])}
  params = param_tree.cast_floating(params, jnp.float32)
  saver = checkpoints.Checkpoints(directory, async_save=False)
  try:
    saver.save(int(step), _fresh_state(params, int(step)), {"batches": 0}, meta)
  finally:
    saver.close()
  return paths.join(directory, str(int(step)))


def switch_arch(src: str, arch: str, dst: str) -> str:
  """Copy the latest (or given) step of `src` to MODEL_DIR `dst` as `arch`.

  Only CD <-> ND: their parameter trees are identical (spec §7.3), so the state
  (params, optimiser, step) and data position are copied byte for byte and only the
  meta changes: `arch`, and a lineage entry naming the source. Returns the new step
  directory.
  """
  step_dir, step = checkpoints.step_directory(src)
  _, _, meta, _ = checkpoints.open_model_dir(step_dir, read_params=False)
  source_arch = meta.get("arch")
  if not (architectures.is_decoder_only(arch) and architectures.is_decoder_only(source_arch)):
    raise UserError(f"switch-arch converts between "
                    f"{' and '.join(architectures.DECODER_ONLY)} only "
                    f"(identical parameter trees); {step_dir} is {source_arch!r} and the "
                    f"target is {arch!r}. The encoder-decoder's parameters differ.")
  dst = paths.normalize(dst, "model directory")
  if paths.listdir(paths.join(dst, CHECKPOINTS)):
    raise UserError(f"{dst} already holds checkpoints; choose a new MODEL_DIR for the "
                    f"{arch} copy.")
  target_dir = paths.join(dst, CHECKPOINTS, str(step))
  entry = {"checkpoint": step_dir, "step": step, "arch": source_arch, "task": meta.get("task"),
           "conversion": f"switch-arch {source_arch} -> {arch}"}
  meta = dict(meta, arch=arch, lineage=list(meta.get("lineage") or []) + [entry])
  _copy_step(step_dir, target_dir, meta)
  return target_dir


def _copy_step(step_dir: str, target_dir: str, meta: dict):
  """Copy a step directory with a new meta so that it is seen only when complete: a
  local copy is renamed into place at the end; a remote one is written in place and, on
  gs://, marked complete last with orbax's `commit_success.txt` files."""
  remote = paths.is_remote(target_dir)
  work = target_dir if remote else target_dir + ".tmp-switch"
  paths.copytree(step_dir, work, skip=(COMMIT_FILE,))
  paths.write_text(paths.join(work, checkpoints.META, "metadata"), json.dumps(meta))
  if not remote:
    os.rename(work, target_dir)
  elif paths.scheme(target_dir) == "gs":
    items = [paths.join(work, name) for name in paths.listdir(work)
             if paths.isdir(paths.join(work, name))]
    for directory in items + [work]:
      paths.write_text(paths.join(directory, COMMIT_FILE),
                       f"Checkpoint commit was successful to {directory}")
