"""Models of t5x's shape: a network plus loss, scoring and decoding over feature dicts.

Batches are dicts of numpy or jax arrays with seqio/t5x feature names:
  decoder-only: decoder_input_tokens, decoder_target_tokens, decoder_loss_weights,
                decoder_segment_ids, decoder_positions, decoder_causal_attention
  ED:           encoder_input_tokens, encoder_segment_ids, encoder_positions and the
                decoder features above (without decoder_causal_attention).
Positions are accepted and ignored: the networks use relative positions only.

`build_model(arch, size, **overrides)` is the entry point; `arch` is one of
`ARCHITECTURES`. The causal (CD) and non-causal (ND) decoders share one network; ND
reads `decoder_causal_attention` (the inputs plus one position) and attends
bidirectionally there; CD ignores it.

Parameters are t5x's per-layer trees (`layers_0 .. layers_{n-1}`) whatever the
execution options of the config (`network.TransformerConfig`: attention_impl,
remat_policy, scan_layers): initialisation always traces the reference network, so a
seed gives the same parameters with every option, and checkpoints and the t5x and
Hugging Face converters never see another layout. With `scan_layers` a model stacks the
layers (`params_to_scanned`) inside each call; it also accepts parameters already
stacked, which saves that copy (and an unscanned model unstacks them).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arch_objective import architectures, decoding, layers, losses, network
from arch_objective.architectures import (ARCHITECTURES, CAUSAL_DECODER,  # noqa: F401
                                          ENCODER_DECODER, NON_CAUSAL_DECODER, SHORT_NAMES)
from arch_objective import stacking
from arch_objective.errors import UserError
from arch_objective.features import (DECODER_CAUSAL_ATTENTION, DECODER_INPUT_TOKENS,
                                     DECODER_LOSS_WEIGHTS, DECODER_SEGMENT_IDS,
                                     DECODER_TARGET_TOKENS, ENCODER_INPUT_TOKENS,
                                     ENCODER_SEGMENT_IDS)

Array = jax.Array
Batch = Mapping[str, Any]
Params = Any


def _weights(batch: Batch) -> Array:
  weights = batch.get(DECODER_LOSS_WEIGHTS)
  if weights is None:
    return (jnp.asarray(batch[DECODER_TARGET_TOKENS]) > 0).astype(jnp.float32)
  return jnp.asarray(weights, jnp.float32)


@dataclasses.dataclass(frozen=True)
class BaseModel:
  """Loss, metrics and scoring shared by both model classes."""
  config: network.TransformerConfig
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: losses.LossNormalizingFactor = None
  max_decode_steps: int = 200
  temperature: float = 1.0
  topk: int = 40
  eos_id: Optional[int] = 1

  name = "model"

  # -- implemented by subclasses -------------------------------------------------
  def _network(self, config: network.TransformerConfig) -> nn.Module:
    raise NotImplementedError

  def _init_args(self, input_shapes: Mapping[str, tuple[int, ...]]) -> tuple:
    raise NotImplementedError

  def compute_logits(self, params: Params, batch: Batch,
                     dropout_rng: Optional[Array] = None) -> Array:
    raise NotImplementedError

  # -- shared ----------------------------------------------------------------------
  @property
  def layout(self):
    """How this model reads prompts and continuations (`layouts.DecoderLayout` or
    `layouts.EncoderDecoderLayout`): what evaluation asks instead of the model's kind."""
    return architectures.get(self.name).layout

  @functools.cached_property
  def module(self) -> nn.Module:
    """The network as configured (attention_impl, remat_policy, scan_layers)."""
    return self._network(self.config)

  def _init_network(self, scanned: bool = False) -> nn.Module:
    """The reference network (per-layer, or scanned for the stacked layout's axes)."""
    return self._network(dataclasses.replace(self.config.reference(), scan_layers=scanned))

  def _boxed_variables(self, rng: Array, input_shapes, scanned: bool = False) -> dict:
    return self._init_network(scanned).init(rng, *self._init_args(input_shapes))

  def params_to_scanned(self, params: Params) -> Params:
    """Per-layer parameters -> the stacked layout of a scanned module (`[n, ...]` under
    each stack's `layers`); stacked parameters pass unchanged. Exact, jit-safe."""
    return stacking.stack_layers(params)

  def params_to_unscanned(self, params: Params) -> Params:
    """The inverse of `params_to_scanned`: t5x's per-layer names and shapes."""
    return stacking.unstack_layers(params)

  def _apply_params(self, params: Params) -> Params:
    """`params` (either layout) in the layout of `self.module`."""
    if self.config.scan_layers:
      return self.params_to_scanned(params)
    return self.params_to_unscanned(params)

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]
                            ) -> dict:
    """`{'params': tree}` of float32 arrays for inputs of the given shapes."""
    return nn.unbox(self._boxed_variables(rng, input_shapes))

  def abstract_variables(self, input_shapes) -> dict:
    """Like `get_initial_variables` but ShapeDtypeStructs: allocates nothing."""
    return nn.unbox(self._abstract_boxed(input_shapes))

  def logical_axes(self, input_shapes, scanned: bool = False) -> dict:
    """The logical axis names of every parameter, as a tree of PartitionSpecs; with
    `scanned`, of the stacked layout, whose arrays lead with the axis `layers`."""
    return nn.get_partition_spec(self._abstract_boxed(input_shapes, scanned))

  def _abstract_boxed(self, input_shapes, scanned: bool = False) -> dict:
    init = functools.partial(self._boxed_variables, input_shapes=input_shapes,
                             scanned=scanned)
    return jax.eval_shape(init, jax.random.PRNGKey(0))

  def loss_fn(self, params: Params, batch: Batch, dropout_rng: Optional[Array]
              ) -> tuple[Array, dict[str, Array]]:
    """Weighted cross-entropy + z-loss (the paper: a sum over weighted tokens).

    Returns (loss, metrics) with metrics `loss`, `z_loss`, `cross_ent_loss`,
    `accuracy` (over weighted tokens) and `num_tokens` (the weight sum).
    """
    logits = self.compute_logits(params, batch, dropout_rng)
    targets = jnp.asarray(batch[DECODER_TARGET_TOKENS])
    weights = _weights(batch)
    loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(
        logits, targets, weights, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        loss_normalizing_factor=self.loss_normalizing_factor)
    correct, _ = losses.compute_weighted_accuracy(logits, targets, weights)
    metrics = {"loss": loss, "z_loss": z_loss, "cross_ent_loss": loss - z_loss,
               "accuracy": correct / jnp.maximum(weight_sum, 1.0), "num_tokens": weight_sum}
    return loss, metrics

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """Summed log-probability of the weighted target tokens per row, `[b]` (no z-loss)."""
    logits = self.compute_logits(params, batch)
    token_ll = losses.token_log_likelihoods(logits, jnp.asarray(batch[DECODER_TARGET_TOKENS]))
    return jnp.sum(token_ll * _weights(batch), axis=-1)

  def _decode_start(self, params: Params, batch: Batch, num_steps: int, copies: int = 1):
    """What a decoding loop starts from: `(step_fn, cache, first_logits [r, v],
    start_positions [r])` for `r = b * copies` rows, each prompt of `batch` repeated
    `copies` times one after another (the beams of a beam search), and the cache room
    for `num_steps` new tokens; see `decoding.decode`."""
    raise NotImplementedError

  def _cache_batch_axis(self) -> int:
    """The axis of the rows in the cache's arrays: 1 when the layers are scanned (they
    lead with the layer axis), else 0."""
    return 1 if self.config.scan_layers else 0

  def predict_batch(self, params: Params, batch: Batch, rng: Optional[Array] = None, *,
                    max_decode_steps: Optional[int] = None, temperature: Optional[float] = None,
                    topk: Optional[int] = None, topp: Optional[float] = None,
                    eos_id="default", return_logits: bool = False):
    """Continue each prompt of `batch` (the layout's `generation_batch`) with the KV
    cache: greedy if `rng` is None, else sampled (`temperature`, `topk`, `topp`; the
    model's options where None). Returns tokens `[b, steps]` (0 after EOS), or a
    `decoding.DecodeResult` with the logits each token was chosen from."""
    steps = self.max_decode_steps if max_decode_steps is None else max_decode_steps
    step_fn, cache, first_logits, start = self._decode_start(params, batch, steps)
    result = decoding.decode(
        step_fn, cache, first_logits, start, steps, rng=rng,
        temperature=self.temperature if temperature is None else temperature,
        topk=self.topk if topk is None else topk, topp=1.0 if topp is None else topp,
        eos_id=self.eos_id if eos_id == "default" else eos_id)
    return result if return_logits else result.tokens

  def beam_search(self, params: Params, batch: Batch, *, num_decodes: int = 4,
                  alpha: float = 0.6, max_decode_steps: Optional[int] = None,
                  eos_id="default", rules: str = "t5x") -> decoding.BeamResult:
    """The `num_decodes` best continuations of each prompt of `batch` (as for
    `predict_batch`) by t5x's beam search with brevity penalty `alpha`
    (`decoding.beam_search`; `rules="hf"`: Hugging Face's, `alpha` its `length_penalty`):
    `BeamResult` of tokens `[b, k, steps]` best first (0 after EOS), their scores and
    summed log-probabilities `[b, k]`."""
    steps = self.max_decode_steps if max_decode_steps is None else max_decode_steps
    step_fn, cache, first_logits, start = self._decode_start(params, batch, steps,
                                                             copies=num_decodes)
    return decoding.beam_search(step_fn, cache, first_logits, start, steps,
                                num_decodes=num_decodes, alpha=alpha,
                                eos_id=self.eos_id if eos_id == "default" else eos_id,
                                cache_batch_axis=self._cache_batch_axis(), rules=rules)


