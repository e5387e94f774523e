"""The networks of the three architectures, wired from `layers.py`.

One `TransformerStack` serves every stack of the paper:
  * the decoder of the causal decoder (CD) and of the non-causal decoder (ND): they
    are the same network; only the attention mask differs (built by the model from
    `decoder_causal_attention`, see `layers.make_decoder_mask`);
  * the encoder and the decoder of the encoder-decoder (ED).

Parameter trees match t5x (spec §1.2):
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
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch_objective import layers
from arch_objective.architectures import SIZES  # the size presets (no JAX there)

Array = jax.Array

ENCODER = "encoder"
DECODER = "decoder"


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of every architecture (T5.1.1 defaults)."""
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

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "num_decoder_layers"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"TransformerConfig.{name} must be a positive int, found {value!r}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"TransformerConfig.dropout_rate must be in [0, 1), found "
                       f"{self.dropout_rate!r}.")
    if self.dtype not in ("bfloat16", "float32", "float16"):
      raise ValueError(f"TransformerConfig.dtype must be one of bfloat16, float32, float16; "
                       f"found {self.dtype!r}.")

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)


def make_config(size: str, **overrides) -> TransformerConfig:
  """The config of a size preset, with field overrides (e.g. `dtype='float32'`)."""
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}.")
  preset = dict(SIZES[size])
  n = preset.pop("layers")
  preset.update(num_encoder_layers=n, num_decoder_layers=n)
  valid = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(overrides) - valid)
  if unknown:
    raise ValueError(f"unknown config override(s) {unknown}; valid: {sorted(valid)}.")
  preset.update(overrides)
  return TransformerConfig(**preset)


def _relpos(cfg: TransformerConfig, name: str = "relpos_bias") -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(
      num_buckets=cfg.relpos_num_buckets, max_distance=cfg.relpos_max_distance,
      num_heads=cfg.num_heads, dtype=cfg.activation_dtype, name=name)


class TransformerLayer(nn.Module):
  """One pre-norm block: self-attention, optional cross-attention, gated MLP.

  `x [b, l, d]` -> `[b, l, d]`. The encoder's self-attention is named `attention`
  under `pre_attention_layer_norm`, decoders' `self_attention` (t5x names). The
  relative position table is `relative_embedding` when shared by the stack (ED),
  else the layer's own `relpos_bias` (decoder-only, one table per layer).
  """
  config: TransformerConfig
  role: str = DECODER
  cross_attention: bool = False
  relative_embedding: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], *,
               encoded: Optional[Array] = None, cross_mask: Optional[Array] = None,
               deterministic: bool = True, decode: bool = False,
               decode_position: Optional[Array] = None,
               cache_length: Optional[int] = None) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    is_encoder = self.role == ENCODER
    relpos = self.relative_embedding if self.relative_embedding is not None else _relpos(cfg)
    qlen = x.shape[1]
    klen = cache_length if (decode and qlen == 1 and cache_length) else qlen
    position_bias = relpos(qlen, klen, bidirectional=is_encoder,
                           query_positions=decode_position if klen != qlen else None)

    def attention(name):
      return layers.MultiHeadDotProductAttention(
          num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=dtype,
          dropout_rate=cfg.dropout_rate, float32_logits=cfg.float32_attention_logits,
          name=name)

    def dropout(y):
      return layers.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
          y, deterministic=deterministic)

    prefix = "" if is_encoder else "self_"
    y = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype,
                       name=f"pre_{prefix}attention_layer_norm")(x)
    y = attention(f"{prefix}attention")(
        y, y, mask, position_bias, decode=decode, decode_position=decode_position,
        deterministic=deterministic)
    x = x + dropout(y)

    if self.cross_attention:
      y = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype,
                         name="pre_cross_attention_layer_norm")(x)
      y = attention("encoder_decoder_attention")(y, encoded, cross_mask,
                                                 deterministic=deterministic)
      x = x + dropout(y)

    y = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, name="pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                        intermediate_dropout_rate=cfg.dropout_rate, dtype=dtype,
                        name="mlp")(y, deterministic=deterministic)
    x = x + dropout(y)
    return layers.constrain(x, (layers.ACT_BATCH, layers.ACT_LENGTH, layers.ACT_EMBED))


