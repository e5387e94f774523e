"""The encoder-decoder as a Hugging Face `transformers.T5ForConditionalGeneration`.

`export_t5` writes a directory `AutoModelForSeq2SeqLM.from_pretrained(out_dir)` loads
(`config.json`, `generation_config.json`, safetensors, see `hf_files`); `import_t5` reads
it back, or any Hugging Face T5 saved with safetensors. The weights map exactly:

  ours (t5x names; kernels (in, out))      Hugging Face (Linear weights (out, in))
  token_embedder/embedding [v, d]          shared.weight [v, d]
  {S}/relpos_bias/rel_embedding [h, 32]    {S}.block.0.layer.0.SelfAttention.
                                             relative_attention_bias.weight [32, h]
  {S}/{S}_norm/scale                       {S}.final_layer_norm.weight
  encoder/layers_i/                        encoder.block.i.layer.
    pre_attention_layer_norm/scale           0.layer_norm.weight
    attention/{query,key,value,out}/kernel   0.SelfAttention.{q,k,v,o}.weight
    pre_mlp_layer_norm/scale                 1.layer_norm.weight
    mlp/{wi_0,wi_1,wo}/kernel                1.DenseReluDense.{wi_0,wi_1,wo}.weight
  decoder/layers_i/                        decoder.block.i.layer.
    pre_self_attention_layer_norm/scale      0.layer_norm.weight
    self_attention/...                       0.SelfAttention.{q,k,v,o}.weight
    pre_cross_attention_layer_norm/scale     1.layer_norm.weight
    encoder_decoder_attention/...            1.EncDecAttention.{q,k,v,o}.weight
    pre_mlp_layer_norm/scale, mlp/...        2.layer_norm.weight, 2.DenseReluDense...
  decoder/logits_dense/kernel [d, v]       lm_head.weight [v, d]
                                           (only with logits_via_embedding=False)
  ({S} is encoder or decoder; every kernel and the relative tables are transposed.)

Why the numbers agree: HF T5 does not scale attention by 1/sqrt(d) either (the scale
lives in the query initialiser, as ours); its relative-position buckets equal ours
for every distance; `feed_forward_proj='gated-gelu'` selects `gelu_new`, the tanh
approximation that `flax.linen.gelu` computes; RMSNorm with eps 1e-6; and with tied
embeddings HF multiplies the decoder output by d_model**-0.5 before `lm_head =
shared`, which is our `logits / sqrt(emb_dim)`. The relative-position table lives in
layer 0 of each stack and is shared by all layers, like our one table per stack.

Our exact config and the run's meta travel in config.json's `arch_objective` block,
which transformers keeps and ignores; of it the import reads the dtype options only
(the rest is in T5's own fields).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

import numpy as np

from arch_objective import architectures, models, network, paths
from arch_objective.convert import hf_files, param_tree
from arch_objective.errors import MissingDependency, UserError

MODEL_TYPE = "t5"
GENERATION_CONFIG_FILE = "generation_config.json"

# flax.linen.gelu is the tanh approximation: HF's `gelu_new` (HF's `gelu` is exact).
_TO_HF_ACTIVATION = {"gelu": "gelu_new", "relu": "relu", "silu": "silu"}
_FROM_HF_ACTIVATION = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu",
                       "silu": "silu", "swish": "silu"}
# Copies of shared.weight that some HF files hold; accepted on import if equal to it.
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                "lm_head.weight")
# A table HF never uses (cross-attention has no position bias); older files hold it.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _mlp_names(config: network.TransformerConfig) -> list[str]:
  acts = tuple(config.mlp_activations)
  if len(acts) == 1:
    return ["wi"]
  return [f"wi_{i}" for i in range(len(acts))]


def t5_feed_forward_proj(config: network.TransformerConfig) -> str:
  """HF's `feed_forward_proj` for our `mlp_activations` (UserError if none fits)."""
  acts = tuple(config.mlp_activations)
  if len(acts) == 2 and acts[1] == "linear" and acts[0] in _TO_HF_ACTIVATION:
    return "gated-gelu" if acts[0] == "gelu" else f"gated-{_TO_HF_ACTIVATION[acts[0]]}"
  if len(acts) == 1 and acts[0] in _TO_HF_ACTIVATION:
    return _TO_HF_ACTIVATION[acts[0]]
  raise UserError(f"mlp_activations {acts} has no Hugging Face T5 equivalent; T5 supports "
                  f"(ACT, 'linear') (gated) or (ACT,) with ACT in "
                  f"{sorted(_TO_HF_ACTIVATION)}. Use the native export instead.")