@dataclasses.dataclass(frozen=True)
class DecoderOnlyModel(BaseModel):
  """The causal decoder (`inputs_bidirectional_attention=False`) or the non-causal
  prefix decoder (`True`): one network, two masks."""
  inputs_bidirectional_attention: bool = False

  @property
  def name(self):
    return NON_CAUSAL_DECODER if self.inputs_bidirectional_attention else CAUSAL_DECODER

  def _network(self, config):
    return network.DecoderOnly(config)

  def _init_args(self, input_shapes):
    shape = input_shapes.get(DECODER_INPUT_TOKENS) if isinstance(input_shapes, Mapping) else None
    if shape is None:
      raise UserError(f"{self.name}: input_shapes must give 'decoder_input_tokens', found "
                      f"{input_shapes!r}.")
    tokens = jnp.ones(shape, jnp.int32)
    return (tokens, layers.make_decoder_mask(tokens))

  def _causal_attention(self, batch: Batch) -> Optional[Array]:
    if not self.inputs_bidirectional_attention:
      return None
    dca = batch.get(DECODER_CAUSAL_ATTENTION)
    if dca is None:
      raise UserError(
          f"{self.name}: feature 'decoder_causal_attention' is required (1 on the input "
          f"tokens plus one position, 0 elsewhere) but the batch has only "
          f"{sorted(k for k, v in batch.items() if v is not None)}. Use the causal_decoder "
          f"to read every position causally.")
    return jnp.asarray(dca)

  def validate(self, batch: Batch, required=(DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS)):
    architectures.get(self.name).check_batch(batch, required)

  def compute_logits(self, params, batch, dropout_rng=None):
    """Logits `[b, l, v]` (float32) of a full forward pass."""
    self.validate(batch)
    dca = self._causal_attention(batch)
    dtype = self.config.activation_dtype
    seg = batch.get(DECODER_SEGMENT_IDS)
    mask = layers.make_decoder_mask(jnp.asarray(batch[DECODER_TARGET_TOKENS]), dtype, dca,
                                    None if seg is None else jnp.asarray(seg))
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": self._apply_params(params)},
                             jnp.asarray(batch[DECODER_INPUT_TOKENS]), mask,
                             enable_dropout=dropout_rng is not None, rngs=rngs)

  def _decode_start(self, params, batch, num_steps, copies=1):
    """The prompt is `decoder_input_tokens [b, l]` in shifted form (`[0, p_0, ...,
    p_n-1]`) over the positions where `decoder_causal_attention` is 1 (the inputs plus
    one). Without that feature (causal decoder only) the prompt is position 0:
    unconditional generation. The prompt is prefilled in one pass with the model's own
    mask (the ND attends bidirectionally over it); its cache is then copied `copies`
    times."""
    self.validate(batch, required=(DECODER_INPUT_TOKENS,))
    if num_steps < 1:
      raise UserError(f"max_decode_steps must be >= 1, found {num_steps}.")
    params = self._apply_params(params)
    tokens = jnp.asarray(batch[DECODER_INPUT_TOKENS], jnp.int32)
    b, length = tokens.shape
    dca = batch.get(DECODER_CAUSAL_ATTENTION)
    if dca is None:
      if self.inputs_bidirectional_attention:
        self._causal_attention(batch)  # raises the missing-feature error
      dca = jnp.zeros((b, length), jnp.int32).at[:, 0].set(1)
    dca = jnp.asarray(dca, jnp.int32)
    prompt_lengths = jnp.sum(dca, axis=-1)                                 # [b]
    cache_length = length + num_steps
    pad = ((0, 0), (0, num_steps))
    tokens, dca = jnp.pad(tokens, pad), jnp.pad(dca, pad)
    dtype = self.config.activation_dtype
    prefill_mask = layers.make_decoder_mask(
        jnp.ones_like(tokens), dtype, dca if self.inputs_bidirectional_attention else None)
    logits, variables = self.module.apply({"params": params}, tokens, prefill_mask,
                                          decoding=layers.Decoding.PREFILL, mutable=["cache"])
    first_logits = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
    cache = variables["cache"]
    if copies > 1:
      axis = self._cache_batch_axis()
      cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, copies, axis=axis), cache)
      first_logits = jnp.repeat(first_logits, copies, axis=0)
      prompt_lengths = jnp.repeat(prompt_lengths, copies, axis=0)

    def step_fn(cache, token, position):
      step_logits, new_vars = self.module.apply(
          {"params": params, "cache": cache}, token[:, None],
          layers.make_step_mask(position, cache_length, dtype),
          decoding=layers.Decoding.step(position, cache_length), mutable=["cache"])
      return step_logits[:, 0], new_vars["cache"]

    return step_fn, cache, first_logits, prompt_lengths


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel(BaseModel):
  """The T5.1.1 encoder-decoder."""

  name = ENCODER_DECODER

  def _network(self, config):
    return network.EncoderDecoder(config)

  def _init_args(self, input_shapes):
    shapes = input_shapes if isinstance(input_shapes, Mapping) else {}
    if ENCODER_INPUT_TOKENS not in shapes or DECODER_INPUT_TOKENS not in shapes:
      raise UserError(f"{self.name}: input_shapes must give 'encoder_input_tokens' and "
                      f"'decoder_input_tokens', found {input_shapes!r}.")
    enc = jnp.ones(shapes[ENCODER_INPUT_TOKENS], jnp.int32)
    dec = jnp.ones(shapes[DECODER_INPUT_TOKENS], jnp.int32)
    return (enc, dec) + self._masks(enc, dec, None, None)

  def _masks(self, enc_tokens, dec_targets, enc_seg, dec_seg):
    dtype = self.config.activation_dtype
    encoder_mask = layers.make_attention_mask(enc_tokens > 0, enc_tokens > 0, dtype=dtype)
    cross_mask = layers.make_attention_mask(dec_targets > 0, enc_tokens > 0, dtype=dtype)
    if enc_seg is not None:
      encoder_mask = layers.combine_masks(
          encoder_mask, layers.make_attention_mask(enc_seg, enc_seg, jnp.equal), dtype=dtype)
    if enc_seg is not None and dec_seg is not None:
      cross_mask = layers.combine_masks(
          cross_mask, layers.make_attention_mask(dec_seg, enc_seg, jnp.equal), dtype=dtype)
    decoder_mask = layers.make_decoder_mask(dec_targets, dtype, None, dec_seg)
    return encoder_mask, decoder_mask, cross_mask

  def validate(self, batch, required=(ENCODER_INPUT_TOKENS, DECODER_INPUT_TOKENS,
                                      DECODER_TARGET_TOKENS)):
    architectures.get(self.name).check_batch(batch, required)

  def compute_logits(self, params, batch, dropout_rng=None):
    """Decoder logits `[b, t, v]` (float32) of a full forward pass."""
    self.validate(batch)
    get = lambda k: None if batch.get(k) is None else jnp.asarray(batch[k])
    enc = get(ENCODER_INPUT_TOKENS)
    masks = self._masks(enc, get(DECODER_TARGET_TOKENS), get(ENCODER_SEGMENT_IDS),
                        get(DECODER_SEGMENT_IDS))
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": self._apply_params(params)}, enc,
                             get(DECODER_INPUT_TOKENS), *masks,
                             enable_dropout=dropout_rng is not None, rngs=rngs)

  def encode(self, params, encoder_input_tokens, encoder_segment_ids=None) -> Array:
    """Encoder outputs `[b, i, d]` of `encoder_input_tokens [b, i]`; with
    `encoder_segment_ids [b, i]` (packed rows) a position attends to its own segment only."""
    enc = jnp.asarray(encoder_input_tokens, jnp.int32)
    dtype = self.config.activation_dtype
    mask = layers.make_attention_mask(enc > 0, enc > 0, dtype=dtype)
    if encoder_segment_ids is not None:
      seg = jnp.asarray(encoder_segment_ids, jnp.int32)
      mask = layers.combine_masks(mask, layers.make_attention_mask(seg, seg, jnp.equal),
                                  dtype=dtype)
    return self.module.apply({"params": self._apply_params(params)}, enc, mask,
                             method=network.EncoderDecoder.encode)

  def cross_key_values(self, params, encoded) -> layers.KeyValue:
    """Every decoder layer's cross-attention keys and values of `encoded [p, i, d]` (from
    `encode`): `KeyValue` of `[layers, p, i, heads, head_dim]` each. Projected once per
    prompt, they serve any number of decoder rows (`decode_logits(..., cross_key_values=,
    cross_rows=)`)."""
    return network.cross_key_values(self.config, self._apply_params(params),
                                    jnp.asarray(encoded))

  def decode_logits(self, params, encoded, encoder_input_tokens, decoder_input_tokens,
                    decoder_target_tokens, *, cross_key_values: Optional[layers.KeyValue] = None,
                    cross_rows=None, encoder_segment_ids=None, decoder_segment_ids=None,
                    cross_segment_ids=None) -> Array:
    """Decoder logits `[b, t, v]` of `decoder_input_tokens [b, t]` against either

      `encoded [b, i, d]` (from `encode`, possibly gathered so that several decoder rows
        share one encoded prompt), `encoder_input_tokens [b, i]` its tokens; or
      `cross_key_values` (from `cross_key_values`) with `encoded` None: the decoder then
        projects no encoder row. With `cross_rows [b]` they are per prompt,
        `[layers, p, i, h, e]` with `encoder_input_tokens [p, i]`, and row r attends to
        prompt `cross_rows[r]` (`cross_rows [b, k]`: to k prompt rows, one after
        another); without, they are per row, `[layers, b, i, h, e]`.

    Packed rows: `decoder_segment_ids [b, t]` keeps each decoder position's
    self-attention within its segment, and `cross_segment_ids [b, t]` names the segment of
    `encoder_segment_ids` (`[p, i]` with `cross_rows`, else `[b, i]`) it reads. Relative
    positions do not depend on where a segment starts, so a packed segment scores as it
    would alone.
    """
    if (encoded is None) == (cross_key_values is None):
      raise UserError(f"{self.name}.decode_logits takes encoded [batch, length, emb] or "
                      f"cross_key_values, exactly one; found "
                      f"{'both' if encoded is not None else 'neither'}.")
    if cross_rows is not None and cross_key_values is None:
      raise UserError(f"{self.name}.decode_logits: cross_rows selects prompts of "
                      f"cross_key_values; give those (with encoded None), or gather "
                      f"encoded yourself.")
    if (encoder_segment_ids is None) != (cross_segment_ids is None):
      raise UserError(f"{self.name}.decode_logits: encoder_segment_ids and "
                      f"cross_segment_ids go together (packed rows); found only "
                      f"{'encoder' if cross_segment_ids is None else 'cross'}_segment_ids.")
    enc = jnp.asarray(encoder_input_tokens, jnp.int32)
    enc_seg = None if encoder_segment_ids is None else jnp.asarray(encoder_segment_ids,
                                                                   jnp.int32)
    if cross_rows is not None:
      cross_rows = jnp.asarray(cross_rows, jnp.int32)
      rows = lambda a: a[cross_rows].reshape(cross_rows.shape[0], -1)   # [b, i] or [b, k i]
      enc = rows(enc)
      enc_seg = None if enc_seg is None else rows(enc_seg)
    targets = jnp.asarray(decoder_target_tokens, jnp.int32)
    dtype = self.config.activation_dtype
    cross_mask = layers.make_attention_mask(targets > 0, enc > 0, dtype=dtype)
    if enc_seg is not None:
      cross_mask = layers.combine_masks(
          cross_mask, layers.make_attention_mask(jnp.asarray(cross_segment_ids, jnp.int32),
                                                 enc_seg, jnp.equal), dtype=dtype)
    decoder_mask = layers.make_decoder_mask(
        targets, dtype, None,
        None if decoder_segment_ids is None else jnp.asarray(decoder_segment_ids, jnp.int32))
    return self.module.apply({"params": self._apply_params(params)}, encoded,
                             jnp.asarray(decoder_input_tokens, jnp.int32), decoder_mask,
                             cross_mask, cross_key_values=cross_key_values,
                             cross_rows=cross_rows, method=network.EncoderDecoder.decode)

  def _decode_start(self, params, batch, num_steps, copies=1):
    """Encode `encoder_input_tokens` once, project the cross-attention keys and values
    once (copied `copies` times), and decode from token 0."""
    self.validate(batch, required=(ENCODER_INPUT_TOKENS,))
    if num_steps < 1:
      raise UserError(f"max_decode_steps must be >= 1, found {num_steps}.")
    params = self._apply_params(params)
    enc = jnp.asarray(batch[ENCODER_INPUT_TOKENS], jnp.int32)
    dtype = self.config.activation_dtype
    encoder_mask = layers.make_attention_mask(enc > 0, enc > 0, dtype=dtype)
    encoded = self.module.apply({"params": params}, enc, encoder_mask,
                                method=network.EncoderDecoder.encode)
    cross_key_values = network.cross_key_values(self.config, params, encoded)
    if copies > 1:             # [layers, b, i, h, e] -> [layers, b * copies, i, h, e]
      cross_key_values = jax.tree_util.tree_map(lambda x: jnp.repeat(x, copies, axis=1),
                                                cross_key_values)
      enc = jnp.repeat(enc, copies, axis=0)
    b = enc.shape[0]
    cross_mask = layers.make_attention_mask(jnp.ones((b, 1), jnp.bool_), enc > 0, dtype=dtype)
    cache_length = num_steps + 1

    def run_decoder(cache, tokens, mask, decoding):
      variables = {"params": params} if cache is None else {"params": params, "cache": cache}
      return self.module.apply(variables, None, tokens, mask, cross_mask,
                               cross_key_values=cross_key_values, decoding=decoding,
                               method=network.EncoderDecoder.decode, mutable=["cache"])

    # The cache's shapes: those a prefill of `cache_length` positions writes (zeros).
    cache = jax.eval_shape(lambda: run_decoder(
        None, jnp.zeros((b, cache_length), jnp.int32), None,
        layers.Decoding.PREFILL)[1]["cache"])
    cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)

    def step_fn(cache, token, position):
      logits, new_vars = run_decoder(cache, token[:, None],
                                     layers.make_step_mask(position, cache_length, dtype),
                                     layers.Decoding.step(position, cache_length))
      return logits[:, 0], new_vars["cache"]

    start = jnp.zeros((b,), jnp.int32)
    first_logits, cache = step_fn(cache, start, start)
    return step_fn, cache, first_logits, start + 1