class TransformerStack(nn.Module):
  """Embedding -> layers -> final norm (-> tied logits for decoders).

  `tokens [b, l]` -> encoder: hidden `[b, l, d]`; decoder: float32 logits `[b, l, v]`.
  `shared_embedding` is the ED's top-level `token_embedder`; without it the stack owns
  one (decoder-only). `shared_relpos` selects one table per stack (ED) over one per
  layer (decoder-only).
  """
  config: TransformerConfig
  role: str = DECODER
  shared_embedding: Optional[nn.Module] = None
  shared_relpos: bool = False
  cross_attention: bool = False

  @nn.compact
  def __call__(self, tokens: Array, mask: Optional[Array], *,
               encoded: Optional[Array] = None, cross_mask: Optional[Array] = None,
               deterministic: bool = True, decode: bool = False,
               decode_position: Optional[Array] = None,
               cache_length: Optional[int] = None) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    embedder = self.shared_embedding
    if embedder is None:
      embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype, name="token_embedder")
    relpos = _relpos(cfg) if self.shared_relpos else None
    num_layers = cfg.num_encoder_layers if self.role == ENCODER else cfg.num_decoder_layers

    x = embedder(tokens.astype(jnp.int32))                                # [b, l, d]
    x = layers.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = layers.constrain(x.astype(dtype), (layers.ACT_BATCH, layers.ACT_LENGTH, layers.ACT_EMBED))
    for i in range(num_layers):
      x = TransformerLayer(cfg, role=self.role, cross_attention=self.cross_attention,
                           relative_embedding=relpos, name=f"layers_{i}")(
          x, mask, encoded=encoded, cross_mask=cross_mask, deterministic=deterministic,
          decode=decode, decode_position=decode_position, cache_length=cache_length)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, name=f"{self.role}_norm")(x)
    x = layers.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    if self.role == ENCODER:
      return x
    if cfg.logits_via_embedding:
      logits = embedder.attend(x) / jnp.sqrt(x.shape[-1]).astype(jnp.float32)
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32,
                                   kernel_axes=(layers.EMBED, layers.VOCAB),
                                   name="logits_dense")(x)
    return layers.constrain(logits, (layers.ACT_BATCH, layers.ACT_LENGTH, layers.ACT_VOCAB))


class DecoderOnly(nn.Module):
  """The decoder-only network of CD and ND: one stack under `decoder/`.

  `decoder_input_tokens [b, l]`, `decoder_mask [b, 1, l, l]` (from
  `layers.make_decoder_mask`) -> logits `[b, l, v]`. For a cached decoding step the
  inputs are `[b, 1]`, `decode_position [b]` and `cache_length` the cache size.
  """
  config: TransformerConfig

  def setup(self):
    self.decoder = TransformerStack(self.config, role=DECODER)

  def __call__(self, decoder_input_tokens: Array, decoder_mask: Optional[Array], *,
               enable_dropout: bool = False, decode: bool = False,
               decode_position: Optional[Array] = None,
               cache_length: Optional[int] = None) -> Array:
    return self.decoder(decoder_input_tokens, decoder_mask,
                        deterministic=not enable_dropout, decode=decode,
                        decode_position=decode_position, cache_length=cache_length)


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

  def decode(self, encoded: Array, decoder_input_tokens: Array,
             decoder_mask: Optional[Array], cross_mask: Optional[Array], *,
             enable_dropout: bool = False, decode: bool = False,
             decode_position: Optional[Array] = None,
             cache_length: Optional[int] = None) -> Array:
    """`encoded [b, i, d]`, `decoder_input_tokens [b, t]` -> logits `[b, t, v]`."""
    return self.decoder(decoder_input_tokens, decoder_mask, encoded=encoded,
                        cross_mask=cross_mask, deterministic=not enable_dropout,
                        decode=decode, decode_position=decode_position,
                        cache_length=cache_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               encoder_mask: Optional[Array], decoder_mask: Optional[Array],
               cross_mask: Optional[Array], *, enable_dropout: bool = False) -> Array:
    encoded = self.encode(encoder_input_tokens, encoder_mask, enable_dropout=enable_dropout)
    return self.decode(encoded, decoder_input_tokens, decoder_mask, cross_mask,
                       enable_dropout=enable_dropout)
