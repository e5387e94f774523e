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
import logging
import math
import os
import socket
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arch_objective import layers
from arch_objective.errors import UserError

log = logging.getLogger(__name__)

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
    raise UserError(f"mesh model size must be >= 1, found {model}.")
  if data == -1:
    if len(devices) % model:
      raise UserError(f"{len(devices)} devices cannot be split into model={model} parts; "
                      f"choose a model size dividing {len(devices)}.")
    data = len(devices) // model
  if data * model != len(devices):
    raise UserError(f"mesh data={data} x model={model} needs {data * model} devices but "
                    f"{len(devices)} are available; set data x model = {len(devices)}.")
  return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def parse_mesh(spec: str) -> dict[str, int]:
  """'data=4,model=2' -> {'data': 4, 'model': 2}."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    key, _, value = part.partition("=")
    if key not in (DATA, MODEL) or not value.lstrip("-").isdigit():
      raise UserError(f"mesh spec {spec!r}: expected 'data=N,model=M', found {part!r}.")
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
        raise UserError(f"cannot shard parameter {jax.tree_util.keystr(path)} with logical "
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
          raise UserError(f"parameter {jax.tree_util.keystr(path)} of shape {leaf.shape} "
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
      raise UserError(f"batch size {batch_size} is not divisible by the data-parallel size "
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


COORDINATOR_ENV = "ARCH_OBJECTIVE_COORDINATOR"
NUM_PROCESSES_ENV = "ARCH_OBJECTIVE_NUM_PROCESSES"
PROCESS_ID_ENV = "ARCH_OBJECTIVE_PROCESS_ID"
TIMEOUT_ENV = "ARCH_OBJECTIVE_COORDINATOR_TIMEOUT"
DEFAULT_TIMEOUT_S = 300   # JAX's own default: a pod's hosts may start minutes apart
_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           initialization_timeout: Optional[float] = None) -> bool:
  """Join the processes of a multi-host job (`jax.distributed.initialize`).

  With no arguments, JAX detects TPU pods and SLURM jobs itself; explicit values (or
  the environment variables ARCH_OBJECTIVE_COORDINATOR, ARCH_OBJECTIVE_NUM_PROCESSES,
  ARCH_OBJECTIVE_PROCESS_ID) join any cluster. Returns False when there is nothing to
  join (a single process).

  `initialization_timeout` (seconds; else ARCH_OBJECTIVE_COORDINATOR_TIMEOUT, else 300)
  bounds the wait for the coordinator (process 0) and for the other processes. Every
  setting is checked before anything starts (ValueError naming the option); a process
  other than 0 first waits, at most that long, for the coordinator's port to accept a
  connection, and raises a ValueError naming the address if it never does (JAX itself
  would abort the process without a word of ours).
  """
  names = {"coordinator_address": "--coordinator_address", "num_processes": "--num_processes",
           "process_id": "--process_id"}
  if not coordinator_address and os.environ.get(COORDINATOR_ENV):
    coordinator_address, names["coordinator_address"] = (os.environ[COORDINATOR_ENV],
                                                          COORDINATOR_ENV)
  coordinator_address = coordinator_address or None
  if num_processes is None and os.environ.get(NUM_PROCESSES_ENV):
    num_processes = _int_setting(os.environ[NUM_PROCESSES_ENV], NUM_PROCESSES_ENV, "2")
    names["num_processes"] = NUM_PROCESSES_ENV
  if process_id is None and os.environ.get(PROCESS_ID_ENV):
    process_id = _int_setting(os.environ[PROCESS_ID_ENV], PROCESS_ID_ENV, "0")
    names["process_id"] = PROCESS_ID_ENV
  timeout = _timeout_setting(initialization_timeout)
  n_name, id_name, address_name = (names["num_processes"], names["process_id"],
                                   names["coordinator_address"])
  if num_processes is not None and num_processes < 1:
    raise UserError(f"{n_name} must be at least 1, found {num_processes}; give the number "
                    f"of processes in the job.")
  if process_id is not None and process_id < 0:
    raise UserError(f"{id_name} must be 0 or more, found {process_id}; number the "
                    f"processes 0 to N-1 (process 0 runs the coordinator).")
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise UserError(f"{id_name} must be below {n_name}={num_processes} (0 to "
                    f"{num_processes - 1}), found {process_id}; number the processes "
                    f"0 to {num_processes - 1}.")
  detected = any(k in os.environ for k in _CLUSTER_ENV)
  if coordinator_address is None and not detected:
    if (num_processes or 1) > 1 or (process_id or 0) > 0:
      job = (f"{n_name}={num_processes}" if num_processes is not None
             else f"{id_name}={process_id}")
      raise UserError(f"{job}: a multi-process job needs a coordinator address, found none; "
                      f"pass --coordinator_address HOST:PORT (or set {COORDINATOR_ENV}) to "
                      f"every process, the same: process 0's host and a free port.")
    return False
  host = port = None
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise UserError(f"{address_name}={coordinator_address} needs the number of processes "
                      f"and this process's index too, found {n_name}={num_processes}, "
                      f"{id_name}={process_id}; pass --num_processes and --process_id (or "
                      f"set {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}).")
    host, port = _parse_address(coordinator_address, address_name)
  log.info("joining the job%s through %s (waiting up to %g s)",
           f" as process {process_id} of {num_processes}" if process_id is not None else "",
           f"the coordinator at {coordinator_address}" if coordinator_address
           else "the cluster's coordinator", timeout)
  if host is not None and process_id != 0:
    _wait_for_coordinator(host, port, coordinator_address, timeout)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=max(int(math.ceil(timeout)), 1))
  return True


def _int_setting(value: str, name: str, example: str) -> int:
  try:
    return int(value.strip())
  except ValueError:
    raise UserError(f"{name} must be an integer, found {value!r}; set e.g. "
                    f"{name}={example}.") from None


def _timeout_setting(value: Optional[float]) -> float:
  """Seconds to wait for the coordinator: `value`, else $ARCH_OBJECTIVE_COORDINATOR_TIMEOUT,
  else DEFAULT_TIMEOUT_S."""
  name = "initialization_timeout"
  if value is None and os.environ.get(TIMEOUT_ENV):
    value, name = os.environ[TIMEOUT_ENV], TIMEOUT_ENV
  if value is None:
    return float(DEFAULT_TIMEOUT_S)
  try:
    seconds = float(value)
  except (TypeError, ValueError):
    seconds = float("nan")
  if not seconds > 0 or math.isinf(seconds):
    raise UserError(f"{name} must be a positive number of seconds, found {value!r}; set e.g. "
                    f"{name}={DEFAULT_TIMEOUT_S}.")
  return seconds


def _parse_address(address: str, name: str) -> tuple[str, int]:
  """(host, port) of 'HOST:PORT' ('[v6]:PORT' too); ValueError naming `name` otherwise."""
  host, colon, port = address.strip().rpartition(":")
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  problem = ("no port" if not colon else "no host" if not host
             else f"port {port!r}, not an integer" if not port.isdigit()
             else f"port {port}, outside 1-65535" if not 0 < int(port) < 65536 else None)
  if problem:
    raise UserError(f"{name}={address!r}: expected HOST:PORT (process 0's host and a free "
                    f"port, e.g. 10.0.0.1:12355), found {problem}.")
  return host, int(port)


def _wait_for_coordinator(host: str, port: int, address: str, timeout: float):
  """Return once `host:port` accepts a TCP connection; ValueError after `timeout` s."""
  deadline = time.monotonic() + timeout
  delay = 0.1
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(max(
          deadline - time.monotonic(), 0.1), 5.0)):
        return
    except OSError as e:
      reason = e.strerror or str(e) or type(e).__name__
    left = deadline - time.monotonic()
    if left <= 0:
      raise UserError(f"cannot reach the coordinator at {address} within {timeout:g} s "
                      f"({reason}); start process 0 first (it runs the coordinator), or "
                      f"check the address (--coordinator_address / {COORDINATOR_ENV}) and "
                      f"that its port is open; {TIMEOUT_ENV} sets the wait.")
    time.sleep(min(delay, left))
    delay = min(delay * 2, 2.0)
