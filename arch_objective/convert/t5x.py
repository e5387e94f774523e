"""Native t5x checkpoints (format version 3, spec §7.2) in and out, without t5x.

Layout of one checkpoint, `checkpoint_<step>/`:

  checkpoint                      msgpack of {'version': 3, 'optimizer': state_dict}
  target.decoder.decoder_norm.scale/              one zarr array per partitioned leaf
  target.decoder.layers_0.mlp.wi_0.kernel/        (gzip, chunked), named by the
  state.param_states.decoder.layers_0.mlp.wi_0.kernel.v/   state-dict path joined by '.'
  ...

`state_dict` is flax's optimizer state dict: `{'target': params, 'state': {'step': s,
'param_states': {...}}}`. In the msgpack, a leaf is either the array itself (inline)
or the JSON of a `tensorstore.Spec` whose path is relative to the checkpoint
directory. Two spellings of that path occur:

  {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': 'target.decoder...'},
   'metadata': {'shape': [...], 'dtype': '<f4', 'chunks': [...], 'compressor': {'id': 'gzip'}}}
  {'driver': 'zarr', 'kvstore': {'driver': 'gcs', 'bucket': 't5x-dummy-bucket'},
   'path': 'target.decoder...', 'metadata': {...}}

The second is what a checkpoint written to Google Cloud Storage holds (the released
checkpoints, spec §7.1): the bucket is a placeholder. Both are resolved against the
directory being read, local (`file` driver) or `gs://bucket/dir` (`gcs` driver), so a
downloaded copy reads like the original. A path that leaves that directory (absolute,
a URL, or a `..` climbing above it) is refused: t5x writes plain array names.

  read_t5x_checkpoint(path, dtype=None, with_optimizer=False)
      -> {'params': tree, 'step': int, 'optimizer': tree | None}
  to_model_params(params, model)              check names and shapes against a model
  write_t5x_checkpoint(params, path, step)    the same layout, readable by t5x
"""
from __future__ import annotations

import copy
import os
import posixpath
import re
import shutil
import time
from typing import Any, Mapping, Optional, Union

import flax.serialization
import jax.numpy as jnp
import numpy as np
import tensorstore as ts

from arch_objective import paths
from arch_objective.convert import param_tree
from arch_objective.errors import UserError

VERSION = 3
SUPPORTED_VERSIONS = (VERSION,)
CHECKPOINT_FILE = "checkpoint"
DUMMY_BUCKET = "t5x-dummy-bucket"
TARGET, STATE = "target", "state"
# t5x writes chunks of at most 64 MiB.
_CHUNK_BYTES = 64 * 1024 * 1024
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
_GCS = re.compile(r"^gs://([^/]+)/?(.*)$")


# ---------------------------------------------------------------------------
# Storage: local directories and gs:// through tensorstore's key-value stores
# ---------------------------------------------------------------------------
def _split_gcs(path: str) -> Optional[tuple[str, str]]:
  """`gs://bucket/a/b` -> ('bucket', 'a/b'); None for a local path. Other schemes are
  refused: t5x checkpoints go through tensorstore's file and gcs drivers only."""
  if paths.is_remote(path) and paths.scheme(path) != "gs":
    raise UserError(f"t5x checkpoint path {path!r}: only local paths and gs:// are "
                    f"supported (tensorstore's file and gcs drivers), found "
                    f"'{paths.scheme(path)}://'.")
  m = _GCS.match(path)
  return (m.group(1), m.group(2).rstrip("/")) if m else None


def _join(base: str, relative: str) -> str:
  return posixpath.join(base, relative) if base else relative


def _read_bytes(path: str) -> bytes:
  gcs = _split_gcs(path)
  if gcs is None:
    with open(path, "rb") as f:
      return f.read()
  bucket, key = gcs
  store = ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result()
  result = store.read(key).result()
  if result.state != "value":
    raise UserError(f"t5x checkpoint file {path} does not exist; pass the checkpoint_<step> "
                    f"directory that holds the '{CHECKPOINT_FILE}' file.")
  return bytes(result.value)


def _exists(path: str) -> bool:
  gcs = _split_gcs(path)
  if gcs is None:
    return os.path.exists(path)
  bucket, key = gcs
  store = ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result()
  return store.read(key).result().state == "value"


