"""Hugging Face `trust_remote_code` export and import of the decoder-only models (CD, ND).

`export_decoder_only` writes a directory that transformers loads without this package:

  config.json                       model_type 'arch_objective_decoder', `auto_map` to the
                                    two code files, the hyper-parameters below,
                                    `prepend_start_token: true`, and our own block
                                    {"arch", "config" (TransformerConfig), "meta"}
  configuration_arch_objective.py   copied from `arch_objective/convert/hf_code/`; they
  modeling_arch_objective.py        import only torch and transformers
  model.safetensors                 PyTorch names and layout (or shards + index)

  AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
  AutoModelForSeq2SeqLM.from_pretrained(out_dir, trust_remote_code=True)   # (inputs, targets)

The start token: our rows are `[0] + tokens`, position j predicting token j of the row
unshifted. The export's `prepend_start_token: true` makes the PyTorch model supply that 0
itself, so that plain token ids (a tokenizer's output) follow Hugging Face's causal-LM
convention, logits[i] predicting input_ids[i + 1], with our numbers: a forward pass with
nothing cached reads each row as `[0] + row` (the 0 just before the first token the
padding mask marks; a row that already starts with 0 is read as it is) and returns the
positions of the given ids; `generate()` prepends once, on its first pass. Exports
written before the flag lack it and read rows exactly as given (`[0, t_1, ...]`).
`AutoModelForSeq2SeqLM` loads `ArchObjectiveForSeq2SeqLM`, which takes (inputs, labels)
and reads `[0] + inputs + labels`, the start token and the inputs being the ND's
bidirectional prefix: that is how lm-eval's `hf` backend scores an ND as we do
(`LM_EVAL_MODEL_ARGS`), since its causal-LM calls carry nothing that tells where a
context ends.

Weights (`name_map`; Linear weights are (out, in), so every kernel is transposed):

  ours (t5x names; kernels (in, out))         Hugging Face
  decoder/token_embedder/embedding [v, d]     model.embed_tokens.weight [v, d]
  decoder/layers_i/                           model.layers.i.
    relpos_bias/rel_embedding [h, buckets]      self_attn.relative_attention_bias.weight
                                                [buckets, h]
    pre_self_attention_layer_norm/scale         self_attn_layer_norm.weight
    self_attention/{query,key,value,out}/kernel self_attn.{q,k,v,o}.weight
    pre_mlp_layer_norm/scale                    mlp_layer_norm.weight
    mlp/{wi_0,wi_1,wo}/kernel (or mlp/wi)       mlp.{wi_0,wi_1,wo}.weight (or mlp.wi)
  decoder/decoder_norm/scale                  model.final_layer_norm.weight
  decoder/logits_dense/kernel [d, v]          lm_head.weight [v, d]
                                              (only with logits_via_embedding=False)

Config fields (ours -> config.json): vocab_size, emb_dim -> d_model, num_heads, head_dim,
mlp_dim -> d_ff, num_decoder_layers -> num_layers, relpos_num_buckets ->
relative_attention_num_buckets, relpos_max_distance -> relative_attention_max_distance,
layer_norm_epsilon, mlp_activations, logits_via_embedding, and non_causal (arch ND);
prepend_start_token (always true in new exports) is read by the PyTorch model only.
Our `dtype` (the activation dtype) and `float32_attention_logits` have no counterpart:
the PyTorch model computes in its parameters' dtype, with float32 norms, softmax and
logits. `import_decoder_only` reads such a directory back to `(arch, config, params)`; its
files are read and written as every export's (`hf_files`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

import numpy as np

from arch_objective import architectures, network, paths
from arch_objective.convert import hf_code, hf_files, param_tree
from arch_objective.errors import UserError, integer_at_least

MODEL_TYPE = "arch_objective_decoder"
ARCHITECTURE = "ArchObjectiveForCausalLM"
AUTO_MAP = {
    "AutoConfig": f"{hf_code.CONFIG_MODULE}.ArchObjectiveConfig",
    "AutoModel": f"{hf_code.MODELING_MODULE}.ArchObjectiveModel",
    "AutoModelForCausalLM": f"{hf_code.MODELING_MODULE}.{ARCHITECTURE}",
    "AutoModelForSeq2SeqLM": f"{hf_code.MODELING_MODULE}.ArchObjectiveForSeq2SeqLM",
}
# lm-eval's `hf` backend on an export (after `pretrained=EXPORT_DIR,`), CD or ND: scores
# loglikelihood and loglikelihood_rolling requests as `arch_objective` (truncation
# modern) does on the same token ids (tests/test_hf_backend_parity.py).
#   backend=seq2seq      AutoModelForSeq2SeqLM: the model gets each context and
#                        continuation apart (tokenised apart, as our harness does), so the
#                        ND's prefix is the start token plus the context
#   add_bos_token=False  the T5 tokenizer adds no EOS to contexts
#   prefix_token_id=0    an empty context (and the first rolling window) is the start
#                        token alone (lm-eval's default there is EOS)
#   max_length=1280      rolling windows of our row_length (lm-eval's default: 2048)
#   dtype=float32        our activation dtype
# generate_until still differs there: lm-eval's seq2seq backend appends EOS to prompts.
# A CD also scores as ours with the causal backend, LM_EVAL_CAUSAL_MODEL_ARGS, where
# generate_until agrees too (lm-eval tokenises context + continuation together and
# splits: the same ids as ours unless a word straddles the boundary). An ND under the
# causal backend reads causally: that backend's calls carry no prefix.
LM_EVAL_MODEL_ARGS = ("trust_remote_code=True,backend=seq2seq,add_bos_token=False,"
                      "prefix_token_id=0,max_length=1280,dtype=float32")
LM_EVAL_CAUSAL_MODEL_ARGS = ("trust_remote_code=True,add_bos_token=False,prefix_token_id=0,"
                             "max_length=1280,dtype=float32")
ACTIVATIONS = ("gelu", "relu", "silu", "linear")
BLOCK = hf_files.CONFIG_BLOCK   # our own block in config.json: arch, config, meta


def _mlp_names(config: network.TransformerConfig) -> list[str]:
  acts = tuple(config.mlp_activations)
  return ["wi"] if len(acts) == 1 else [f"wi_{i}" for i in range(len(acts))]


def name_map(config: network.TransformerConfig) -> list[tuple[str, str, bool]]:
  """`(our flat name, HF name, transpose)` for every parameter of a CD/ND of `config`."""
  table = [("decoder/token_embedder/embedding", "model.embed_tokens.weight", False),
           ("decoder/decoder_norm/scale", "model.final_layer_norm.weight", False)]
  for i in range(config.num_decoder_layers):
    ours, theirs = f"decoder/layers_{i}", f"model.layers.{i}"
    table += [
        (f"{ours}/relpos_bias/rel_embedding",
         f"{theirs}.self_attn.relative_attention_bias.weight", True),
        (f"{ours}/pre_self_attention_layer_norm/scale",
         f"{theirs}.self_attn_layer_norm.weight", False)]
    table += [(f"{ours}/self_attention/{a}/kernel", f"{theirs}.self_attn.{b}.weight", True)
              for a, b in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))]
    table.append((f"{ours}/pre_mlp_layer_norm/scale", f"{theirs}.mlp_layer_norm.weight", False))
    table += [(f"{ours}/mlp/{name}/kernel", f"{theirs}.mlp.{name}.weight", True)
              for name in _mlp_names(config) + ["wo"]]
  if not config.logits_via_embedding:
    table.append(("decoder/logits_dense/kernel", "lm_head.weight", True))
  return table


def _check_arch(arch: str, where: str):
  if not architectures.is_decoder_only(arch):
    raise UserError(f"{where}: arch {arch!r} is not a decoder-only model; valid: "
                    f"{', '.join(architectures.DECODER_ONLY)} (export the "
                    f"{architectures.ENCODER_DECODER} with "
                    f"`hf.export_hf`, as T5ForConditionalGeneration).")


def _check_activations(activations, where: str):
  unknown = [a for a in activations if a not in ACTIVATIONS]
  if not activations or unknown:
    raise UserError(f"{where}: mlp_activations {tuple(activations)!r} has activation(s) "
                    f"{unknown} the PyTorch model does not implement; valid: "
                    f"{list(ACTIVATIONS)}.")


def hf_config(config: network.TransformerConfig, arch: str, *, dtype: Optional[str] = None,
              meta: Optional[Mapping[str, Any]] = None) -> dict:
  """The `config.json` (as a dict) of a CD/ND export; `dtype` names the weights' dtype."""
  _check_arch(arch, "export")
  _check_activations(tuple(config.mlp_activations), "export")
  out = {
      "model_type": MODEL_TYPE,
      "architectures": [ARCHITECTURE],
      "auto_map": dict(AUTO_MAP),
      "vocab_size": config.vocab_size,
      "d_model": config.emb_dim,
      "num_heads": config.num_heads,
      "head_dim": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_layers": config.num_decoder_layers,
      "relative_attention_num_buckets": config.relpos_num_buckets,
      "relative_attention_max_distance": config.relpos_max_distance,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "mlp_activations": list(config.mlp_activations),
      "logits_via_embedding": config.logits_via_embedding,
      "non_causal": architectures.get(arch).bidirectional_prefix,
      "prepend_start_token": True,
      "tie_word_embeddings": False,
      "use_cache": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "bos_token_id": 0,
      "decoder_start_token_id": 0,
      BLOCK: {"arch": arch, "config": dataclasses.asdict(config), "meta": dict(meta or {})},
  }
  if dtype is not None:
    out["dtype"] = dtype
  return out


