"""The arch-objective causal (CD) and non-causal (ND) decoders in PyTorch (`trust_remote_code`).

  model = AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
  logits = model(input_ids, attention_mask=mask).logits                  # CD or ND, causal
  logits = model(input_ids, attention_mask=mask, prefix_lengths=n).logits   # ND prefix
  tokens = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)

Classes: `ArchObjectiveModel` (the stack: hidden states `[b, l, d]`, `AutoModel`) and
`ArchObjectiveForCausalLM` (logits `[b, l, v]`, the loss with `labels`, `generate()`).
Shape letters: b batch, l length, d d_model, h heads, e head_dim, v vocab_size.

Inputs and the arch-objective features they stand for (t5x feature names):

  input_ids [b, l]            decoder_input_tokens: a row starts with the decoder start
                              token 0, so the row of tokens t_0 .. t_n-1 reads
                              [0, t_0, .., t_n-1] and position i predicts t_i.
  attention_mask [b, l]       decoder_target_tokens > 0: 1 on the positions that hold a
                              token, 0 on padding (left or right). Default: all ones. The
                              start token 0 is not padding; padding is what this mask says.
  prefix_lengths [b]          ND only: position j < prefix_lengths[i] of row i belongs to
                              the bidirectional prefix, which is
                              sum(decoder_causal_attention, -1) for a prefix that starts
                              the row: the start token plus the inputs (an input of n
                              tokens gives n + 1). 0 or None: fully causal.
  causal_attention_mask [b, l], or its other name decoder_causal_attention
                              ND only: decoder_causal_attention itself, 1 on the prefix
                              positions; two positions that both carry 1 see each other.
                              Shorter than the row: the rest is 0. Give one of
                              prefix_lengths, causal_attention_mask and
                              decoder_causal_attention.
  decoder_segment_ids [b, l]  decoder_segment_ids of packed rows: positions attend only
                              within their segment. decoder_positions are not needed:
                              positions are relative and read from the row index, as in
                              arch-objective.
  labels [b, l]               HF's causal-LM convention: the loss is the mean cross-entropy
                              of labels[:, 1:] under logits[:, :-1], positions labelled -100
                              left out. labels = input_ids scores every token after the
                              start token.

Attention mask, as `layers.make_decoder_mask` builds it: query q sees key k when
(k <= q or (prefix[q] and prefix[k])) and both are not padding and share a segment; a
masked pair adds -1e10 to the score (a position that sees nothing averages every key,
as arch-objective does). The relative-position buckets are unidirectional in both models:
a key after its query (inside an ND prefix) falls in bucket 0, like distance 0.

Numerics: RMSNorm, the attention softmax and the logits run in float32 whatever the
parameter dtype; the logits are float32.

Generation: `generate()` keeps a key/value cache (a transformers `DynamicCache`; pass
`use_cache=False` to recompute the whole sequence at every step, which gives the same
tokens). The cache is exact for the ND because a prefix never sees the positions after
it: the prefix must be inside the first forward call (the prompt), and a later cached
step that falls inside the prefix raises a ValueError. For the ND, `generate()` without
prefix_lengths / causal_attention_mask / decoder_causal_attention takes the whole
prompt (`input_ids.shape[1]` positions, left padding included) as the prefix, as
arch-objective's own decoding does; pass `prefix_lengths=torch.zeros(b)` for a causal
reading. A plain forward call without them is causal for both models.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_arch_objective import ArchObjectiveConfig

try:
  from transformers.cache_utils import Cache, DynamicCache
except ImportError:  # transformers without Cache classes: generation recomputes
  Cache = DynamicCache = None
try:
  from transformers import initialization as _init
except ImportError:
  _init = nn.init

NEG_INF = -1e10
PREFIX_INPUTS = ("prefix_lengths", "causal_attention_mask", "decoder_causal_attention")


def _cache_field(output_class) -> str:
  fields = getattr(output_class, "__dataclass_fields__", {})
  return "cache" if "cache" in fields else "past_key_values"


_BASE_CACHE_FIELD = _cache_field(BaseModelOutputWithPast)
_LM_CACHE_FIELD = _cache_field(CausalLMOutputWithPast)


def relative_position_bucket(relative_position, bidirectional=False, num_buckets=32,
                             max_distance=128):
  """T5's bucket of `relative_position = key_pos - query_pos` (an integer tensor).

  Unidirectional: a key after its query falls in bucket 0. Half of the buckets of a
  direction hold exact distances, the rest grow logarithmically up to `max_distance`.
  """
  n = -relative_position
  ret = torch.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = (n < 0).to(n.dtype) * num_buckets
    n = n.abs()
  else:
    n = n.clamp(min=0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  eps = torch.finfo(torch.float32).eps
  val_if_large = max_exact + (
      torch.log(n.to(torch.float32) / max_exact + eps)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).to(n.dtype)
  val_if_large = val_if_large.clamp(max=num_buckets - 1)
  return ret + torch.where(is_small, n, val_if_large)


_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "linear": lambda x: x,
}


class ArchObjectiveRMSNorm(nn.Module):
  """`x * rsqrt(mean(x^2) + eps) * weight` in float32, no mean subtraction, no bias.

  `[..., d]` -> `[..., d]` in the input's dtype.
  """

  def __init__(self, d_model, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(d_model))
    self.eps = eps

  def forward(self, x):
    dtype = x.dtype
    x = x.to(torch.float32)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
    return (y * self.weight.to(torch.float32)).to(dtype)


class ArchObjectiveAttention(nn.Module):
  """Bias-free multi-head self-attention with this layer's relative-position table.

  Weights `q, k, v [h*e, d]`, `o [d, h*e]`, `relative_attention_bias [buckets, h]`.
  """

  def __init__(self, config, layer_idx):
    super().__init__()
    self.config = config
    self.layer_idx = layer_idx
    self.num_heads, self.head_dim = config.num_heads, config.head_dim
    inner = config.num_heads * config.head_dim
    self.q = nn.Linear(config.d_model, inner, bias=False)
    self.k = nn.Linear(config.d_model, inner, bias=False)
    self.v = nn.Linear(config.d_model, inner, bias=False)
    self.o = nn.Linear(inner, config.d_model, bias=False)
    self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets,
                                                config.num_heads)

  def position_bias(self, query_positions, key_length):
    """`query_positions [q]`, keys `0 .. key_length - 1` -> bias `[1, h, q, k]` (float32)."""
    keys = torch.arange(key_length, device=query_positions.device)
    buckets = relative_position_bucket(
        keys[None, :] - query_positions[:, None], bidirectional=False,
        num_buckets=self.config.relative_attention_num_buckets,
        max_distance=self.config.relative_attention_max_distance)               # [q, k]
    bias = self.relative_attention_bias(buckets)                                # [q, k, h]
    return bias.permute(2, 0, 1)[None].to(torch.float32)

  def forward(self, x, mask_bias, query_positions, cache=None):
    """`x [b, q, d]`, `mask_bias [b, 1, q, k]` (0 or -1e10), `query_positions [q]` -> `[b, q, d]`.

    With `cache`, the keys and values of `x` are appended to this layer's cached ones
    and the queries attend over all of them (k = cached + q).
    """
    b, q, _ = x.shape
    shape = (b, q, self.num_heads, self.head_dim)
    query = self.q(x).view(shape).transpose(1, 2)                               # [b, h, q, e]
    key = self.k(x).view(shape).transpose(1, 2)
    value = self.v(x).view(shape).transpose(1, 2)
    if cache is not None:
      key, value = cache.update(key, value, self.layer_idx)
    scores = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(-1, -2))
    scores = scores + (mask_bias + self.position_bias(query_positions, key.shape[2]))
    weights = torch.softmax(scores, dim=-1).to(value.dtype)                     # [b, h, q, k]
    out = torch.matmul(weights, value).transpose(1, 2).reshape(b, q, -1)       # [b, q, h*e]
    return self.o(out)


class ArchObjectiveMLP(nn.Module):
  """`wo(prod_i act_i(wi_i(x)))`: `wi_i [m, d]` (`wi` with one activation), `wo [d, m]`."""

  def __init__(self, config):
    super().__init__()
    acts = list(config.mlp_activations)
    self.names = ["wi"] if len(acts) == 1 else [f"wi_{i}" for i in range(len(acts))]
    self.activations = acts
    for name in self.names:
      self.add_module(name, nn.Linear(config.d_model, config.d_ff, bias=False))
    self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

  def forward(self, x):
    """`[b, l, d]` -> `[b, l, d]`."""
    h = None
    for name, act in zip(self.names, self.activations):
      y = _ACTIVATIONS[act](getattr(self, name)(x))
      h = y if h is None else h * y
    return self.wo(h)


class ArchObjectiveBlock(nn.Module):
  """Pre-norm block: `x + attn(norm(x))`, then `x + mlp(norm(x))`."""

  def __init__(self, config, layer_idx):
    super().__init__()
    self.self_attn_layer_norm = ArchObjectiveRMSNorm(config.d_model, config.layer_norm_epsilon)
    self.self_attn = ArchObjectiveAttention(config, layer_idx)
    self.mlp_layer_norm = ArchObjectiveRMSNorm(config.d_model, config.layer_norm_epsilon)
    self.mlp = ArchObjectiveMLP(config)

  def forward(self, x, mask_bias, query_positions, cache=None):
    x = x + self.self_attn(self.self_attn_layer_norm(x), mask_bias, query_positions, cache)
    return x + self.mlp(self.mlp_layer_norm(x))


class ArchObjectivePreTrainedModel(PreTrainedModel):
  """Weight initialisation (arch-objective's scales) and loading for both classes."""
  config_class = ArchObjectiveConfig
  base_model_prefix = "model"
  _no_split_modules = ["ArchObjectiveBlock"]
  supports_gradient_checkpointing = False

  def _init_weights(self, module):
    c = self.config
    if isinstance(module, ArchObjectiveRMSNorm):
      _init.ones_(module.weight)
    elif isinstance(module, ArchObjectiveAttention):
      inner = c.num_heads * c.head_dim
      _init.normal_(module.q.weight, mean=0.0, std=(c.d_model * c.head_dim) ** -0.5)
      for linear in (module.k, module.v):
        _init.normal_(linear.weight, mean=0.0, std=c.d_model ** -0.5)
      _init.normal_(module.o.weight, mean=0.0, std=inner ** -0.5)
      limit = (6.0 / (c.num_heads + c.relative_attention_num_buckets)) ** 0.5
      _init.uniform_(module.relative_attention_bias.weight, -limit, limit)
    elif isinstance(module, ArchObjectiveMLP):
      for name in module.names:
        _init.normal_(getattr(module, name).weight, mean=0.0, std=c.d_model ** -0.5)
      _init.normal_(module.wo.weight, mean=0.0, std=c.d_ff ** -0.5)
    elif isinstance(module, ArchObjectiveModel):
      _init.normal_(module.embed_tokens.weight, mean=0.0, std=1.0)
    elif isinstance(module, ArchObjectiveForCausalLM) and module.lm_head is not None:
      _init.normal_(module.lm_head.weight, mean=0.0, std=c.d_model ** -0.5)


def _new_cache(config):
  try:
    return DynamicCache(config=config)
  except TypeError:
    return DynamicCache()


def _resolve_cache(cache, past_key_values):
  if cache is not None and past_key_values is not None:
    raise ValueError("pass the key/value cache as `cache` or `past_key_values`, not both.")
  cache = cache if cache is not None else past_key_values
  if cache is None:
    return None
  if Cache is None or not isinstance(cache, Cache):
    raise ValueError(f"the key/value cache must be a transformers Cache (e.g. DynamicCache), "
                     f"found {type(cache).__name__}.")
  return cache


def _rows(name, value, batch, length, device):
  value = torch.as_tensor(value, device=device)
  if value.dim() != 2 or value.shape[0] != batch:
    raise ValueError(f"{name} must have shape [batch, length] = [{batch}, {length}], found "
                     f"{tuple(value.shape)}.")
  return value


def prefix_mask(config, batch, length, past, device, prefix_lengths=None,
                causal_attention_mask=None, decoder_causal_attention=None):
  """The ND prefix `[b, length]` (bool) of one forward call, or None (fully causal).

  `length` counts the cached positions (`past`) and the new ones. ValueError for more
  than one prefix input, a prefix on a causal decoder, or a prefix that reaches into
  the positions of a cached step.
  """
  given = {n: v for n, v in zip(PREFIX_INPUTS, (prefix_lengths, causal_attention_mask,
                                                decoder_causal_attention)) if v is not None}
  if not given:
    return None
  if len(given) > 1:
    raise ValueError(f"give the ND prefix once; found {sorted(given)} (prefix_lengths [batch] "
                     f"or causal_attention_mask / decoder_causal_attention [batch, length]).")
  name, value = next(iter(given.items()))
  if name == "prefix_lengths":
    lengths = torch.as_tensor(value, device=device).long()
    if lengths.dim() == 0:
      lengths = lengths.expand(batch)
    if lengths.shape != (batch,):
      raise ValueError(f"prefix_lengths must have shape [batch] = [{batch}], found "
                       f"{tuple(lengths.shape)}.")
    if bool((lengths < 0).any()):
      raise ValueError(f"prefix_lengths must be >= 0, found {lengths.tolist()}.")
    prefix = torch.arange(length, device=device)[None, :] < lengths[:, None]
  else:
    mask = _rows(name, value, batch, length, device)
    if mask.shape[1] > length:
      if bool(mask[:, length:].any()):
        raise ValueError(f"{name} marks positions past the row's {length} tokens.")
      mask = mask[:, :length]
    prefix = F.pad(mask.bool(), (0, length - mask.shape[1]))
  if not bool(prefix.any()):
    return None
  if not config.non_causal:
    raise ValueError(f"{name} marks a bidirectional prefix but this is a causal decoder "
                     f"(config.non_causal=false): it attends causally everywhere.")
  if past and bool(prefix[:, past:].any()):
    raise ValueError(f"{name} puts positions >= {past} in the prefix, but the key/value cache "
                     f"already holds {past} positions computed without them: give the whole "
                     f"prefix in the first call, or pass use_cache=False.")
  return prefix


def attention_bias(batch, query_length, past, device, attention_mask=None, prefix=None,
                   segment_ids=None):
  """The additive mask `[b, 1, q, k]` (0 = seen, -1e10 = hidden) of queries `past ..
  past + q - 1` over keys `0 .. past + q - 1`, as `layers.make_decoder_mask`."""
  length = past + query_length
  queries = torch.arange(past, length, device=device)
  keys = torch.arange(length, device=device)
  seen = (keys[None, :] <= queries[:, None])[None].expand(batch, -1, -1)       # [b, q, k]
  if prefix is not None:
    seen = seen | (prefix[:, past:, None] & prefix[:, None, :])
  if attention_mask is not None:
    if attention_mask.dim() != 2:
      raise ValueError(f"attention_mask must be a 2-D padding mask [batch, length], found "
                       f"shape {tuple(attention_mask.shape)}.")
    real = _rows("attention_mask", attention_mask, batch, length, device)
    if real.shape[1] != length:
      raise ValueError(f"attention_mask has {real.shape[1]} positions but the row has "
                       f"{length} (cached {past} + new {query_length}).")
    real = real.bool()
    seen = seen & real[:, past:, None] & real[:, None, :]
  if segment_ids is not None:
    seg = _rows("decoder_segment_ids", segment_ids, batch, length, device)
    if seg.shape[1] != length:
      raise ValueError(f"decoder_segment_ids has {seg.shape[1]} positions but the row has "
                       f"{length}.")
    seen = seen & (seg[:, past:, None] == seg[:, None, :])
  zero = torch.zeros((), dtype=torch.float32, device=device)
  return torch.where(seen, zero, torch.full((), NEG_INF, device=device))[:, None]


def _output(cls, field, **values):
  cache = values.pop("cache")
  return cls(**values, **{field: cache})


class ArchObjectiveModel(ArchObjectivePreTrainedModel):
  """Embedding, blocks and final norm: `input_ids [b, l]` -> `last_hidden_state [b, l, d]`."""

  def __init__(self, config):
    super().__init__(config)
    self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
    self.layers = nn.ModuleList([ArchObjectiveBlock(config, i)
                                 for i in range(config.num_layers)])
    self.final_layer_norm = ArchObjectiveRMSNorm(config.d_model, config.layer_norm_epsilon)
    self.post_init()

  def get_input_embeddings(self):
    return self.embed_tokens

  def set_input_embeddings(self, value):
    self.embed_tokens = value

  def forward(self, input_ids=None, attention_mask=None, prefix_lengths=None,
              causal_attention_mask=None, decoder_causal_attention=None,
              decoder_segment_ids=None, inputs_embeds=None, cache=None, past_key_values=None,
              use_cache=None, output_hidden_states=None, return_dict=None, **kwargs):
    """See the module docstring for the inputs. Returns `BaseModelOutputWithPast` with
    `last_hidden_state [b, l, d]`, the cache (when used) and, with
    `output_hidden_states`, the residual stream before each block and the final output."""
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids [batch, length] and inputs_embeds "
                       "[batch, length, d_model].")
    x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    batch, length = x.shape[:2]
    device = x.device
    cache = _resolve_cache(cache, past_key_values)
    if use_cache is None:
      use_cache = bool(getattr(self.config, "use_cache", False)) and not self.training
    if not use_cache:
      cache = None
    elif cache is None and DynamicCache is not None:
      cache = _new_cache(self.config)
    past = int(cache.get_seq_length()) if cache is not None else 0
    prefix = prefix_mask(self.config, batch, past + length, past, device, prefix_lengths,
                         causal_attention_mask, decoder_causal_attention)
    bias = attention_bias(batch, length, past, device, attention_mask, prefix,
                          decoder_segment_ids)
    positions = torch.arange(past, past + length, device=device)
    hidden = [] if output_hidden_states else None
    for layer in self.layers:
      if hidden is not None:
        hidden.append(x)
      x = layer(x, bias, positions, cache)
    x = self.final_layer_norm(x)
    if hidden is not None:
      hidden.append(x)
    out = _output(BaseModelOutputWithPast, _BASE_CACHE_FIELD, last_hidden_state=x,
                  cache=cache, hidden_states=tuple(hidden) if hidden is not None else None)
    return out if return_dict is not False else out.to_tuple()


