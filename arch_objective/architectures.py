"""The three architectures by name, and the facts about them that data code may know.

No JAX here: `objectives/`, `data/` and `prompts/` import this module, never `models`,
so the input pipeline runs (and is tested) without building a network.

  name                short  stacks
  causal_decoder      CD     one decoder, causal attention everywhere
  non_causal_decoder  ND     one decoder, bidirectional over the prefix (inputs)
  encoder_decoder     ED     an encoder and a decoder

Each architecture is an `Architecture` (`get(name)`): what code outside `models.py` asks
about an architecture (its feature groups, its input shapes at given lengths, its
feature converter, whether a prompt goes to an encoder) it reads from there, never by
comparing names. How each architecture reads each objective is the one table of
`objectives/pipeline.py`.

Lengths are given as a dict whose keys are those of `pipeline.Objective.feature_lengths`:
`decoder` (the decoder-only row, `inputs ++ targets`), `inputs` and `targets` (the
encoder-decoder's encoder and decoder rows). Each architecture reads the keys it has
(`length_keys`) and ignores the others:

  get('non_causal_decoder').input_shapes({'decoder': 626, 'inputs': 512, 'targets': 114}, 8)
      == {'decoder_input_tokens': (8, 626)}
  get('encoder_decoder').input_shapes({'decoder': 626, 'inputs': 512, 'targets': 114}, 8)
      == {'encoder_input_tokens': (8, 512), 'decoder_input_tokens': (8, 114)}
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from arch_objective import features, layouts
from arch_objective.features import (DECODER_FEATURES, ENCODER_FEATURES,  # noqa: F401
                                     FEATURES, TOKEN_FEATURES, Feature)
from arch_objective.errors import UserError

CAUSAL_DECODER = "causal_decoder"
NON_CAUSAL_DECODER = "non_causal_decoder"
ENCODER_DECODER = "encoder_decoder"
ARCHITECTURES = (CAUSAL_DECODER, NON_CAUSAL_DECODER, ENCODER_DECODER)



@dataclasses.dataclass(frozen=True)
class Architecture:
  """One architecture's static facts.

  name: `build_model`'s `arch`.
  short: the paper's abbreviation.
  has_encoder: an encoder reads the inputs (a prompt, a prefix) and the decoder the
    targets; without one, a single decoder reads `inputs ++ targets` in one row.
  bidirectional_prefix: the decoder attends bidirectionally over the positions marked
    by `decoder_causal_attention` (the non-causal decoder's prefix).
  feature_groups: the model features a batch may hold; features of a group share one
    length. Only the non-causal decoder reads `decoder_causal_attention` (the causal
    decoder accepts and ignores it).
  token_inputs: `(model feature, length key)` of each token input `get_initial_variables`
    needs, in order: the shape of that feature is `[batch, lengths[length key]]`.
  feature_converter: how it reads `{'inputs', 'targets'}` examples, a key of
    `objectives.feature_converters.CONVERTERS`: 'prefix_lm_rows' (`inputs ++ targets` in
    one decoder row) or 'encoder_decoder_rows' (inputs to the encoder, targets to the
    decoder).
  layout: how it reads a prompt and a continuation (`layouts`): scoring and generation
    batches, truncation, windows, synthetic batches, the memory estimate's stacks.
  """
  name: str
  short: str
  has_encoder: bool
  bidirectional_prefix: bool
  feature_groups: tuple[tuple[str, ...], ...]
  token_inputs: tuple[tuple[str, str], ...]
  feature_converter: str
  layout: layouts.Layout

  @property
  def length_keys(self) -> tuple[str, ...]:
    """The keys of a lengths dict this architecture reads: `('decoder',)` or
    `('inputs', 'targets')`."""
    return tuple(key for _, key in self.token_inputs)

  def row_lengths(self, lengths: Mapping[str, Any]) -> dict[str, int]:
    """`lengths` cut to this architecture's `length_keys`, e.g. `{'decoder': 626}` or
    `{'inputs': 512, 'targets': 114}`."""
    missing = [k for k in self.length_keys if lengths.get(k) is None]
    if missing:
      raise UserError(f"{self.name} needs the lengths {list(self.length_keys)}, found "
                      f"{dict(lengths)} (missing {missing}).")
    return {k: int(lengths[k]) for k in self.length_keys}

  def row_tokens(self, lengths: Mapping[str, Any]) -> int:
    """Tokens one row carries at `lengths`: the decoder length, or inputs + targets."""
    return sum(self.row_lengths(lengths).values())

  def input_shapes(self, lengths: Mapping[str, Any], batch_size: int = 1
                   ) -> dict[str, tuple[int, int]]:
    """Input shapes for `get_initial_variables`: `{feature: (batch_size, length)}` for
    each of `token_inputs` (see the module docstring)."""
    row = self.row_lengths(lengths)
    return {feature: (batch_size, row[key]) for feature, key in self.token_inputs}

  def lengths_of(self, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The lengths of `input_shapes` (`[batch, length]` per feature), the inverse of
    `input_shapes`: e.g. `{'decoder': 626}`."""
    missing = [f for f, _ in self.token_inputs if f not in input_shapes]
    if missing:
      raise UserError(f"{self.name}: input_shapes must give "
                      f"{[f for f, _ in self.token_inputs]}, found {sorted(input_shapes)} "
                      f"(missing {missing}).")
    return {key: int(input_shapes[feature][1]) for feature, key in self.token_inputs}

  def check_batch(self, batch: Mapping[str, Any], required: Sequence[str]) -> None:
    """Raise a UserError unless `batch` holds every `required` feature and each feature
    of `feature_groups` it holds is `[batch, length]` of a dtype the feature `accepts`,
    with one shape per group and one batch size for all."""
    if not isinstance(batch, Mapping):
      raise UserError(f"{self.name}: the batch must be a dict of arrays, found "
                      f"{type(batch).__name__}.")
    missing = [f for f in required if batch.get(f) is None]
    if missing:
      raise UserError(f"{self.name}: missing feature(s) {missing}; the batch has "
                      f"{sorted(k for k, v in batch.items() if v is not None)}. "
                      f"Required: {list(required)}.")
    batch_size = None
    for group in self.feature_groups:
      shape = None
      for name in group:
        value = batch.get(name)
        if value is None:
          continue
        value_shape = tuple(value.shape if hasattr(value, "shape") else np.shape(value))
        if len(value_shape) != 2:
          raise UserError(f"{self.name}: feature {name!r} must have shape [batch, length], "
                          f"found shape {value_shape}.")
        dtype = np.dtype(value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
        if not FEATURES[name].accepts(dtype):
          expected = ("an integer or float" if FEATURES[name].role == "weights"
                      else "an integer")
          raise UserError(f"{self.name}: feature {name!r} must have {expected} dtype, "
                          f"found {dtype}.")
        if shape is None:
          shape, first = value_shape, name
        elif value_shape != shape:
          raise UserError(f"{self.name}: feature {name!r} has shape {value_shape} but "
                          f"{first!r} has {shape}; they must match.")
        if batch_size is None:
          batch_size, batch_from = value_shape[0], name
        elif value_shape[0] != batch_size:
          raise UserError(f"{self.name}: feature {name!r} has batch size {value_shape[0]} "
                          f"but {batch_from!r} has {batch_size}.")

  def shares_parameters(self, other: "Architecture") -> bool:
    """Whether `other` has this architecture's parameter tree (CD and ND do, spec §7.3):
    a checkpoint of one is read as the other unchanged."""
    return self.has_encoder == other.has_encoder


_DECODER_GROUPS = (DECODER_FEATURES,)
# The encoder-decoder's decoder has no prefix to mark.
_ENCODER_DECODER_GROUPS = (ENCODER_FEATURES, tuple(f for f in DECODER_FEATURES
                                                   if FEATURES[f].role != "prefix"))
_DECODER_INPUTS = ((features.DECODER_INPUT_TOKENS, "decoder"),)
_ENCODER_DECODER_INPUTS = ((features.ENCODER_INPUT_TOKENS, "inputs"),
                           (features.DECODER_INPUT_TOKENS, "targets"))

SPECS: dict[str, Architecture] = {
    CAUSAL_DECODER: Architecture(
        CAUSAL_DECODER, "CD", has_encoder=False, bidirectional_prefix=False,
        feature_groups=_DECODER_GROUPS, token_inputs=_DECODER_INPUTS,
        feature_converter="prefix_lm_rows", layout=layouts.DECODER),
    NON_CAUSAL_DECODER: Architecture(
        NON_CAUSAL_DECODER, "ND", has_encoder=False, bidirectional_prefix=True,
        feature_groups=_DECODER_GROUPS, token_inputs=_DECODER_INPUTS,
        feature_converter="prefix_lm_rows", layout=layouts.PREFIX_DECODER),
    ENCODER_DECODER: Architecture(
        ENCODER_DECODER, "ED", has_encoder=True, bidirectional_prefix=False,
        feature_groups=_ENCODER_DECODER_GROUPS, token_inputs=_ENCODER_DECODER_INPUTS,
        feature_converter="encoder_decoder_rows", layout=layouts.ENCODER_DECODER),
}
SHORT_NAMES = {name: spec.short for name, spec in SPECS.items()}
DECODER_ONLY = tuple(name for name, spec in SPECS.items() if not spec.has_encoder)


def check(arch: str, what: str = "arch") -> str:
  """`arch` if it names an architecture, else a ValueError listing the names."""
  if arch not in ARCHITECTURES:
    raise UserError(f"unknown {what} {arch!r}; valid architectures: "
                    f"{', '.join(ARCHITECTURES)}.")
  return arch


def get(arch: str, what: str = "arch") -> Architecture:
  """The `Architecture` named `arch`, else `check`'s ValueError listing the names."""
  return SPECS[check(arch, what)]


def find(arch: Any) -> Optional[Architecture]:
  """The `Architecture` named `arch`, or None for anything else (e.g. a checkpoint's
  unchecked meta); callers raise their own error."""
  return SPECS[arch] if arch in ARCHITECTURES else None


def decoder_only(bidirectional_prefix: bool) -> Architecture:
  """The decoder-only architecture with (ND) or without (CD) the bidirectional prefix."""
  return next(spec for spec in SPECS.values() if not spec.has_encoder
              and spec.bidirectional_prefix == bool(bidirectional_prefix))


def is_decoder_only(arch: Any) -> bool:
  """Whether `arch` names a decoder-only architecture (False for any other value)."""
  spec = find(arch)
  return spec is not None and not spec.has_encoder


def share_parameters(a: Any, b: Any) -> bool:
  """Whether the architectures named `a` and `b` have one parameter tree
  (`Architecture.shares_parameters`; False when either is not a name)."""
  spec_a, spec_b = find(a), find(b)
  return spec_a is not None and spec_b is not None and spec_a.shares_parameters(spec_b)


def readers(has_inputs: bool) -> tuple[str, ...]:
  """The architectures that read a task's examples: all three for `{inputs, targets}`
  examples, the decoder-only ones for `{targets}` alone (an encoder would read nothing)."""
  return ARCHITECTURES if has_inputs else DECODER_ONLY


def default_reader(has_inputs: bool) -> str:
  """The reader of a task's examples when none is named: the encoder-decoder for
  `{inputs, targets}` examples, the causal decoder for `{targets}`."""
  return ENCODER_DECODER if has_inputs else CAUSAL_DECODER


def model_features(arch: str) -> tuple[tuple[str, ...], ...]:
  """The feature groups a batch of `arch` may hold (`Architecture.feature_groups`)."""
  return get(arch).feature_groups


# The size presets (`network.make_config`). Layer counts are per stack: decoder-only models have as many layers as each stack
# of the encoder-decoder, so ED costs about as much per token (paper §3.1).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128, layers=2),
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, layers=8),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, layers=24),
    "xl": dict(emb_dim=2048, num_heads=32, head_dim=64, mlp_dim=5120, layers=24),
    "paper": dict(emb_dim=4096, num_heads=64, head_dim=64, mlp_dim=10240, layers=24),
}