def export_decoder_only(params: Mapping[str, Any], config: network.TransformerConfig,
                        arch: str, out_dir: str, *, dtype=None,
                        meta: Optional[Mapping[str, Any]] = None,
                        max_shard_bytes: int = hf_files.DEFAULT_MAX_SHARD_BYTES) -> str:
  """Write a `trust_remote_code` export of a CD/ND (see the module docstring); returns
  `out_dir`. `dtype` casts the floating-point weights (e.g. 'bfloat16'; default: kept).
  `meta` (vocabulary, lineage, ...) travels in config.json's `arch_objective` block.
  ValueError for another arch, parameters that do not fit `config`, an activation the
  PyTorch model lacks, or an `out_dir` that already holds a config.json."""
  _check_arch(arch, "export")
  _check_activations(tuple(config.mlp_activations), "export")
  hf_files.check_params(params, arch, config, "export")
  flat = hf_files.flat_numpy(params, dtype)
  tensors = {theirs: (flat[ours].T if transpose else flat[ours])
             for ours, theirs, transpose in name_map(config)}
  dtypes = sorted({str(v.dtype) for v in tensors.values()})
  out_dir = hf_files.prepare_out_dir(out_dir)
  hf_files.write_weights(tensors, out_dir, max_shard_bytes)
  for name in hf_code.CODE_FILES:
    paths.write_text(paths.join(out_dir, name), (hf_code.CODE_DIR / name).read_text())
  config_json = hf_config(config, arch, dtype=dtypes[0] if len(dtypes) == 1 else None,
                          meta=meta)
  paths.write_text(paths.join(out_dir, hf_files.CONFIG_FILE),
                   json.dumps(config_json, indent=2))
  return out_dir