class ArchObjectiveForCausalLM(ArchObjectivePreTrainedModel, GenerationMixin):
  """The CD or ND language model: `input_ids [b, l]` -> float32 `logits [b, l, v]`."""

  def __init__(self, config):
    super().__init__(config)
    self.model = ArchObjectiveModel(config)
    self.lm_head = (None if config.logits_via_embedding
                    else nn.Linear(config.d_model, config.vocab_size, bias=False))
    self.post_init()

  def get_input_embeddings(self):
    return self.model.embed_tokens

  def set_input_embeddings(self, value):
    self.model.embed_tokens = value

  def get_output_embeddings(self):
    return self.lm_head

  def set_output_embeddings(self, value):
    if self.lm_head is None:
      raise ValueError("this model's output layer is its input embedding "
                       "(logits_via_embedding=true); set the input embeddings instead.")
    self.lm_head = value

  def logits(self, hidden):
    """`hidden [b, l, d]` (after the final norm) -> float32 logits `[b, l, v]`."""
    hidden = hidden.to(torch.float32)
    if self.config.logits_via_embedding:
      embedding = self.model.embed_tokens.weight.to(torch.float32)
      return F.linear(hidden, embedding) / math.sqrt(self.config.d_model)
    return F.linear(hidden, self.lm_head.weight.to(torch.float32))

  def forward(self, input_ids=None, attention_mask=None, prefix_lengths=None,
              causal_attention_mask=None, decoder_causal_attention=None,
              decoder_segment_ids=None, labels=None, inputs_embeds=None, cache=None,
              past_key_values=None, use_cache=None, output_hidden_states=None,
              return_dict=None, logits_to_keep=0, num_items_in_batch=None, **kwargs):
    """See the module docstring for the inputs. Returns `CausalLMOutputWithPast`: float32
    `logits [b, l, v]` (the last `logits_to_keep` positions if > 0), `loss` (with
    `labels [b, l]`: mean cross-entropy of labels[:, 1:] under logits[:, :-1], -100
    ignored; summed and divided by `num_items_in_batch` when that is given), the cache."""
    out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                     prefix_lengths=prefix_lengths, causal_attention_mask=causal_attention_mask,
                     decoder_causal_attention=decoder_causal_attention,
                     decoder_segment_ids=decoder_segment_ids, inputs_embeds=inputs_embeds,
                     cache=cache, past_key_values=past_key_values, use_cache=use_cache,
                     output_hidden_states=output_hidden_states, return_dict=True)
    hidden = out.last_hidden_state
    if logits_to_keep:
      if labels is not None:
        raise ValueError("labels need the logits of every position; drop logits_to_keep.")
      hidden = hidden[:, -logits_to_keep:]
    logits = self.logits(hidden)
    loss = None
    if labels is not None:
      labels = torch.as_tensor(labels, device=logits.device)
      if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must have the shape of input_ids {tuple(logits.shape[:2])}, "
                         f"found {tuple(labels.shape)}.")
      flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
      flat_labels = labels[:, 1:].reshape(-1).long()
      if num_items_in_batch is None:
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
      else:
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100,
                               reduction="sum") / num_items_in_batch
    result = _output(CausalLMOutputWithPast, _LM_CACHE_FIELD, loss=loss, logits=logits,
                     cache=getattr(out, _BASE_CACHE_FIELD), hidden_states=out.hidden_states)
    return result if return_dict is not False else result.to_tuple()

  def generate(self, inputs=None, *args, **kwargs):
    """`GenerationMixin.generate`; for the ND the prompt is the prefix unless a prefix
    input is given (see the module docstring)."""
    if self.config.non_causal and not any(kwargs.get(n) is not None for n in PREFIX_INPUTS):
      prompt = inputs if inputs is not None else kwargs.get("input_ids")
      if isinstance(prompt, torch.Tensor) and prompt.dim() == 2:
        kwargs["prefix_lengths"] = torch.full((prompt.shape[0],), prompt.shape[1],
                                              dtype=torch.long, device=prompt.device)
    return super().generate(inputs, *args, **kwargs)
