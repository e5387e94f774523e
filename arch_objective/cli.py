"""The `arch-objective` command: the one door for a person.

  arch-objective plan --arch ARCH --size SIZE [--length L]   model accounting as JSON
  arch-objective data stats --task NAME [--corpus PATH] ...   what a task's rows contain
  arch-objective data show --task NAME [--corpus PATH] ...    rows decoded, roles marked
  arch-objective data example --out DIR                       offline example data (world)
  arch-objective train --gin_file F [--gin.NAME=VALUE ...]    train (t5x-style, gin-configured)
  arch-objective evaluate --gin_file F [--gin.NAME=VALUE ...] evaluate a checkpoint
  arch-objective eval t0 --checkpoint PATH | --gin_file F ... T0-Eval (rank classification)
  arch-objective eval harness --checkpoint PATH | --gin_file F ... EAI-Eval (lm-eval harness)
  arch-objective eval t0|harness --checkpoint MODEL_DIR --steps all|N,M|every:K [--watch]
                                                              every checkpoint of a run
  arch-objective infer --checkpoint PATH --task T | --prompts F | --datasets D ...
                                                              predictions as JSONL
  arch-objective convert t5x-in|t5x-out|hf-in|hf-out|switch-arch ...   checkpoint conversion
  arch-objective study --preset smoke|quick|medium|full --out DIR [--gin.StudyConfig.NAME=VALUE ...]
                                                              the laptop-scale study
  arch-objective study --preset P --out DIR --widths 64,128,256   the study at each width
  arch-objective compare-studies BEFORE AFTER [--out DIR]     two studies, paired per example
  arch-objective smoke [--out DIR]                            the study's smoke preset
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys

from arch_objective import logs
from arch_objective.data.sources import C4_VERSION
from arch_objective.errors import UserError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _plan(args) -> int:
  from arch_objective import architectures, models
  if args.gin_file:
    return _plan_gin(args)
  lineage = None
  if args.model_dir:
    from arch_objective.training import checkpoints
    model, _, meta, step = checkpoints.open_model_dir(args.model_dir, arch=args.arch,
                                                      read_params=False)
    checkpoints.state_metadata(args.model_dir)    # the state's files are all there
    lineage = {"step": step, "task": meta.get("task"), "trained_as": meta.get("arch"),
               "sources": meta.get("lineage", [])}
    args.size = "custom"
  else:
    if not args.arch or not args.size:
      raise UserError("give --arch and --size, or --model_dir to describe a checkpoint.")
    model = models.build_model(args.arch, args.size)
  args.arch = model.name
  report = {
      "arch": args.arch,
      "size": args.size,
      "params": models.count_params(model),
      "flops_per_token": models.training_flops_per_token(
          model, args.length, args.inputs_length, args.targets_length),
      "lengths": architectures.get(args.arch).row_lengths(
          {"decoder": args.length, "inputs": args.inputs_length,
           "targets": args.targets_length}),
      "config": {k: v for k, v in vars(model.config).items()},
  }
  if lineage is not None:
    report["lineage"] = lineage
  print(json.dumps(report, indent=2))
  return 0


def _plan_gin(args) -> int:
  """`plan --gin_file`: an evaluation run's settings and checkpoint, or a training run's
  budget, mesh and memory."""
  from arch_objective.evaluation import runs
  from arch_objective.training import partitioning, plan
  report = runs.plan_eval(args.gin_file, args.gin_bindings)
  if report is None:
    mesh = partitioning.parse_mesh(args.mesh) if args.mesh else None
    memory = args.device_memory_gib
    if memory is None and args.device:
      if args.device not in plan.DEVICE_MEMORY_GIB:
        raise UserError(f"--device {args.device!r}: expected one of "
                        f"{', '.join(plan.DEVICE_MEMORY_GIB)} (or give "
                        f"--device_memory_gib).")
      memory = plan.DEVICE_MEMORY_GIB[args.device]
    report = plan.plan_run(args.gin_file, args.gin_bindings, mesh, memory, args.num_devices)
  print(json.dumps(report, indent=2))
  return 1 if report["problems"] else 0


def _task_spec(args):
  """Register the tasks the options name and return the spec of `--task`."""
  import tasks
  from arch_objective.data import vocabularies
  from arch_objective.training import sources
  source = sources.corpus_source(corpus=args.corpus, field=args.field, layout=args.layout,
                                 tfds_data_dir=args.tfds_data_dir, c4_version=args.c4_version)
  return tasks.resolve(args.task, source=source,
                       vocabulary=args.vocabulary or vocabularies.DEFAULT_VOCABULARY_PATH,
                       length=args.length)


def _data(args) -> int:
  import itertools
  from arch_objective.objectives import pipeline, stats, ul2
  spec = _task_spec(args)
  objective = spec.objective(args.arch)
  vocab = spec.vocab()
  examples = spec.task_examples(args.split, arch=args.arch, seed=args.seed)
  if args.data_command == "stats":
    report = stats.row_statistics(objective, examples, args.num,
                                  sentinel_floor=vocab.vocab_size - vocab.extra_ids)
    report["corpus_task"] = spec.name
    print(json.dumps(report, indent=2))
    return 0
  rows = itertools.islice(objective.model_rows(examples), args.num)
  decode = vocab.decode
  if objective.objective == pipeline.UL2:   # paradigm tokens by name: [NLU], [NLG], [S2S]
    decode = ul2.decoder_with_paradigms(vocab.decode, vocab.vocab_size - 1, vocab.extra_ids)
  for i, row in enumerate(rows):
    print(f"== {spec.name} as {objective.name}, row {i}")
    print(stats.render_row(row, decode))
  return 0


def _split_gin_bindings(argv):
  """`--gin.NAME=VALUE` arguments -> gin bindings `NAME=VALUE`, and t5x's
  `--gin_search_paths=A,B` -> [A, B]; the rest for argparse."""
  bindings, search_paths, rest = [], [], []
  argv = list(argv)
  while argv:
    arg = argv.pop(0)
    if arg.startswith("--gin.") and "=" in arg:
      bindings.append(arg[len("--gin."):])
    elif arg == "--gin_search_paths" and argv:
      search_paths.extend(p for p in argv.pop(0).split(",") if p)
    elif arg.startswith("--gin_search_paths="):
      search_paths.extend(p for p in arg.partition("=")[2].split(",") if p)
    else:
      rest.append(arg)
  return bindings, search_paths, rest


def _run_gin(args) -> int:
  import gin
  from arch_objective.training import gin_utils, partitioning
  partitioning.initialize_distributed(args.coordinator_address, args.num_processes,
                                      args.process_id,
                                      initialization_timeout=args.coordinator_timeout)
  gin_utils.parse(args.gin_file, args.gin_bindings)
  if args.command == "train":
    result = gin.get_configurable("train")(config_text=gin.operative_config_str)
    last = result.history[-1] if result.history else {}
    print(json.dumps({"model_dir": result.model_dir, "last_checkpoint": result.last_checkpoint,
                      "step": last.get("step"), "loss": last.get("loss"),
                      "loss_per_token": last.get("loss_per_token"),
                      "stopped_by": result.stopped_by}))
  else:
    print(json.dumps(gin.get_configurable("evaluate")(), indent=2))
  return 0


TRACEBACK_ENV = "ARCH_OBJECTIVE_TRACEBACK"


def _user_error(error: BaseException) -> bool:
  """Whether `error` is one a user causes and fixes: the project's `UserError` (a bad
  option, file, field, run directory; a diverged run; a directory in use), an OS error
  about a path (a file that cannot be read or written) or a full disk. One line and exit
  2. Anything else is a bug, in this package or a library it calls (a KeyError, a
  ValueError raised inside JAX or orbax), and keeps its traceback."""
  return (isinstance(error, (UserError, OSError)) or _disk_full(error) is not None)


def _command_name(args) -> str:
  parts = [args.command] + [getattr(args, f"{args.command}_command", None)]
  return "arch-objective " + " ".join(p for p in parts if p)


def _disk_full(error: BaseException):
  """The exception in `error`'s chain that says the disk is full, or None
  (`checkpoints.disk_full_error` once training or evaluation has loaded it, which also
  reads tensorstore's ValueError; else an OSError with errno ENOSPC)."""
  module = sys.modules.get("arch_objective.training.checkpoints")
  if module is not None:
    return module.disk_full_error(error)
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return error
    error = error.__cause__ or error.__context__
  return None


def _one_line(error: BaseException) -> str:
  full = _disk_full(error)
  module = sys.modules.get("arch_objective.training.checkpoints")
  if full is not None and module is not None and isinstance(full, module.DiskFullError):
    return str(full)           # names the directory and the space needed
  if full is not None:
    where = getattr(full, "filename", None) or "the run directory"
    return (f"no space left on the device writing {where}; free space and run the same "
            f"command again to resume from the last complete checkpoint.")
  # gin appends "  In call to configurable ..." lines; the first part is the message.
  return str(error).split("\n  In call to configurable")[0]


def _study(args) -> int:
  from arch_objective import study
  if getattr(args, "widths", None) is not None:
    from arch_objective.study import scale
    scale.run_scale(args.preset, args.out, scale.parse_widths(args.widths), nc_a=args.nc_a,
                    bindings=args.gin_bindings)
    print(open(os.path.join(args.out, "scale.md")).read())
    return 0
  study.run_study(args.preset, args.out, nc_a=args.nc_a, ul2=getattr(args, "ul2", None),
                  bindings=args.gin_bindings)
  print(open(os.path.join(args.out, "results.md")).read())
  return 0


def _compare_studies(args) -> int:
  from arch_objective.study import scale
  summary = scale.compare_studies(args.before, args.after, resamples=args.resamples)
  if args.out:
    scale.write_comparison(summary, args.out)
  print(scale.comparison_markdown(summary))
  return 0


def _smoke(args) -> int:
  """The study's smoke preset (the whole pipeline, tiny, about two minutes) in `--out`
  or a temporary directory."""
  import tempfile
  if args.out:
    args.preset, args.nc_a = "smoke", None
    return _study(args)
  with tempfile.TemporaryDirectory(prefix="arch_objective_smoke_") as out:
    args.out, args.preset, args.nc_a = out, "smoke", None
    return _study(args)


# Every example below is run by tests/test_cli.py (with EXAMPLE_DIR replaced by a
# temporary directory), in this order: each reads what the ones before it wrote.
EXAMPLE_DIR = "/tmp/arch_objective_example"
EXAMPLES = {
    "plan": "arch-objective plan --arch encoder_decoder --size paper",
    "data example": ("arch-objective data example --out /tmp/arch_objective_example/data "
                     "--corpus_bytes 300000"),
    "data stats": ("arch-objective data stats --task local_span_corruption --corpus "
                   "/tmp/arch_objective_example/data/corpus.jsonl --vocabulary "
                   "/tmp/arch_objective_example/data/spm.model --num 8"),
    "data show": ("arch-objective data show --task local_prefix_lm_decoder --corpus "
                  "/tmp/arch_objective_example/data/corpus.jsonl --vocabulary "
                  "/tmp/arch_objective_example/data/spm.model --length 64 --num 1"),
    "train": ("arch-objective train --gin_file=experiments/paper/cd_flm.gin "
              "--gin_file=local.gin --gin.MODEL_DIR=\"'/tmp/arch_objective_example/cd'\""),
    "evaluate": ("arch-objective evaluate --gin_file=models/causal_decoder.gin "
                 "--gin_file=objectives/full_lm.gin --gin_file=runs/evaluate.gin "
                 "--gin_file=local.gin "
                 "--gin.MODEL_DIR=\"'/tmp/arch_objective_example/cd'\""),
    "eval t0": ("arch-objective eval t0 --gin_file=experiments/paper/eval_t0.gin "
                "--gin_file=local.gin --checkpoint /tmp/arch_objective_example/cd "
                "--max_examples 4"),
    "eval harness": ("arch-objective eval harness --gin_file=experiments/paper/eval_harness.gin "
                     "--gin_file=local.gin --checkpoint /tmp/arch_objective_example/cd "
                     "--limit 4"),
    "infer": ("arch-objective infer --checkpoint /tmp/arch_objective_example/cd "
              "--prompts /tmp/arch_objective_example/data/prompts.jsonl --decode beam "
              "--num_decodes 2 --max_decode_steps 8 --out /tmp/arch_objective_example/infer"),
    "convert hf-out": ("arch-objective convert hf-out --model_dir /tmp/arch_objective_example/cd "
                       "--out /tmp/arch_objective_example/cd_hf"),
    "convert hf-in": ("arch-objective convert hf-in --hf_dir "
                      "/tmp/arch_objective_example/cd_hf "
                      "--out /tmp/arch_objective_example/cd_from_hf"),
    "convert t5x-out": ("arch-objective convert t5x-out --model_dir "
                        "/tmp/arch_objective_example/cd "
                        "--out /tmp/arch_objective_example/cd_t5x"),
    "convert t5x-in": ("arch-objective convert t5x-in --checkpoint "
                       "/tmp/arch_objective_example/cd_t5x "
                       "--out /tmp/arch_objective_example/cd_from_t5x"),
    "convert switch-arch": ("arch-objective convert switch-arch --model_dir "
                            "/tmp/arch_objective_example/cd --arch non_causal_decoder "
                            "--out /tmp/arch_objective_example/nd"),
}
# Examples `--help` prints that take minutes (a whole study); tests/test_newcomer_help.py
# parses each of them.
SLOW_EXAMPLES = {
    "study": "arch-objective study --preset quick --out /tmp/study_quick",
    "smoke": "arch-objective smoke --out /tmp/study_smoke",
    "compare-studies": ("arch-objective compare-studies /tmp/study_quick /tmp/study_medium "
                        "--out /tmp/study_compare"),
}
# The example a command group's `--help` ends with: that of one of its subcommands.
GROUP_EXAMPLES = {"arch-objective": "plan", "data": "data example", "eval": "eval t0",
                  "convert": "convert hf-out"}
_GIN_FLAGS = ("Bind gin macros or parameters with --gin.NAME=VALUE (strings in two quotes: "
              "--gin.MODEL_DIR=\"'/tmp/run'\"); t5x's names work too: TASK_FEATURE_LENGTHS, "
              "RANDOM_SEED, USE_CACHED_TASKS=False, --gin_search_paths=DIR[,DIR].")


def _epilog(command: str, extra: str = "") -> str:
  """`extra` wrapped, then the command's example on a line of its own (for
  `argparse.RawDescriptionHelpFormatter`)."""
  import textwrap
  prose = textwrap.fill(extra, 88) + "\n\n" if extra else ""
  example = EXAMPLES.get(command) or SLOW_EXAMPLES[command]
  return f"{prose}example:\n  {example}"


_RAW = dict(formatter_class=argparse.RawDescriptionHelpFormatter)


def _limit(text: str):
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"--limit expects a number of examples (or a "
                                     f"fraction < 1), found {text!r}.") from None
  return int(value) if value >= 1 and value == int(value) else value


