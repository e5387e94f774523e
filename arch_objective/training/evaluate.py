"""`evaluate()`: loss and token accuracy of a checkpoint on a split, written as JSON."""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Optional, Sequence

import jax

from arch_objective import models, paths
from arch_objective.errors import UserError, integer_at_least
from arch_objective.training import (checkpoints, data, optimizers, partitioning, train,
                                     trainer)

log = logging.getLogger(__name__)
_ALLOW = "--gin.evaluate.allow_other_vocabulary=True"


def evaluate(*, model_dir: str, model: models.BaseModel, dataset: data.DatasetConfig,
             eval_steps: int = 100, step: Optional[int] = None, mesh_data: int = -1,
             mesh_model: int = 1, devices: Optional[Sequence[Any]] = None,
             allow_other_vocabulary: bool = False) -> dict:
  """Evaluate checkpoint `step` (the latest if None) of `model_dir` on the first
  `eval_steps` batches of `dataset` (fewer, with a warning, when it has fewer).

  The dataset's vocabulary must be the one the checkpoint was trained with (the SHA-256
  its meta records), unless `allow_other_vocabulary`. Writes
  `model_dir/eval/<task>_<split>_<step>.json` (local or remote `model_dir`) and returns
  the metrics, with `batches` (evaluated), `eval_steps` (asked) and `vocabulary` (path,
  sha256, `same_as_checkpoint`).
  """
  if not integer_at_least(eval_steps, 1):
    raise UserError(f"evaluate: eval_steps (gin: EVAL_STEPS, or evaluate.eval_steps) must be "
                    f"a positive number of batches, found {eval_steps!r}.")
  model_dir = paths.normalize(model_dir, "MODEL_DIR")
  directory = paths.join(model_dir, "checkpoints")
  if not checkpoints.complete_steps(directory):     # before orbax creates the directory
    found = (f"holds no checkpoint (no complete step in {directory})"
             if paths.isdir(model_dir) else "does not exist")
    raise checkpoints.CheckpointError(f"MODEL_DIR {model_dir} {found}; expected the "
                                      f"MODEL_DIR of a trained run.")
  mesh = partitioning.make_mesh(mesh_data, mesh_model, devices)
  partitioner = partitioning.Partitioner(mesh)
  partitioner.check_batch_size(dataset.batch_size)
  spec = dataset.spec(model.name)
  batch = next(data.batches(dataset, model.name, repeat=False), None)
  if batch is None:
    raise UserError(f"evaluation split {dataset.split!r} of task {dataset.task!r} produced "
                    f"no batch of {dataset.batch_size} rows.")
  input_shapes = {k: (dataset.batch_size,) + v.shape[1:] for k, v in batch.items()}
  tx = optimizers.adafactor(optimizers.rsqrt_decay())
  abstract = jax.eval_shape(lambda r: trainer.init_state(model, tx, input_shapes, r),
                            jax.random.PRNGKey(0))
  shardings = train.state_shardings(partitioner, model, abstract, input_shapes)
  vocab = spec.vocab()
  step_dir, _ = checkpoints.step_directory(directory if step is None else
                                           paths.join(directory, str(step)))
  saved_meta, _ = checkpoints.load_meta(step_dir)
  used = check_vocabulary(
      saved_meta, vocab.path, step_dir, allow_other=allow_other_vocabulary,
      option="VOCABULARY", allow_option=_ALLOW, embedding_rows=model.config.vocab_size,
      vocab_size=vocab.vocab_size)
  # The manager's background threads end in `close`, on every path: an error here must
  # not leave them to fail at interpreter shutdown.
  ckpt = checkpoints.Checkpoints(directory)
  try:
    with partitioner.activation_context():
      # (an allowed other vocabulary may have another size: the embedding check stands)
      # (the parameters only: a run trained with other optimiser settings reads the same)
      state, meta = ckpt.restore_params(
          train._with_shardings(abstract, shardings), step,
          expected_meta=None if allow_other_vocabulary else {"vocab_size": vocab.vocab_size})
  finally:
    ckpt.close()
  result = train.evaluate_params(model, state.params, dataset, eval_steps, partitioner)
  if result["batches"] < eval_steps:
    log.warning(f"evaluate: split {dataset.split!r} of task {spec.name} has only "
                f"{result['batches']} batch(es) of {dataset.batch_size} rows; evaluated "
                f"{result['batches']} of the {eval_steps} asked (EVAL_STEPS).")
  result.update(step=int(state.step), task=spec.name, split=dataset.split,
                arch=model.name, trained_as=meta.get("arch"), eval_steps=eval_steps,
                vocabulary=used)
  if jax.process_index() == 0:
    out_dir = paths.join(model_dir, "eval")
    paths.makedirs(out_dir)
    path = paths.join(out_dir, f"{spec.name}_{dataset.split}_{int(state.step)}.json")
    paths.write_text(path, json.dumps(result, indent=2))
    result["path"] = path
  return result