def _write_bytes(path: str, data: bytes):
  gcs = _split_gcs(path)
  if gcs is None:
    with open(path, "wb") as f:
      f.write(data)
    return
  bucket, key = gcs
  ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result().write(key, data).result()


def _latest_local_step_dir(directory: str) -> Optional[str]:
  steps = []
  for name in os.listdir(directory):
    m = _STEP_DIR.match(name)
    if m and os.path.isfile(os.path.join(directory, name, CHECKPOINT_FILE)):
      steps.append((int(m.group(1)), name))
  return os.path.join(directory, max(steps)[1]) if steps else None


def find_checkpoint(path: str) -> tuple[str, str]:
  """(checkpoint directory, msgpack file) of `path`.

  `path` may be the msgpack file, a `checkpoint_<step>` directory, or (local only) a
  directory of `checkpoint_<step>` directories, which gives the latest step.
  """
  path = path.rstrip("/") or path
  if _split_gcs(path):
    if path.endswith("/" + CHECKPOINT_FILE):
      return posixpath.dirname(path), path
    return path, _join(path, CHECKPOINT_FILE)
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(path):
    return os.path.dirname(path), path
  if os.path.isfile(os.path.join(path, CHECKPOINT_FILE)):
    return path, os.path.join(path, CHECKPOINT_FILE)
  if os.path.isdir(path):
    latest = _latest_local_step_dir(path)
    if latest:
      return latest, os.path.join(latest, CHECKPOINT_FILE)
  raise UserError(f"no t5x checkpoint at {path!r}: expected a checkpoint_<step> directory "
                  f"holding a '{CHECKPOINT_FILE}' msgpack file (or a directory of them); "
                  f"pass e.g. .../checkpoint_131072.")


# ---------------------------------------------------------------------------
# TensorStore specs
# ---------------------------------------------------------------------------
def _is_spec(value: Any) -> bool:
  """A msgpack leaf written by TensorStore: the JSON of a `tensorstore.Spec`."""
  return isinstance(value, Mapping) and "driver" in value and "kvstore" in value


def resolve_spec(spec: Mapping[str, Any], checkpoint_dir: str, name: str = "") -> dict:
  """A stored spec with its relative path made absolute under `checkpoint_dir`.

  Accepts the path in `kvstore.path` (tensorstore >= 0.1.14, `file` driver) or at the
  top level (older tensorstore, and every `gcs` spec with the placeholder bucket).
  The result opens the array locally (`file`) or under `gs://bucket/...` (`gcs`),
  whatever driver wrote it; `metadata` is dropped (the array's own `.zarray` rules).
  """
  spec = copy.deepcopy(dict(spec))
  kvstore = spec.pop("kvstore")
  if isinstance(kvstore, str):
    raise UserError(f"t5x checkpoint {checkpoint_dir}: parameter {name!r} has a kvstore URL "
                    f"{kvstore!r} where a spec dict with a relative 'path' is expected; "
                    f"this file was not written by t5x's Checkpointer.")
  kvstore = dict(kvstore)
  driver = kvstore.get("driver")
  if driver not in ("file", "gfile", "gcs"):
    raise UserError(f"t5x checkpoint {checkpoint_dir}: parameter {name!r} is stored with "
                    f"kvstore driver {driver!r}; expected 'file', 'gfile' or 'gcs'.")
  parts = (kvstore.get("path", "") or "", spec.pop("path", "") or "")
  if not all(isinstance(part, str) for part in parts):
    raise UserError(f"{_join(checkpoint_dir, CHECKPOINT_FILE)}: parameter {name!r} has a "
                    f"non-text array path {parts}; expected a directory name inside "
                    f"{checkpoint_dir}.")
  relative = _join(*parts) if all(parts) else parts[0] or parts[1]
  if not relative:
    raise UserError(f"t5x checkpoint {checkpoint_dir}: the spec of parameter {name!r} has "
                    f"no 'path' (neither spec['kvstore']['path'] nor spec['path']): {spec}.")
  _check_inside(relative, checkpoint_dir, name)
  spec.pop("metadata", None)
  spec.pop("dtype", None)
  gcs = _split_gcs(checkpoint_dir)
  if gcs is None:
    spec["kvstore"] = {"driver": "file",
                       "path": os.path.join(checkpoint_dir, relative).rstrip("/") + "/"}
  else:
    bucket, prefix = gcs
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket,
                       "path": _join(prefix, relative).rstrip("/") + "/"}
  return spec


