"""Hugging Face export and import: `config.json` + safetensors weights.

Encoder-decoder -> `transformers.T5ForConditionalGeneration` (PyTorch), exactly:

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
  ({S} is encoder or decoder; every kernel and the relative tables are transposed.)

Why the numbers agree: HF T5 does not scale attention by 1/sqrt(d) either (the scale
lives in the query initialiser, as ours); its relative-position buckets equal ours
for every distance; `feed_forward_proj='gated-gelu'` selects `gelu_new`, the tanh
approximation that `flax.linen.gelu` computes; RMSNorm with eps 1e-6; and with tied
embeddings HF multiplies the decoder output by d_model**-0.5 before `lm_head =
shared`, which is our `logits / sqrt(emb_dim)`. The relative-position table lives in
layer 0 of each stack and is shared by all layers, like our one table per stack.

Decoder-only models (CD, ND) have no Hugging Face class. They export to this
package's own format (`export_native`): `config.json` =
`{"format": "arch_objective", "format_version": 1, "arch": ..., "config": {...}}`
(the `TransformerConfig` fields) and safetensors whose keys are our flat parameter
names (`decoder/layers_0/self_attention/query/kernel`, kernels stored (in, out)).

Weights above `max_shard_bytes` are split into `model-0000k-of-0000n.safetensors`
with a `model.safetensors.index.json`, as `save_pretrained` does. On import, every
shard the index names must lie inside the directory (no absolute path, URL or climbing
`..`), and a damaged safetensors or JSON file is a ValueError naming it. Directories may
be local or remote (`gs://...`, see `arch_objective.paths`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

import numpy as np

from arch_objective import architectures, models, network, paths
from arch_objective.convert import model_dir, param_tree

FORMAT_NAME = "arch_objective"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3
# The key of our own config block inside an exported T5 `config.json`.
CONFIG_BLOCK = "arch_objective"

# flax.linen.gelu is the tanh approximation: HF's `gelu_new` (HF's `gelu` is exact).
_TO_HF_ACTIVATION = {"gelu": "gelu_new", "relu": "relu", "silu": "silu"}
_FROM_HF_ACTIVATION = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu",
                       "silu": "silu", "swish": "silu"}
# Copies of shared.weight that some HF files hold; accepted on import if equal to it.
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                "lm_head.weight")
# A table HF never uses (cross-attention has no position bias); older files hold it.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


# ---------------------------------------------------------------------------
# Safetensors files
# ---------------------------------------------------------------------------
def _save(tensors: Mapping[str, np.ndarray], path: str, metadata: dict):
  if paths.is_remote(path):
    from safetensors.numpy import save
    paths.write_bytes(path, save(dict(tensors), metadata=metadata))
  else:
    from safetensors.numpy import save_file
    save_file(dict(tensors), path, metadata=metadata)


def _load(path: str) -> dict[str, np.ndarray]:
  """The tensors of one safetensors file; a damaged one (truncated, a header that lies
  about its length, is not JSON or points outside the data) is a ValueError naming it."""
  import safetensors
  error = getattr(safetensors, "SafetensorError", Exception)
  try:
    if paths.is_remote(path):
      from safetensors.numpy import load
      return load(paths.read_bytes(path))
    from safetensors.numpy import load_file
    return load_file(path)
  except error as e:
    reason = " ".join(str(e).split())
    raise ValueError(f"{path} is not a readable safetensors file ({reason}); it is "
                     f"truncated or damaged: copy or export it again.") from None


def _write_weights(tensors: Mapping[str, np.ndarray], out_dir: str,
                   max_shard_bytes: int) -> list[str]:
  """Write `model.safetensors` (or shards and an index); returns the file names."""
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  total = sum(v.nbytes for v in tensors.values())
  metadata = {"format": "pt"}
  if total <= max_shard_bytes:
    _save(tensors, paths.join(out_dir, WEIGHTS_FILE), metadata)
    return [WEIGHTS_FILE]
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, value in tensors.items():
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += value.nbytes
  files, weight_map = [], {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    _save(shard, paths.join(out_dir, file), metadata)
    files.append(file)
    weight_map.update({name: file for name in shard})
  paths.write_text(paths.join(out_dir, INDEX_FILE), json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  return files + [INDEX_FILE]


def _read_json(file: str) -> Any:
  """The JSON of `file` (local or remote); ValueError naming the file if it is not JSON."""
  try:
    return json.loads(paths.read_text(file))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file} is not valid JSON ({e}).") from None


def _inside(directory: str, name: Any, source: str, entry: str) -> str:
  """`directory/name` for a file `name` read from `source` (an index or manifest): only
  a relative path that stays inside `directory` is accepted; an absolute path, a URL or
  a `..` that climbs out of it is a ValueError naming the file, the entry and the
  directory. (Symbolic links are followed: Hugging Face's own cache links every
  snapshot file to a blob outside the snapshot directory.)"""
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"{source}: entry {entry!r} names {name!r}, expected a file name "
                     f"inside {directory}.")
  if not paths.stays_inside(name):
    raise ValueError(f"{source}: entry {entry!r} names {name!r}, which is outside the "
                     f"directory {directory}; only files inside it are read.")
  return paths.join(directory, name)


def _read_weights(path: str) -> dict[str, np.ndarray]:
  """Every tensor of `model.safetensors` or of the shards `model.safetensors.index.json`
  lists, each shard resolved inside `path` (see `_inside`)."""
  index = paths.join(path, INDEX_FILE)
  if paths.isfile(index):
    weight_map = _read_json(index)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index}: expected an object whose 'weight_map' maps tensor names "
                       f"to shard files, found none.")
    files = {}
    for tensor, file in sorted(weight_map.items()):
      files.setdefault(_inside(path, file, index, tensor), file)
    files = sorted(files)
  elif paths.isfile(paths.join(path, WEIGHTS_FILE)):
    files = [paths.join(path, WEIGHTS_FILE)]
  else:
    raise ValueError(f"no weights in {path}: expected {WEIGHTS_FILE} or {INDEX_FILE} "
                     f"(PyTorch .bin files are not read; re-save with safe_serialization=True).")
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    tensors.update(_load(file))
  return tensors


def _prepare_out_dir(out_dir: str) -> str:
  out_dir = paths.normalize(out_dir, "export directory")
  if paths.isfile(paths.join(out_dir, CONFIG_FILE)):
    raise ValueError(f"{out_dir} already holds a {CONFIG_FILE}; export into an empty "
                     f"directory or remove the old export first.")
  paths.makedirs(out_dir)
  return out_dir


def _flat_numpy(params: Mapping[str, Any], dtype) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in
          param_tree.flatten(param_tree.cast_floating(params, dtype)).items()}


def _check_params(params: Mapping[str, Any], arch: str, config: network.TransformerConfig,
                  where: str):
  report = param_tree.match_model(
      params, param_tree.model_shapes(model_dir.model_for(arch, config)))
  if not report.ok:
    raise ValueError(f"{where}: the parameters do not fit a {arch} with this config: "
                     f"{report.describe()}. Pass the config the parameters were trained with.")


# ---------------------------------------------------------------------------
# The T5 mapping
# ---------------------------------------------------------------------------
def _mlp_names(config: network.TransformerConfig) -> list[str]:
  acts = tuple(config.mlp_activations)
  if len(acts) == 1:
    return ["wi"]
  return [f"wi_{i}" for i in range(len(acts))]


def t5_feed_forward_proj(config: network.TransformerConfig) -> str:
  """HF's `feed_forward_proj` for our `mlp_activations` (ValueError if none fits)."""
  acts = tuple(config.mlp_activations)
  if len(acts) == 2 and acts[1] == "linear" and acts[0] in _TO_HF_ACTIVATION:
    return "gated-gelu" if acts[0] == "gelu" else f"gated-{_TO_HF_ACTIVATION[acts[0]]}"
  if len(acts) == 1 and acts[0] in _TO_HF_ACTIVATION:
    return _TO_HF_ACTIVATION[acts[0]]
  raise ValueError(f"mlp_activations {acts} has no Hugging Face T5 equivalent; T5 supports "
                   f"(ACT, 'linear') (gated) or (ACT,) with ACT in "
                   f"{sorted(_TO_HF_ACTIVATION)}. Use the native export instead.")


