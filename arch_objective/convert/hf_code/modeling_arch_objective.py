"""The arch-objective causal (CD) and non-causal (ND) decoders in PyTorch (`trust_remote_code`).

  model = AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
  logits = model(input_ids, attention_mask=mask).logits                  # CD or ND, causal
  logits = model(input_ids, attention_mask=mask, prefix_lengths=n).logits   # ND prefix
  tokens = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)
  seq2seq = AutoModelForSeq2SeqLM.from_pretrained(out_dir, trust_remote_code=True)
  logits = seq2seq(inputs, attention_mask=mask, labels=targets).logits   # [b, t, v]

Classes: `ArchObjectiveModel` (the stack: hidden states `[b, l, d]`, `AutoModel`),
`ArchObjectiveForCausalLM` (logits `[b, l, v]`, the loss with `labels`, `generate()`) and
`ArchObjectiveForSeq2SeqLM` (`AutoModelForSeq2SeqLM`: targets scored after inputs, the
ND's prefix being the inputs; see the class).
Shape letters: b batch, l length, d d_model, h heads, e head_dim, v vocab_size.

The start token. arch-objective's rows start with the decoder start token 0: the tokens
t_0 .. t_n-1 read [0, t_0, .., t_n-1] and position i predicts t_i. With
`config.prepend_start_token` (true in every export since the field was added) the model
supplies that 0: a forward pass without a key/value cache reads each row as if the start
token stood before its first token (the first position `attention_mask` marks), then
returns the positions of `input_ids` only. Plain ids [t_0, .., t_n-1] thus follow Hugging
Face's causal-LM convention, logits[i] predicting t_i+1 given the start token and
t_0 .. t_i, with arch-objective's numbers (lm-eval's `hf` rows, `labels = input_ids`). A
row whose first token already is 0 is read as it is (the start token given, as in older
exports; lm-eval's empty context with `prefix_token_id=0`). `generate()` supplies it on
its first pass only; the cache then holds that position, and later cached calls take
`attention_mask` and the prefix inputs in the coordinates of their ids, as before. Pass
`prepend_start_token=False` to read rows exactly as given; without the field (older
exports) that is the default. `inputs_embeds` rows are always read as given.

Inputs and the arch-objective features they stand for (t5x feature names):

  input_ids [b, l]            decoder_input_tokens: see the start token above.
  attention_mask [b, l]       decoder_target_tokens > 0: 1 on the positions that hold a
                              token, 0 on padding (left or right). Default: all ones. The
                              start token 0 is not padding; padding is what this mask says.
  prefix_lengths [b]          ND only: position j < prefix_lengths[i] of row i belongs to
                              the bidirectional prefix, which is
                              sum(decoder_causal_attention, -1) for a prefix that starts
                              the row: the start token plus the inputs (an input of n
                              tokens gives n + 1 on a row [0, x_1 .. x_n, ..], and n on
                              a row [x_1 .. x_n, ..] given its start token by the model,
                              which joins any non-empty prefix). 0 or None: fully causal.
  causal_attention_mask [b, l], or its other name decoder_causal_attention
                              ND only: decoder_causal_attention itself, 1 on the prefix
                              positions; two positions that both carry 1 see each other.
                              Shorter than the row: the rest is 0. Give one of
                              prefix_lengths, causal_attention_mask and
                              decoder_causal_attention.
  decoder_segment_ids [b, l]  decoder_segment_ids of packed rows: positions attend only
                              within their segment. decoder_positions are not needed:
                              positions are relative and read from the row index, as in
                              arch-objective. A supplied start token joins the first.
  labels [b, l]               HF's causal-LM convention: the loss is the mean cross-entropy
                              of labels[:, 1:] under logits[:, :-1], positions labelled -100
                              left out. labels = input_ids scores every token after the
                              row's first (a start token the model supplies predicts the
                              first, but that position is not returned).

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
reading. A plain forward call without them is causal for both models (the ND logs a
warning once): lm-eval's `hf` backend scores an ND as arch-objective only with
`backend=seq2seq` (`ArchObjectiveForSeq2SeqLM`).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging as hf_logging

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
START_TOKEN = 0
PREFIX_INPUTS = ("prefix_lengths", "causal_attention_mask", "decoder_causal_attention")
_CACHE_START = "_arch_objective_start_rows"    # the cache attribute: see `start_rows`
logger = hf_logging.get_logger(__name__)


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


def start_positions(input_ids, attention_mask=None):
  """`[b]` long: where the start token goes in each row of `input_ids [b, l]` read one
  position longer at the front, or -1 for a row that already starts with it.

  A row's first token is at the first position the padding mask `attention_mask [b, l]`
  marks (the first position without one); a row whose first token is not 0, or that has
  no token at all, gets the start token just before it: at that same index in the
  longer row, whose index j + 1 holds position j of `input_ids`."""
  ids = torch.as_tensor(input_ids)
  if ids.dim() != 2 or ids.shape[1] == 0:
    return torch.zeros(ids.shape[:1], dtype=torch.long, device=ids.device)
  real = None
  if attention_mask is not None:
    real = torch.as_tensor(attention_mask, device=ids.device)
    real = real.bool() if real.shape == ids.shape else None
  if real is None:
    real = torch.ones_like(ids, dtype=torch.bool)
  first = real.long().argmax(-1)                                       # first real position
  token = ids.gather(1, first[:, None])[:, 0]
  need = (token != START_TOKEN) | ~real.any(-1)
  return torch.where(need, first, torch.full_like(first, -1))


def start_rows(cache, batch):
  """The start positions `[batch]` (`start_positions`) of the forward pass that filled
  `cache`, or None when that pass added no leading position. Every row of such a cache
  holds one position more than its ids: the start token, or a masked slot in front of a
  row that already started with 0."""
  start = getattr(cache, _CACHE_START, None) if cache is not None else None
  if start is None or start.shape[0] == batch:
    return start
  if batch % start.shape[0]:
    raise ValueError(f"the key/value cache was filled for {start.shape[0]} rows; this call "
                     f"has {batch}.")
  return start.repeat_interleave(batch // start.shape[0])


def _remember_start_rows(cache, start):
  if cache is not None:
    setattr(cache, _CACHE_START, start)


def _lengthen(value, start, fill, front=None):
  """`value [b, n]` one position longer at the front (`front`, default: its first
  column), then `fill [b]` at each row's start position (rows with one)."""
  front = value[:, :1] if front is None else front
  value = torch.cat([front.to(value.dtype), value], 1)
  rows = torch.nonzero(start >= 0).flatten()
  if len(rows):
    value[rows, start[rows]] = fill[rows].to(value.dtype)
  return value


