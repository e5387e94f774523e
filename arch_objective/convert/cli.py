"""`arch-objective convert ...`: checkpoints between t5x, Hugging Face and our model dirs.

  convert t5x-in      --checkpoint PATH --arch ARCH --size SIZE --out MODEL_DIR
  convert t5x-out     --model_dir MODEL_DIR --out DIR            (DIR/checkpoint_<step>/)
  convert hf-out      --model_dir MODEL_DIR --out DIR
  convert hf-in       --hf_dir DIR --out MODEL_DIR
  convert switch-arch --model_dir SRC --arch ARCH --out DST      (CD <-> ND)

Each prints one JSON line describing what it wrote and returns 0; `run(args)` executes
a command parsed by `arch_objective.cli` (which builds every parser and turns a user
error into one line and exit 2).
"""
from __future__ import annotations

import json
from typing import Any, Callable

DEFAULT_VOCAB_SIZE = 32100  # the T5 SentencePiece model's 32000 pieces + 100 extra ids


def _parse_overrides(items: list[str]) -> dict[str, Any]:
  """`['vocab_size=128', 'dtype=float32']` -> {'vocab_size': 128, 'dtype': 'float32'}."""
  out = {}
  for item in items or []:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"--config expects NAME=VALUE (e.g. --config vocab_size=128), found "
                       f"{item!r}.")
    try:
      out[name] = json.loads(value)
    except json.JSONDecodeError:
      out[name] = value
  return out


def _check_dtype(args):
  """`--dtype`, if given, names a floating-point type (ValueError naming the option)."""
  from arch_objective.convert import param_tree
  return param_tree.float_dtype(getattr(args, "dtype", None), "--dtype")


def _check_vocab_size(vocabulary: str, vocab_size, what: str = "--vocab_size") -> None:
  """A local SentencePiece `vocabulary` has at most `vocab_size` pieces (the ids it
  needs before the extra ids); a remote one is not fetched for this check. `what` names
  where `vocab_size` came from."""
  import os
  from arch_objective import paths
  from arch_objective.data import vocabularies
  if vocab_size is None or paths.is_remote(vocabulary) or not os.path.isfile(
      os.path.expanduser(vocabulary)):
    return
  base = vocabularies.SentencePieceVocabulary(vocabulary, 0).base_vocab_size
  if vocab_size < base:
    raise ValueError(f"{what} {vocab_size} is smaller than the {base} pieces of "
                     f"vocabulary {vocabulary!r}; pass the ids the model was trained with, "
                     f"extra ids included (T5: 32100).")


def _t5x_in(args) -> dict:
  import jax
  from arch_objective import models
  from arch_objective.convert import model_dir, param_tree, t5x
  from arch_objective.data import vocabularies
  overrides = _parse_overrides(args.config)
  if _check_dtype(args) is not None:   # a t5x-in --dtype, should the parser offer one
    overrides["dtype"] = _check_dtype(args)
  model = models.build_model(args.arch, args.size, **overrides)
  vocabulary = args.vocabulary or vocabularies.DEFAULT_VOCABULARY_PATH
  _check_vocab_size(vocabulary, args.vocab_size)
  checkpoint = t5x.read_t5x_checkpoint(args.checkpoint)
  if "dtype" not in overrides:   # the checkpoint's dtype, not the size preset's default
    stored = param_tree.floating_dtype_of(checkpoint["params"])
    if stored is not None and stored != model.config.dtype:
      stored = "float32" if stored == "float64" else stored
      model = models.build_model(args.arch, args.size, **dict(overrides, dtype=stored))
  checkpoint["params"] = param_tree.cast_floating(checkpoint["params"], "float32")
  step = 0 if args.reset_step or checkpoint["step"] is None else checkpoint["step"]
  entry = {"checkpoint": args.checkpoint, "step": checkpoint["step"], "arch": args.arch,
           "task": None, "conversion": "t5x-in"}
  if args.allow_missing:
    params, skipped = t5x.to_model_params(checkpoint["params"], model, strict=False)
    shapes = models.default_input_shapes(model.name, 1, 8, 8, 8)
    fresh = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
        jax.random.PRNGKey(args.seed))
    flat = param_tree.flatten(fresh["params"])
    flat.update(param_tree.flatten(params))
    params = param_tree.unflatten(flat)
    entry["skipped"] = skipped
    entry["filled_from_init_seed"] = args.seed
  else:
    params = t5x.to_model_params(checkpoint["params"], model)
  written = model_dir.write_model_dir(
      args.out, args.arch, model.config, params, step=step,
      vocabulary=vocabulary, vocab_size=args.vocab_size, lineage=[entry])
  report = {"model_dir": args.out, "checkpoint": written, "step": step,
            "dtype": model.config.dtype}
  if args.allow_missing:
    report["skipped"] = entry["skipped"]
  return report


