"""lm-eval's own command line, with our model available as `arch_objective`.

`arch-objective-lm-eval ARGS` (or `python -m arch_objective.evaluation.lm_eval_cli ARGS`)
registers `harness.ArchObjectiveLM` and then runs lm-eval 0.4's `lm_eval ARGS`
(`lm_eval.__main__.cli_evaluate`) unchanged: the same subcommands (`run`, the default,
`ls`, `validate`), options and output (`--output_path DIR` gets lm-eval's
`DIR/<model>/results_<time>.json`, <model> the `checkpoint` or `model_dir` model_arg
sanitized as lm-eval does: `/runs/ed_mlm` -> `__runs__ed_mlm`), and lm-eval's own models
(`hf`, ...) stay available:

  arch-objective-lm-eval --model arch_objective \\
      --model_args checkpoint=/runs/ed_mlm,truncation=paper --tasks boolq,copa \\
      --output_path /tmp/eai

model_args of `arch_objective` (`key=value`, comma- or space-separated; lm-eval reads
numbers as numbers):
  checkpoint      a model directory (`arch-objective train` or `convert`) or
                  `<dir>/checkpoints/<step>`, local or gs://; required
  model_dir       another name for checkpoint
  arch            read a causal decoder checkpoint as non_causal_decoder or back
  vocabulary      SentencePiece .model; default: the one the checkpoint records
  truncation      modern (default: the last tokens that fit) | paper (seqio's: the first
                  512 context and 114 continuation tokens)
  inputs_length   context (encoder) tokens; default 1024 (modern) or 512 (paper)
  targets_length  continuation (decoder) tokens; default 256 (modern) or 114 (paper)
  max_length      decoder-only row of context and continuation, modern mode; default 1280
  batch_tokens    tokens per forward batch; default 16384
  dtype           activation dtype; default float32
A bad model_arg (an unknown key, a missing model directory, a bad value) is one line on
stderr and exit status 2, before lm-eval reads its tasks or anything loads.
A task whose dataset is neither in the Hugging Face cache nor reachable on the Hub
(offline: HF_DATASETS_OFFLINE=1) is one line naming the dataset and how to read local
files instead, and exit status 2 (`hub_error_line`).
lm-eval's `--batch_size`, `--max_batch_size` and `--device` reach the model and are
ignored (batches are sized by batch_tokens; JAX picks the device). The paper's 31
EAI-Eval tasks are the group `eai_eval` in `harness.HARNESS_TASKS_DIR`: pass that folder
as `--include_path` and `--tasks eai_eval`.

Like `arch-objective eval`, it keeps JAX's persistent compilation cache
(`runs.use_compilation_cache`: `$ARCH_OBJECTIVE_COMPILATION_CACHE_DIR`, '' for none, else
`~/.cache/arch-objective/jax-cache`), so a second run of the same tasks and model shapes
reads its programs back instead of compiling them.

lm-eval's own `hf` backend scores a Hugging Face export of our encoder-decoder
(`arch-objective convert hf-out`, which carries its tokenizer) as `arch_objective` does
with its default truncation (modern) when given
`--model_args pretrained=EXPORT_DIR,` + `HF_EXPORT_MODEL_ARGS`:
  backend=seq2seq     AutoModelForSeq2SeqLM (the export is a T5ForConditionalGeneration)
  add_bos_token=False the T5 tokenizer adds no EOS to contexts (lm-eval passes it on as
                      add_special_tokens=False; continuations never get one)
  prefix_token_id=0   an empty context is one padding token, as our all-padding encoder
                      row (lm-eval's default there is EOS)
  max_length=1024     contexts keep their last 1024 tokens, our inputs_length
  dtype=float32       our activation dtype
loglikelihood requests (continuations of at most targets_length, 256, tokens) then agree
to float32 rounding, and so do loglikelihood_rolling ones whose text fits one window of
targets_length tokens. They still differ on generate_until (lm-eval's seq2seq backend
appends EOS to generation prompts whatever add_bos_token says) and on longer rolling texts
(its windows are max_length long and condition on the token before them; ours are
targets_length long with an empty encoder).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from typing import Optional, Sequence

PROG = "arch-objective-lm-eval"
HF_EXPORT_MODEL_ARGS = ("backend=seq2seq,add_bos_token=False,prefix_token_id=0,"
                        "max_length=1024,dtype=float32")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Run lm-eval's command line on `argv` (default: `sys.argv[1:]`) with `arch_objective`
  registered; returns the exit status (argparse's 2 for bad options, 0 after `--help`).
  A bad model_args option of `arch_objective` (`harness.ModelArgsError`, found before the
  model loads, those of the command line before lm-eval reads its tasks) is one line on
  stderr and status 2 too; other errors inside the run propagate as they do from
  `lm_eval`."""
  argv = list(sys.argv[1:] if argv is None else argv)
  from arch_objective import logs
  from arch_objective.evaluation import harness, runs
  logs.show_on_stderr()
  try:
    harness.register_with_lm_eval()
    from lm_eval import __main__ as lm_eval_main
  except ImportError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  try:
    _check_model_args(argv, harness)
  except harness.ModelArgsError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  folder = runs.use_compilation_cache(None)
  logging.getLogger("arch_objective.evaluation.lm_eval_cli").info(   # also run as __main__
      f"compilation cache: {folder}" if folder else "compilation cache: off")
  saved = sys.argv
  sys.argv = [PROG, *argv]          # lm-eval's parser reads (and edits) sys.argv
  try:
    with _model_named_by_its_checkpoint():
      lm_eval_main.cli_evaluate()
  except SystemExit as e:
    return _exit_status(e.code)
  except harness.ModelArgsError as e:    # e.g. model_args of a --config file
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  except ConnectionError as e:           # HF datasets: a dataset the Hub must give
    line = hub_error_line(e)
    if line is None:
      raise
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return 2
  finally:
    sys.argv = saved
  return 0


