"""The networks of the three architectures, wired from `layers.py`.

One `TransformerStack` serves every stack of the paper:
  * the decoder of the causal decoder (CD) and of the non-causal decoder (ND): they
    are the same network; only the attention mask differs (built by the model from
    `decoder_causal_attention`, see `layers.make_decoder_mask`);
  * the encoder and the decoder of the encoder-decoder (ED).

Parameter trees match t5x (spec §1.2); with `scan_layers` a stack's `layers_i` become one
`layers` subtree whose arrays carry a leading layer axis (`models` converts):
  decoder-only: decoder/{token_embedder, layers_i/{relpos_bias, pre_self_attention_layer_norm,
                self_attention, pre_mlp_layer_norm, mlp}, decoder_norm}
  ED:           token_embedder, encoder/{relpos_bias, layers_i/{pre_attention_layer_norm,
                attention, pre_mlp_layer_norm, mlp}, encoder_norm},
                decoder/{relpos_bias, layers_i/{pre_self_attention_layer_norm, self_attention,
                pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm,
                mlp}, decoder_norm}
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch_objective import layers
from arch_objective.architectures import SIZES  # the size presets (no JAX there)
from arch_objective.errors import UserError

Array = jax.Array

ENCODER = "encoder"
DECODER = "decoder"
CROSS_ATTENTION = "encoder_decoder_attention"   # a decoder layer's cross-attention (t5x)


REMAT_POLICIES = ("none", "full", "dots", "minimal")


def remat_policy(name: str):
  """The `jax.checkpoint` policy of a `TransformerConfig.remat_policy` name.

  'full' saves nothing (`nothing_saveable`); 'dots' saves every matmul output
  (`checkpoint_dots`, also called `dots_saveable` in JAX), the attention scores included;
  'minimal' saves the matmul outputs without batch dimensions, i.e. the projections and
  the MLP but not the attention scores (`checkpoint_dots_with_no_batch_dims`, the
  'minimal' of t5x's scalable_t5 and of MaxText). 'none' is not a policy: no remat.
  """
  policies = jax.checkpoint_policies
  table = {"full": policies.nothing_saveable, "dots": policies.checkpoint_dots,
           "minimal": policies.checkpoint_dots_with_no_batch_dims}
  if name not in table:
    raise UserError(f"TransformerConfig.remat_policy {name!r} has no checkpoint policy; "
                    f"valid: {', '.join(REMAT_POLICIES)} ('none' means no remat).")
  return table[name]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of every architecture (T5.1.1 defaults), and how they execute.

  The execution options change the program, not the function it computes; the defaults
  are the reference. Each is bindable from gin as `build_model.<field>`.

  attention_impl  'einsum' (default): two einsums and a softmax (`layers.dot_product_attention`).
                  'dot_product': `jax.nn.dot_product_attention` with the relative position
                  bias and the masks folded into one additive bias, `scale=1.0` (T5 does not
                  scale by 1/sqrt(head_dim)) and `implementation=None`, so JAX picks the
                  kernel (JAX 0.10 picks its XLA implementation on every backend).
                  'cudnn': the same forcing cuDNN flash attention (sequence lengths even);
                  NVIDIA GPUs with dtype bfloat16/float16 only (anything else raises a
                  ValueError naming the option). Both fused options compute the attention
                  logits and softmax in float32 (as `float32_attention_logits` does for the
                  reference). Where they cannot apply, the reference runs: a cached decoding
                  step (one query against the KV cache) and attention dropout (active when
                  dropout_rate > 0 and a dropout rng is given).
  remat_policy    'none' (default): every layer keeps its activations for the backward pass.
                  'full': each layer keeps only its input and recomputes the rest;
                  'dots': keeps every matmul output (`jax.checkpoint_policies.checkpoint_dots`);
                  'minimal': keeps the matmul outputs without batch dims, i.e. not the
                  attention scores (`checkpoint_dots_with_no_batch_dims`, t5x's and MaxText's
                  'minimal'). Applied per layer with `nn.remat`; less memory, more compute.
  scan_layers     False (default): layers `layers_0..layers_{n-1}`, unrolled in the program.
                  True: one `nn.scan` over the identical layers of each stack, compiled once;
                  the module's parameters are stacked under `layers` with a leading layer
                  axis (logical name `layers`, never sharded). The models keep t5x's
                  unstacked names everywhere outside the module (see `models.BaseModel`).
                  With dropout, scanned layers draw other masks than unscanned ones (same
                  distribution).
  """
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  num_encoder_layers: int = 8   # ED only
  num_decoder_layers: int = 8   # decoder-only models: their one stack
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"       # activation dtype; parameters are always float32
  logits_via_embedding: bool = True
  float32_attention_logits: bool = False
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  attention_impl: str = layers.EINSUM
  remat_policy: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "num_decoder_layers"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise UserError(f"TransformerConfig.{name} must be a positive int, found {value!r}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"TransformerConfig.dropout_rate must be in [0, 1), found "
                       f"{self.dropout_rate!r}.")
    if self.dtype not in ("bfloat16", "float32", "float16"):
      raise UserError(f"TransformerConfig.dtype must be one of bfloat16, float32, float16; "
                      f"found {self.dtype!r}.")
    if self.attention_impl not in layers.ATTENTION_IMPLS:
      raise UserError(f"TransformerConfig.attention_impl must be one of "
                      f"{', '.join(layers.ATTENTION_IMPLS)}; found {self.attention_impl!r}.")
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(f"TransformerConfig.remat_policy must be one of "
                      f"{', '.join(REMAT_POLICIES)}; found {self.remat_policy!r}.")
    if not isinstance(self.scan_layers, bool):
      raise UserError(f"TransformerConfig.scan_layers must be True or False, found "
                      f"{self.scan_layers!r}.")

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  def reference(self) -> "TransformerConfig":
    """This config with the execution options at their defaults (the reference path)."""
    return dataclasses.replace(self, attention_impl=layers.EINSUM, remat_policy="none",
                               scan_layers=False)


# The fields that choose how a model executes, not what it computes (see
# `TransformerConfig`). A saved config written before them may lack them.
EXECUTION_OPTIONS = ("attention_impl", "remat_policy", "scan_layers")
# Every other field decides the function a saved model computes (its shapes, its
# activations, its numerics, its training-time dropout): a saved config must hold each.
FUNCTION_FIELDS = tuple(f.name for f in dataclasses.fields(TransformerConfig)
                        if f.name not in EXECUTION_OPTIONS)


def config_from_dict(fields: Mapping[str, Any], where: str) -> TransformerConfig:
  """The `TransformerConfig` a checkpoint or export saved (its JSON form: lists become
  tuples): the one reader of a saved config.

  Every field in `FUNCTION_FIELDS` (all but the execution options) must be there: a
  missing one is a UserError naming `where` and the field, never filled in from a size
  preset or the dataclass default. The execution options (`EXECUTION_OPTIONS`:
  attention_impl, remat_policy, scan_layers) change how the model runs, not what it
  computes, and configs saved before they existed lack them: a missing one takes its
  default (the reference path). A field this config does not know is a UserError too.
  """
  if not isinstance(fields, Mapping):
    raise UserError(f"{where}: the model config is not a JSON object (found "
                    f"{type(fields).__name__}).")
  valid = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(fields) - valid)
  if unknown:
    raise UserError(f"{where}: unknown config field(s) {unknown}; valid: {sorted(valid)}. "
                    f"It was written by a different version of arch-objective.")
  missing = [name for name in FUNCTION_FIELDS if name not in fields]
  if missing:
    raise UserError(f"{where}: the model config lacks {', '.join(missing)}; a saved config "
                    f"names every field that decides the model ({', '.join(FUNCTION_FIELDS)})."
                    f" Add the missing values to its meta (the size it was trained with).")
  return TransformerConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                              for k, v in fields.items()})


