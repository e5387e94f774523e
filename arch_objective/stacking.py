"""Per-layer parameter names and the stacked layout of a scanned stack.

`stack_layers` / `unstack_layers` convert between t5x's per-layer names
(`decoder/layers_0/...`, ..., `decoder/layers_{n-1}/...`) and the layout of a scanned
stack (`decoder/layers/...` with a leading layer axis `[n, ...]`, `scan_layers=True`).
Every converter and checkpoint speaks the per-layer names; the stacked layout exists
only between a model and its scanned module (`models.BaseModel.params_to_scanned`).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from arch_objective.errors import UserError

Tree = Mapping[str, Any]
STACKED_LAYERS = "layers"
_LAYER = re.compile(r"^layers_(\d+)$")


def flatten(tree: Tree) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(dict(tree), sep="/")


def _stack(leaves: tuple) -> Any:
  """`n` arrays of one shape -> `[n, ...]`: numpy stays numpy, anything else is jax."""
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype)
  if all(isinstance(x, (np.ndarray, np.generic)) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _unstack(stacked: Any, i: int) -> Any:
  if isinstance(stacked, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(tuple(stacked.shape[1:]), stacked.dtype)
  return stacked[i]


def stack_layers(tree: Tree) -> dict[str, Any]:
  """Per-layer subtrees `layers_0..layers_{n-1}` -> one `layers` subtree of `[n, ...]`.

  Applies to every nested dict holding `layers_i` keys (each stack of a model); the
  rest of the tree is kept as it is. Exact: `unstack_layers(stack_layers(t)) == t`.
  Leaves may be numpy arrays (stacked with numpy), jax arrays or tracers (stacked with
  jax, so it runs under `jit` and differentiates) or `jax.ShapeDtypeStruct`s.
  """
  if not isinstance(tree, Mapping):
    return tree
  found = {int(m.group(1)): k for k in tree if isinstance(k, str) and (m := _LAYER.match(k))}
  out = {k: stack_layers(v) for k, v in tree.items() if k not in found.values()}
  if not found:
    return out
  n = len(found)
  if sorted(found) != list(range(n)):
    raise UserError(f"cannot stack layers {sorted(found.values())}: expected layers_0 .. "
                    f"layers_{n - 1} without gaps.")
  if STACKED_LAYERS in tree:
    raise UserError(f"cannot stack layers: the tree holds both '{STACKED_LAYERS}' and "
                    f"'layers_i' subtrees.")
  per_layer = [tree[f"layers_{i}"] for i in range(n)]
  structure = jax.tree_util.tree_structure(per_layer[0])
  for i, sub in enumerate(per_layer[1:], 1):
    if jax.tree_util.tree_structure(sub) != structure:
      raise UserError(f"cannot stack layers: layers_{i} has other parameters than layers_0 "
                      f"({sorted(flatten(sub))} vs {sorted(flatten(per_layer[0]))}).")
  out[STACKED_LAYERS] = jax.tree_util.tree_map(lambda *xs: _stack(xs), *per_layer)
  return out


def unstack_layers(tree: Tree) -> dict[str, Any]:
  """The inverse of `stack_layers`: a `layers` subtree of `[n, ...]` -> `layers_0..n-1`."""
  if not isinstance(tree, Mapping):
    return tree
  out = {k: unstack_layers(v) for k, v in tree.items() if k != STACKED_LAYERS}
  stacked = tree.get(STACKED_LAYERS)
  if not isinstance(stacked, Mapping):
    if STACKED_LAYERS in tree:
      out[STACKED_LAYERS] = stacked
    return out
  clashing = sorted(k for k in tree if isinstance(k, str) and _LAYER.match(k))
  if clashing:
    raise UserError(f"cannot unstack layers: the tree holds both '{STACKED_LAYERS}' and "
                    f"{clashing}.")
  leaves = jax.tree_util.tree_leaves(stacked)
  shapes = [tuple(getattr(x, "shape", np.shape(x))) for x in leaves]
  sizes = {shape[0] if shape else None for shape in shapes}
  if len(sizes) != 1 or None in sizes:
    raise UserError(f"cannot unstack layers: the '{STACKED_LAYERS}' arrays need one shared "
                    f"leading layer axis, found leading sizes {sorted(map(str, sizes))}.")
  for i in range(sizes.pop()):
    out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: _unstack(x, i), stacked)
  return out