_MODEL_FIELDS = ("z_loss", "label_smoothing", "loss_normalizing_factor", "max_decode_steps",
                 "temperature", "topk", "eos_id")


def build_model(arch: str, size: str = "tiny", **overrides) -> BaseModel:
  """The model of an architecture at a size preset.

  `overrides` may set any `network.TransformerConfig` field (e.g. `dtype='float32'`,
  `vocab_size=128`, `dropout_rate=0.1`, or the execution options `attention_impl`,
  `remat_policy`, `scan_layers`) and the model options z_loss, label_smoothing,
  loss_normalizing_factor (None = the paper's sum, a number, or 'per_token'),
  max_decode_steps, temperature, topk and eos_id.
  """
  spec = architectures.get(arch)
  model_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in _MODEL_FIELDS}
  config_fields = {f.name for f in dataclasses.fields(network.TransformerConfig)}
  unknown = sorted(set(overrides) - config_fields)
  if unknown:
    raise UserError(f"unknown option(s) {unknown} for build_model; valid: model options "
                    f"{sorted(_MODEL_FIELDS)} and config fields {sorted(config_fields)}.")
  config = network.make_config(size, **overrides)
  if spec.has_encoder:
    return EncoderDecoderModel(config, **model_kwargs)
  return DecoderOnlyModel(config, inputs_bidirectional_attention=spec.bidirectional_prefix,
                          **model_kwargs)