def shift_for_start_token(start, given_length, device, attention_mask=None, prefix_lengths=None,
                          causal_attention_mask=None, decoder_causal_attention=None,
                          segment_ids=None):
  """The row inputs in the coordinates of rows one position longer at the front, the
  start token at `start [b]` (`start_positions`; -1: none, the new front position is a
  masked slot). `given_length` counts the positions the caller's row inputs describe
  (cached ones included). Returns (attention_mask, prefix inputs as a dict, segment_ids).

  A non-empty prefix takes the start token in (it belongs to the prefix, as in
  `decoder_causal_attention`); an empty one stays empty."""
  batch = start.shape[0]
  has_start = start >= 0
  if attention_mask is None and bool(has_start.all()) and not bool(start.any()):
    pass                                             # every row: [0] + ids, all real
  else:
    if attention_mask is None:
      attention_mask = torch.ones((batch, given_length), dtype=torch.long, device=device)
    mask = torch.as_tensor(attention_mask, device=device)
    if mask.dim() == 2 and mask.shape[0] == batch:      # anything else: attention_bias says
      attention_mask = _lengthen(mask, start, has_start, front=torch.zeros_like(mask[:, :1]))
  if prefix_lengths is not None:
    lengths = torch.as_tensor(prefix_lengths, device=device).long()
    prefix_lengths = torch.where(lengths > 0, lengths + 1, lengths)
  masks = {}
  for name, value in (("causal_attention_mask", causal_attention_mask),
                      ("decoder_causal_attention", decoder_causal_attention)):
    if value is not None:
      value = torch.as_tensor(value, device=device)
      if value.dim() == 2 and value.shape[0] == batch and value.shape[1]:
        given = value.bool().any(-1)
        value = _lengthen(value, torch.where(start < value.shape[1] + 1, start, -1), given,
                          front=given[:, None])
    masks[name] = value
  if segment_ids is not None:
    seg = torch.as_tensor(segment_ids, device=device)
    if seg.dim() == 2 and seg.shape[0] == batch and seg.shape[1]:
      first = seg.gather(1, start.clamp(0, seg.shape[1] - 1)[:, None])[:, 0]
      segment_ids = _lengthen(seg, torch.where(start < seg.shape[1], start, -1), first)
  return attention_mask, dict(prefix_lengths=prefix_lengths, **masks), segment_ids


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
              use_cache=None, output_hidden_states=None, return_dict=None,
              prepend_start_token=None, **kwargs):
    """See the module docstring for the inputs. Returns `BaseModelOutputWithPast` with
    `last_hidden_state [b, l, d]`, the cache (when used) and, with
    `output_hidden_states`, the residual stream before each block and the final output.
    `prepend_start_token` (default: the config's) supplies the start token (module
    docstring); the positions are always those of `input_ids`."""
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids [batch, length] and inputs_embeds "
                       "[batch, length, d_model].")
    cache = _resolve_cache(cache, past_key_values)
    if use_cache is None:
      use_cache = bool(getattr(self.config, "use_cache", False)) and not self.training
    if not use_cache:
      cache = None
    elif cache is None and DynamicCache is not None:
      cache = _new_cache(self.config)
    past = int(cache.get_seq_length()) if cache is not None else 0
    given = input_ids if inputs_embeds is None else inputs_embeds
    if prepend_start_token is None:
      prepend_start_token = bool(getattr(self.config, "prepend_start_token", False))
    start = None          # start_positions: the rows run one position longer at the front
    if not past:
      if prepend_start_token and input_ids is not None:
        input_ids = torch.as_tensor(input_ids)
        start = start_positions(input_ids, attention_mask)
        if bool((start >= 0).any()):   # else every row has its start token: as given
          input_ids = _lengthen(input_ids, start, torch.full_like(start, START_TOKEN),
                                front=torch.full_like(input_ids[:, :1], START_TOKEN))
        else:
          start = None
      _remember_start_rows(cache, start)
    else:
      start = start_rows(cache, given.shape[0])
    if start is not None:
      attention_mask, prefix_inputs, decoder_segment_ids = shift_for_start_token(
          start, past - 1 + given.shape[1] if past else given.shape[1], given.device,
          attention_mask, prefix_lengths, causal_attention_mask, decoder_causal_attention,
          decoder_segment_ids)
      prefix_lengths, causal_attention_mask, decoder_causal_attention = (
          prefix_inputs[n] for n in PREFIX_INPUTS)
    x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    batch, length = x.shape[:2]
    device = x.device
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
    if start is not None and not past:      # back to the positions of input_ids
      x = x[:, 1:]
      hidden = None if hidden is None else [h[:, 1:] for h in hidden]
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
              return_dict=None, logits_to_keep=0, num_items_in_batch=None,
              prepend_start_token=None, **kwargs):
    """See the module docstring for the inputs. Returns `CausalLMOutputWithPast`: float32
    `logits [b, l, v]` (the last `logits_to_keep` positions if > 0), `loss` (with
    `labels [b, l]`: mean cross-entropy of labels[:, 1:] under logits[:, :-1], -100
    ignored; summed and divided by `num_items_in_batch` when that is given), the cache.
    `prepend_start_token` overrides the config's (module docstring)."""
    if self.config.non_causal and all(
        v is None for v in (prefix_lengths, causal_attention_mask, decoder_causal_attention)):
      logger.warning_once(
          "ArchObjectiveForCausalLM: this non-causal decoder (ND) got no prefix "
          "(prefix_lengths / causal_attention_mask), so it reads every row causally, "
          "unlike arch-objective's scoring, where the start token and the context attend "
          "bidirectionally. lm-eval's `hf` backend passes no prefix to a causal LM: run it "
          "with backend=seq2seq (AutoModelForSeq2SeqLM, ArchObjectiveForSeq2SeqLM), which "
          "reads the context as the prefix.")
    out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                     prefix_lengths=prefix_lengths, causal_attention_mask=causal_attention_mask,
                     decoder_causal_attention=decoder_causal_attention,
                     decoder_segment_ids=decoder_segment_ids, inputs_embeds=inputs_embeds,
                     cache=cache, past_key_values=past_key_values, use_cache=use_cache,
                     output_hidden_states=output_hidden_states, return_dict=True,
                     prepend_start_token=prepend_start_token)
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