def _activations_from_hf(hf: Mapping[str, Any], where: str) -> tuple[str, ...]:
  proj = str(hf.get("feed_forward_proj", "relu"))
  parts = proj.split("-")
  gated = bool(hf.get("is_gated_act", parts[0] == "gated"))
  # HF reads 'gated-gelu' as gelu_new; `dense_act_fn` records what it runs.
  act = hf.get("dense_act_fn") or ("gelu_new" if proj == "gated-gelu" else parts[-1])
  if act not in _FROM_HF_ACTIVATION:
    raise ValueError(f"{where}: feed_forward_proj {proj!r} uses activation {act!r}, which "
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
    raise ImportError("Hugging Face export needs `transformers` (pip install "
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
      **{CONFIG_BLOCK: {"arch": models.ENCODER_DECODER, "config": dataclasses.asdict(config),
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
  checked: an unknown one (in the block or its config) is a ValueError naming it and the
  known ones, since it was written by another version or edited by hand."""
  block = hf.get(CONFIG_BLOCK)
  if block is None:
    return {}
  known = ("arch", "config", "meta")
  if not isinstance(block, Mapping):
    raise ValueError(f"{where}: {CONFIG_BLOCK!r} must be an object with fields "
                     f"{list(known)}, found {block!r}.")
  unknown = sorted(set(block) - set(known))
  if unknown:
    raise ValueError(f"{where}: unknown field(s) {unknown} in {CONFIG_BLOCK!r}; known: "
                     f"{list(known)}.")
  if "arch" in block and not _has_encoder(block["arch"]):
    raise ValueError(f"{where}: {CONFIG_BLOCK}.arch is {block['arch']!r}, but a T5 "
                     f"config.json holds an {models.ENCODER_DECODER}.")
  config = block.get("config") or {}
  if not isinstance(config, Mapping):
    raise ValueError(f"{where}: {CONFIG_BLOCK}.config must be an object (the model "
                     f"config), found {config!r}.")
  # Only its dtype options are read (the rest is in T5's own fields): unknown fields
  # fail, missing ones do not.
  valid = {f.name for f in dataclasses.fields(network.TransformerConfig)}
  unknown = sorted(set(config) - valid)
  if unknown:
    raise ValueError(f"{where} ({CONFIG_BLOCK}.config): unknown config field(s) {unknown}; "
                     f"valid: {sorted(valid)}. It was written by a different version of "
                     f"arch-objective.")
  return dict(config)


def _has_encoder(arch) -> bool:
  """Whether `arch` names an architecture with an encoder (False for any other value)."""
  try:
    return architectures.get(arch).has_encoder
  except (ValueError, KeyError, TypeError):
    return False


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
def export_native(params: Mapping[str, Any], config: network.TransformerConfig, arch: str,
                  out_dir: str, *, dtype=None, meta: Optional[Mapping[str, Any]] = None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> str:
  """Any architecture in this package's own format (see the module docstring).
  `meta` (e.g. vocabulary, vocab_size, lineage) is kept in `config.json`."""
  if arch not in models.ARCHITECTURES:
    raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(models.ARCHITECTURES)}.")
  _check_params(params, arch, config, "export")
  out_dir = _prepare_out_dir(out_dir)
  _write_weights(_flat_numpy(params, dtype), out_dir, max_shard_bytes)
  paths.write_text(paths.join(out_dir, CONFIG_FILE), json.dumps(
      {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "arch": arch,
       "config": dataclasses.asdict(config), "meta": dict(meta or {}),
       "weights": "safetensors; keys are t5x parameter paths joined by '/', dense "
                  "kernels stored (in, out), relative-position tables (heads, buckets)"},
      indent=2))
  return out_dir


def export_hf(params: Mapping[str, Any], config: network.TransformerConfig, arch: str,
              out_dir: str, *, dtype=None, meta: Optional[Mapping[str, Any]] = None,
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
              vocabulary: Optional[str] = None, extra_ids: Optional[int] = None) -> str:
  """Export for Hugging Face; returns `out_dir`.

  ED: a `T5ForConditionalGeneration` directory (`config.json`, `generation_config.json`,
  safetensors; an untied output layer becomes `lm_head.weight` with
  `tie_word_embeddings=false`, as T5 v1.1); load it with
  `AutoModelForSeq2SeqLM.from_pretrained(out_dir)`. CD/ND: a `trust_remote_code` export
  (`hf_remote`: the PyTorch model code travels in the directory); load it with
  `AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)`. `import_hf`
  reads both back; `export_native` writes our own format instead. `dtype` casts the weights (e.g.
  'bfloat16'); by default they keep their dtype (float32). `meta` (vocabulary,
  vocab_size, lineage, ...) travels in `config.json`; `read_export_meta` reads it.

  With `vocabulary` (a SentencePiece model, local or gs://) the export carries its
  tokenizer (`write_tokenizer`) with `extra_ids` sentinels (default: the model's
  `meta['vocab_size']` minus the vocabulary's pieces, else 100), so
  `AutoTokenizer.from_pretrained(out_dir)` loads it. The tokenizer is checked before
  any file is written.
  """
  tokenizer = {}
  if vocabulary is not None:   # checked before anything is written
    if extra_ids is None:
      extra_ids = _extra_ids(vocabulary, (meta or {}).get("vocab_size"))
    tokenizer = tokenizer_files(vocabulary, extra_ids)
  spec = architectures.find(arch)
  if spec is None or not spec.has_encoder:   # hf_remote names the valid architectures
    from arch_objective.convert import hf_remote
    out_dir = hf_remote.export_decoder_only(params, config, arch, out_dir, dtype=dtype,
                                            meta=meta, max_shard_bytes=max_shard_bytes)
  else:
    hf_config = t5_config(config, meta)
    _check_params(params, arch, config, "export")
    flat = _flat_numpy(params, dtype)
    tensors = {hf: (flat[ours].T if transpose else flat[ours])
               for ours, hf, transpose in t5_name_map(config)}
    out_dir = _prepare_out_dir(out_dir)
    _write_weights(tensors, out_dir, max_shard_bytes)
    # What `save_pretrained` writes, through `paths` so that gs:// works too.
    text = json.loads(hf_config.to_json_string(use_diff=True))
    text["tie_word_embeddings"] = bool(config.logits_via_embedding)
    paths.write_text(paths.join(out_dir, CONFIG_FILE), json.dumps(text, indent=2) + "\n")
    import transformers
    generation = transformers.GenerationConfig(
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    paths.write_text(paths.join(out_dir, GENERATION_CONFIG_FILE),
                     generation.to_json_string(use_diff=True))
  for name, data in tokenizer.items():
    paths.write_bytes(paths.join(out_dir, name), data)
  return out_dir


# A sentence the exported tokenizer must encode as our vocabulary does.
_PROBE = "Hello world. Zero-shot generalization, 1,234 tokens: <extra_id_0> and naïve café!"


def tokenizer_files(vocabulary: str, extra_ids: int) -> dict[str, bytes]:
  """{file name: bytes} of a Hugging Face T5 tokenizer for `vocabulary` with `extra_ids`
  sentinels: the SentencePiece model as `spiece.model`, `tokenizer.json`,
  `tokenizer_config.json`. Checked first: the tokenizer encodes a probe sentence as
  `SentencePieceVocabulary(vocabulary, extra_ids)` does and has as many ids."""
  import os
  import tempfile
  from arch_objective.data import vocabularies
  vocab = vocabularies.SentencePieceVocabulary(vocabulary, extra_ids)
  try:
    import transformers
  except ImportError as e:
    raise ImportError("the tokenizer files need `transformers` (pip install transformers); "
                      "export with --no_tokenizer to skip them.") from e
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "spiece.model"), "wb") as f:
      f.write(vocab.model_bytes)
    tokenizer = transformers.T5Tokenizer.from_pretrained(tmp, extra_ids=extra_ids)
    ours = vocab.encode(_PROBE) + [vocab.eos_id]
    theirs = tokenizer(_PROBE).input_ids
    if theirs != ours or len(tokenizer) != vocab.vocab_size:
      raise ValueError(f"vocabulary {vocabulary!r}: Hugging Face's T5 tokenizer built from "
                       f"it encodes {_PROBE!r} as {theirs} ({len(tokenizer)} ids), ours as "
                       f"{ours} ({vocab.vocab_size} ids); export with --no_tokenizer and "
                       f"ship the SentencePiece model separately.")
    tokenizer.save_pretrained(tmp)
    files = {}
    for name in sorted(os.listdir(tmp)):
      with open(os.path.join(tmp, name), "rb") as f:
        files[name] = f.read()
  return files


def write_tokenizer(out_dir: str, vocabulary: str, extra_ids: int) -> list[str]:
  """Write `tokenizer_files(vocabulary, extra_ids)` into `out_dir` (local or gs://), so
  `AutoTokenizer.from_pretrained(out_dir)` encodes as our vocabulary; returns the names."""
  files = tokenizer_files(vocabulary, extra_ids)
  for name, data in files.items():
    paths.write_bytes(paths.join(out_dir, name), data)
  return sorted(files)


def _extra_ids(vocabulary: str, vocab_size: Optional[int]) -> int:
  """The sentinels of a model trained with `vocab_size` ids of `vocabulary` (its pieces
  plus the extra ids; T5: 32000 + 100)."""
  from arch_objective.data import vocabularies
  if vocab_size is None:
    return vocabularies.DEFAULT_EXTRA_IDS
  base = vocabularies.SentencePieceVocabulary(vocabulary, 0).base_vocab_size
  if vocab_size < base:
    raise ValueError(f"vocab_size {vocab_size} is smaller than the {base} pieces of "
                     f"{vocabulary!r}; pass the vocabulary the model was trained with.")
  return int(vocab_size) - base


def read_export_meta(path: str) -> dict:
  """The `meta` an export carries (empty for a T5 from elsewhere)."""
  config = _read_json(paths.join(paths.normalize(path, "export"), CONFIG_FILE))
  if not isinstance(config, dict):
    return {}
  block = config if config.get("format") == FORMAT_NAME else (config.get(CONFIG_BLOCK) or {})
  return dict(block.get("meta") or {})


def import_hf(path: str) -> tuple[str, network.TransformerConfig, dict]:
  """`(arch, config, params)` of a directory written by `export_hf`/`export_native`,
  or of any Hugging Face T5 (`model_type: t5`, tied or T5 v1.1-style untied) saved with
  safetensors."""
  path = paths.normalize(path, "Hugging Face directory")
  config_file = paths.join(path, CONFIG_FILE)
  if not paths.isfile(config_file):
    raise ValueError(f"no {CONFIG_FILE} in {path}; pass a directory written by "
                     f"`arch-objective convert hf-out` or a Hugging Face T5 model directory.")
  config_json = _read_json(config_file)
  if not isinstance(config_json, dict):
    raise ValueError(f"{config_file}: expected a JSON object (a model config), found a "
                     f"{type(config_json).__name__}.")
  tensors = _read_weights(path)
  if config_json.get("format") == FORMAT_NAME:
    return _import_native(config_json, tensors, path)
  if config_json.get("model_type") == "t5":
    return _import_t5(config_json, tensors, path)
  from arch_objective.convert import hf_remote
  if config_json.get("model_type") == hf_remote.MODEL_TYPE:
    return hf_remote.import_decoder_only(config_json, tensors, path)
  raise ValueError(f"{config_file}: neither this package's format (format="
                   f"{FORMAT_NAME!r}), a Hugging Face T5 (model_type='t5') nor our "
                   f"decoder-only export (model_type={hf_remote.MODEL_TYPE!r}); found "
                   f"format={config_json.get('format')!r}, "
                   f"model_type={config_json.get('model_type')!r}.")


def _import_native(config_json: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                   path: str) -> tuple[str, network.TransformerConfig, dict]:
  version = config_json.get("format_version")
  if version != FORMAT_VERSION:
    raise ValueError(f"{path}/{CONFIG_FILE}: format_version {version!r}; supported: "
                     f"{FORMAT_VERSION}. Re-export with this version of arch-objective.")
  arch = config_json.get("arch")
  if arch not in models.ARCHITECTURES:
    raise ValueError(f"{path}/{CONFIG_FILE}: arch {arch!r}; valid: "
                     f"{', '.join(models.ARCHITECTURES)}.")
  config = model_dir.config_from_dict(config_json.get("config") or {}, f"{path}/{CONFIG_FILE}")
  params = param_tree.unflatten(dict(tensors))
  _check_params(params, arch, config, path)
  return arch, config, params


def _import_t5(config_json: Mapping[str, Any], tensors: Mapping[str, np.ndarray], path: str
               ) -> tuple[str, network.TransformerConfig, dict]:
  config = _t5_config_to_ours(config_json, f"{path}/{CONFIG_FILE}")
  table = t5_name_map(config)
  expected = {hf for _, hf, _ in table}
  missing = sorted(expected - set(tensors))
  extra = sorted(set(tensors) - expected - set(_TIED_COPIES) - set(_IGNORED))
  if missing or extra:
    report = param_tree.MatchReport(missing=tuple(missing), unexpected=tuple(extra))
    raise ValueError(f"{path}: the weights do not fit the T5 its {CONFIG_FILE} describes: "
                     f"{report.describe()}. Check that the directory holds one complete model.")
  shared = tensors["shared.weight"]
  for name in _TIED_COPIES:
    if name in expected:
      continue      # the untied output layer
    if name in tensors and not np.array_equal(tensors[name], shared):
      raise ValueError(f"{path}: {name} differs from shared.weight, but {CONFIG_FILE} says "
                       f"the embeddings are tied (tie_word_embeddings is not false); set "
                       f"tie_word_embeddings=false for a T5 v1.1-style output layer.")
  flat = {ours: (tensors[hf].T if transpose else tensors[hf]) for ours, hf, transpose in table}
  params = param_tree.unflatten({k: np.ascontiguousarray(v) for k, v in flat.items()})
  _check_params(params, models.ENCODER_DECODER, config, path)
  return models.ENCODER_DECODER, config, params