def _activations_from_hf(hf: Mapping[str, Any], where: str) -> tuple[str, ...]:
  proj = str(hf.get("feed_forward_proj", "relu"))
  parts = proj.split("-")
  gated = bool(hf.get("is_gated_act", parts[0] == "gated"))
  # HF reads 'gated-gelu' as gelu_new; `dense_act_fn` records what it runs.
  act = hf.get("dense_act_fn") or ("gelu_new" if proj == "gated-gelu" else parts[-1])
  if act not in _FROM_HF_ACTIVATION:
    raise UserError(f"{where}: feed_forward_proj {proj!r} uses activation {act!r}, which "
                    f"this model does not implement; supported: "
                    f"{sorted(_FROM_HF_ACTIVATION)} (HF 'gelu' is the exact erf GELU, ours "
                    f"the tanh approximation 'gelu_new').")
  ours = _FROM_HF_ACTIVATION[act]
  return (ours, "linear") if gated else (ours,)


def t5_name_map(config: network.TransformerConfig) -> list[tuple[str, str, bool]]:
  """`(our flat name, HF name, transpose)` for every parameter of the ED."""
  table: list[tuple[str, str, bool]] = [("token_embedder/embedding", "shared.weight", False)]

  def attention(ours: str, hf: str):
    for a, b in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
      table.append((f"{ours}/{a}/kernel", f"{hf}.{b}.weight", True))

  def mlp(ours: str, hf: str):
    for name in _mlp_names(config) + ["wo"]:
      table.append((f"{ours}/{name}/kernel", f"{hf}.DenseReluDense.{name}.weight", True))

  if not config.logits_via_embedding:   # T5 v1.1: an output layer of its own, unscaled
    table.append(("decoder/logits_dense/kernel", "lm_head.weight", True))
  for stack, n in (("encoder", config.num_encoder_layers),
                   ("decoder", config.num_decoder_layers)):
    table.append((f"{stack}/relpos_bias/rel_embedding",
                  f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True))
    table.append((f"{stack}/{stack}_norm/scale", f"{stack}.final_layer_norm.weight", False))
    for i in range(n):
      ours, hf = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      if stack == "encoder":
        table.append((f"{ours}/pre_attention_layer_norm/scale", f"{hf}.0.layer_norm.weight",
                      False))
        attention(f"{ours}/attention", f"{hf}.0.SelfAttention")
        ff = 1
      else:
        table.append((f"{ours}/pre_self_attention_layer_norm/scale",
                      f"{hf}.0.layer_norm.weight", False))
        attention(f"{ours}/self_attention", f"{hf}.0.SelfAttention")
        table.append((f"{ours}/pre_cross_attention_layer_norm/scale",
                      f"{hf}.1.layer_norm.weight", False))
        attention(f"{ours}/encoder_decoder_attention", f"{hf}.1.EncDecAttention")
        ff = 2
      table.append((f"{ours}/pre_mlp_layer_norm/scale", f"{hf}.{ff}.layer_norm.weight", False))
      mlp(f"{ours}/mlp", f"{hf}.{ff}")
  return table