def _check_inside(relative: str, checkpoint_dir: str, name: str):
  """Refuse an array path from the msgpack that leaves the checkpoint directory: an
  absolute path, a URL, or a `..` that climbs above it (t5x writes plain names)."""
  if not paths.stays_inside(relative):
    raise UserError(f"{_join(checkpoint_dir, CHECKPOINT_FILE)}: parameter {name!r} names "
                    f"array path {relative!r}, which is outside the checkpoint directory "
                    f"{checkpoint_dir}; only arrays inside it are read.")


def _stored_shape(spec: Mapping[str, Any]) -> Optional[tuple[int, ...]]:
  shape = (spec.get("metadata") or {}).get("shape")
  return None if shape is None else tuple(int(s) for s in shape)


def _read_arrays(specs: Mapping[str, Mapping[str, Any]], checkpoint_dir: str
                 ) -> dict[str, np.ndarray]:
  """Flat name -> array for every TensorStore leaf, opened and read concurrently."""
  opened = {}
  for name, spec in specs.items():
    resolved = resolve_spec(spec, checkpoint_dir, name)
    opened[name] = (ts.open(resolved, open=True, read=True), resolved)
  reads = {}
  for name, (future, resolved) in opened.items():
    try:
      store = future.result()
    except ValueError as e:
      raise UserError(f"t5x checkpoint {checkpoint_dir}: cannot open parameter {name!r} at "
                      f"{resolved['kvstore']}: {e}. The array directory "
                      f"'{name.replace('/', '.')}' should sit beside the '{CHECKPOINT_FILE}' "
                      f"file; copy the whole checkpoint directory.") from None
    expected = _stored_shape(specs[name])
    if expected is not None and tuple(store.shape) != expected:
      raise UserError(f"t5x checkpoint {checkpoint_dir}: parameter {name!r} has shape "
                      f"{tuple(store.shape)} on disk but {expected} in the msgpack spec; "
                      f"the checkpoint is corrupt or was partly overwritten.")
    reads[name] = store.read()
  return {name: np.asarray(future.result()) for name, future in reads.items()}


def _resolve_leaves(tree: Any, checkpoint_dir: str) -> Any:
  """Replace every TensorStore spec in a state-dict subtree by its array."""
  if tree is None:
    return None
  if _is_spec(tree):
    return _read_arrays({"": tree}, checkpoint_dir)[""]
  if not isinstance(tree, Mapping):
    return tree
  flat = flax.traverse_util.flatten_dict(
      dict(tree), sep="/", keep_empty_nodes=True, is_leaf=lambda _, v: _is_spec(v))
  specs = {k: v for k, v in flat.items() if _is_spec(v)}
  arrays = _read_arrays(specs, checkpoint_dir)
  return flax.traverse_util.unflatten_dict({k: arrays.get(k, v) for k, v in flat.items()},
                                          sep="/")


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
def read_contents(path: str) -> tuple[str, dict]:
  """(checkpoint directory, the msgpack contents) with the version checked."""
  checkpoint_dir, file = find_checkpoint(path)
  raw = _read_bytes(file)
  if raw.startswith(b"model_checkpoint_path"):
    raise UserError(f"{file} is a TensorFlow (Mesh TensorFlow T5) checkpoint index, not a "
                    f"native t5x checkpoint; convert it with t5x's checkpoint importer first.")
  try:
    contents = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several unrelated types
    raise UserError(f"t5x checkpoint file {file} is not a msgpack state dict ({e}); pass the "
                    f"'{CHECKPOINT_FILE}' file that t5x writes in checkpoint_<step>/.") from e
  if not isinstance(contents, Mapping):
    raise UserError(f"t5x checkpoint file {file} holds a {type(contents).__name__}, expected "
                    f"a dict with 'version' and 'optimizer'.")
  version = contents.get("version")
  if version not in SUPPORTED_VERSIONS:
    found = "no version (a plain flax checkpoint?)" if version is None else f"version {version!r}"
    raise UserError(f"t5x checkpoint {file} has {found}; supported: version "
                    f"{', '.join(map(str, SUPPORTED_VERSIONS))}. Re-save it with a current "
                    f"t5x Checkpointer.")
  optimizer = contents.get("optimizer")
  if not isinstance(optimizer, Mapping) or TARGET not in optimizer:
    keys = sorted(optimizer) if isinstance(optimizer, Mapping) else type(optimizer).__name__
    raise UserError(f"t5x checkpoint {file}: contents['optimizer'] must hold the "
                    f"'{TARGET}' parameters, found {keys}.")
  return checkpoint_dir, dict(contents)


