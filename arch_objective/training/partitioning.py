"""Device meshes and the one table from logical axis names to mesh axes.

The mesh has a `data` axis (the batch is split over it) and a `model` axis (weights are
split over it: attention heads and the MLP width, as t5x's 1-D model parallelism). The
leading `layers` axis of scanned (stacked) parameters is never split: each device holds
every layer of its shard.
With `fsdp=True` the parameters' `embed` axis is also split over `data`, so parameters
and optimiser state are sharded over every device (ZeRO-3 style); activations still
follow the batch.

Multi-host: call `initialize_distributed()` before anything touches a device; every
process then builds the same global mesh, and reads its own shard of the data.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arch_objective import layers

DATA = "data"
MODEL = "model"


def logical_axis_rules(fsdp: bool = False) -> tuple[tuple[str, Optional[str]], ...]:
  """Logical axis -> mesh axis (None = replicated). The only place this mapping lives."""
  return (
      # parameters
      (layers.VOCAB, MODEL),
      (layers.EMBED, DATA if fsdp else None),
      (layers.MLP, MODEL),
      (layers.HEADS, MODEL),
      (layers.KV, None),
      (layers.JOINED_KV, MODEL),
      (layers.RELPOS_BUCKETS, None),
      (layers.LAYERS, None),   # the layer axis of stacked (scanned) parameters
      # activations
      (layers.ACT_BATCH, DATA),
      (layers.ACT_LENGTH, None),
      (layers.ACT_EMBED, None),
      (layers.ACT_MLP, MODEL),
      (layers.ACT_HEADS, MODEL),
      (layers.ACT_KV, None),
      (layers.ACT_VOCAB, MODEL),
  )


def make_mesh(data: int = -1, model: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A (data, model) mesh over `devices` (all by default); `data=-1` takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  if model < 1:
    raise ValueError(f"mesh model size must be >= 1, found {model}.")
  if data == -1:
    if len(devices) % model:
      raise ValueError(f"{len(devices)} devices cannot be split into model={model} parts; "
                       f"choose a model size dividing {len(devices)}.")
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices but "
                     f"{len(devices)} are available; set data x model = {len(devices)}.")
  return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def parse_mesh(spec: str) -> dict[str, int]:
  """'data=4,model=2' -> {'data': 4, 'model': 2}."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    key, _, value = part.partition("=")
    if key not in (DATA, MODEL) or not value.lstrip("-").isdigit():
      raise ValueError(f"mesh spec {spec!r}: expected 'data=N,model=M', found {part!r}.")
    out[key] = int(value)
  return out


class Partitioner:
  """Places parameters, optimiser state and batches on a mesh."""

  def __init__(self, mesh: Mesh, fsdp: bool = False):
    self.mesh = mesh
    self.fsdp = fsdp
    self.rules = logical_axis_rules(fsdp)

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape[DATA]

  def logical_to_mesh(self, logical_specs: Any) -> Any:
    """A tree of logical PartitionSpecs -> a tree of NamedShardings."""
    def convert(path, spec):
      try:
        mesh_spec = nn.logical_to_mesh_axes(spec, self.rules)
      except Exception as e:  # re-raise with the parameter's path
        raise ValueError(f"cannot shard parameter {jax.tree_util.keystr(path)} with logical "
                         f"axes {spec}: {e}") from e
      return NamedSharding(self.mesh, mesh_spec)
    return jax.tree_util.tree_map_with_path(
        convert, logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

  def check_divisible(self, abstract_tree: Any, shardings: Any):
    """Raise naming the parameter whose dimension a mesh axis does not divide."""
    def check(path, leaf, sharding):
      for dim, axis in zip(leaf.shape, sharding.spec):
        if axis is None:
          continue
        size = self.mesh.shape[axis]
        if dim % size:
          raise ValueError(f"parameter {jax.tree_util.keystr(path)} of shape {leaf.shape} "
                           f"cannot be split over mesh axis {axis!r} of size {size}; choose a "
                           f"mesh size dividing {dim}.")
    jax.tree_util.tree_map_with_path(check, abstract_tree, shardings)

  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(DATA))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def check_batch_size(self, batch_size: int):
    per_host = batch_size // jax.process_count()
    if batch_size % self.data_parallel_size or batch_size % jax.process_count():
      raise ValueError(f"batch size {batch_size} is not divisible by the data-parallel size "
                       f"{self.data_parallel_size} (and the {jax.process_count()} processes); "
                       f"use a multiple of {self.data_parallel_size}.")
    return per_host

  def shard_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows -> global arrays split over the data axis."""
    sharding = self.batch_sharding()
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}

  @contextlib.contextmanager
  def activation_context(self):
    """Context under which jit and `nn.with_logical_constraint` use this mesh and rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
  """Join the processes of a multi-host job (`jax.distributed.initialize`).

  With no arguments, JAX detects TPU pods and SLURM jobs itself; explicit values (or
  the environment variables ARCH_OBJECTIVE_COORDINATOR, ARCH_OBJECTIVE_NUM_PROCESSES,
  ARCH_OBJECTIVE_PROCESS_ID) join any cluster. Returns False when there is nothing to
  join (a single process).
  """
  coordinator_address = coordinator_address or os.environ.get("ARCH_OBJECTIVE_COORDINATOR")
  if num_processes is None and "ARCH_OBJECTIVE_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["ARCH_OBJECTIVE_NUM_PROCESSES"])
  if process_id is None and "ARCH_OBJECTIVE_PROCESS_ID" in os.environ:
    process_id = int(os.environ["ARCH_OBJECTIVE_PROCESS_ID"])
  explicit = coordinator_address is not None
  detected = any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                           "MEGASCALE_COORDINATOR_ADDRESS"))
  if not explicit and not detected:
    return False
  if explicit and (num_processes is None or process_id is None):
    raise ValueError("a coordinator address needs num_processes and process_id too "
                     f"(found num_processes={num_processes}, process_id={process_id}).")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True