def _t5x_out(args) -> dict:
  from arch_objective.convert import model_dir, t5x
  _check_dtype(args)
  params, meta = model_dir.load_params(args.model_dir)
  written = t5x.write_t5x_checkpoint(params, args.out, meta["step"], dtype=args.dtype,
                                     use_tensorstore=not args.inline)
  return {"checkpoint": written, "step": meta["step"], "arch": meta.get("arch")}


def _hf_out(args) -> dict:
  from arch_objective import architectures
  from arch_objective.convert import hf, model_dir
  _check_dtype(args)
  params, meta = model_dir.load_params(args.model_dir)
  config = model_dir.config_from_dict(meta.get("config") or {}, args.model_dir)
  carried = {k: meta.get(k) for k in ("vocabulary", "vocab_size", "task", "lineage", "step")}
  vocabulary = None if args.no_tokenizer else (args.vocabulary or meta.get("vocabulary"))
  if not args.no_tokenizer and not vocabulary:
    raise ValueError(f"{args.model_dir} records no vocabulary; pass the SentencePiece model "
                     f"with --vocabulary, or --no_tokenizer to export the weights alone.")
  try:
    out = hf.export_hf(params, config, meta.get("arch"), args.out, dtype=args.dtype,
                       meta=carried, vocabulary=vocabulary)
  except (OSError, ImportError) as e:
    if vocabulary is None:
      raise
    raise type(e)(f"{e} (the tokenizer comes from vocabulary {vocabulary!r}: pass a local "
                  f"copy with --vocabulary, or --no_tokenizer)") from e
  kind = ("T5ForConditionalGeneration" if architectures.get(meta.get("arch")).has_encoder
          else "ArchObjectiveForCausalLM (trust_remote_code)")
  return {"out": out, "format": kind, "arch": meta.get("arch"), "step": meta["step"],
          "tokenizer": vocabulary}


def _hf_in(args) -> dict:
  from arch_objective.convert import hf, model_dir
  from arch_objective.data import vocabularies
  arch, config, params = hf.import_hf(args.hf_dir)
  carried = hf.read_export_meta(args.hf_dir)
  vocabulary = args.vocabulary or carried.get("vocabulary") or \
      vocabularies.DEFAULT_VOCABULARY_PATH
  vocab_size = args.vocab_size or carried.get("vocab_size") or DEFAULT_VOCAB_SIZE
  _check_vocab_size(vocabulary, vocab_size, "--vocab_size" if args.vocab_size else
                    f"the vocab_size of {args.hf_dir}")
  entry = {"checkpoint": args.hf_dir, "step": carried.get("step"), "arch": arch,
           "task": carried.get("task"), "conversion": "hf-in"}
  written = model_dir.write_model_dir(
      args.out, arch, config, params, step=args.step, vocabulary=vocabulary,
      vocab_size=vocab_size, task=carried.get("task"),
      lineage=list(carried.get("lineage") or []) + [entry])
  return {"model_dir": args.out, "checkpoint": written, "arch": arch, "step": args.step}


def _switch_arch(args) -> dict:
  from arch_objective.convert import model_dir
  written = model_dir.switch_arch(args.model_dir, args.arch, args.out)
  return {"model_dir": args.out, "checkpoint": written, "arch": args.arch}


COMMANDS: dict[str, Callable[[Any], dict]] = {
    "t5x-in": _t5x_in, "t5x-out": _t5x_out, "hf-out": _hf_out, "hf-in": _hf_in,
    "switch-arch": _switch_arch,
}


def run(args) -> int:
  """Run a parsed `convert` command (`arch_objective.cli` builds the parser): prints one
  JSON line describing what it wrote and returns 0; errors propagate (the command line
  turns a user's into one line and exit 2)."""
  name = getattr(args, "convert_command", None)
  if name not in COMMANDS:
    raise ValueError(f"unknown command {name!r}; valid: {', '.join(COMMANDS)}.")
  print(json.dumps(COMMANDS[name](args)))
  return 0