def seq2seq_rows(input_ids, attention_mask, labels):
  """The decoder-only rows of (inputs, targets) pairs, as arch-objective scores them.

  `input_ids [b, i]` with `attention_mask [b, i]` (padding on either side): each row's
  inputs, given the start token 0 in front unless they already start with it;
  `labels [b, t]`: the targets (right padding: -100 or 0). Row r reads
  `[0, x_1 .. x_n, y_1 .. y_t-1]`, left-padded so that every row's last input sits at
  position c - 1. Returns (ids [b, c + t - 1], padding mask, prefix mask (the start token
  and the inputs), c): the logits at positions c - 1 .. c + t - 2 predict y_1 .. y_t."""
  ids = torch.as_tensor(input_ids)
  targets = torch.as_tensor(labels, device=ids.device).long()
  if ids.dim() != 2 or targets.dim() != 2 or targets.shape[0] != ids.shape[0]:
    raise ValueError(f"input_ids [batch, inputs] and labels [batch, targets] must share "
                     f"their batch size; found {tuple(ids.shape)} and {tuple(targets.shape)}.")
  if targets.shape[1] == 0:
    raise ValueError("labels has no positions; give at least one target token.")
  real = (torch.ones_like(ids, dtype=torch.bool) if attention_mask is None
          else _rows("attention_mask", attention_mask, *ids.shape, ids.device).bool())
  if real.shape != ids.shape:
    raise ValueError(f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, "
                     f"found {tuple(real.shape)}.")
  start = start_positions(ids, real)
  inputs = []
  for r in range(ids.shape[0]):
    row = ids[r][real[r]]
    inputs.append(F.pad(row, (1, 0), value=START_TOKEN) if int(start[r]) >= 0 else row)
  c, t = max(len(x) for x in inputs), targets.shape[1]
  rows = torch.zeros((ids.shape[0], c + t - 1), dtype=torch.long, device=ids.device)
  mask = torch.zeros_like(rows)
  prefix = torch.zeros_like(rows, dtype=torch.bool)
  for r, x in enumerate(inputs):
    rows[r, c - len(x):c] = x
    mask[r, c - len(x):] = 1
    prefix[r, c - len(x):c] = True
  rows[:, c:] = targets[:, :-1].clamp(min=0)
  return rows, mask, prefix, c