# ----------------------------------------------------------------------------------------
# The vocabulary an evaluation tokenises with, against the one the checkpoint trained with
# ----------------------------------------------------------------------------------------
def vocabulary_record(path: str) -> dict:
  """`{"path", "sha256"}` of a SentencePiece model file (local or remote): what results
  record of the vocabulary they were computed with. The hash is of the file's bytes, as
  training records it (`vocabulary_sha256` of the run's identity)."""
  return {"path": path, "sha256": hashlib.sha256(paths.read_bytes(path)).hexdigest()}


def check_vocabulary(meta: dict, path: str, checkpoint: str, *, allow_other: bool,
                     option: str, allow_option: str,
                     embedding_rows: Optional[int] = None,
                     vocab_size: Optional[int] = None) -> dict:
  """The vocabulary record (`vocabulary_record`, plus `same_as_checkpoint`) of the
  vocabulary file `path` an evaluation of `checkpoint` (whose meta is `meta`) uses.

  A checkpoint trained by this package records its vocabulary's SHA-256; a vocabulary
  with another hash is refused (ValueError naming both files; `option` is how the user
  chose it, `allow_option` how to accept it) unless `allow_other`. Checkpoints without
  the hash (imports, older runs) accept any vocabulary (`same_as_checkpoint`: None). A
  vocabulary of more ids (`vocab_size`) than the model's embedding has rows
  (`embedding_rows`) is refused even when allowed: its ids would read other rows.
  """
  record = vocabulary_record(path)
  trained = (meta.get("identity") or {}).get("vocabulary_sha256")
  recorded = meta.get("vocabulary")
  record["same_as_checkpoint"] = None if trained is None else record["sha256"] == trained
  if record["same_as_checkpoint"] is False and not allow_other:
    hashes = f"{record['sha256'][:12]} vs {trained[:12]}"
    if recorded and str(recorded) == str(path):
      what = (f"the vocabulary {path} has changed since checkpoint {checkpoint} was trained "
              f"with it: its SHA-256 hash differs from the recorded one ({hashes})")
      fix = "Restore the original file"
    else:
      what = (f"{option} {path} is not the vocabulary checkpoint {checkpoint} was trained "
              f"with ({recorded or 'a file it does not name'}): their SHA-256 hashes differ "
              f"({hashes})")
      fix = "Use the checkpoint's vocabulary"
    raise UserError(f"{what}, so every score would be computed on other tokens. {fix}, or "
                    f"give {allow_option} to evaluate with this one.")
  if (embedding_rows is not None and vocab_size is not None and
      vocab_size > embedding_rows):
    raise UserError(f"{option} {path} has {vocab_size} ids but the model of checkpoint "
                    f"{checkpoint} embeds only {embedding_rows}; ids {embedding_rows} and up have "
                    f"no embedding row. Use the checkpoint's vocabulary "
                    f"({recorded or 'not recorded'}).")
  if record["same_as_checkpoint"] is False:
    record["checkpoint_vocabulary"] = {"path": recorded, "sha256": trained}
  return record
