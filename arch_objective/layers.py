"""Config-free building blocks of the T5.1.1 transformer, shared by all three architectures.

Nothing here sees a model config: `network.py` wires these blocks. Parameter names
and storage shapes follow t5x's `examples/{t5,decoder_only}/layers.py` so that a t5x
checkpoint maps 1:1 (dense kernels are stored 2-D as `(prod(in), prod(out))`).

Shape letters used in docstrings: b batch, q query length, k key length, l length,
d embedding width (emb_dim), h heads, e head width (head_dim), m mlp width, v vocab.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arch_objective.errors import UserError

Array = jax.Array
DType = jnp.dtype
Initializer = Callable[..., Array]

# ---------------------------------------------------------------------------
# Logical axis names: one vocabulary for the whole codebase. Parameter axes use
# t5x's names (so t5x's logical rules and checkpoints line up); activation axes
# are named apart so that weights and activations can be sharded differently.
# The mapping to mesh axes lives in one place, `training/partitioning.py`.
# ---------------------------------------------------------------------------
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
JOINED_KV = "joined_kv"
RELPOS_BUCKETS = "relpos_buckets"
LAYERS = "layers"  # the leading axis of a scanned stack's parameters (never sharded)

ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_MLP = "activation_mlp"
ACT_HEADS = "activation_heads"
ACT_KV = "activation_kv"
ACT_VOCAB = "activation_vocab"

PARAM_AXES = (VOCAB, EMBED, MLP, HEADS, KV, JOINED_KV, RELPOS_BUCKETS, LAYERS)
ACTIVATION_AXES = (ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_MLP, ACT_HEADS, ACT_KV,
                   ACT_VOCAB)

NEG_INF = -1e10  # the mask bias of t5x: large but finite, so bf16 softmax stays finite

# Initialisers of the paper's code (spec §1.3).
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
mlp_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
embedding_init = nn.initializers.normal(stddev=1.0)


def constrain(x: Array, axes: Sequence[Optional[str]]) -> Array:
  """Logical sharding constraint on an activation (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, tuple(axes))


def _canonicalize_tuple(x) -> tuple:
  return tuple(x) if isinstance(x, Iterable) else (x,)


def _normalize_axes(axes: tuple, ndim: int) -> tuple:
  return tuple(ax if ax >= 0 else ndim + ax for ax in axes)


# ---------------------------------------------------------------------------
# Dense, embedding, norm
# ---------------------------------------------------------------------------
class DenseGeneral(nn.Module):
  """A bias-free linear map over one or more axes, kernel stored 2-D as in t5x.

  `inputs [..., *in]` -> `[..., *features]`, kernel param `(prod(in), prod(features))`.
  """
  features: int | Sequence[int]
  axis: int | Sequence[int] = -1
  dtype: DType = jnp.float32
  kernel_init: Initializer = attention_kernel_init
  kernel_axes: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = _canonicalize_tuple(self.features)
    axis = _normalize_axes(_canonicalize_tuple(self.axis), inputs.ndim)
    inputs = jnp.asarray(inputs, self.dtype)
    in_shape = tuple(inputs.shape[ax] for ax in axis)
    kernel_param_shape = (int(np.prod(in_shape)), int(np.prod(features)))
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
        kernel_param_shape, jnp.float32)
    kernel = jnp.asarray(kernel, self.dtype).reshape(in_shape + features)
    contract = tuple(range(len(axis)))
    return lax.dot_general(inputs, kernel, ((axis, contract), ((), ())))