def _eval_epilog(kind: str, command: str, example_flag: str, macro: str) -> str:
  return _epilog(command, (
      f"With --gin_file, the gin files and --gin.NAME=VALUE bindings configure the run "
      f"(gin/runs/{kind}.gin lists its macros; experiments/paper/{kind}.gin is the paper's), "
      f"and every option given here overrides them: it is bound last, to the macro feeding "
      f"its parameter ({example_flag} sets {macro}, --checkpoint sets CHECKPOINT_PATH). "
      f"Without --gin_file the options alone configure the run. Results go to --out, else "
      f"to <model dir>/{kind}/<step>/ (local or gs://)."))


def _eval_common(p: argparse.ArgumentParser, results: str, architectures):
  """Options the eval commands and `infer` share; every default is None ("not given")."""
  p.add_argument("--gin_file", action="append",
                 help="gin file of the run (repeatable; searched in the repository's gin/ "
                      "too); --gin.NAME=VALUE binds")
  p.add_argument("--checkpoint",
                 help="a model directory (latest step) or MODEL_DIR/checkpoints/<step>, "
                      "local or gs://")
  p.add_argument("--arch", choices=architectures,
                 help="read a causal decoder checkpoint as non-causal or back")
  p.add_argument("--vocabulary", help="SentencePiece model (default: the checkpoint's)")
  p.add_argument("--allow_other_vocabulary", action=argparse.BooleanOptionalAction,
                 help="evaluate with a --vocabulary other than the one the checkpoint was "
                      "trained with (default: refused; results record the vocabulary)")
  p.add_argument("--paradigm", choices=("[NLU]", "[NLG]", "[S2S]"),
                 help="start every prompt with this UL2 paradigm token (mode switching "
                      "for a UL2-trained model; default: none)")
  p.add_argument("--out", dest="out_dir", metavar="DIR",
                 help=f"directory for {results} (default: next to the checkpoint)")
  p.add_argument("--compilation_cache_dir", metavar="DIR",
                 help="JAX's persistent compilation cache (default: "
                      "$ARCH_OBJECTIVE_COMPILATION_CACHE_DIR, else "
                      "~/.cache/arch-objective/jax-cache; '' turns it off)")


