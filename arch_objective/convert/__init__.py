"""Checkpoint conversion: t5x in and out, Hugging Face out and in, CD <-> ND.

  t5x.read_t5x_checkpoint(path, dtype=None, with_optimizer=False)
      native t5x checkpoints (format version 3; the paper's released ones) as numpy
  t5x.to_model_params(params, model, strict=True)
      check a tree against a model: UserError naming what differs, or (strict=False)
      the loadable subset and a report of what was skipped
  t5x.write_t5x_checkpoint(params, path, step)
      the same layout (msgpack + gzip zarr arrays), for t5x users
  hf.export_hf(params, config, arch, out_dir) / hf.import_hf(path)
      ED <-> transformers' T5ForConditionalGeneration (`hf_t5`); CD/ND <-> a
      trust_remote_code causal LM (`hf_decoder`); any <-> our own config.json +
      safetensors format (`hf.export_native`); the files themselves: `hf_files`
  model_dir.write_model_dir(...), model_dir.switch_arch(src, arch, dst)
      new model directories from converted parameters; CD <-> ND copies
  cli.add_parser(subparsers), cli.run(args)
      the `arch-objective convert ...` command

Model directories are read through `training.checkpoints.open_model_dir` (model,
parameters, meta, step), as everywhere else. Parameter names are t5x's throughout
(spec §1.2), so trees pass between formats without renaming; only the Hugging Face
mappings rename (see `hf_t5`, `hf_decoder`).
"""
import importlib

_EXPORTS = {"export_hf": "hf", "export_native": "hf", "import_hf": "hf",
            "switch_arch": "model_dir", "write_model_dir": "model_dir",
            "read_t5x_checkpoint": "t5x", "to_model_params": "t5x",
            "write_t5x_checkpoint": "t5x"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):   # the submodules import JAX; `convert.cli` alone does not
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"arch_objective.convert.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'arch_objective.convert' has no attribute {name!r}")
