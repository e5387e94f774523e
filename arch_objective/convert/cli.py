"""`arch-objective convert ...`: checkpoints between t5x, Hugging Face and our model dirs.

  convert t5x-in      --checkpoint PATH --arch ARCH --size SIZE --out MODEL_DIR
  convert t5x-out     --model_dir MODEL_DIR --out DIR            (DIR/checkpoint_<step>/)
  convert hf-out      --model_dir MODEL_DIR --out DIR
  convert hf-in       --hf_dir DIR --out MODEL_DIR
  convert switch-arch --model_dir SRC --arch ARCH --out DST      (CD <-> ND)

`add_parser(subparsers)` adds the `convert` command and these subcommands to the
`arch-objective` parser (`arch_objective.cli` assembles every sub-package's); `run(args)`
executes a parsed one. Each prints one JSON line describing what it wrote and returns 0;
a user's error propagates, and the command line turns it into one line and exit 2. A
model directory is read through `training.checkpoints.open_model_dir`, so a meta that
lacks a config field is refused, naming it. Building the parser imports no JAX.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Mapping, Optional

from arch_objective.errors import UserError

DEFAULT_VOCAB_SIZE = 32100  # the T5 SentencePiece model's 32000 pieces + 100 extra ids


def _parse_overrides(items: list[str]) -> dict[str, Any]:
  """`['vocab_size=128', 'dtype=float32']` -> {'vocab_size': 128, 'dtype': 'float32'}."""
  out = {}
  for item in items or []:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise UserError(f"--config expects NAME=VALUE (e.g. --config vocab_size=128), found "
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
    raise UserError(f"{what} {vocab_size} is smaller than the {base} pieces of "
                    f"vocabulary {vocabulary!r}; pass the ids the model was trained with, "
                    f"extra ids included (T5: 32100).")


# Written by `convert t5x-out` beside the t5x files: what `convert t5x-in` needs to
# rebuild the model (arch, exact config, vocabulary) without options.
T5X_MODEL_CONFIG = "model_config.json"


def read_t5x_model_config(checkpoint: str) -> Optional[dict]:
  """The `model_config.json` that `convert t5x-out` wrote beside a t5x checkpoint
  (`checkpoint` in any form `t5x.find_checkpoint` takes), or None for a checkpoint
  without one (a released t5x checkpoint)."""
  from arch_objective import paths
  from arch_objective.convert import t5x
  checkpoint_dir, _ = t5x.find_checkpoint(checkpoint)
  path = paths.join(checkpoint_dir, T5X_MODEL_CONFIG)
  if not paths.exists(path):
    return None
  try:
    recorded = json.loads(paths.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not valid JSON ({e}); remove it and give --arch and --size."
                    ) from None
  if not isinstance(recorded, dict) or "arch" not in recorded or "config" not in recorded:
    raise UserError(f"{path}: expected a JSON object with 'arch' and 'config' (written by "
                    f"`convert t5x-out`); remove it and give --arch and --size.")
  return recorded


def _t5x_in_model_builder(args, recorded: Optional[dict], overrides: dict):
  """A function of extra config overrides building the model `t5x-in` loads: from
  --arch/--size (and --config), else from the config `convert t5x-out` recorded."""
  from arch_objective import models
  if args.size is not None:
    arch = args.arch or (recorded or {}).get("arch")
    if arch is None:
      raise UserError("convert t5x-in: --size needs --arch (the checkpoint records no "
                      "architecture).")
    return lambda **extra: models.build_model(arch, args.size, **dict(overrides, **extra))
  if recorded is None:
    raise UserError(f"convert t5x-in: {args.checkpoint} has no {T5X_MODEL_CONFIG} (only "
                    f"`convert t5x-out` writes one); give --arch and --size the checkpoint "
                    f"was trained with, and --config NAME=VALUE for fields that differ from "
                    f"the size preset (e.g. --config vocab_size=32128).")
  return lambda **extra: models.from_meta(recorded, args.checkpoint, args.arch,
                                          **dict(overrides, **extra))


def _t5x_in(args) -> dict:
  import jax
  from arch_objective import models
  from arch_objective.convert import model_dir, param_tree, t5x
  from arch_objective.data import vocabularies
  overrides = _parse_overrides(args.config)
  if _check_dtype(args) is not None:   # a t5x-in --dtype, should the parser offer one
    overrides["dtype"] = _check_dtype(args)
  recorded = read_t5x_model_config(args.checkpoint)
  build = _t5x_in_model_builder(args, recorded, overrides)
  model = build()
  args.arch = args.arch or model.name
  vocabulary = (args.vocabulary or (recorded or {}).get("vocabulary")
                or vocabularies.DEFAULT_VOCABULARY_PATH)
  vocab_size = args.vocab_size or (recorded or {}).get("vocab_size") or DEFAULT_VOCAB_SIZE
  _check_vocab_size(vocabulary, vocab_size, "--vocab_size" if args.vocab_size else
                    "the recorded vocab_size" if recorded else "--vocab_size")
  checkpoint = t5x.read_t5x_checkpoint(args.checkpoint)
  if "dtype" not in overrides:   # the checkpoint's dtype, not the size preset's default
    stored = param_tree.floating_dtype_of(checkpoint["params"])
    if stored is not None and stored != model.config.dtype:
      stored = "float32" if stored == "float64" else stored
      model = build(dtype=stored)
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
      vocabulary=vocabulary, vocab_size=vocab_size, task=(recorded or {}).get("task"),
      lineage=list((recorded or {}).get("lineage") or []) + [entry])
  report = {"model_dir": args.out, "checkpoint": written, "step": step,
            "dtype": model.config.dtype}
  if args.allow_missing:
    report["skipped"] = entry["skipped"]
  return report


def _t5x_out(args) -> dict:
  from arch_objective import paths
  from arch_objective.convert import t5x
  from arch_objective.training import checkpoints
  _check_dtype(args)
  model, params, meta, step = checkpoints.open_model_dir(args.model_dir)
  written = t5x.write_t5x_checkpoint(params, args.out, step, dtype=args.dtype,
                                     use_tensorstore=not args.inline)
  config = dict(meta.get("config") or {})
  if args.dtype and "dtype" in config:
    config["dtype"] = "float32" if args.dtype == "float64" else args.dtype
  recorded = {"arch": meta.get("arch"), "config": config,
              "vocabulary": meta.get("vocabulary"), "vocab_size": meta.get("vocab_size"),
              "task": meta.get("task"), "step": step, "lineage": meta.get("lineage", [])}
  config_path = paths.join(written, T5X_MODEL_CONFIG)
  paths.write_text(config_path, json.dumps(recorded, indent=2))
  return {"checkpoint": written, "step": step, "arch": meta.get("arch"),
          "model_config": config_path}


def _hf_out(args) -> dict:
  from arch_objective import architectures
  from arch_objective.convert import hf
  from arch_objective.training import checkpoints
  _check_dtype(args)
  model, params, meta, step = checkpoints.open_model_dir(args.model_dir)
  config = model.config
  carried = dict({k: meta.get(k) for k in ("vocabulary", "vocab_size", "task", "lineage")},
                 step=step)
  vocabulary = None
  if not args.no_tokenizer and not args.vocabulary and meta.get("vocabulary"):
    try:
      vocabulary = checkpoints.recorded_vocabulary(meta, args.model_dir)
    except FileNotFoundError:
      vocabulary = meta.get("vocabulary")    # named in the error of the export below
  elif not args.no_tokenizer:
    vocabulary = args.vocabulary
  if not args.no_tokenizer and not vocabulary:
    raise UserError(f"{args.model_dir} records no vocabulary; pass the SentencePiece model "
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
  return {"out": out, "format": kind, "arch": meta.get("arch"), "step": step,
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
  """Run a parsed `convert` command (`add_parser` builds the parser): prints one JSON
  line describing what it wrote and returns 0; errors propagate (the command line turns
  a user's into one line and exit 2)."""
  name = getattr(args, "convert_command", None)
  if name not in COMMANDS:
    raise UserError(f"unknown command {name!r}; valid: {', '.join(COMMANDS)}.")
  print(json.dumps(COMMANDS[name](args)))
  return 0


def add_parser(subparsers, examples: Optional[Mapping[str, str]] = None,
               group_example: Optional[str] = None) -> argparse.ArgumentParser:
  """Add `convert` and its subcommands (`COMMANDS`) to `subparsers` (the
  `add_subparsers()` of the `arch-objective` parser, whose parser class they take);
  returns the `convert` parser. `examples` maps a subcommand to a command line its
  `--help` ends with; `group_example`, the one `convert --help` ends with. Parsed, a
  command runs through `args.func(args)` (`run`)."""
  from arch_objective.architectures import ARCHITECTURES, SIZES
  examples = dict(examples or {})
  raw = argparse.RawDescriptionHelpFormatter
  convert = subparsers.add_parser(
      "convert", help="convert checkpoints: t5x in/out, Hugging Face out/in, CD <-> ND",
      epilog=f"example:\n  {group_example}" if group_example else None,
      formatter_class=raw)
  sub = convert.add_subparsers(dest="convert_command", required=True,
                               metavar="|".join(COMMANDS),
                               help="which conversion (each has its own --help)")

  p = sub.add_parser("t5x-in", help="a t5x checkpoint (e.g. a released one) -> MODEL_DIR",
                     epilog=_epilog(examples, "t5x-in", (
                         "A checkpoint written by `convert t5x-out` carries its model's "
                         "arch, config and vocabulary (model_config.json beside it): "
                         "nothing else is needed. For another t5x checkpoint give --arch "
                         "and --size, and --config NAME=VALUE where its config differs "
                         "from the size preset's.")),
                     formatter_class=raw)
  p.add_argument("--checkpoint", required=True,
                 help="checkpoint_<step> directory (local or gs://), or its parent")
  p.add_argument("--arch", choices=ARCHITECTURES,
                 help="architecture of the checkpoint (default: the one recorded by "
                      "`convert t5x-out`; required for other checkpoints)")
  p.add_argument("--size", choices=list(SIZES),
                 help="size preset the config starts from (default: the exact config "
                      "recorded by `convert t5x-out`; required for other checkpoints)")
  p.add_argument("--out", required=True, help="the new MODEL_DIR")
  p.add_argument("--config", action="append", default=[], metavar="NAME=VALUE",
                 help="model config override, e.g. vocab_size=32128 (repeatable)")
  p.add_argument("--vocabulary", default=None,
                 help="SentencePiece model recorded in the meta (default: T5's)")
  p.add_argument("--vocab_size", type=int, default=None,
                 help="ids of that vocabulary incl. extra ids (default: the recorded one, "
                      "else 32100)")
  p.add_argument("--reset_step", action="store_true",
                 help="start the step (and optimiser counters) at 0, not the t5x step")
  p.add_argument("--allow_missing", action="store_true",
                 help="load what fits, fill the rest from a fresh init and report it")
  p.add_argument("--seed", type=int, default=0, help="init seed for --allow_missing")

  p = sub.add_parser("t5x-out", help="MODEL_DIR -> DIR/checkpoint_<step> in t5x's format",
                     epilog=_epilog(examples, "t5x-out", (
                         "Also writes DIR/checkpoint_<step>/model_config.json (arch, "
                         "config, vocabulary), which `convert t5x-in` reads back.")),
                     formatter_class=raw)
  p.add_argument("--model_dir", required=True,
                 help="MODEL_DIR or MODEL_DIR/checkpoints/<step>")
  p.add_argument("--out", required=True, help="directory for checkpoint_<step>/ (or gs://)")
  p.add_argument("--dtype", default="float32", help="parameter dtype (t5x saves float32)")
  p.add_argument("--inline", action="store_true",
                 help="all arrays inside the msgpack file instead of TensorStore arrays")

  p = sub.add_parser("hf-out", help="MODEL_DIR -> Hugging Face: T5 (ED) or a "
                                    "trust_remote_code causal LM (CD/ND), with its tokenizer",
                     epilog=_epilog(examples, "hf-out"), formatter_class=raw)
  p.add_argument("--model_dir", required=True,
                 help="MODEL_DIR or MODEL_DIR/checkpoints/<step>")
  p.add_argument("--out", required=True, help="an empty directory")
  p.add_argument("--dtype", default=None, help="weight dtype (default: as saved, float32)")
  p.add_argument("--vocabulary", default=None,
                 help="SentencePiece model of the tokenizer files (default: the run's)")
  p.add_argument("--no_tokenizer", action="store_true",
                 help="export the weights and config without tokenizer files")

  p = sub.add_parser("hf-in", help="Hugging Face T5 or one of our exports -> MODEL_DIR",
                     epilog=_epilog(examples, "hf-in"), formatter_class=raw)
  p.add_argument("--hf_dir", required=True, help="directory with config.json + safetensors")
  p.add_argument("--out", required=True, help="the new MODEL_DIR")
  p.add_argument("--step", type=int, default=0, help="step of the new checkpoint")
  p.add_argument("--vocabulary", default=None,
                 help="SentencePiece model (default: the export's, else T5's)")
  p.add_argument("--vocab_size", type=int, default=None,
                 help="vocabulary ids (default: the export's, else 32100)")

  p = sub.add_parser("switch-arch", help="CD <-> ND: same weights, the other architecture",
                     epilog=_epilog(examples, "switch-arch"), formatter_class=raw)
  p.add_argument("--model_dir", required=True,
                 help="source MODEL_DIR (or .../checkpoints/<step>)")
  p.add_argument("--arch", required=True, choices=ARCHITECTURES,
                 help="the architecture to read the weights as (causal_decoder <-> "
                      "non_causal_decoder)")
  p.add_argument("--out", required=True, help="the new MODEL_DIR")

  convert.set_defaults(func=run)
  return convert


def _epilog(examples: Mapping[str, str], name: str, prose: str = "") -> Optional[str]:
  """`prose` wrapped, then the `example:` block a subcommand's `--help` ends with, if
  `examples` holds one."""
  import textwrap
  text = textwrap.fill(prose, 88) + "\n\n" if prose else ""
  if name in examples:
    text += f"example:\n  {examples[name]}"
  return text or None
