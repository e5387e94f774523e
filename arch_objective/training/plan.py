"""Planning a run from its gin files, without allocating: sizes, tokens, memory per device.

`plan_run(gin_files, bindings, mesh)` reads the run's model, data and schedule from gin,
counts parameters from abstract shapes, and estimates per-device memory:

  parameters   float32, split over `model` where the logical rules shard them (and over
               `data` too with fsdp)
  optimiser    Adafactor's exact state shapes (factored second moments are row and
               column vectors, replicated; unfactored ones follow their parameter)
  gradients    like the parameters
  activations  stored for the backward pass, per microbatch, for 2-byte activations
               (Korthikanti et al., 2022), plus the float32 logits and their gradient
               `8*b*s*v/t`. One layer stores `lin + att` bytes,
                 lin = s*b*h*(10 + 24/t)   the per-token tensors (norms, projections, MLP)
                 att = 5*a*s*s*b/t         attention scores, softmax and its dropout
               (s tokens per row, b rows, h = emb_dim, a heads, t the `model` axis; each
               stack of the ED sees s/2), and for L layers by `remat_policy`:
                 none     L*(lin + att)
                 dots     L*(lin + 2*a*s*s*b/t) + 3*a*s*s*b/t   the score matmuls are kept,
                          softmax and dropout are recomputed one layer at a time
                 minimal  L*lin + att       no batched matmul (scores) is kept
                 full     L*2*s*b*h + lin + att   only each layer's input is kept; one
                          layer's activations are rebuilt at a time in the backward pass
  scan copy    with `scan_layers`, the model stacks the per-layer parameters in each step
               and the gradients come back stacked: two copies of the layer parameters
               (`scanned_layer_copy`, 0 without scan)
All of it is an estimate for planning; the compiled program is the truth.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional, Sequence

import jax

from arch_objective import architectures, models, network
from arch_objective.data import registry
from arch_objective.errors import UserError
from arch_objective.objectives import pipeline
from arch_objective.training import optimizers, partitioning

GIB = 1024 ** 3
DEVICE_MEMORY_GIB = {"tpu_v4": 32, "tpu_v5e": 16, "tpu_v5p": 95, "a100_40": 40, "a100_80": 80,
                     "h100": 80, "h200": 141, "cpu": 64}


def _value(name: str, default=None):
  """A gin parameter's value, resolving one level of macro reference."""
  import gin
  try:
    value = gin.query_parameter(name)
  except ValueError:
    return default
  text = str(value)
  if text.startswith("%"):
    try:
      return gin.query_parameter(f"{text[1:]}/macro.value")
    except ValueError:
      return default
  return value


def parse_with_placeholders(gin_files: Sequence[str], bindings: Sequence[str]) -> list[str]:
  """Parse gin, binding every required-but-unset macro to None; returns their names."""
  from arch_objective.training import gin_utils
  unset, bindings = [], list(bindings)
  while True:
    try:
      gin_utils.parse(gin_files, bindings)
      return unset
    except ValueError as e:
      match = re.search(r"gin macro (\w+) is required", str(e))
      if not match or match.group(1) in unset:
        raise
      unset.append(match.group(1))
      bindings.append(f"{match.group(1)}=None")


def tokens_per_row(dataset, arch: str) -> tuple[int, dict]:
  """Tokens one row carries, and the feature lengths."""
  if dataset.prompted:
    lengths = {"inputs": dataset.inputs_length, "targets": dataset.targets_length}
    return dataset.inputs_length + dataset.targets_length, lengths
  kind = next((k for k in registry.TASK_KINDS if dataset.task.endswith("_" + k)), None)
  if kind is None and dataset.task.endswith("_prefix_lm"):
    kind = "prefix_lm"
  objective = {"full_lm": pipeline.FULL_LM, "span_corruption": pipeline.SPAN_CORRUPTION,
               "ul2": pipeline.UL2}.get(kind, pipeline.PREFIX_LM)
  lengths = pipeline.Objective(objective, arch, dataset.length).feature_lengths
  return architectures.get(arch).row_tokens(lengths), lengths


def _shard_factor(spec, mesh: dict[str, int]) -> int:
  factor = 1
  for axis in spec:
    if axis is not None:
      factor *= mesh.get(axis, 1)
  return factor


@functools.lru_cache(maxsize=16)
def _abstract(model) -> tuple[Any, Any]:
  """(abstract parameters, their logical axes), from one trace of the initialiser."""
  import flax.linen as nn
  boxed = model._abstract_boxed(models.default_input_shapes(model.name, 1, 8, 8, 8))
  return nn.unbox(boxed)["params"], nn.get_partition_spec(boxed)["params"]


def memory_per_device(model, mesh: dict[str, int], fsdp: bool, rows_per_device: float,
                      row_length: int, optimizer=None) -> dict[str, float]:
  """Bytes per device (see the module docstring); the optimiser state is that of
  `optimizer(schedule)` (default `optimizers.adafactor`, t5x's defaults)."""
  abstract, logical = _abstract(model)
  rules = dict(partitioning.logical_axis_rules(fsdp))
  param_bytes, layer_bytes, by_shape = 0.0, 0.0, {}
  for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(abstract)[0],
                                jax.tree_util.tree_leaves(logical, is_leaf=lambda x: isinstance(
                                    x, jax.sharding.PartitionSpec))):
    mesh_spec = [rules.get(a) for a in spec]
    per_device = leaf.size * 4 / _shard_factor(mesh_spec, mesh)
    param_bytes += per_device
    if any(str(getattr(k, "key", "")).startswith("layers_") for k in path):
      layer_bytes += per_device
    by_shape.setdefault(tuple(leaf.shape), per_device / (leaf.size * 4))
  opt = jax.eval_shape((optimizer or optimizers.adafactor)(optimizers.rsqrt_decay()).init,
                       abstract)
  opt_bytes = 0.0
  for leaf in jax.tree_util.tree_leaves(opt):
    opt_bytes += leaf.size * leaf.dtype.itemsize * by_shape.get(tuple(leaf.shape), 1.0)
  c = model.config
  h, a, t = c.emb_dim, c.num_heads, mesh.get(partitioning.MODEL, 1)
  layers, s = model.layout.activation_stacks(c, row_length)
  b = rows_per_device
  activations = stored_activations(c.remat_policy, layers, s, b, h, a, t)
  activations += 2 * 4 * b * s * c.vocab_size / t
  scan_copy = 2 * layer_bytes if c.scan_layers else 0.0
  return {"parameters": param_bytes, "optimizer_state": opt_bytes, "gradients": param_bytes,
          "activations": activations, "scanned_layer_copy": scan_copy,
          "total": 2 * param_bytes + opt_bytes + activations + scan_copy}