def make_config(size: str, **overrides) -> TransformerConfig:
  """The config of a size preset, with field overrides (e.g. `dtype='float32'`)."""
  if size not in SIZES:
    raise UserError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}.")
  preset = dict(SIZES[size])
  n = preset.pop("layers")
  preset.update(num_encoder_layers=n, num_decoder_layers=n)
  valid = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(overrides) - valid)
  if unknown:
    raise UserError(f"unknown config override(s) {unknown}; valid: {sorted(valid)}.")
  preset.update(overrides)
  return TransformerConfig(**preset)


def _relpos(cfg: TransformerConfig, name: str = "relpos_bias") -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(
      num_buckets=cfg.relpos_num_buckets, max_distance=cfg.relpos_max_distance,
      num_heads=cfg.num_heads, dtype=cfg.activation_dtype, name=name)


class TransformerLayer(nn.Module):
  """One pre-norm block: self-attention, optional cross-attention, gated MLP.

  `x [b, l, d]` -> `[b, l, d]`. The encoder's self-attention is named `attention`
  under `pre_attention_layer_norm`, decoders' `self_attention` (t5x names). With
  `own_relpos` (decoder-only) the layer holds its own relative position table
  `relpos_bias`; otherwise (ED) the stack's shared table gives `position_bias
  [1|b, h, q, k]`. The cross-attention reads `encoded [b, i, d]` or, precomputed by
  `cross_key_values`, this layer's `cross_key_value` (`KeyValue` of `[b, i, h, e]`, or
  `[p, i, h, e]` with `cross_rows [b]`: row r attends to key/value row `cross_rows[r]`;
  with `cross_rows [b, k]`, to those k rows, concatenated).
  `mode` and `cache_length` are a `layers.Decoding`'s (its position is `decode_position`).
  The call takes arrays (or None) only, so that `nn.remat` and `nn.scan` can wrap the
  layer; `scanned` makes it return `(x, None)`, the carry and output of a scan body.
  """
  config: TransformerConfig
  role: str = DECODER
  cross_attention: bool = False
  own_relpos: bool = True
  deterministic: bool = True
  mode: str = layers.MODE_TRAIN
  cache_length: Optional[int] = None
  scanned: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], encoded: Optional[Array] = None,
               cross_mask: Optional[Array] = None, position_bias: Optional[Array] = None,
               decode_position: Optional[Array] = None,
               cross_key_value: Optional[layers.KeyValue] = None,
               cross_rows: Optional[Array] = None):
    cfg = self.config
    dtype = cfg.activation_dtype
    is_encoder = self.role == ENCODER
    deterministic = self.deterministic
    if self.own_relpos:
      position_bias = _position_bias(cfg, x.shape[1], is_encoder, self.mode,
                                     self.cache_length, decode_position)

    def attention(name):
      return layers.MultiHeadDotProductAttention(
          num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=dtype,
          dropout_rate=cfg.dropout_rate, float32_logits=cfg.float32_attention_logits,
          attention_impl=cfg.attention_impl, name=name)

    def dropout(y):
      return layers.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
          y, deterministic=deterministic)

    prefix = "" if is_encoder else "self_"
    y = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype,
                       name=f"pre_{prefix}attention_layer_norm")(x)
    y = attention(f"{prefix}attention")(
        y, y, mask, position_bias, mode=self.mode, decode_position=decode_position,
        deterministic=deterministic)
    x = x + dropout(y)

    if self.cross_attention:
      if cross_rows is not None:      # [p, i, h, e] -> [b, i, h, e], one layer at a time
        # (`cross_rows [b, k]`: row r reads k rows' keys and values one after another.)
        cross_key_value = layers.KeyValue(*(
            t[cross_rows].reshape(cross_rows.shape[0], -1, *t.shape[-2:])
            for t in cross_key_value))
      y = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype,
                         name="pre_cross_attention_layer_norm")(x)
      y = attention(CROSS_ATTENTION)(
          y, encoded if cross_key_value is None else None, cross_mask,
          key_value=cross_key_value, deterministic=deterministic)
      x = x + dropout(y)

    y = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, name="pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                        intermediate_dropout_rate=cfg.dropout_rate, dtype=dtype,
                        name="mlp")(y, deterministic=deterministic)
    x = x + dropout(y)
    x = layers.constrain(x, (layers.ACT_BATCH, layers.ACT_LENGTH, layers.ACT_EMBED))
    return (x, None) if self.scanned else x