def _check_model_args(argv: list, harness) -> None:
  """`harness.check_model_args` on the model_args of `--model arch_objective` in `argv`,
  before lm-eval indexes its tasks. Anything lm-eval's parser refuses, and a `--config`
  file's options, are left to lm-eval's own run (the model checks them when it is built)."""
  from lm_eval._cli import HarnessCLI
  saved = sys.argv
  sys.argv = [PROG, *argv]          # a copy: lm-eval's parser edits it
  try:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
      args = HarnessCLI().parse_args()
  except SystemExit:
    return
  finally:
    sys.argv = saved
  if getattr(args, "model", None) == harness.MODEL_NAME and not getattr(args, "config", None):
    harness.check_model_args(getattr(args, "model_args", None) or {})


_HUB = re.compile(r"Couldn't reach '([^']+)' on the Hub")
_OFFLINE_SWITCHES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def hub_error_line(error: BaseException) -> Optional[str]:
  """One line for HF datasets' "Couldn't reach 'NAME' on the Hub" error (a task's
  dataset that is neither cached nor reachable): the dataset, that it needs the Hub,
  and how to use local files instead; None for any other error."""
  match = _HUB.search(str(error))
  if match is None:
    return None
  switches = [s for s in _OFFLINE_SWITCHES
              if os.environ.get(s, "").strip().lower() in ("1", "true", "yes", "on")]
  why = (f"{' and '.join(switches)} {'is' if len(switches) == 1 else 'are'} set"
         if switches else "the network or the Hub cannot be reached")
  return (f"dataset {match.group(1)!r} of the tasks is not in the local Hugging Face "
          f"datasets cache and needs the Hub ({why}). Run once with network access to "
          f"cache it (then HF_DATASETS_OFFLINE=1 reads the cache), or read local files: a "
          f"task YAML with `dataset_path: json` and `dataset_kwargs: {{data_files: ...}}` in "
          f"a folder given with --include_path (as the world tasks of `arch-objective eval "
          f"harness --gin_file=local.gin` are).")


_MODEL_ARGS_NAMING_THE_MODEL = ("checkpoint", "model_dir")


@contextlib.contextmanager
def _model_named_by_its_checkpoint():
  """lm-eval names the folder of `--output_path DIR` after the model's `pretrained=`
  (or `model=`, `path=`) model_arg, else a random word; ours is `checkpoint=` or
  `model_dir=`: results go to `DIR/<checkpoint, sanitized as lm-eval does>/`."""
  from lm_eval.loggers import evaluation_tracker
  tracker = evaluation_tracker.GeneralConfigTracker
  original = tracker.__dict__["_get_model_name"]

  def get_model_name(model_args):
    name = original.__func__(model_args)
    if name is not None:
      return name
    if isinstance(model_args, str):
      from lm_eval._cli.utils import key_val_to_dict
      try:
        model_args = key_val_to_dict(model_args)
      except Exception:  # lm-eval's own parser decides what it accepts
        return None
    if isinstance(model_args, dict):
      for key in _MODEL_ARGS_NAMING_THE_MODEL:
        if model_args.get(key):
          return str(model_args[key])
    return None

  tracker._get_model_name = staticmethod(get_model_name)
  try:
    yield
  finally:
    tracker._get_model_name = original


def _exit_status(code) -> int:
  if code is None:
    return 0
  if isinstance(code, int):
    return code
  print(code, file=sys.stderr)
  return 1


if __name__ == "__main__":
  sys.exit(main())