def read_t5x_checkpoint(path: str, *, dtype=None, with_optimizer: bool = False
                        ) -> dict[str, Any]:
  """Parameters (and optionally optimizer state) of a t5x checkpoint as numpy trees.

  Args:
    path: `checkpoint_<step>/`, its `checkpoint` file, a local directory of
      `checkpoint_<step>/` (the latest is read), or `gs://bucket/.../checkpoint_<step>`.
    dtype: cast the floating-point parameters to this (e.g. 'bfloat16'); the optimizer
      state is never cast. t5x saves parameters as float32.
    with_optimizer: also read `state` (`{'step', 'param_states'}`), else skip its arrays.

  Returns:
    `{'params': nested dict, 'step': int or None, 'optimizer': nested dict or None}`.
  """
  checkpoint_dir, contents = read_contents(path)
  optimizer = contents["optimizer"]
  state = optimizer.get(STATE) or {}
  step = state.get("step") if isinstance(state, Mapping) else None
  params = _resolve_leaves(optimizer[TARGET], checkpoint_dir)
  if not isinstance(params, Mapping) or not params:
    raise UserError(f"t5x checkpoint {checkpoint_dir} has no parameters under "
                    f"'{TARGET}'.")
  params = param_tree.cast_floating(params, dtype)
  opt = _resolve_leaves(dict(state), checkpoint_dir) if with_optimizer else None
  return {"params": params, "step": None if step is None else int(np.asarray(step)),
          "optimizer": opt}


def to_model_params(t5x_params: Mapping[str, Any], model, strict: bool = True
                    ) -> Union[dict, tuple[dict, dict]]:
  """Check a t5x parameter tree against `model` and return what loads into it.

  strict (default): the names and shapes must equal the model's, else a ValueError
  lists the missing, unexpected and mismatched parameters; returns the params.
  strict=False: returns `(params, report)`, the params the model can take (known
  names, right shapes) and `report` = `{'missing', 'unexpected', 'mismatched'}`
  naming everything left out. The caller decides how to fill the missing ones.
  """
  report = param_tree.match_model(t5x_params, param_tree.model_shapes(model))
  if strict:
    if not report.ok:
      raise UserError(f"the checkpoint's parameters do not fit the {model.name} model "
                      f"(emb_dim={model.config.emb_dim}, layers="
                      f"{model.config.num_decoder_layers}): {report.describe()}. Pass the "
                      f"--arch and --size the checkpoint was trained with (and --config "
                      f"NAME=VALUE where its config differs from the size preset, e.g. "
                      f"--config vocab_size=32128), or --allow_missing to load what fits "
                      f"and fill the rest from a fresh initialisation.")
    return param_tree.unflatten(param_tree.flatten(t5x_params))
  return param_tree.loadable_subset(t5x_params, report), report.skipped


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
def choose_chunk_shape(shape: tuple[int, ...], target_elements: int) -> list[int]:
  """The largest chunk shape that divides `shape` with at most `target_elements`
  elements, halving the largest dimension's divisors first (t5x's rule)."""
  divisors = [[d for d in range(1, size + 1) if size % d == 0] or [1] for size in shape]
  while int(np.prod([d[-1] for d in divisors])) > max(1, target_elements):
    largest = max(range(len(shape)), key=lambda i: divisors[i][-1])
    if divisors[largest][-1] == 1:
      break
    divisors[largest].pop()
  return [d[-1] for d in divisors]


def _zarr_dtype(dtype: np.dtype) -> str:
  return "bfloat16" if dtype == jnp.bfloat16 else dtype.str


