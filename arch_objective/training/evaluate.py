"""`evaluate()`: loss and token accuracy of a checkpoint on a split, written as JSON."""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import jax

from arch_objective import models, paths
from arch_objective.training import (checkpoints, data, optimizers, partitioning, train,
                                     trainer)


def evaluate(*, model_dir: str, model: models.BaseModel, dataset: data.DatasetConfig,
             eval_steps: int = 100, step: Optional[int] = None, mesh_data: int = -1,
             mesh_model: int = 1, devices: Optional[Sequence[Any]] = None) -> dict:
  """Evaluate checkpoint `step` (the latest if None) of `model_dir`.

  Writes `model_dir/eval/<task>_<split>_<step>.json` (local or remote `model_dir`) and
  returns the metrics.
  """
  model_dir = paths.normalize(model_dir, "MODEL_DIR")
  mesh = partitioning.make_mesh(mesh_data, mesh_model, devices)
  partitioner = partitioning.Partitioner(mesh)
  partitioner.check_batch_size(dataset.batch_size)
  spec = dataset.spec(model.name)
  batch = next(data.batches(dataset, model.name, repeat=False))
  input_shapes = {k: (dataset.batch_size,) + v.shape[1:] for k, v in batch.items()}
  tx = optimizers.adafactor(optimizers.rsqrt_decay())
  abstract = jax.eval_shape(lambda r: trainer.init_state(model, tx, input_shapes, r),
                            jax.random.PRNGKey(0))
  shardings = train.state_shardings(partitioner, model, abstract, input_shapes)
  ckpt = checkpoints.Checkpoints(paths.join(model_dir, "checkpoints"))
  vocab = spec.vocab()
  with partitioner.activation_context():
    state, _, meta = ckpt.restore(train._with_shardings(abstract, shardings), step,
                                  expected_meta={"vocab_size": vocab.vocab_size})
  ckpt.close()
  result = train.evaluate_params(model, state.params, dataset, eval_steps, partitioner)
  result.update(step=int(state.step), task=spec.name, split=dataset.split,
                arch=model.name, trained_as=meta.get("arch"))
  if jax.process_index() == 0:
    out_dir = paths.join(model_dir, "eval")
    paths.makedirs(out_dir)
    path = paths.join(out_dir, f"{spec.name}_{dataset.split}_{int(state.step)}.json")
    paths.write_text(path, json.dumps(result, indent=2))
    result["path"] = path
  return result