def _position_bias(cfg: TransformerConfig, qlen: int, bidirectional: bool, mode: str,
                   cache_length: Optional[int], decode_position: Optional[Array]) -> Array:
  """The relative position bias of `qlen` queries: `[1, h, q, q]` over the input, or for an
  autoregressive step `[b, h, 1, cache_length]` from each row's `decode_position [b]`."""
  if mode == layers.MODE_AUTOREGRESSIVE:
    return _relpos(cfg)(qlen, cache_length, bidirectional=bidirectional,
                        query_positions=decode_position)
  return _relpos(cfg)(qlen, qlen, bidirectional=bidirectional)


def layer_class(config: TransformerConfig, mode: str = layers.MODE_TRAIN,
                scanned: bool = False):
  """`TransformerLayer`, wrapped in `nn.remat` with the config's policy when it has one.

  Decoding (PREFILL, AUTOREGRESSIVE) computes no gradient, so it runs the layer
  unwrapped (same parameters).
  """
  if config.remat_policy == "none" or mode != layers.MODE_TRAIN:
    return TransformerLayer
  return nn.remat(TransformerLayer, policy=remat_policy(config.remat_policy),
                  prevent_cse=not scanned)


class TransformerStack(nn.Module):
  """Embedding -> layers -> final norm (-> tied logits for decoders).

  `tokens [b, l]` -> encoder: hidden `[b, l, d]`; decoder: float32 logits `[b, l, v]`.
  `shared_embedding` is the ED's top-level `token_embedder`; without it the stack owns
  one (decoder-only). `shared_relpos` selects one table per stack (ED) over one per
  layer (decoder-only). With `config.scan_layers` the layers run as one `nn.scan`
  named `layers` (parameters and KV cache stacked on a leading axis of size
  num_layers); `config.remat_policy` wraps each layer in `nn.remat`.

  `decoding` (a `layers.Decoding`) states the mode: TRAIN (the default), PREFILL (fill
  the self-attention cache) or an AUTOREGRESSIVE step (`tokens [b, 1]`). A stack with
  `cross_attention` reads `encoded [b, i, d]` or `cross_key_values` (a `KeyValue` of
  `[n, b, i, h, e]`, from `cross_key_values`), not both. With `cross_rows [b]` the
  keys/values are per prompt, `[n, p, i, h, e]`, and decoder row r attends to prompt
  `cross_rows[r]`: each layer gathers its own rows, so no `[n, b, i, h, e]` copy is made.
  """
  config: TransformerConfig
  role: str = DECODER
  shared_embedding: Optional[nn.Module] = None
  shared_relpos: bool = False
  cross_attention: bool = False

  @nn.compact
  def __call__(self, tokens: Array, mask: Optional[Array], *,
               encoded: Optional[Array] = None,
               cross_key_values: Optional[layers.KeyValue] = None,
               cross_rows: Optional[Array] = None,
               cross_mask: Optional[Array] = None, deterministic: bool = True,
               decoding: layers.Decoding = layers.Decoding.TRAIN) -> Array:
    cfg = self.config
    if self.cross_attention and (encoded is None) == (cross_key_values is None):
      raise UserError(f"the {self.role} stack's cross-attention takes encoded [batch, "
                      f"length, emb] or cross_key_values, exactly one; found "
                      f"{'both' if encoded is not None else 'neither'}.")
    if cross_rows is not None and cross_key_values is None:
      raise UserError("cross_rows selects rows of cross_key_values; give cross_key_values "
                      "(per prompt) with it.")
    dtype = cfg.activation_dtype
    embedder = self.shared_embedding
    if embedder is None:
      embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype, name="token_embedder")
    num_layers = cfg.num_encoder_layers if self.role == ENCODER else cfg.num_decoder_layers

    x = embedder(tokens.astype(jnp.int32))                                # [b, l, d]
    x = layers.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = layers.constrain(x.astype(dtype), (layers.ACT_BATCH, layers.ACT_LENGTH, layers.ACT_EMBED))
    position_bias = None
    if self.shared_relpos:
      position_bias = _position_bias(cfg, tokens.shape[1], self.role == ENCODER,
                                     decoding.mode, decoding.cache_length, decoding.position)
    layer_options = dict(role=self.role, cross_attention=self.cross_attention,
                         own_relpos=not self.shared_relpos, deterministic=deterministic,
                         mode=decoding.mode, cache_length=decoding.cache_length)
    inputs = (mask, encoded, cross_mask, position_bias, decoding.position)
    if cfg.scan_layers and num_layers > 0:
      # The per-layer cross keys/values are scanned over (their leading axis), the rest
      # broadcast to every layer.
      kv_axis = nn.broadcast if cross_key_values is None else 0
      scan = nn.scan(layer_class(cfg, decoding.mode, scanned=True),
                     variable_axes={"params": 0, "cache": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=(nn.broadcast,) * len(inputs) + (kv_axis, nn.broadcast),
                     length=num_layers, metadata_params={nn.PARTITION_NAME: layers.LAYERS})
      x, _ = scan(cfg, scanned=True, name="layers", **layer_options)(
          x, *inputs, cross_key_values, cross_rows)
    else:
      layer = layer_class(cfg, decoding.mode)
      for i in range(num_layers):
        kv = None if cross_key_values is None else layers.KeyValue(
            cross_key_values.key[i], cross_key_values.value[i])
        x = layer(cfg, name=f"layers_{i}", **layer_options)(x, *inputs, kv, cross_rows)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, name=f"{self.role}_norm")(x)
    x = layers.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    if self.role == ENCODER:
      return x
    if cfg.logits_via_embedding:
      # t5x divides the logits by sqrt(d); dividing the [b, l, d] states instead is the
      # same product up to rounding, without a pass over the [b, l, v] logits (and one
      # over their gradient) in every training step.
      logits = embedder.attend(jnp.asarray(x, jnp.float32)
                               / jnp.sqrt(jnp.float32(x.shape[-1])))
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32,
                                   kernel_axes=(layers.EMBED, layers.VOCAB),
                                   name="logits_dense")(x)
    return layers.constrain(logits, (layers.ACT_BATCH, layers.ACT_LENGTH, layers.ACT_VOCAB))