def _bool_field(config_json: Mapping[str, Any], name: str, default: bool, where: str
                ) -> bool:
  value = config_json.get(name, default)
  if not isinstance(value, bool):
    raise UserError(f"{where}: field {name!r} must be true or false, found {value!r}.")
  return value


def _int_field(config_json: Mapping[str, Any], name: str, where: str) -> int:
  value = config_json.get(name)
  if not integer_at_least(value, 1):
    raise UserError(f"{where}: field {name!r} must be a positive integer, found {value!r}.")
  return value


def _float_field(config_json: Mapping[str, Any], name: str, default: float, where: str
                 ) -> float:
  value = config_json.get(name, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
    raise UserError(f"{where}: field {name!r} must be a positive number, found {value!r}.")
  return float(value)


def config_from_hf(config_json: Mapping[str, Any], where: str
                   ) -> tuple[str, network.TransformerConfig]:
  """`(arch, TransformerConfig)` of an export's config.json (as a dict).

  Our own block, when present, gives the exact config (including `dtype`); the
  Hugging Face fields must agree with it. Without the block the config is rebuilt
  from the Hugging Face fields (activation dtype: the TransformerConfig default).
  """
  if config_json.get("model_type") != MODEL_TYPE:
    raise UserError(f"{where}: model_type {config_json.get('model_type')!r} is not "
                    f"{MODEL_TYPE!r}; this reader takes exports of `export_decoder_only`.")
  non_causal = _bool_field(config_json, "non_causal", False, where)
  activations = config_json.get("mlp_activations", ["gelu", "linear"])
  if isinstance(activations, str) or not isinstance(activations, (list, tuple)):
    raise UserError(f"{where}: field 'mlp_activations' must be a list, found "
                    f"{activations!r}.")
  _check_activations(tuple(activations), where)
  _bool_field(config_json, "prepend_start_token", False, where)   # read by the PyTorch model
  tied = _bool_field(config_json, "logits_via_embedding", True, where)
  fields = dict(
      vocab_size=_int_field(config_json, "vocab_size", where),
      emb_dim=_int_field(config_json, "d_model", where),
      num_heads=_int_field(config_json, "num_heads", where),
      head_dim=_int_field(config_json, "head_dim", where),
      mlp_dim=_int_field(config_json, "d_ff", where),
      num_decoder_layers=_int_field(config_json, "num_layers", where),
      relpos_num_buckets=_int_field(config_json, "relative_attention_num_buckets", where),
      relpos_max_distance=_int_field(config_json, "relative_attention_max_distance", where),
      layer_norm_epsilon=_float_field(config_json, "layer_norm_epsilon", 1e-6, where),
      mlp_activations=tuple(activations), logits_via_embedding=tied)
  arch = architectures.decoder_only(non_causal).name
  block = config_json.get(BLOCK)
  if not block:
    fields["num_encoder_layers"] = fields["num_decoder_layers"]
    return arch, network.TransformerConfig(**fields)
  if not isinstance(block, Mapping) or not isinstance(block.get("config"), Mapping):
    raise UserError(f"{where}: field {BLOCK!r} must be an object with a 'config' "
                    f"object (the TransformerConfig), found {block!r}.")
  config = network.config_from_dict(block["config"], f"{where} ({BLOCK}.config)")
  for name, value in fields.items():
    ours = getattr(config, name)
    if (tuple(ours) if name == "mlp_activations" else ours) != value:
      raise UserError(f"{where}: {BLOCK}.config.{name} = {ours!r} disagrees with "
                      f"the Hugging Face field ({value!r}); the file was edited by hand. "
                      f"Make them agree.")
  if block.get("arch", arch) != arch:
    raise UserError(f"{where}: {BLOCK}.arch = {block.get('arch')!r} disagrees with "
                    f"non_causal = {str(non_causal).lower()} ({arch}).")
  return arch, config


def import_decoder_only(config_json: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                        path: str) -> tuple[str, network.TransformerConfig, dict]:
  """`(arch, config, params)` of an export: its config.json as a dict and its safetensors
  tensors by name (`path` names the directory in errors). Parameters keep their dtype."""
  where = f"{path}/{hf_files.CONFIG_FILE}"
  arch, config = config_from_hf(config_json, where)
  table = name_map(config)
  expected = {theirs for _, theirs, _ in table}
  missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
  if missing or extra:
    report = param_tree.MatchReport(missing=tuple(missing), unexpected=tuple(extra))
    raise UserError(f"{path}: the weights do not fit the model its {hf_files.CONFIG_FILE} "
                    f"describes: {report.describe()}. Check that the directory holds one "
                    f"complete export.")
  flat = {ours: np.ascontiguousarray(np.asarray(tensors[theirs]).T if transpose
                                     else np.asarray(tensors[theirs]))
          for ours, theirs, transpose in table}
  params = param_tree.unflatten(flat)
  hf_files.check_params(params, arch, config, path)
  return arch, config, params


def read_decoder_only(path: str) -> tuple[str, network.TransformerConfig, dict]:
  """`import_decoder_only` of a directory (local or gs://) written by
  `export_decoder_only`."""
  path = paths.normalize(path, "Hugging Face directory")
  config_file = paths.join(path, hf_files.CONFIG_FILE)
  if not paths.isfile(config_file):
    raise UserError(f"no {hf_files.CONFIG_FILE} in {path}; pass a directory written by "
                    f"`export_decoder_only`.")
  return import_decoder_only(hf_files.read_json(config_file), hf_files.read_weights(path),
                             path)