class Embed(nn.Module):
  """Token embedding `[v, d]` with `attend` for tied output logits.

  The input embedding is not scaled by sqrt(d) (T5.1.1); `attend` runs in float32.
  """
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  attend_dtype: DType = jnp.float32
  embedding_init: Initializer = embedding_init

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(self.embedding_init, (VOCAB, EMBED)),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, tokens: Array) -> Array:
    """`tokens [b, l]` int -> `[b, l, d]`."""
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise UserError(f"Embed expects integer token ids, found dtype {tokens.dtype}.")
    embedding = jnp.asarray(self.embedding, self.dtype)
    return jnp.take(embedding, tokens, axis=0)

  def attend(self, query: Array) -> Array:
    """`query [..., d]` -> `[..., v]`: the dot product with every embedding."""
    query = jnp.asarray(query, self.attend_dtype)
    return jnp.dot(query, jnp.asarray(self.embedding, self.attend_dtype).T)


class RMSNorm(nn.Module):
  """T5's "LayerNorm": `x * rsqrt(mean(x^2) + eps) * scale`, float32 math, no bias."""
  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
                       (x.shape[-1],), jnp.float32)
    mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
    y = x * lax.rsqrt(mean2 + self.epsilon)
    return jnp.asarray(y * scale, self.dtype)


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------
def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable = jnp.multiply,
                        dtype: DType = jnp.float32) -> Array:
  """`query_input [b, q]`, `key_input [b, k]` -> mask `[b, 1, q, k]` = fn(q_i, k_j)."""
  mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
  return mask[:, None, :, :].astype(dtype)


def make_causal_mask(x: Array, dtype: DType = jnp.float32) -> Array:
  """`x [b, l]` -> `[b, 1, l, l]` with 1 where key index <= query index."""
  idxs = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return make_attention_mask(idxs, idxs, jnp.greater_equal, dtype=dtype)