def _eval(args) -> int:
  """`eval t0|harness` and `infer`: the options alone, or gin files the options override
  (see `evaluation/runs.py`); with `--steps` or `--watch`, every checkpoint of a run
  (`evaluation/sweep.py`)."""
  from arch_objective.evaluation import runs
  kind = args.eval_kind
  given = {p: getattr(args, p) for p in runs.parameters(kind)
           if getattr(args, p, None) is not None}
  if getattr(args, "merge", False):
    from arch_objective.evaluation import infer
    print(json.dumps(infer.merge(args.out_dir), indent=2))
    return 0
  if getattr(args, "steps", None) is not None or getattr(args, "watch", False):
    from arch_objective.evaluation import sweep
    result = sweep.sweep(kind, given, gin_files=args.gin_file or (),
                         bindings=args.gin_bindings, steps=args.steps, watch=args.watch,
                         poll_seconds=args.poll, time_limit=args.time_limit)
    print(result.markdown)
    return 0
  if args.gin_file:
    run = runs.run_from_gin(kind, args.gin_file, args.gin_bindings, given)
  elif args.gin_bindings:
    raise UserError(f"--gin.{args.gin_bindings[0]} needs --gin_file (e.g. --gin_file "
                    f"runs/{kind}.gin); without one, use the options.")
  else:
    run = runs.RUNS[kind](**given)
  print(run.markdown)
  logging.getLogger("arch_objective.cli").info(f"wrote {' and '.join(run.files)}")
  return 0