def from_meta(meta: Mapping[str, Any], where: str, arch: Optional[str] = None, *,
              reference: bool = False, **overrides) -> BaseModel:
  """The model a checkpoint's `meta` (as `training.checkpoints.load_meta` reads it)
  describes, built from its exact config (`network.config_from_dict`: a field that
  decides the model and is missing is refused, naming it); no parameters are read.
  This is the one reader from saved metadata to a model; a model directory is opened
  with `training.checkpoints.open_model_dir`, which calls it.

  `where` names the checkpoint in errors. `arch` may read a causal decoder checkpoint as
  the non-causal decoder or back (they share parameters), nothing else. `reference`
  builds the model as scoring runs it on any backend and dtype: no dropout, and the
  execution options (`network.EXECUTION_OPTIONS`) at their defaults whatever the run
  trained with (`TransformerConfig.reference`); they do not change the function.
  `overrides` then set config fields or model options as in `build_model` (e.g.
  `dtype`, `dropout_rate`).
  """
  if "config" not in meta or "arch" not in meta:
    raise UserError(f"checkpoint {where!r} has no model metadata (arch, config); was it "
                    f"written by `arch-objective train` or `convert`?")
  trained = meta["arch"]
  arch = arch or trained
  if arch != trained and not architectures.share_parameters(arch, trained):
    raise UserError(f"checkpoint {where!r} holds a {trained} model; it cannot be read as "
                    f"{arch} (only the causal and non-causal decoders share parameters).")
  config = network.config_from_dict(meta["config"], f"checkpoint {where!r}")
  if reference:
    config = dataclasses.replace(config.reference(), dropout_rate=0.0)
  fields = dataclasses.asdict(config)
  fields.update(overrides)
  return build_model(arch, "tiny", **fields)    # every field given: the preset plays no part


