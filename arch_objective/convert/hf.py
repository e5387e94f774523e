"""Hugging Face export and import: which format each architecture takes, and our own.

  architecture   `export_hf` writes                          module
  ED             `transformers.T5ForConditionalGeneration`   `hf_t5`
  CD, ND         a `trust_remote_code` causal LM whose       `hf_decoder`
                 PyTorch code travels in the directory
  any            this package's own format (`export_native`)  here

Each is a directory of `config.json` and safetensors weights (`hf_files`: sharding,
index, guarded reads). `import_hf` reads any of them back to `(arch, config, params)`,
and any Hugging Face T5 saved with safetensors, choosing the reader by `config.json`;
`read_export_meta` returns the run's meta an export carries (vocabulary, vocab_size,
task, lineage, step). With a vocabulary, `export_hf` also writes the tokenizer files
(`tokenizer_files`), checked to encode as our vocabulary does.

Our own format: `config.json` = `{"format": "arch_objective", "format_version": 1,
"arch": ..., "config": {...}, "meta": {...}}` (the `TransformerConfig` fields) and
safetensors whose keys are our flat parameter names
(`decoder/layers_0/self_attention/query/kernel`, kernels stored (in, out)).

Directories may be local or remote (`gs://...`, see `arch_objective.paths`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

import numpy as np

from arch_objective import architectures, models, network, paths
from arch_objective.convert import hf_decoder, hf_files, hf_t5, param_tree
from arch_objective.errors import MissingDependency, UserError

FORMAT_NAME = "arch_objective"
FORMAT_VERSION = 1


def export_native(params: Mapping[str, Any], config: network.TransformerConfig, arch: str,
                  out_dir: str, *, dtype=None, meta: Optional[Mapping[str, Any]] = None,
                  max_shard_bytes: int = hf_files.DEFAULT_MAX_SHARD_BYTES) -> str:
  """Any architecture in this package's own format (see the module docstring).
  `meta` (e.g. vocabulary, vocab_size, lineage) is kept in `config.json`."""
  if arch not in models.ARCHITECTURES:
    raise UserError(f"unknown arch {arch!r}; valid: {', '.join(models.ARCHITECTURES)}.")
  hf_files.check_params(params, arch, config, "export")
  out_dir = hf_files.prepare_out_dir(out_dir)
  hf_files.write_weights(hf_files.flat_numpy(params, dtype), out_dir, max_shard_bytes)
  paths.write_text(paths.join(out_dir, hf_files.CONFIG_FILE), json.dumps(
      {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "arch": arch,
       "config": dataclasses.asdict(config), "meta": dict(meta or {}),
       "weights": "safetensors; keys are t5x parameter paths joined by '/', dense "
                  "kernels stored (in, out), relative-position tables (heads, buckets)"},
      indent=2))
  return out_dir


def export_hf(params: Mapping[str, Any], config: network.TransformerConfig, arch: str,
              out_dir: str, *, dtype=None, meta: Optional[Mapping[str, Any]] = None,
              max_shard_bytes: int = hf_files.DEFAULT_MAX_SHARD_BYTES,
              vocabulary: Optional[str] = None, extra_ids: Optional[int] = None) -> str:
  """Export for Hugging Face; returns `out_dir`.

  ED: a `T5ForConditionalGeneration` directory (`hf_t5.export_t5`); load it with
  `AutoModelForSeq2SeqLM.from_pretrained(out_dir)`. CD/ND: a `trust_remote_code` export
  (`hf_decoder.export_decoder_only`: the PyTorch model code travels in the directory);
  load it with `AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)`.
  `import_hf` reads both back; `export_native` writes our own format instead. `dtype`
  casts the weights (e.g. 'bfloat16'); by default they keep their dtype (float32).
  `meta` (vocabulary, vocab_size, lineage, ...) travels in `config.json`;
  `read_export_meta` reads it.

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
  if spec is None or not spec.has_encoder:   # hf_decoder names the valid architectures
    out_dir = hf_decoder.export_decoder_only(params, config, arch, out_dir, dtype=dtype,
                                             meta=meta, max_shard_bytes=max_shard_bytes)
  else:
    out_dir = hf_t5.export_t5(params, config, out_dir, dtype=dtype, meta=meta,
                              max_shard_bytes=max_shard_bytes)
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
    raise MissingDependency("the tokenizer files need `transformers` (pip install transformers); "
                            "export with --no_tokenizer to skip them.") from e
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "spiece.model"), "wb") as f:
      f.write(vocab.model_bytes)
    tokenizer = transformers.T5Tokenizer.from_pretrained(tmp, extra_ids=extra_ids)
    ours = vocab.encode(_PROBE) + [vocab.eos_id]
    theirs = tokenizer(_PROBE).input_ids
    if theirs != ours or len(tokenizer) != vocab.vocab_size:
      raise UserError(f"vocabulary {vocabulary!r}: Hugging Face's T5 tokenizer built from "
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
    raise UserError(f"vocab_size {vocab_size} is smaller than the {base} pieces of "
                    f"{vocabulary!r}; pass the vocabulary the model was trained with.")
  return int(vocab_size) - base


def read_export_meta(path: str) -> dict:
  """The `meta` an export carries (empty for a T5 from elsewhere)."""
  config = hf_files.read_json(paths.join(paths.normalize(path, "export"),
                                         hf_files.CONFIG_FILE))
  if not isinstance(config, dict):
    return {}
  block = (config if config.get("format") == FORMAT_NAME
           else (config.get(hf_files.CONFIG_BLOCK) or {}))
  return dict(block.get("meta") or {})


def import_hf(path: str) -> tuple[str, network.TransformerConfig, dict]:
  """`(arch, config, params)` of a directory written by `export_hf`/`export_native`,
  or of any Hugging Face T5 (`model_type: t5`, tied or T5 v1.1-style untied) saved with
  safetensors."""
  path = paths.normalize(path, "Hugging Face directory")
  config_file = paths.join(path, hf_files.CONFIG_FILE)
  if not paths.isfile(config_file):
    raise UserError(f"no {hf_files.CONFIG_FILE} in {path}; pass a directory written by "
                    f"`arch-objective convert hf-out` or a Hugging Face T5 model directory.")
  config_json = hf_files.read_json(config_file)
  if not isinstance(config_json, dict):
    raise UserError(f"{config_file}: expected a JSON object (a model config), found a "
                    f"{type(config_json).__name__}.")
  tensors = hf_files.read_weights(path)
  if config_json.get("format") == FORMAT_NAME:
    return _import_native(config_json, tensors, path)
  if config_json.get("model_type") == hf_t5.MODEL_TYPE:
    return hf_t5.import_t5(config_json, tensors, path)
  if config_json.get("model_type") == hf_decoder.MODEL_TYPE:
    return hf_decoder.import_decoder_only(config_json, tensors, path)
  raise UserError(f"{config_file}: neither this package's format (format="
                  f"{FORMAT_NAME!r}), a Hugging Face T5 (model_type='t5') nor our "
                  f"decoder-only export (model_type={hf_decoder.MODEL_TYPE!r}); found "
                  f"format={config_json.get('format')!r}, "
                  f"model_type={config_json.get('model_type')!r}.")


def _import_native(config_json: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                   path: str) -> tuple[str, network.TransformerConfig, dict]:
  where = f"{path}/{hf_files.CONFIG_FILE}"
  version = config_json.get("format_version")
  if version != FORMAT_VERSION:
    raise UserError(f"{where}: format_version {version!r}; supported: {FORMAT_VERSION}. "
                    f"Re-export with this version of arch-objective.")
  arch = config_json.get("arch")
  if arch not in models.ARCHITECTURES:
    raise UserError(f"{where}: arch {arch!r}; valid: {', '.join(models.ARCHITECTURES)}.")
  config = network.config_from_dict(config_json.get("config") or {}, where)
  params = param_tree.unflatten(dict(tensors))
  hf_files.check_params(params, arch, config, path)
  return arch, config, params