def _add_eval_parsers(eval_sub, architectures):
  from arch_objective.evaluation import kinds
  t0p = eval_sub.add_parser(
      "t0", help="T0-Eval: rank classification, median over prompts", **_RAW,
      epilog=_eval_epilog(kinds.EVAL_T0, "eval t0", "--max_examples 8", "MAX_EXAMPLES"))
  _eval_common(t0p, "results.json and results.md", architectures)
  t0p.add_argument("--data_dir", help="original dataset files (default: HF datasets)")
  t0p.add_argument("--mapping", help="JSON file pointing datasets at other files")
  t0p.add_argument("--datasets", nargs="+", help="subset of the suite, e.g. super_glue/rte")
  t0p.add_argument("--max_examples", type=int, help="first N examples of each dataset")
  t0p.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                   help="divide each choice's log-likelihood by its token count "
                        "(default: no, as the paper)")
  t0p.add_argument("--inputs_length", type=int, help="prompt tokens kept (default 1024)")
  t0p.add_argument("--targets_length", type=int, help="choice tokens kept (default 256)")
  t0p.add_argument("--bootstrap", type=int,
                   help="resamplings for a 95%% interval of the average (default 0: none)")
  t0p.add_argument("--paper", action=argparse.BooleanOptionalAction,
                   help="print the paper's numbers too")
  _sweep_options(t0p, kinds.EVAL_T0)
  t0p.set_defaults(func=_eval, eval_kind=kinds.EVAL_T0)

  hp = eval_sub.add_parser(
      "harness", help="EAI-Eval: lm-evaluation-harness tasks, zero-shot", **_RAW,
      epilog=_eval_epilog(kinds.EVAL_HARNESS, "eval harness", "--limit 8", "LIMIT"))
  _eval_common(hp, "harness_results.json and summary.md", architectures)
  hp.add_argument("--tasks", nargs="+",
                  help=f"lm-eval task names (space or comma separated); {kinds.EAI_EVAL} = "
                       f"the paper's 31 tasks (the default)")
  hp.add_argument("--include_path", help="a folder of extra lm-eval task YAML files")
  hp.add_argument("--truncation", choices=("paper", "modern"),
                  help="paper: first 512 context / 114 continuation tokens (the paper's "
                       "bridge); modern (default): keep the context's last tokens")
  hp.add_argument("--limit", type=_limit, help="first N examples of each task (testing only)")
  hp.add_argument("--batch_tokens", type=int,
                  help=f"tokens per forward batch (default {kinds.HARNESS_BATCH_TOKENS})")
  hp.add_argument("--dtype", help="activation dtype (default float32)")
  hp.add_argument("--bootstrap_iters", type=int,
                  help="the harness's bootstrap resamplings for standard errors "
                       "(default 100000; 0 skips them)")
  _sweep_options(hp, kinds.EVAL_HARNESS)
  hp.set_defaults(func=_eval, eval_kind=kinds.EVAL_HARNESS)