def stored_activations(remat_policy: str, layers: int, s: float, b: float, h: int, a: int,
                       t: int) -> float:
  """Bytes of the layers' activations kept for the backward pass (module docstring)."""
  lin = s * b * h * (10 + 24 / t)
  att = 5 * a * s * s * b / t
  if remat_policy == "none":
    return layers * (lin + att)
  if remat_policy == "dots":
    return layers * (lin + 2 * a * s * s * b / t) + 3 * a * s * s * b / t
  if remat_policy == "minimal":
    return layers * lin + att
  if remat_policy == "full":
    return layers * 2 * s * b * h + lin + att
  raise UserError(f"remat_policy must be one of {', '.join(network.REMAT_POLICIES)}; "
                  f"found {remat_policy!r}.")


def plan_run(gin_files: Sequence[str], bindings: Sequence[str] = (),
             mesh: Optional[dict[str, int]] = None, device_memory_gib: Optional[float] = None,
             num_devices: Optional[int] = None) -> dict:
  """The JSON report of `arch-objective plan --gin_file ...` (allocates nothing)."""
  import gin
  unset = parse_with_placeholders(gin_files, bindings)
  model = gin.get_configurable("build_model")()
  dataset = gin.get_configurable("DatasetConfig")()
  steps = _value("train.train_steps")
  microbatches = _value("train.num_microbatches", 1) or 1
  fsdp = bool(_value("train.fsdp", False))
  mesh = dict(mesh or {})
  mesh.setdefault(partitioning.MODEL, _value("train.mesh_model", 1) or 1)
  mesh.setdefault(partitioning.DATA, 1)
  problems = []
  devices = mesh[partitioning.DATA] * mesh[partitioning.MODEL]
  if num_devices is not None and devices != num_devices:
    problems.append(f"mesh data={mesh['data']} x model={mesh['model']} = {devices} devices, "
                    f"but {num_devices} are available")
  c = model.config
  for name, size in (("num_heads", c.num_heads), ("mlp_dim", c.mlp_dim),
                     ("vocab_size", c.vocab_size)):
    if size % mesh[partitioning.MODEL]:
      problems.append(f"{name}={size} is not divisible by the model axis "
                      f"{mesh[partitioning.MODEL]}")
  if dataset.batch_size % (mesh[partitioning.DATA] * microbatches):
    problems.append(f"batch size {dataset.batch_size} is not divisible by data="
                    f"{mesh[partitioning.DATA]} x microbatches={microbatches}")
  row_tokens, lengths = tokens_per_row(dataset, model.name)
  per_step = dataset.batch_size * row_tokens
  flops = models.training_flops_per_token(
      model, lengths.get("decoder", row_tokens), lengths.get("inputs", 512),
      lengths.get("targets", 114))
  rows_per_device = dataset.batch_size / mesh[partitioning.DATA] / microbatches
  # the run's optimizer with its gin bindings (`train.optimizer = @adafactor`), if any
  optimizer = getattr(_value("train.optimizer"), "scoped_configurable_fn", None)
  memory = memory_per_device(model, mesh, fsdp, rows_per_device, row_tokens, optimizer)
  report = {
      "gin_files": list(gin_files), "arch": model.name,
      "params": int(sum(x.size for x in jax.tree_util.tree_leaves(_abstract(model)[0]))),
      "flops_per_token": flops,
      "task": dataset.task, "feature_lengths": lengths, "batch_size": dataset.batch_size,
      "tokens_per_step": per_step, "steps": steps,
      "total_tokens": per_step * steps if isinstance(steps, int) else None,
      "training_flops": flops * per_step * steps if isinstance(steps, int) else None,
      "mesh": mesh, "fsdp": fsdp, "num_microbatches": microbatches,
      "memory_per_device_gib": {k: v / GIB for k, v in memory.items()},
      "unset_macros": unset,
  }
  initial_step = _value("INITIAL_STEP/macro.value", 0) or 0
  if isinstance(steps, int):
    report["steps_this_run"] = steps - initial_step
    report["tokens_this_run"] = per_step * (steps - initial_step)
  restore = _value("train.restore_checkpoint")
  if restore is not None or "INITIAL_CHECKPOINT_PATH" in unset:
    report["lineage"] = {"restores": restore or "(INITIAL_CHECKPOINT_PATH, unset)",
                         "continues_step": not _value("train.reset_step", False)}
  if device_memory_gib is not None:
    report["device_memory_gib"] = device_memory_gib
    report["fits"] = memory["total"] / GIB <= device_memory_gib
    if not report["fits"]:
      problems.append(f"an estimated {memory['total'] / GIB:.1f} GiB per device exceeds the "
                      f"{device_memory_gib} GiB of device memory; add model parallelism, fsdp "
                      f"or microbatches")
  report["problems"] = problems
  return report