def combine_masks(*masks: Optional[Array], dtype: DType = jnp.float32) -> Optional[Array]:
  """Logical AND of the masks that are not None (None if all are None)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  mask = masks[0]
  for other in masks[1:]:
    mask = jnp.logical_and(mask, other)
  return mask.astype(dtype)


def combine_biases(*biases: Optional[Array]) -> Optional[Array]:
  """Sum of the attention biases that are not None."""
  biases = [b for b in biases if b is not None]
  if not biases:
    return None
  return functools.reduce(jnp.add, biases)


def make_decoder_mask(decoder_target_tokens: Optional[Array],
                      dtype: DType = jnp.float32,
                      decoder_causal_attention: Optional[Array] = None,
                      decoder_segment_ids: Optional[Array] = None) -> Array:
  """The decoder self-attention mask `[b, 1, l, l]` of both decoder-only models.

  mask = (causal OR (dca[q] AND dca[k])) AND padding AND same-segment, where
  padding is `decoder_target_tokens > 0` on both sides (skipped when the targets are
  None, as during prefill) and the dca term is present only for the non-causal
  decoder. `decoder_causal_attention` marks the inputs plus one position.

  Example (l=6, a 2-token prefix, so dca marks 3 positions, last position padding):
    dca     = [1, 1, 1, 0, 0, 0], targets = [5, 6, 7, 8, 1, 0]
    mask[0] = [[1 1 1 0 0 0]
               [1 1 1 0 0 0]
               [1 1 1 0 0 0]
               [1 1 1 1 0 0]
               [1 1 1 1 1 0]
               [0 0 0 0 0 0]]
  """
  ref = decoder_target_tokens
  if ref is None:
    ref = decoder_causal_attention if decoder_causal_attention is not None else decoder_segment_ids
  if ref is None:
    raise UserError("make_decoder_mask needs at least one of decoder_target_tokens, "
                    "decoder_causal_attention or decoder_segment_ids to know the shape.")
  mask = make_causal_mask(ref, dtype=jnp.bool_)
  if decoder_causal_attention is not None:
    inputs = make_attention_mask(decoder_causal_attention, decoder_causal_attention,
                                 jnp.logical_and, dtype=jnp.bool_)
    mask = jnp.logical_or(mask, inputs)
  pad = None
  if decoder_target_tokens is not None:
    pad = make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0,
                              jnp.logical_and, dtype=jnp.bool_)
  pack = None
  if decoder_segment_ids is not None:
    pack = make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal,
                               dtype=jnp.bool_)
  return combine_masks(mask, pad, pack, dtype=dtype)


def make_step_mask(decode_position: Array, cache_length: int,
                   dtype: DType = jnp.float32) -> Array:
  """Self-attention mask `[b, 1, 1, cache_length]` for one cached decoding step.

  The query at `decode_position [b]` sees every cached key at or before it.
  """
  keys = jnp.arange(cache_length, dtype=jnp.int32)[None, :]
  mask = keys <= decode_position[:, None]
  return mask[:, None, None, :].astype(dtype)


def mask_to_bias(mask: Optional[Array], dtype: DType) -> Optional[Array]:
  """0 where the mask is 1, NEG_INF where it is 0."""
  if mask is None:
    return None
  return lax.select(mask > 0, jnp.zeros(mask.shape, dtype), jnp.full(mask.shape, NEG_INF, dtype))


# ---------------------------------------------------------------------------
# Relative position bias
# ---------------------------------------------------------------------------
def relative_position_bucket(relative_position, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128):
  """T5's bucketing of `relative_position = key_pos - query_pos` (any int array).

  Bidirectional: half the buckets for keys before the query, half for keys after.
  Unidirectional: keys after the query all fall in bucket 0 (like distance 0).
  Within a direction, half the buckets are exact distances, the rest logarithmic up
  to `max_distance`.
  """
  xp = jnp if isinstance(relative_position, jax.Array) else np
  n = -relative_position
  ret = 0
  if bidirectional:
    num_buckets //= 2
    ret = (n < 0).astype(np.int32) * num_buckets
    n = xp.abs(n)
  else:
    n = xp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      xp.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = xp.minimum(val_if_large, num_buckets - 1)
  return ret + xp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """T5 relative position bias: table `rel_embedding [h, buckets]`.

  `__call__(qlen, klen, bidirectional)` -> `[1, h, q, k]`; with `query_positions [b]`
  (cached decoding, q = 1) -> `[b, h, 1, k]`.
  """
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DType
  embedding_init: Initializer = relpos_init

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool = True,
               query_positions: Optional[Array] = None) -> Array:
    table = self.param("rel_embedding",
                       nn.with_logical_partitioning(self.embedding_init, (HEADS, RELPOS_BUCKETS)),
                       (self.num_heads, self.num_buckets), jnp.float32)
    table = jnp.asarray(table, self.dtype)
    if query_positions is None:
      # Traced iotas, not numpy: a [q, k] numpy array would be embedded as a constant in
      # every layer's program (4 MiB each at 1024 tokens), which slows compilation.
      rel = (lax.broadcasted_iota(jnp.int32, (qlen, klen), 1)
             - lax.broadcasted_iota(jnp.int32, (qlen, klen), 0))              # [q, k]
      buckets = relative_position_bucket(rel, bidirectional, self.num_buckets,
                                         self.max_distance)
      # A one-hot contraction instead of a gather: its gradient is a matmul, not a
      # scatter of q x k updates onto `buckets` addresses (exact: one term per entry).
      one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=self.dtype)  # [q, k, n]
      return jnp.einsum("hn,qkn->hqk", table, one_hot)[None]             # [1, h, q, k]
    rel = jnp.arange(klen)[None, None, :] - query_positions.reshape(-1, 1, 1)  # [b, 1, k]
    buckets = relative_position_bucket(rel, bidirectional, self.num_buckets,
                                       self.max_distance)
    bias = jnp.take(table, buckets, axis=1)                              # [h, b, 1, k]
    return jnp.transpose(bias, (1, 0, 2, 3))                             # [b, h, 1, k]


# ---------------------------------------------------------------------------
# Dropout keyed per row
# ---------------------------------------------------------------------------
_ROW_OFFSET: contextvars.ContextVar = contextvars.ContextVar("dropout_row_offset", default=0)


@contextlib.contextmanager
def dropout_row_offset(offset):
  """Inside, row `r` of every array that dropout sees is row `offset + r` of the step's
  batch. The trainer sets it for microbatch `i` of `m` rows to `i * m`, so a row's
  dropout masks, and so the summed gradients, do not depend on `num_microbatches`."""
  token = _ROW_OFFSET.set(offset)
  try:
    yield
  finally:
    _ROW_OFFSET.reset(token)


def dropout_keep_mask(rng: Array, keep_prob: float, shape: Sequence[int],
                      broadcast_dims: Iterable[int] = ()) -> Array:
  """Boolean keep mask of `shape` `[b, ...]`, drawn row by row.

  Row `r` draws its bits from `fold_in(rng, offset + r)` (see `dropout_row_offset`),
  so the mask of a row is the same whether the batch is split or not. Axes in
  `broadcast_dims` get one draw shared along them (t5x's `broadcast_dims`).
  """
  ndim = len(shape)
  broadcast = {d % ndim for d in broadcast_dims}
  if 0 in broadcast:
    raise UserError("dropout cannot broadcast over the batch axis (axis 0): each row "
                    "draws its own mask.")
  row_shape = tuple(1 if i in broadcast else n for i, n in enumerate(shape))[1:]
  rows = jnp.asarray(_ROW_OFFSET.get(), jnp.uint32) + jnp.arange(shape[0], dtype=jnp.uint32)
  keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(rows)
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, keep_prob, row_shape))(keys)
  return jnp.broadcast_to(keep, tuple(shape))


def apply_dropout(x: Array, rate: float, rng: Array, broadcast_dims: Iterable[int] = ()
                  ) -> Array:
  """`x` with units dropped at `rate` and the rest scaled by `1 / (1 - rate)`."""
  keep_prob = 1.0 - rate
  keep = dropout_keep_mask(rng, keep_prob, x.shape, broadcast_dims)
  return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """Dropout with per-row keys (`dropout_keep_mask`); `[b, ...] -> [b, ...]`."""
  rate: float
  broadcast_dims: Sequence[int] = ()

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    return apply_dropout(x, self.rate, self.make_rng("dropout"), self.broadcast_dims)


# ---------------------------------------------------------------------------
# Modes of a call: what attention does with its key/value cache
# ---------------------------------------------------------------------------
# As MaxText's MODEL_MODE_*: the caller states the mode; nothing guesses it from a shape.
MODE_TRAIN = "train"                    # whole sequences, no cache: training, scoring
MODE_PREFILL = "prefill"                # whole sequences, every key/value written to the cache
MODE_AUTOREGRESSIVE = "autoregressive"  # one new token per row against the cache
MODES = (MODE_TRAIN, MODE_PREFILL, MODE_AUTOREGRESSIVE)


def check_mode(mode: str):
  """Raise a ValueError naming the valid modes when `mode` is not one of `MODES`."""
  if mode not in MODES:
    raise UserError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}.")


@dataclasses.dataclass(frozen=True)
class Decoding:
  """The decoding state of one call of a decoder stack: its mode and, for an
  autoregressive step, where each row's token goes.

  `mode`          one of `MODES`;
  `position`      `[b]` int32, MODE_AUTOREGRESSIVE only: the cache slot of each row's
                  new token (its keys/values are written there; the step's mask hides
                  the slots after it);
  `cache_length`  MODE_AUTOREGRESSIVE only: the number of cache slots (the keys a step's
                  query attends over, and the width of its relative position bias).

  `TRAIN` and `PREFILL` are the two states without a position; `Decoding.step(position,
  cache_length)` makes a step's.
  """
  mode: str = MODE_TRAIN
  position: Optional[Array] = None
  cache_length: Optional[int] = None

  def __post_init__(self):
    check_mode(self.mode)
    if self.mode == MODE_AUTOREGRESSIVE:
      if self.position is None or self.cache_length is None:
        raise UserError(f"Decoding(mode={MODE_AUTOREGRESSIVE!r}) needs position [batch] "
                        f"and cache_length; found position={self.position!r}, "
                        f"cache_length={self.cache_length!r}.")
      if not isinstance(self.cache_length, int) or self.cache_length < 1:
        raise UserError(f"Decoding.cache_length must be a positive int, found "
                        f"{self.cache_length!r}.")
    elif self.position is not None or self.cache_length is not None:
      raise UserError(f"Decoding(mode={self.mode!r}) takes no position or cache_length "
                      f"(only mode={MODE_AUTOREGRESSIVE!r} does).")

  @classmethod
  def step(cls, position: Array, cache_length: int) -> "Decoding":
    """An autoregressive step: one token per row at `position [b]` of a cache of
    `cache_length` slots."""
    return cls(MODE_AUTOREGRESSIVE, position, cache_length)


Decoding.TRAIN = Decoding(MODE_TRAIN)
Decoding.PREFILL = Decoding(MODE_PREFILL)


class KeyValue(NamedTuple):
  """Projected attention keys and values, `[b, k, h, e]` each (with a leading layer axis
  `[n, b, k, h, e]` where a stack holds one per layer)."""
  key: Array
  value: Array


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------
EINSUM = "einsum"
DOT_PRODUCT = "dot_product"
CUDNN = "cudnn"
ATTENTION_IMPLS = (EINSUM, DOT_PRODUCT, CUDNN)


def check_attention_impl(implementation: str, dtype: DType):
  """Raise a ValueError naming `attention_impl` when `implementation` cannot run here.

  'cudnn' needs JAX's GPU backend (cuDNN flash attention on an NVIDIA GPU) and
  bfloat16 or float16 activations.
  """
  if implementation not in ATTENTION_IMPLS:
    raise UserError(f"attention_impl must be one of {', '.join(ATTENTION_IMPLS)}; found "
                    f"{implementation!r}.")
  if implementation != CUDNN:
    return
  backend = jax.default_backend()
  if backend != "gpu":
    raise UserError(f"attention_impl='cudnn' (cuDNN flash attention) runs only on NVIDIA "
                    f"GPUs, but JAX's backend here is {backend!r}; use "
                    f"attention_impl='dot_product' (any backend) or 'einsum'.")
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise UserError(f"attention_impl='cudnn' needs bfloat16 or float16 activations "
                    f"(TransformerConfig.dtype), found {jnp.dtype(dtype).name}; use "
                    f"attention_impl='dot_product' for {jnp.dtype(dtype).name}.")


def dot_product_attention(query: Array, key: Array, value: Array,
                          bias: Optional[Array] = None,
                          dropout_rng: Optional[Array] = None,
                          dropout_rate: float = 0.0,
                          deterministic: bool = True,
                          dtype: DType = jnp.float32,
                          float32_logits: bool = False,
                          implementation: str = EINSUM) -> Array:
  """Unscaled dot-product attention (the 1/sqrt(e) lives in the query initialiser).

  `query [b, q, h, e]`, `key/value [b, k, h, e]`, `bias` broadcastable to `[b, h, q, k]`
  (the relative position bias plus the masks as `NEG_INF`) -> `[b, q, h, e]`. Dropout on
  the weights is broadcast over the query axis.

  `implementation`:
    'einsum'       the reference: two einsums and a softmax, in `dtype` (the logits in
                   float32 with `float32_logits`).
    'dot_product'  `jax.nn.dot_product_attention(..., scale=1.0, implementation=None)`:
                   JAX picks the kernel (XLA's in JAX 0.10). Logits and softmax are always
                   float32.
    'cudnn'        the same with `implementation='cudnn'`: cuDNN flash attention, NVIDIA
                   GPUs with bfloat16/float16 only (`check_attention_impl`).
  Dropout on the attention weights exists only in the reference, so with dropout active
  (`not deterministic and dropout_rate > 0`) every implementation computes the reference.
  """
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise UserError(f"attention expects rank-4 q/k/v, found {query.shape}, {key.shape}, "
                    f"{value.shape}.")
  check_attention_impl(implementation, query.dtype)
  dropout = not deterministic and dropout_rate > 0.0
  if implementation != EINSUM and not dropout:
    out = jax.nn.dot_product_attention(
        query, key.astype(query.dtype), value.astype(query.dtype), bias=bias, scale=1.0,
        implementation=CUDNN if implementation == CUDNN else None)
    return out.astype(dtype)                                              # [b, q, h, e]
  if float32_logits:
    query, key = query.astype(jnp.float32), key.astype(jnp.float32)
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)                      # [b, h, q, k]
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  weights = jax.nn.softmax(logits).astype(dtype)
  if dropout:
    weights = apply_dropout(weights, dropout_rate, dropout_rng, broadcast_dims=(-2,))
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)                   # [b, q, h, e]


class MultiHeadDotProductAttention(nn.Module):
  """Bias-free multi-head attention with an optional key/value cache.

  Parameters `query|key|value/kernel (d, h*e)` and `out/kernel (h*e, d)`.

  `mode` (one of `MODES`, self-attention only for the cache):
    MODE_TRAIN           no cache;
    MODE_PREFILL         a whole-length input writes every key/value to the cache
                         `cached_key/cached_value [b, l, h, e]` (created here);
    MODE_AUTOREGRESSIVE  a length-1 input writes its key/value at `decode_position [b]`
                         of the cache a PREFILL call made, and attends over the whole
                         cache (the caller's mask hides the slots after `decode_position`).

  Cross-attention can take its keys and values precomputed (`key_value`, from
  `project_key_value` of the same parameters): several query rows then share one
  projection of `inputs_kv`.

  `attention_impl` selects `dot_product_attention`'s implementation; an autoregressive
  step (one query against the cache) always takes the reference einsums.
  """
  num_heads: int
  head_dim: int
  dtype: DType = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = attention_kernel_init
  float32_logits: bool = False
  attention_impl: str = EINSUM

  def project_key_value(self, inputs_kv: Array) -> KeyValue:
    """`inputs_kv [b, k, d]` -> `KeyValue` of `[b, k, h, e]` each: the `key` and `value`
    projections, exactly as a call computes them."""
    return self(None, inputs_kv)

  @nn.compact
  def __call__(self, inputs_q: Optional[Array], inputs_kv: Optional[Array],
               mask: Optional[Array] = None, bias: Optional[Array] = None, *,
               key_value: Optional[KeyValue] = None, mode: str = MODE_TRAIN,
               decode_position: Optional[Array] = None,
               deterministic: bool = True):
    """`inputs_q [b, q, d]`, `inputs_kv [b, k, d]` (or `key_value` of `[b, k, h, e]`),
    mask `[b, 1|h, q, k]` -> `[b, q, d]`. With `inputs_q` None: `project_key_value`."""
    check_mode(mode)
    depth_scaling = jnp.sqrt(self.head_dim).astype(jnp.float32)
    query_init = lambda *args: self.kernel_init(*args) / depth_scaling
    projection = functools.partial(
        DenseGeneral, features=(self.num_heads, self.head_dim), axis=-1,
        kernel_axes=(EMBED, JOINED_KV), dtype=self.dtype)
    head_axes = (ACT_BATCH, ACT_LENGTH, ACT_HEADS, ACT_KV)
    if inputs_q is not None:
      query = projection(kernel_init=query_init, name="query")(inputs_q)   # [b, q, h, e]
      query = constrain(query, head_axes)
    if key_value is None:
      if inputs_kv is None:
        raise UserError("attention needs inputs_kv [batch, length, emb] or key_value.")
      key = projection(kernel_init=self.kernel_init, name="key")(inputs_kv)  # [b, k, h, e]
      value = projection(kernel_init=self.kernel_init, name="value")(inputs_kv)
      key_value = KeyValue(key, value)
    elif inputs_kv is not None:
      raise UserError("attention takes inputs_kv or precomputed key_value, not both.")
    elif mode != MODE_TRAIN:
      raise UserError(f"precomputed key_value (cross-attention) takes no cache: mode "
                      f"must be {MODE_TRAIN!r}, found {mode!r}.")
    key, value = (constrain(t, head_axes) for t in key_value)
    if inputs_q is None:
      return KeyValue(key, value)

    implementation = self.attention_impl
    if mode != MODE_AUTOREGRESSIVE and decode_position is not None:
      raise UserError(f"decode_position is for mode={MODE_AUTOREGRESSIVE!r}; found it "
                      f"with mode={mode!r}.")
    if mode == MODE_PREFILL:
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      cached_key.value, cached_value.value = key, value
    elif mode == MODE_AUTOREGRESSIVE:
      if inputs_q.shape[1] != 1:
        raise UserError(f"an autoregressive step takes one token per row: inputs_q "
                        f"[batch, 1, emb], found shape {inputs_q.shape}.")
      if decode_position is None:
        raise UserError("an autoregressive step needs decode_position [batch].")
      if not self.has_variable("cache", "cached_key"):
        raise UserError(f"an autoregressive step needs the cache of a "
                        f"mode={MODE_PREFILL!r} call: pass variables['cache'] with "
                        f"mutable=['cache'].")
      cached_key = self.variable("cache", "cached_key")
      cached_value = self.variable("cache", "cached_value")
      implementation = EINSUM
      length = cached_key.value.shape[1]
      one_hot = jax.nn.one_hot(decode_position, length, dtype=key.dtype)  # [b, l]
      one_hot = one_hot[:, :, None, None]
      key = cached_key.value * (1 - one_hot) + key * one_hot                 # [b, l, h, e]
      value = cached_value.value * (1 - one_hot) + value * one_hot
      cached_key.value, cached_value.value = key, value

    attention_bias = combine_biases(mask_to_bias(mask, self.dtype), bias)
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    x = dot_product_attention(query, key, value, bias=attention_bias,
                              dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                              deterministic=deterministic, dtype=self.dtype,
                              float32_logits=self.float32_logits,
                              implementation=implementation)
    out = DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1),
                       kernel_init=self.kernel_init, kernel_axes=(JOINED_KV, EMBED),
                       dtype=self.dtype, name="out")(x)
    return constrain(out, (ACT_BATCH, ACT_LENGTH, ACT_EMBED))


# ---------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------
_ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu, "linear": lambda x: x}


class MlpBlock(nn.Module):
  """Gated MLP: `wo(prod_i act_i(wi_i x))`; ('gelu', 'linear') is T5.1.1's GEGLU.

  `[b, l, d]` -> `[b, l, d]`; kernels `wi_i (d, m)`, `wo (m, d)` (`wi` if one activation).
  """
  intermediate_dim: int
  activations: Sequence[str] = ("gelu", "linear")
  kernel_init: Initializer = mlp_kernel_init
  intermediate_dropout_rate: float = 0.0
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
    unknown = [a for a in self.activations if a not in _ACTIVATIONS]
    if unknown:
      raise UserError(f"MlpBlock: unknown activation(s) {unknown}; "
                      f"valid: {sorted(_ACTIVATIONS)}.")
    x = None
    for idx, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{idx}"
      h = DenseGeneral(self.intermediate_dim, dtype=self.dtype, kernel_init=self.kernel_init,
                       kernel_axes=(EMBED, MLP), name=name)(inputs)
      h = _ACTIVATIONS[act](h)
      x = h if x is None else x * h
    x = Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = constrain(x, (ACT_BATCH, ACT_LENGTH, ACT_MLP))
    out = DenseGeneral(inputs.shape[-1], dtype=self.dtype, kernel_init=self.kernel_init,
                       kernel_axes=(MLP, EMBED), name="wo")(x)
    return out