def _sweep_options(p: argparse.ArgumentParser, kind: str):
  """`--steps`, `--watch` and their timing: every checkpoint of a run (t5x's mode='all')."""
  p.add_argument("--steps", metavar="all|N,M,...|every:K",
                 help=f"evaluate these checkpoints of the run --checkpoint names (its model "
                      f"directory), each into <model dir>/{kind}/<step>/, with TensorBoard "
                      f"scalars and curve.json/.md/.png of the score against tokens seen; "
                      f"steps already evaluated are read back, not scored again")
  p.add_argument("--watch", action="store_true",
                 help="evaluate each new checkpoint as training writes it (beside a "
                      "training job; a restart re-scores nothing); stops after the run's "
                      "last step or --time_limit")
  p.add_argument("--poll", type=positive_float, default=60.0, metavar="SECONDS",
                 help="--watch: seconds between looks for a new checkpoint (default 60)")
  p.add_argument("--time_limit", type=positive_float, metavar="SECONDS",
                 help="--watch: stop after this many seconds without a new checkpoint "
                      "to evaluate (default: wait for the run's last step)")


def _add_infer_parser(sub, architectures):
  from arch_objective.evaluation import kinds
  p = sub.add_parser(
      "infer", help="predictions of a checkpoint: greedy, sampled or beam search, as JSONL",
      **_RAW, epilog=_epilog("infer", (
          "Inputs: a registered task or mixture (--task, --split), a JSONL file of prompts "
          "(--prompts, one object per line with an 'inputs' field), or T0 held-out "
          "datasets through their promptsource templates (--datasets, --data_dir). Writes "
          "--out/predictions.jsonl (one row per example and decode: inputs, targets when "
          "known, prediction, log-probability) in chunks, so the same command resumes a "
          "stopped run, and summary.json. On several hosts each writes "
          "predictions-<index>-of-<count>.jsonl; `infer --merge --out DIR` joins them. "
          "With --gin_file, gin/runs/infer.gin lists the macros the options override.")))
  _eval_common(p, "predictions.jsonl and summary.json", architectures)
  p.add_argument("--merge", action="store_true",
                 help="join the per-host files of --out into predictions.jsonl and stop")
  p.add_argument("--task", help="a registered task or mixture (e.g. study_t0_train)")
  p.add_argument("--split", help="split of --task (default validation)")
  p.add_argument("--prompts", metavar="FILE",
                 help="a JSONL file of prompts, one object per line")
  p.add_argument("--inputs_field", help="--prompts: the prompt's field (default inputs)")
  p.add_argument("--targets_field",
                 help="--prompts: the reference's field, copied when present (default "
                      "targets)")
  p.add_argument("--datasets", nargs="+",
                 help="T0 held-out datasets (e.g. super_glue/rte), every promptsource "
                      "template of each")
  p.add_argument("--data_dir", help="--datasets: original dataset files, or a world suite "
                                    "written by `data example` (DIR/t0_eval)")
  p.add_argument("--mapping", help="--datasets: JSON file pointing datasets at other files")
  p.add_argument("--max_examples", type=positive_int,
                 help="first N examples (of each dataset and template with --datasets)")
  p.add_argument("--decode", choices=kinds.DECODES,
                 help="greedy (default), sample (temperature, top-k, top-p, seed) or beam "
                      "(num_decodes beams, length penalty alpha)")
  p.add_argument("--num_decodes", type=positive_int,
                 help="beams (beam) or samples (sample) per example (default 1; beam: 4)")
  p.add_argument("--alpha", type=float,
                 help="beam: t5x's length penalty, scores divided by ((5+L)/6)^alpha "
                      "(default 0.6)")
  p.add_argument("--beam_rules", choices=kinds.BEAM_RULES,
                 help="beam: t5x's search (default) or Hugging Face's generate(num_beams, "
                      "length_penalty=alpha), sequence for sequence")
  p.add_argument("--temperature", type=float, help="sample: softmax temperature (default 1)")
  p.add_argument("--topk", type=nonnegative_int,
                 help="sample: keep the k most likely tokens (default 0: all)")
  p.add_argument("--topp", type=float,
                 help="sample: keep the smallest set of tokens of this probability "
                      "(default 1: all)")
  p.add_argument("--seed", type=nonnegative_int, help="sample: random seed (default 0)")
  p.add_argument("--max_decode_steps", type=positive_int,
                 help="tokens generated at most per prediction (default 64)")
  p.add_argument("--inputs_length", type=positive_int,
                 help="prompt tokens allowed (default 1024); a longer prompt is an error "
                      "naming its row")
  p.add_argument("--batch_size", type=positive_int, help="prompts per batch (default 8)")
  p.add_argument("--chunk_size", type=positive_int,
                 help="examples per chunk written (and resumed from) (default 64)")
  p.add_argument("--process_index", type=nonnegative_int,
                 help="this host's index (default: jax.process_index())")
  p.add_argument("--process_count", type=positive_int,
                 help="hosts sharing the examples (default: jax.process_count())")
  p.add_argument("--dtype", help="activation dtype (default float32)")
  p.set_defaults(func=_eval, eval_kind=kinds.INFER)


