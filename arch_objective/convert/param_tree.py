"""Parameter trees as flat `a/b/c` names, and their check against a model.

Every converter in this package speaks in flat names: t5x's state-dict paths, the
native export's safetensors keys and the Hugging Face mapping all start from
`decoder/layers_0/self_attention/query/kernel`-style names (t5x's, spec §1.2).

`match_model` compares a tree with the parameters a model expects and returns a
`MatchReport` of what is missing, unexpected or of the wrong shape; converters turn
that report into a ValueError (strict) or hand it back with the loadable subset.

`stack_layers` / `unstack_layers` convert between t5x's per-layer names
(`decoder/layers_0/...`, ..., `decoder/layers_{n-1}/...`) and the layout of a scanned
stack (`decoder/layers/...` with a leading layer axis `[n, ...]`, `scan_layers=True`).
Every converter and checkpoint speaks the per-layer names; the stacked layout exists
only between a model and its scanned module (`models.BaseModel.params_to_scanned`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.traverse_util
import jax.numpy as jnp
import numpy as np

from arch_objective.errors import UserError
from arch_objective.stacking import STACKED_LAYERS, stack_layers, unstack_layers  # noqa: F401

SEP = "/"
Tree = Mapping[str, Any]


def flatten(tree: Tree) -> dict[str, Any]:
  """`{'a': {'b': x}}` -> `{'a/b': x}` (leaves are kept as they are)."""
  if not isinstance(tree, Mapping):
    raise UserError(f"a parameter tree must be a nested dict, found {type(tree).__name__}.")
  return flax.traverse_util.flatten_dict(dict(tree), sep=SEP)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """`{'a/b': x}` -> `{'a': {'b': x}}`."""
  return flax.traverse_util.unflatten_dict(dict(flat), sep=SEP)


# The dtypes parameters may be cast to (a converter's --dtype).
FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


def float_dtype(dtype, where: str = "dtype") -> Optional[str]:
  """The name of floating-point `dtype` (None stays None); anything else (an unknown
  name, an integer type) is a ValueError naming `where`, the accepted values and it."""
  if dtype is None:
    return None
  try:
    name = jnp.dtype(dtype).name
  except (TypeError, ValueError):
    name = None
  if name not in FLOAT_DTYPES:
    raise UserError(f"{where}: expected one of {', '.join(FLOAT_DTYPES)}, found "
                    f"{str(dtype)!r}.")
  return name


def floating_dtype_of(tree: Tree) -> Optional[str]:
  """The dtype name shared by every floating-point leaf of `tree`; the widest of them if
  they differ (bfloat16 before float16); None if it has none."""
  names = {np.asarray(v).dtype for v in flatten(tree).values()
           if jnp.issubdtype(np.asarray(v).dtype, jnp.floating)}
  if not names:
    return None
  return jnp.dtype(max(names, key=lambda d: (d.itemsize, d == jnp.bfloat16))).name


def cast_floating(tree: Tree, dtype) -> dict[str, Any]:
  """Every floating-point leaf of a nested dict cast to `dtype` (None: unchanged)."""
  flat = flatten(tree)
  if dtype is None:
    return unflatten(flat)
  dtype = jnp.dtype(float_dtype(dtype))
  return unflatten({k: (np.asarray(v).astype(dtype)
                        if jnp.issubdtype(np.asarray(v).dtype, jnp.floating) else v)
                    for k, v in flat.items()})


def model_shapes(model) -> dict[str, tuple[int, ...]]:
  """Flat name -> shape of every parameter `model` expects (allocates nothing)."""
  from arch_objective import models
  shapes = models.default_input_shapes(model.name, 1, 8, 8, 8)
  abstract = model.abstract_variables(shapes)["params"]
  return {k: tuple(v.shape) for k, v in flatten(abstract).items()}


@dataclasses.dataclass(frozen=True)
class MatchReport:
  """What stops a tree from loading into a model, by flat parameter name.

  missing     names the model needs and the tree lacks
  unexpected  names the tree has and the model does not know
  mismatched  name -> (shape found, shape expected)
  """
  missing: tuple[str, ...] = ()
  unexpected: tuple[str, ...] = ()
  mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
      default_factory=dict)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  @property
  def skipped(self) -> dict[str, Any]:
    """The report as plain data (JSON-ready): what a partial load leaves out."""
    return {"missing": list(self.missing), "unexpected": list(self.unexpected),
            "mismatched": {k: {"found": list(f), "expected": list(e)}
                           for k, (f, e) in self.mismatched.items()}}

  def describe(self, limit: int = 8) -> str:
    """A readable summary naming up to `limit` parameters of each kind."""
    def listing(names):
      names = list(names)
      more = f" and {len(names) - limit} more" if len(names) > limit else ""
      return ", ".join(names[:limit]) + more
    parts = []
    if self.missing:
      parts.append(f"{len(self.missing)} missing (the model needs them, the source lacks "
                   f"them): {listing(self.missing)}")
    if self.unexpected:
      parts.append(f"{len(self.unexpected)} unexpected (in the source, unknown to the "
                   f"model): {listing(self.unexpected)}")
    if self.mismatched:
      shown = [f"{k} found {f} expected {e}" for k, (f, e) in self.mismatched.items()]
      parts.append(f"{len(self.mismatched)} with the wrong shape: {listing(shown)}")
    return "; ".join(parts) if parts else "all parameters match"


def match_model(tree: Tree, expected_shapes: Mapping[str, tuple[int, ...]]) -> MatchReport:
  """Compare a tree's names and shapes with `expected_shapes` (see `model_shapes`)."""
  flat = flatten(tree)
  found = {k: tuple(np.shape(v)) for k, v in flat.items()}
  missing = tuple(sorted(set(expected_shapes) - set(found)))
  unexpected = tuple(sorted(set(found) - set(expected_shapes)))
  mismatched = {k: (found[k], tuple(expected_shapes[k]))
                for k in sorted(set(found) & set(expected_shapes))
                if found[k] != tuple(expected_shapes[k])}
  return MatchReport(missing, unexpected, mismatched)


def loadable_subset(tree: Tree, report: MatchReport) -> dict[str, Any]:
  """The part of `tree` a model can take: known names with the right shapes."""
  drop = set(report.unexpected) | set(report.mismatched)
  return unflatten({k: v for k, v in flatten(tree).items() if k not in drop})