def t5_config(config: network.TransformerConfig, meta: Optional[Mapping[str, Any]] = None):
  """The `transformers.T5Config` of our encoder-decoder config (with our own config and
  `meta` in an extra `arch_objective` block that transformers keeps and ignores)."""
  try:
    import transformers
  except ImportError as e:
    raise MissingDependency("Hugging Face export needs `transformers` (pip install "
                            "'arch-objective[eval]' or pip install transformers).") from e
  return transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.emb_dim, d_kv=config.head_dim,
      d_ff=config.mlp_dim, num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
      relative_attention_num_buckets=config.relpos_num_buckets,
      relative_attention_max_distance=config.relpos_max_distance,
      dropout_rate=config.dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
      feed_forward_proj=t5_feed_forward_proj(config),
      tie_word_embeddings=bool(config.logits_via_embedding),
      is_encoder_decoder=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
      architectures=["T5ForConditionalGeneration"],
      **{hf_files.CONFIG_BLOCK: {"arch": models.ENCODER_DECODER,
                                 "config": dataclasses.asdict(config),
                                 "meta": dict(meta or {})}})


def _t5_config_to_ours(hf: Mapping[str, Any], where: str) -> network.TransformerConfig:
  untied = hf.get("tie_word_embeddings") is False or hf.get("scale_decoder_outputs") is False
  fields = dict(
      vocab_size=int(hf["vocab_size"]), emb_dim=int(hf["d_model"]),
      num_heads=int(hf["num_heads"]), head_dim=int(hf["d_kv"]), mlp_dim=int(hf["d_ff"]),
      num_encoder_layers=int(hf["num_layers"]),
      num_decoder_layers=int(hf.get("num_decoder_layers") or hf["num_layers"]),
      mlp_activations=_activations_from_hf(hf, where),
      relpos_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
      relpos_max_distance=int(hf.get("relative_attention_max_distance", 128)),
      layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
      dropout_rate=float(hf.get("dropout_rate", 0.0)), logits_via_embedding=not untied)
  block = _config_block(hf, where)
  for name in ("dtype", "float32_attention_logits"):   # ours only; HF has no such field
    if name in block:
      fields[name] = block[name]
  return network.TransformerConfig(**fields)


def _config_block(hf: Mapping[str, Any], where: str) -> dict:
  """The `config` of our block in a T5 `config.json` (empty if it has none), every field
  checked: an unknown one (in the block or its config) is a UserError naming it and the
  known ones, since it was written by another version or edited by hand."""
  block = hf.get(hf_files.CONFIG_BLOCK)
  if block is None:
    return {}
  known = ("arch", "config", "meta")
  if not isinstance(block, Mapping):
    raise UserError(f"{where}: {hf_files.CONFIG_BLOCK!r} must be an object with fields "
                    f"{list(known)}, found {block!r}.")
  unknown = sorted(set(block) - set(known))
  if unknown:
    raise UserError(f"{where}: unknown field(s) {unknown} in {hf_files.CONFIG_BLOCK!r}; "
                    f"known: {list(known)}.")
  if "arch" in block and not _has_encoder(block["arch"]):
    raise UserError(f"{where}: {hf_files.CONFIG_BLOCK}.arch is {block['arch']!r}, but a T5 "
                    f"config.json holds an {models.ENCODER_DECODER}.")
  config = block.get("config") or {}
  if not isinstance(config, Mapping):
    raise UserError(f"{where}: {hf_files.CONFIG_BLOCK}.config must be an object (the model "
                    f"config), found {config!r}.")
  # Only its dtype options are read (the rest is in T5's own fields): unknown fields
  # fail, missing ones do not.
  valid = {f.name for f in dataclasses.fields(network.TransformerConfig)}
  unknown = sorted(set(config) - valid)
  if unknown:
    raise UserError(f"{where} ({hf_files.CONFIG_BLOCK}.config): unknown config field(s) "
                    f"{unknown}; valid: {sorted(valid)}. It was written by a different "
                    f"version of arch-objective.")
  return dict(config)