class _Parser(argparse.ArgumentParser):
  """argparse with a one-line error (`arch-objective plan: argument --length: ...`,
  exit 2) instead of the usage block; `--help` still shows the usage."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _integer(text: str, minimum: int, expected: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}") from None
  if value < minimum:
    raise argparse.ArgumentTypeError(f"expected {expected}, found {value}")
  return value


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  return _integer(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
  """argparse type: an integer >= 0."""
  return _integer(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
  """argparse type: a finite number > 0."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive number, found {text!r}") from None
  if not 0 < value < float("inf"):
    raise argparse.ArgumentTypeError(f"expected a positive number, found {text}")
  return value


_STUDY_PRESETS = ("smoke", "quick", "medium", "full")


def _study_fields() -> list[str]:
  """The field names of `study.run.StudyConfig`, read from its source (importing it
  would import JAX, which `--help` does not need)."""
  import ast
  import importlib.util
  origin = importlib.util.find_spec("arch_objective.study.run").origin
  with open(origin, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.ClassDef) and node.name == "StudyConfig":
      return [n.target.id for n in node.body
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
  return []


def _study_overrides() -> str:
  return (f"The preset (default: quick) is a gin file; override any of its values with "
          f"--gin.StudyConfig.NAME=VALUE (e.g. --gin.StudyConfig.pretrain_steps=50), NAME "
          f"one of: {', '.join(_study_fields())}. Resuming a study with other values warns "
          f"and names them.")


def _group_epilog(group: str) -> str:
  """The `example:` block of a command group's `--help` (`GROUP_EXAMPLES`)."""
  return f"example:\n  {EXAMPLES[GROUP_EXAMPLES[group]]}"


def _add_data_example_parser(data_sub):
  p = data_sub.add_parser(
      "example", help="write offline example data: the synthetic world's corpus, a "
                      "SentencePiece vocabulary and its held-out T0-Eval-style suite",
      epilog=_epilog("data example", (
          "Writes DIR/corpus.jsonl (a 'text' field per line), DIR/spm.model (trained on "
          "it, with 100 extra ids), DIR/t0_eval/ (the world's held-out families, for "
          "`eval t0 --data_dir DIR/t0_eval`) and DIR/README.txt; the same world as "
          "gin/local.gin and the study use.")), **_RAW)
  p.add_argument("--out", required=True, metavar="DIR",
                 help="a new or empty directory for the files")
  p.add_argument("--corpus_bytes", type=positive_int, default=None,
                 help="bytes of corpus text (default 4000000, as gin/local.gin's world)")
  p.add_argument("--vocab_pieces", type=positive_int, default=None,
                 help="SentencePiece pieces before the 100 extra ids (default 400, as "
                      "gin/local.gin's world)")
  p.add_argument("--eval_examples", type=positive_int, default=None,
                 help="examples per held-out family in t0_eval/ (default 300: all of the "
                      "world's validation split)")
  p.set_defaults(func=_data_example)


def _data_example(args) -> int:
  from arch_objective.training import example_data
  written = example_data.write_example_data(
      args.out, corpus_bytes=args.corpus_bytes, vocab_pieces=args.vocab_pieces,
      eval_examples=args.eval_examples)
  print(json.dumps(written, indent=2))
  return 0


def build_parser() -> argparse.ArgumentParser:
  from arch_objective.architectures import ARCHITECTURES, SIZES
  parser = _Parser(
      prog="arch-objective",
      description="Architectures and pretraining objectives for zero-shot generalisation.",
      epilog=_group_epilog("arch-objective"), **_RAW)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                              help="what to do (each has its own --help)")

  plan = sub.add_parser("plan", help="parameters and FLOPs of a model, as JSON (allocates nothing)",
                        epilog=_epilog("plan"), **_RAW)
  plan.add_argument("--arch", choices=ARCHITECTURES, help="architecture of the model")
  plan.add_argument("--size", choices=list(SIZES),
                    help="size preset of the model (gin/sizes/<size>.gin)")
  plan.add_argument("--model_dir", help="describe a checkpoint instead: config and lineage")
  plan.add_argument("--gin_file", action="append",
                    help="plan a run from its gin files (repeatable; --gin.NAME=VALUE binds)")
  plan.add_argument("--mesh", help="data=N,model=M (default: data=1, the run's MESH_MODEL)")
  plan.add_argument("--num_devices", type=positive_int, help="devices the mesh must cover")
  plan.add_argument("--device", help="device kind for the memory check: "
                    "tpu_v4, tpu_v5e, tpu_v5p, a100_40, a100_80, h100, h200, cpu")
  plan.add_argument("--device_memory_gib", type=positive_float, help="device memory for the check")
  plan.add_argument("--length", type=positive_int, default=626, help="decoder-only row length")
  plan.add_argument("--inputs_length", type=positive_int, default=512, help="encoder length (ED)")
  plan.add_argument("--targets_length", type=positive_int, default=114, help="decoder length (ED)")
  plan.set_defaults(func=_plan)

  data = sub.add_parser("data", help="inspect pretraining tasks; write example data",
                        epilog=_group_epilog("data"), **_RAW)
  data_sub = data.add_subparsers(dest="data_command", required=True,
                                 metavar="stats|show|example",
                                 help="what to do with the data (each has its own --help)")
  _add_data_example_parser(data_sub)
  for name, help_text in (("stats", "JSON statistics of a task's rows"),
                          ("show", "rows decoded with each token's role marked")):
    p = data_sub.add_parser(name, help=help_text, epilog=_epilog(f"data {name}"), **_RAW)
    p.add_argument("--task", required=True,
                   help="c4_<kind> or, with --corpus, local_<kind>; kinds: full_lm, "
                        "prefix_lm_decoder, prefix_lm_encoder_decoder, span_corruption")
    p.add_argument("--corpus", nargs="+", help="local text or JSONL files (globs allowed)")
    p.add_argument("--field", default="text", help="JSONL text field")
    p.add_argument("--layout", default="line", choices=["line", "paragraph"],
                   help="text files: one document per line, or blank-line separated")
    p.add_argument("--vocabulary", help="SentencePiece model (default: the T5 vocabulary on GCS)")
    p.add_argument("--arch", choices=ARCHITECTURES, help="reader (default: the task's)")
    p.add_argument("--length", type=positive_int, default=626, help="decoder length (paper: 626)")
    p.add_argument("--split", default="train",
                   help="split of the task to read (default: train)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the task's shuffling and span sampling (default 0)")
    p.add_argument("--num", type=positive_int, default=100 if name == "stats" else 2,
                   help="rows to read")
    p.add_argument("--tfds_data_dir", help="where c4/en is prepared (c4 tasks)")
    p.add_argument("--c4_version", default=C4_VERSION, help="c4/en version (paper: 2.2.0)")
    p.set_defaults(func=_data)

  for name, help_text in (("train", "train a model (gin-configured, resumes from MODEL_DIR)"),
                          ("evaluate", "evaluate the latest checkpoint of MODEL_DIR")):
    p = sub.add_parser(name, help=help_text, epilog=_epilog(name, _GIN_FLAGS), **_RAW)
    p.add_argument("--gin_file", action="append", required=True,
                   help="gin file (repeatable; searched in the repository's gin/ too)")
    p.add_argument("--coordinator_address", help="multi-host: coordinator host:port")
    p.add_argument("--num_processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process_id", type=int, help="multi-host: this process's index")
    p.add_argument("--coordinator_timeout", type=positive_float, metavar="SECONDS",
                   help="multi-host: how long to wait for the coordinator and the other "
                        "processes (default 300, or ARCH_OBJECTIVE_COORDINATOR_TIMEOUT)")
    p.set_defaults(func=_run_gin)

  evaluation = sub.add_parser("eval", help="zero-shot evaluation of a checkpoint",
                              epilog=_group_epilog("eval"), **_RAW)
  eval_sub = evaluation.add_subparsers(dest="eval_command", required=True,
                                       metavar="t0|harness",
                                       help="which evaluation (each has its own --help)")
  _add_eval_parsers(eval_sub, ARCHITECTURES)

  _add_infer_parser(sub, ARCHITECTURES)

  from arch_objective.convert import cli as convert_cli
  convert_cli.add_parser(sub, examples={name[len("convert "):]: text
                                        for name, text in EXAMPLES.items()
                                        if name.startswith("convert ")},
                         group_example=EXAMPLES[GROUP_EXAMPLES["convert"]])

  study = sub.add_parser("study", help="the laptop-scale study: the whole pipeline on a CPU",
                         epilog=_epilog("study", _study_overrides()), **_RAW)
  study.add_argument("--preset", default="quick", choices=list(_STUDY_PRESETS),
                     help="gin/experiments/study/<preset>.gin: smoke (minutes), quick (the "
                          "default), medium, full (hours); --gin.StudyConfig.NAME=VALUE "
                          "overrides its values")
  study.add_argument("--out", required=True, help="output directory (an existing one resumes)")
  study.add_argument("--nc_a", action=argparse.BooleanOptionalAction, default=None,
                     help="also run the NC-A adaptation (default: the preset's choice)")
  study.add_argument("--ul2", action=argparse.BooleanOptionalAction, default=None,
                     help="also pretrain, finetune and score ED:UL2 and ND:UL2 (UL2's "
                          "mixture of denoisers) with their contrasts (default: the "
                          "preset's choice, off)")
  study.add_argument("--widths", metavar="W1,W2,...",
                     help="run the study at each of these model widths (emb_dim; head and "
                          "MLP sizes scale with it) in DIR/width_W, and compare the paper's "
                          "contrasts across widths in DIR/scale.md and scale.png")
  study.set_defaults(func=_study)

  compare = sub.add_parser(
      "compare-studies", help="two finished studies (say medium and full) on the examples "
                              "both scored: each model's change and each contrast's, paired",
      epilog=_epilog("compare-studies"), **_RAW)
  compare.add_argument("before", help="a study folder (what `arch-objective study` wrote)")
  compare.add_argument("after", help="another study folder of the same world")
  compare.add_argument("--out", help="also write compare.md and compare.json here")
  compare.add_argument("--resamples", type=positive_int, default=1000,
                       help="paired bootstrap resamplings (default 1000)")
  compare.set_defaults(func=_compare_studies)

  smoke = sub.add_parser("smoke", help="the study's smoke preset: the whole pipeline, tiny, "
                                      "in about two minutes",
                         epilog=_epilog("smoke"), **_RAW)
  smoke.add_argument("--out", help="keep the smoke study here (default: a temporary directory)")
  smoke.set_defaults(func=_smoke)
  return parser


def main(argv=None) -> int:
  from arch_objective import host_memory
  try:
    host_memory.keep_freed_memory()
  except ValueError as e:              # a bad ARCH_OBJECTIVE_HOST_MEMORY
    print(f"arch-objective: {e}", file=sys.stderr)
    return 2
  argv = sys.argv[1:] if argv is None else list(argv)
  show_traceback = "--traceback" in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
  argv = [a for a in argv if a != "--traceback"]
  bindings, search_paths, rest = _split_gin_bindings(argv)
  args = build_parser().parse_args(rest)
  args.gin_bindings = bindings
  logs.show_on_stderr()
  try:
    if search_paths:
      from arch_objective.training import gin_utils
      gin_utils.set_extra_search_paths(search_paths)
    return args.func(args)
  except KeyboardInterrupt:
    print(f"{_command_name(args)}: interrupted.", file=sys.stderr)
    return 130
  except Exception as e:
    if not _user_error(e):
      raise
    if show_traceback:
      import traceback
      traceback.print_exc()
    print(f"{_command_name(args)}: {_one_line(e)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
