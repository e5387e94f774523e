"""The files of a Hugging Face model directory: `config.json` and safetensors weights.

Every Hugging Face format this package writes or reads (the T5 export `hf_t5`, the
decoder-only export `hf_decoder`, our own format in `hf`) keeps its weights the same way:

  model.safetensors                      all tensors, when they fit `max_shard_bytes`
  model-0000k-of-0000n.safetensors       else shards, as `save_pretrained` writes them,
  model.safetensors.index.json           with an index {"weight_map": {tensor: file}}

and its configuration in `config.json`, where our own block (`CONFIG_BLOCK`: arch,
TransformerConfig, meta) travels beside the Hugging Face fields.

Reading is guarded: every shard the index names must lie inside the directory (no
absolute path, URL or climbing `..`), and a damaged safetensors or JSON file is a
UserError naming it. Directories may be local or remote (`gs://...`, see
`arch_objective.paths`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np

from arch_objective import models, network, paths
from arch_objective.convert import param_tree
from arch_objective.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3
# The key of our own config block inside an exported `config.json`.
CONFIG_BLOCK = "arch_objective"


def save_tensors(tensors: Mapping[str, np.ndarray], path: str, metadata: dict):
  """Write one safetensors file (local or remote)."""
  if paths.is_remote(path):
    from safetensors.numpy import save
    paths.write_bytes(path, save(dict(tensors), metadata=metadata))
  else:
    from safetensors.numpy import save_file
    save_file(dict(tensors), path, metadata=metadata)


def load_tensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of one safetensors file; a damaged one (truncated, a header that lies
  about its length, is not JSON or points outside the data) is a UserError naming it."""
  import safetensors
  error = getattr(safetensors, "SafetensorError", Exception)
  try:
    if paths.is_remote(path):
      from safetensors.numpy import load
      return load(paths.read_bytes(path))
    from safetensors.numpy import load_file
    return load_file(path)
  except error as e:
    reason = " ".join(str(e).split())
    raise UserError(f"{path} is not a readable safetensors file ({reason}); it is "
                    f"truncated or damaged: copy or export it again.") from None


def write_weights(tensors: Mapping[str, np.ndarray], out_dir: str,
                  max_shard_bytes: int) -> list[str]:
  """Write `model.safetensors` (or shards and an index); returns the file names."""
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  total = sum(v.nbytes for v in tensors.values())
  metadata = {"format": "pt"}
  if total <= max_shard_bytes:
    save_tensors(tensors, paths.join(out_dir, WEIGHTS_FILE), metadata)
    return [WEIGHTS_FILE]
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, value in tensors.items():
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += value.nbytes
  files, weight_map = [], {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_tensors(shard, paths.join(out_dir, file), metadata)
    files.append(file)
    weight_map.update({name: file for name in shard})
  paths.write_text(paths.join(out_dir, INDEX_FILE), json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  return files + [INDEX_FILE]


def read_json(file: str) -> Any:
  """The JSON of `file` (local or remote); UserError naming the file if it is not JSON."""
  try:
    return json.loads(paths.read_text(file))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{file} is not valid JSON ({e}).") from None


def inside(directory: str, name: Any, source: str, entry: str) -> str:
  """`directory/name` for a file `name` read from `source` (an index or manifest): only
  a relative path that stays inside `directory` is accepted; an absolute path, a URL or
  a `..` that climbs out of it is a UserError naming the file, the entry and the
  directory. (Symbolic links are followed: Hugging Face's own cache links every
  snapshot file to a blob outside the snapshot directory.)"""
  if not isinstance(name, str) or not name.strip():
    raise UserError(f"{source}: entry {entry!r} names {name!r}, expected a file name "
                    f"inside {directory}.")
  if not paths.stays_inside(name):
    raise UserError(f"{source}: entry {entry!r} names {name!r}, which is outside the "
                    f"directory {directory}; only files inside it are read.")
  return paths.join(directory, name)


def read_weights(path: str) -> dict[str, np.ndarray]:
  """Every tensor of `model.safetensors` or of the shards `model.safetensors.index.json`
  lists, each shard resolved inside `path` (see `inside`)."""
  index = paths.join(path, INDEX_FILE)
  if paths.isfile(index):
    weight_map = read_json(index)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
      raise UserError(f"{index}: expected an object whose 'weight_map' maps tensor names "
                      f"to shard files, found none.")
    files = {}
    for tensor, file in sorted(weight_map.items()):
      files.setdefault(inside(path, file, index, tensor), file)
    files = sorted(files)
  elif paths.isfile(paths.join(path, WEIGHTS_FILE)):
    files = [paths.join(path, WEIGHTS_FILE)]
  else:
    raise UserError(f"no weights in {path}: expected {WEIGHTS_FILE} or {INDEX_FILE} "
                    f"(PyTorch .bin files are not read; re-save with safe_serialization=True).")
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    tensors.update(load_tensors(file))
  return tensors


def prepare_out_dir(out_dir: str) -> str:
  """`out_dir`, created, normalised; a UserError if it already holds an export."""
  out_dir = paths.normalize(out_dir, "export directory")
  if paths.isfile(paths.join(out_dir, CONFIG_FILE)):
    raise UserError(f"{out_dir} already holds a {CONFIG_FILE}; export into an empty "
                    f"directory or remove the old export first.")
  paths.makedirs(out_dir)
  return out_dir


def flat_numpy(params: Mapping[str, Any], dtype) -> dict[str, np.ndarray]:
  """`{flat name: numpy array}` of a parameter tree, floating leaves cast to `dtype`
  (None keeps them)."""
  return {k: np.asarray(v) for k, v in
          param_tree.flatten(param_tree.cast_floating(params, dtype)).items()}


def check_params(params: Mapping[str, Any], arch: str, config: network.TransformerConfig,
                 where: str):
  """A UserError naming what differs unless `params` fit the `arch` model of exactly
  `config` (`models.from_meta` of the pair)."""
  model = models.from_meta({"arch": arch, "config": dataclasses.asdict(config)}, where)
  report = param_tree.match_model(params, param_tree.model_shapes(model))
  if not report.ok:
    raise UserError(f"{where}: the parameters do not fit a {arch} with this config: "
                    f"{report.describe()}. Pass the config the parameters were trained with.")