def _has_encoder(arch) -> bool:
  """Whether `arch` names an architecture with an encoder (False for any other value)."""
  try:
    return architectures.get(arch).has_encoder
  except (ValueError, KeyError, TypeError):
    return False


def export_t5(params: Mapping[str, Any], config: network.TransformerConfig, out_dir: str, *,
              dtype=None, meta: Optional[Mapping[str, Any]] = None,
              max_shard_bytes: int = hf_files.DEFAULT_MAX_SHARD_BYTES) -> str:
  """Write the encoder-decoder `params` of `config` as a `T5ForConditionalGeneration`
  directory; returns `out_dir`. An untied output layer becomes `lm_head.weight` with
  `tie_word_embeddings=false`, as T5 v1.1. `dtype` casts the floating-point weights
  (default: kept); `meta` travels in config.json's `arch_objective` block. UserError for
  parameters that do not fit `config`, activations T5 lacks, or an `out_dir` that
  already holds a config.json."""
  hf_config = t5_config(config, meta)
  hf_files.check_params(params, models.ENCODER_DECODER, config, "export")
  flat = hf_files.flat_numpy(params, dtype)
  tensors = {hf: (flat[ours].T if transpose else flat[ours])
             for ours, hf, transpose in t5_name_map(config)}
  out_dir = hf_files.prepare_out_dir(out_dir)
  hf_files.write_weights(tensors, out_dir, max_shard_bytes)
  # What `save_pretrained` writes, through `paths` so that gs:// works too.
  text = json.loads(hf_config.to_json_string(use_diff=True))
  text["tie_word_embeddings"] = bool(config.logits_via_embedding)
  paths.write_text(paths.join(out_dir, hf_files.CONFIG_FILE),
                   json.dumps(text, indent=2) + "\n")
  import transformers
  generation = transformers.GenerationConfig(
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  paths.write_text(paths.join(out_dir, GENERATION_CONFIG_FILE),
                   generation.to_json_string(use_diff=True))
  return out_dir


def import_t5(config_json: Mapping[str, Any], tensors: Mapping[str, np.ndarray], path: str
              ) -> tuple[str, network.TransformerConfig, dict]:
  """`(arch, config, params)` of a T5: its config.json as a dict and its safetensors
  tensors by name (`path` names the directory in errors). Tied copies of
  `shared.weight` are accepted when equal to it."""
  config = _t5_config_to_ours(config_json, f"{path}/{hf_files.CONFIG_FILE}")
  table = t5_name_map(config)
  expected = {hf for _, hf, _ in table}
  missing = sorted(expected - set(tensors))
  extra = sorted(set(tensors) - expected - set(_TIED_COPIES) - set(_IGNORED))
  if missing or extra:
    report = param_tree.MatchReport(missing=tuple(missing), unexpected=tuple(extra))
    raise UserError(f"{path}: the weights do not fit the T5 its {hf_files.CONFIG_FILE} "
                    f"describes: {report.describe()}. Check that the directory holds one "
                    f"complete model.")
  shared = tensors["shared.weight"]
  for name in _TIED_COPIES:
    if name in expected:
      continue      # the untied output layer
    if name in tensors and not np.array_equal(tensors[name], shared):
      raise UserError(f"{path}: {name} differs from shared.weight, but "
                      f"{hf_files.CONFIG_FILE} says the embeddings are tied "
                      f"(tie_word_embeddings is not false); set tie_word_embeddings=false "
                      f"for a T5 v1.1-style output layer.")
  flat = {ours: (tensors[hf].T if transpose else tensors[hf]) for ours, hf, transpose in table}
  params = param_tree.unflatten({k: np.ascontiguousarray(v) for k, v in flat.items()})
  hf_files.check_params(params, models.ENCODER_DECODER, config, path)
  return models.ENCODER_DECODER, config, params