class DecoderOnly(nn.Module):
  """The decoder-only network of CD and ND: one stack under `decoder/`.

  `decoder_input_tokens [b, l]`, `decoder_mask [b, 1, l, l]` (from
  `layers.make_decoder_mask`) -> logits `[b, l, v]`. `decoding` states the mode (see
  `TransformerStack`); an autoregressive step takes `[b, 1]` tokens and a mask
  `[b, 1, 1, cache_length]` (`layers.make_step_mask`).
  """
  config: TransformerConfig

  def setup(self):
    self.decoder = TransformerStack(self.config, role=DECODER)

  def __call__(self, decoder_input_tokens: Array, decoder_mask: Optional[Array], *,
               enable_dropout: bool = False,
               decoding: layers.Decoding = layers.Decoding.TRAIN) -> Array:
    return self.decoder(decoder_input_tokens, decoder_mask,
                        deterministic=not enable_dropout, decoding=decoding)


class EncoderDecoder(nn.Module):
  """The T5.1.1 encoder-decoder: shared `token_embedder`, `encoder`, `decoder`."""
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       dtype=cfg.activation_dtype)
    self.encoder = TransformerStack(cfg, role=ENCODER, shared_embedding=self.token_embedder,
                                    shared_relpos=True)
    self.decoder = TransformerStack(cfg, role=DECODER, shared_embedding=self.token_embedder,
                                    shared_relpos=True, cross_attention=True)

  def encode(self, encoder_input_tokens: Array, encoder_mask: Optional[Array], *,
             enable_dropout: bool = False) -> Array:
    """`encoder_input_tokens [b, i]`, mask `[b, 1, i, i]` -> `[b, i, d]`."""
    return self.encoder(encoder_input_tokens, encoder_mask, deterministic=not enable_dropout)

  def decode(self, encoded: Optional[Array], decoder_input_tokens: Array,
             decoder_mask: Optional[Array], cross_mask: Optional[Array], *,
             cross_key_values: Optional[layers.KeyValue] = None,
             cross_rows: Optional[Array] = None, enable_dropout: bool = False,
             decoding: layers.Decoding = layers.Decoding.TRAIN) -> Array:
    """`encoded [b, i, d]` (or None with `cross_key_values`, a `KeyValue` of
    `[n, b, i, h, e]` from `cross_key_values`, or `[n, p, i, h, e]` with `cross_rows [b]`),
    `decoder_input_tokens [b, t]` -> logits `[b, t, v]` (see `TransformerStack`)."""
    return self.decoder(decoder_input_tokens, decoder_mask, encoded=encoded,
                        cross_key_values=cross_key_values, cross_rows=cross_rows,
                        cross_mask=cross_mask, deterministic=not enable_dropout,
                        decoding=decoding)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               encoder_mask: Optional[Array], decoder_mask: Optional[Array],
               cross_mask: Optional[Array], *, enable_dropout: bool = False) -> Array:
    encoded = self.encode(encoder_input_tokens, encoder_mask, enable_dropout=enable_dropout)
    return self.decode(encoded, decoder_input_tokens, decoder_mask, cross_mask,
                       enable_dropout=enable_dropout)