def default_input_shapes(arch: str, batch_size: int = 1, length: int = 626,
                         inputs_length: int = 512, targets_length: int = 114) -> dict:
  """Input shapes for `get_initial_variables` (the paper's lengths by default): the
  architecture's `input_shapes` at these lengths."""
  return architectures.get(arch).input_shapes(
      {"decoder": length, "inputs": inputs_length, "targets": targets_length}, batch_size)


def count_params(model: BaseModel) -> int:
  """Number of parameters, from abstract shapes (allocates nothing)."""
  shapes = default_input_shapes(model.name, 1, 8, 8, 8)
  leaves = jax.tree_util.tree_leaves(model.abstract_variables(shapes)["params"])
  return int(sum(int(np.prod(x.shape)) for x in leaves))


def training_flops_per_token(model: BaseModel, length: int = 626, inputs_length: int = 512,
                             targets_length: int = 114) -> float:
  """Model FLOPs of one training token (forward + backward = 3 x forward).

  Forward FLOPs are 2 per multiply-accumulate of every matmul parameter (attention
  and MLP kernels, and the tied output projection; embedding lookups, norms and
  relative-position tables cost none) plus the attention scores and weighted sums,
  `4 * q * k * h * e` per layer over the full (unmasked) score matrix. Decoder-only
  models process `length` tokens per row; the encoder-decoder `inputs_length`
  encoder and `targets_length` decoder tokens, and the result is per token of both.
  """
  c = model.config
  d, a, m, v = c.emb_dim, c.num_heads * c.head_dim, c.mlp_dim, c.vocab_size
  attn_params = 4 * d * a
  mlp_params = len(c.mlp_activations) * d * m + m * d
  if not architectures.get(model.name).has_encoder:
    per_row = (2 * length * c.num_decoder_layers * (attn_params + mlp_params)
               + 4 * length * length * a * c.num_decoder_layers
               + 2 * length * d * v)
    return 3.0 * per_row / length
  i, t = inputs_length, targets_length
  encoder = c.num_encoder_layers * (2 * i * (attn_params + mlp_params) + 4 * i * i * a)
  cross = 2 * t * 2 * d * a + 2 * i * 2 * d * a + 4 * t * i * a         # q, o on t; k, v on i
  decoder = c.num_decoder_layers * (2 * t * (attn_params + mlp_params) + 4 * t * t * a + cross)
  per_row = encoder + decoder + 2 * t * d * v
  return 3.0 * per_row / (i + t)