def _spec_for(name: str, array: np.ndarray, gcs: bool) -> dict:
  """The relative spec t5x stores in the msgpack for one TensorStore leaf."""
  relative = name.replace("/", ".")
  metadata = {"compressor": {"id": "gzip"}, "shape": list(array.shape),
              "chunks": choose_chunk_shape(array.shape, _CHUNK_BYTES // array.dtype.itemsize),
              "dtype": _zarr_dtype(array.dtype)}
  if gcs:
    return {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": DUMMY_BUCKET},
            "path": relative, "metadata": metadata}
  return {"driver": "zarr", "kvstore": {"driver": "file", "path": relative},
          "metadata": metadata}


def _to_numpy(x: Any) -> Any:
  if x is None or isinstance(x, (str, bytes, int, float, bool)):
    return x
  return np.asarray(x)


def write_t5x_checkpoint(params: Mapping[str, Any], path: str, step: int, *,
                         optimizer_state: Optional[Mapping[str, Any]] = None,
                         use_tensorstore: bool = True, dtype=None) -> str:
  """Write `path/checkpoint_<step>/` in t5x's format; returns that directory.

  Args:
    params: the parameter tree (t5x names), e.g. our model's params.
    path: the checkpoints directory (t5x's model_dir), local or `gs://bucket/dir`.
    step: the training step; stored as `state.step`.
    optimizer_state: t5x's `state` subtree (`{'step', 'param_states'}`, e.g. the
      'optimizer' of `read_t5x_checkpoint(..., with_optimizer=True)`); without it only
      `state.step` is written, and t5x restores such a checkpoint for training with
      `RestoreCheckpointConfig(strict=False)` (fresh optimizer state) or for inference.
    use_tensorstore: arrays of rank >= 1 as gzip zarr arrays beside the msgpack (as a
      partitioned t5x run writes them); False puts every array inline in the msgpack.
    dtype: cast the floating-point parameters first (t5x saves float32).

  A local checkpoint appears atomically (written to `.tmp-<time>`, then renamed); on
  GCS the msgpack file is written last, so a reader never sees a partial checkpoint.
  """
  step = int(step)
  state: dict[str, Any] = {}
  if optimizer_state is not None:
    state = dict(optimizer_state)
    if state.get("step") is not None and int(np.asarray(state["step"])) != step:
      raise UserError(f"write_t5x_checkpoint: optimizer_state['step'] is "
                      f"{int(np.asarray(state['step']))} but step is {step}; pass the same "
                      f"step or drop optimizer_state['step'].")
  state["step"] = np.asarray(step, np.int32)
  params = param_tree.cast_floating(params, dtype)
  state_dict = {TARGET: params, STATE: state}
  flat = flax.traverse_util.flatten_dict(state_dict, sep="/", keep_empty_nodes=True)
  flat = {k: (v if v is flax.traverse_util.empty_node else _to_numpy(v))
          for k, v in flat.items()}

  gcs = _split_gcs(path)
  final_dir = _join(path.rstrip("/"), f"checkpoint_{step}") if gcs else os.path.join(
      os.path.abspath(os.path.expanduser(path)), f"checkpoint_{step}")
  if _exists(final_dir if gcs is None else _join(final_dir, CHECKPOINT_FILE)):
    raise UserError(f"write_t5x_checkpoint: {final_dir} already exists; write to another "
                    f"directory or remove it first.")
  work_dir = final_dir if gcs else f"{final_dir}.tmp-{int(time.time() * 1000)}"
  if gcs is None:
    os.makedirs(work_dir)

  writes, stored = [], {}
  try:
    for name, value in flat.items():
      if (use_tensorstore and isinstance(value, np.ndarray) and value.ndim >= 1
          and value.size > 0 and np.issubdtype(value.dtype, np.number)):
        spec = _spec_for(name, value, gcs is not None)
        resolved = resolve_spec(spec, work_dir, name)
        resolved["metadata"] = dict(spec["metadata"])
        store = ts.open(resolved, create=True, open=True).result()
        writes.append(store.write(value))
        stored[name] = spec
      else:
        stored[name] = value
    for future in writes:
      future.result()
    contents = {"version": VERSION,
                "optimizer": flax.traverse_util.unflatten_dict(stored, sep="/")}
    _write_bytes(_join(work_dir, CHECKPOINT_FILE) if gcs else
                 os.path.join(work_dir, CHECKPOINT_FILE),
                 flax.serialization.msgpack_serialize(contents))
  except BaseException:
    if gcs is None:
      shutil.rmtree(work_dir, ignore_errors=True)
    raise
  if gcs is None:
    os.rename(work_dir, final_dir)
  return final_dir