class ArchObjectiveForSeq2SeqLM(ArchObjectiveForCausalLM):
  """The CD or ND read as a sequence-to-sequence model (`AutoModelForSeq2SeqLM`).

  `model(input_ids=inputs, attention_mask=mask, labels=targets)` scores the targets
  `[b, t]` after the inputs `[b, i]` exactly as arch-objective scores a (context,
  continuation) pair: one row `[0, inputs, targets]`, the start token and the inputs
  forming the ND's bidirectional prefix (the CD reads it causally). It returns float32
  `logits [b, t, v]`, logits[:, k] predicting labels[:, k] (T5's convention), and `loss`,
  the mean cross-entropy over the targets that are not -100. Inputs that already start
  with 0 keep that start token (lm-eval's empty context, `prefix_token_id=0`, is the
  start token alone). This is the reading lm-eval's `hf` backend gives with
  `backend=seq2seq`, the only one that tells the model where the context ends.

  Without `labels` it is the causal LM (`ArchObjectiveForCausalLM`); `generate()`
  continues the inputs as that class does (for the ND, all of them are the prefix) and
  returns `[0, y_1 .. y_k]`: the start token and the new tokens, as a T5 would.
  """

  def forward(self, input_ids=None, attention_mask=None, prefix_lengths=None,
              causal_attention_mask=None, decoder_causal_attention=None,
              decoder_segment_ids=None, labels=None, inputs_embeds=None, cache=None,
              past_key_values=None, use_cache=None, output_hidden_states=None,
              return_dict=None, logits_to_keep=0, num_items_in_batch=None,
              prepend_start_token=None, decoder_input_ids=None, **kwargs):
    """With `labels [b, t]`: the targets scored after `input_ids [b, i]` (the class
    docstring). Without: `ArchObjectiveForCausalLM.forward` (generation uses it)."""
    if labels is None:
      if decoder_input_ids is not None:
        raise ValueError("ArchObjectiveForSeq2SeqLM takes its targets as labels [batch, "
                         "targets] (the logits predict them), not decoder_input_ids.")
      return super().forward(
          input_ids=input_ids, attention_mask=attention_mask, prefix_lengths=prefix_lengths,
          causal_attention_mask=causal_attention_mask,
          decoder_causal_attention=decoder_causal_attention,
          decoder_segment_ids=decoder_segment_ids, inputs_embeds=inputs_embeds, cache=cache,
          past_key_values=past_key_values, use_cache=use_cache,
          output_hidden_states=output_hidden_states, return_dict=return_dict,
          logits_to_keep=logits_to_keep, num_items_in_batch=num_items_in_batch,
          prepend_start_token=prepend_start_token, **kwargs)
    if input_ids is None:
      raise ValueError("labels (the targets) need input_ids (the inputs) [batch, inputs].")
    given = [n for n, v in (("prefix_lengths", prefix_lengths),
                            ("causal_attention_mask", causal_attention_mask),
                            ("decoder_causal_attention", decoder_causal_attention),
                            ("decoder_segment_ids", decoder_segment_ids),
                            ("inputs_embeds", inputs_embeds)) if v is not None]
    if given:
      raise ValueError(f"with labels the inputs are the prefix (one row per pair); drop "
                       f"{given}.")
    rows, mask, prefix, c = seq2seq_rows(input_ids, attention_mask, labels)
    out = self.model(input_ids=rows, attention_mask=mask,
                     causal_attention_mask=prefix if self.config.non_causal else None,
                     use_cache=False, prepend_start_token=False, return_dict=True)
    targets = torch.as_tensor(labels, device=rows.device).long()
    logits = self.logits(out.last_hidden_state[:, c - 1:c - 1 + targets.shape[1]])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100)
    result = _output(CausalLMOutputWithPast, _LM_CACHE_FIELD, loss=loss, logits=logits,
                     cache=None)
    return result if return_dict is not False else result.to_tuple()

  def generate(self, inputs=None, *args, **kwargs):
    """`ArchObjectiveForCausalLM.generate`, returning the start token and the new tokens
    (`[b, 1 + k]`) instead of the prompt and the new tokens."""
    prompt = inputs if inputs is not None else kwargs.get("input_ids")
    out = super().generate(inputs, *args, **kwargs)
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2:
      return out

    def new_tokens(sequences):
      return torch.cat([torch.full_like(sequences[:, :1], START_TOKEN),
                        sequences[:, prompt.shape[1]:]], 1)
    if isinstance(out, torch.Tensor):
      return new_tokens(out)
    if getattr(out, "sequences", None) is not None:
      out.sequences = new_tokens(out.sequences)
    return out