def cross_key_values(config: TransformerConfig, params: Any, encoded: Array
                     ) -> layers.KeyValue:
  """The cross-attention keys and values of every decoder layer of an encoder-decoder.

  `params` is the network's tree (per-layer `layers_i`, or stacked `layers` when
  `config.scan_layers`), `encoded [b, i, d]` the encoder's output -> `KeyValue` of
  `[n, b, i, h, e]` each (n = num_decoder_layers): each layer's
  `encoder_decoder_attention/{key,value}` projection, as `TransformerLayer` computes it.
  Computed once per encoded row, they serve every decoder row that attends to that row
  (`EncoderDecoder.decode(None, ..., cross_key_values=..., cross_rows=...)`).
  """
  attention = layers.MultiHeadDotProductAttention(
      num_heads=config.num_heads, head_dim=config.head_dim, dtype=config.activation_dtype,
      parent=None)
  project = lambda p: attention.apply({"params": p}, encoded,
                                      method=attention.project_key_value)
  decoder = params[DECODER]
  if config.scan_layers:
    return jax.vmap(project)(decoder["layers"][CROSS_ATTENTION])            # [n, b, i, h, e]
  per_layer = [project(decoder[f"layers_{i}"][CROSS_ATTENTION])
               for i in range(config.num_decoder_layers)]
  return layers.KeyValue(jnp.stack([kv.key for kv in per_layer]),
                         jnp.stack([kv.value for kv in per_layer]))
