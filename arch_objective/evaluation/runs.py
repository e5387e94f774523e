"""Evaluation runs: T0-Eval, EAI-Eval and inference as gin configurables and as commands.

  eval_t0(checkpoint=..., ...)       T0-Eval of one checkpoint (`t0_eval`): results.json, .md
  eval_harness(checkpoint=..., ...)  EAI-Eval through lm-evaluation-harness (`harness`)
  infer(checkpoint=..., ...)         predictions as JSONL (`infer.infer`)

Each is a gin configurable of the same name (`gin/runs/eval_t0.gin`,
`gin/runs/eval_harness.gin`, `gin/runs/infer.gin` bind them; importing this module
registers them through `training.gin_utils.register`, as the files' `import` line
expects) and a command, `arch-objective eval t0|harness` and `arch-objective infer`:

  arch-objective eval t0 --checkpoint PATH [options]                  options only
  arch-objective eval t0 --gin_file FILE [--gin.NAME=VALUE ...] [options]
  arch-objective infer --gin_file runs/infer.gin --checkpoint PATH --prompts FILE

With --gin_file the gin files and bindings configure the run, and every option given on
the command line overrides them: it is bound after them, to the macro that feeds its
parameter (`--max_examples 8` sets MAX_EXAMPLES) or else to the parameter itself, so
`--checkpoint` also satisfies the run file's required CHECKPOINT_PATH.

Results go to `out_dir` (`--out`), else next to the checkpoint, local or remote:
`<model dir>/eval_t0/<step>/`, `<model dir>/eval_harness/<step>/` and
`<model dir>/infer/<step>/`. A gin run also writes its operative config there
(`config.gin`).

Every run keeps JAX's persistent compilation cache (`use_compilation_cache`): the programs
one evaluation compiles are read back by the next one of the same shapes, in any process.
`compilation_cache_dir` (gin: `eval_t0.compilation_cache_dir`) or the environment
variable ARCH_OBJECTIVE_COMPILATION_CACHE_DIR chooses the folder, '' turns the cache off;
by default it is `$XDG_CACHE_HOME/arch-objective/jax-cache` (`~/.cache/...` without
XDG_CACHE_HOME).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
from typing import Callable, Optional, Sequence

from arch_objective import models, paths
from arch_objective.errors import UserError, integer_at_least
from arch_objective.evaluation import loading, rank_classification, t0_eval
from arch_objective.training import checkpoints, gin_utils

from arch_objective.evaluation import infer as _infer
from arch_objective.evaluation.kinds import (EAI_EVAL as _EAI_EVAL, EVAL_HARNESS, EVAL_T0,
                                            HARNESS_BATCH_TOKENS as _HARNESS_BATCH_TOKENS,
                                            INFER)

CONFIG_FILE = "config.gin"
COMPILATION_CACHE_ENV = "ARCH_OBJECTIVE_COMPILATION_CACHE_DIR"


@dataclasses.dataclass
class EvalRun:
  results: dict          # what results.json (T0) or harness_results.json (EAI) holds
  files: list[str]       # the files written
  markdown: str          # the summary table


def _progress(message: str):
  """The default `log` of the runs: this module's logger at INFO (`arch_objective.logs`)."""
  logging.getLogger(__name__).info(message)


def default_out_dir(checkpoint: str, step: int, kind: str) -> str:
  """`<model dir>/<kind>/<step>` for a model directory or `.../checkpoints/<step>`."""
  directory, _ = checkpoints.split_checkpoint_path(checkpoint)
  model_dir = (paths.dirname(directory) if paths.basename(directory) == "checkpoints"
               else directory)
  return paths.join(model_dir, kind, str(step))


def _require_checkpoint(checkpoint, kind: str) -> str:
  if not checkpoint:
    raise UserError(f"{kind}: no checkpoint; give --checkpoint PATH (a MODEL_DIR or "
                    f"MODEL_DIR/checkpoints/<step>) or bind CHECKPOINT_PATH in the gin "
                    f"run (--gin.CHECKPOINT_PATH=\"'PATH'\").")
  return str(checkpoint)


def _check_max_examples(value):
  """`max_examples` of eval_t0: None (every example) or a positive number."""
  if value is not None and not integer_at_least(value, 1):
    raise UserError(f"{EVAL_T0}: --max_examples (gin: MAX_EXAMPLES, or "
                    f"{EVAL_T0}.max_examples) must be a positive number of examples per "
                    f"dataset, found {value!r}; leave it unset (None) for every example.")


def _check_integer(kind: str, param: str, value, minimum: int, note: str = ""):
  """An integer option of run `kind` (command line or gin) of at least `minimum`."""
  if not integer_at_least(value, minimum):
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise UserError(f"{kind}: {_flag(param)} (gin: {param.upper()}, or {kind}.{param}) "
                    f"must be {expected}{note}, found {value!r}.")


def _check_limit(value):
  """`limit` of eval_harness: None, a whole number of examples, or a fraction in (0, 1)."""
  if value is None:
    return
  number = not isinstance(value, bool) and isinstance(value, (int, float))
  if not number or not (0 < value < 1 or (value >= 1 and value == int(value))):
    raise UserError(f"{EVAL_HARNESS}: --limit (gin: LIMIT, or {EVAL_HARNESS}.limit) must be "
                    f"a number of examples >= 1 or a fraction between 0 and 1, found "
                    f"{f'{value:g}' if number else repr(value)}; leave it unset (None) for "
                    f"every example.")


def _names(value, what: str) -> Optional[list[str]]:
  """A list of names from a list, a tuple or one string (None stays None)."""
  if value is None:
    return None
  if isinstance(value, str):
    return [value]
  if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
    raise UserError(f"{what} must be a list of names, found {value!r}.")
  return list(value)


# ----------------------------------------------------------------------------------------
# The persistent compilation cache
# ----------------------------------------------------------------------------------------
def default_compilation_cache_dir() -> str:
  """`$ARCH_OBJECTIVE_COMPILATION_CACHE_DIR` when set ('' means off), else
  `$XDG_CACHE_HOME/arch-objective/jax-cache`, else `~/.cache/arch-objective/jax-cache`."""
  if COMPILATION_CACHE_ENV in os.environ:
    return os.environ[COMPILATION_CACHE_ENV]
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "arch-objective", "jax-cache")


def use_compilation_cache(directory: Optional[str] = None) -> Optional[str]:
  """Keep every program this process compiles from now on in JAX's persistent compilation
  cache at `directory` (None: `default_compilation_cache_dir()`; '': no cache), small CPU
  programs included (no minimum compile time or entry size). Returns the folder, or None
  when the cache is off. Later calls switch the folder or turn the cache off."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache
  if directory is None:
    directory = default_compilation_cache_dir()
  if not isinstance(directory, str):
    raise UserError(f"compilation_cache_dir must be a folder (a string; '' turns the cache "
                    f"off), found {directory!r}.")
  if directory and "://" not in directory:
    directory = os.path.abspath(os.path.expanduser(directory))
  enabled = bool(directory)
  if (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir) != (
      enabled, directory or None):
    compilation_cache.reset_cache()     # the cache binds its folder at the first compile
  jax.config.update("jax_enable_compilation_cache", enabled)
  jax.config.update("jax_compilation_cache_dir", directory or None)
  if not enabled:
    return None
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return directory


def _compilation_cache(directory: Optional[str], log: Callable[[str], None]):
  folder = use_compilation_cache(directory)
  log(f"compilation cache: {folder}" if folder else "compilation cache: off")


def _write_config(out_dir: str, config_text: Optional[Callable[[], str]]) -> list[str]:
  if config_text is None:
    return []
  path = paths.join(out_dir, CONFIG_FILE)
  paths.write_text(path, config_text())
  return [path]


def open_for_prompts(kind: str, checkpoint: str, *, arch: Optional[str], dtype: str,
                     vocabulary: Optional[str], allow_other_vocabulary: bool,
                     paradigm: Optional[str], option: str):
  """What an evaluation or `infer` reads prompts with: `(model, params, meta, step,
  vocab, vocabulary record, prompt prefix)` of `checkpoint` on the reference path
  (`loading.load_model`), its recorded vocabulary unless `vocabulary` is given (another
  one refused unless `allow_other_vocabulary`; `loading.check_vocabulary`), and the token
  ids every prompt starts with (UL2's `paradigm` token, `option` naming it in errors;
  none without one)."""
  from arch_objective.data import vocabularies
  from arch_objective.objectives import ul2
  model, params, meta, step = loading.load_model(checkpoint, arch, dtype=dtype)
  vocab_path = vocabulary or checkpoints.recorded_vocabulary(meta, checkpoint)
  if not vocab_path:
    raise UserError(f"checkpoint {checkpoint!r} records no vocabulary; give --vocabulary "
                    f"(a SentencePiece .model) or bind VOCABULARY.")
  vocab = vocabularies.SentencePieceVocabulary(vocab_path)
  used = loading.check_vocabulary(
      meta, vocab.path, checkpoint, allow_other=allow_other_vocabulary,
      option="--vocabulary" if vocabulary else "the vocabulary",
      allow_option=_ALLOW_OTHER_VOCABULARY.format(kind=kind),
      embedding_rows=model.config.vocab_size, vocab_size=vocab.vocab_size)
  prefix = ul2.paradigm_prefix(paradigm, vocab.vocab_size, vocab.extra_ids, option)
  return model, params, meta, step, vocab, used, prefix


def eval_t0(*, checkpoint: Optional[str] = None, out_dir: Optional[str] = None,
            arch: Optional[str] = None, datasets: Optional[Sequence[str]] = None,
            data_dir: Optional[str] = None, mapping: Optional[str] = None,
            max_examples: Optional[int] = None, normalize: bool = False,
            vocabulary: Optional[str] = None, inputs_length: int = 1024,
            targets_length: int = 256, bootstrap: int = 0, paper: bool = False,
            dtype: str = "float32", suite: Optional[Sequence] = None,
            compilation_cache_dir: Optional[str] = None,
            allow_other_vocabulary: bool = False, paradigm: Optional[str] = None,
            log: Callable[[str], None] = _progress,
            config_text: Optional[Callable[[], str]] = None) -> EvalRun:
  """T0-Eval of `checkpoint` (spec §4.1): every answer choice of every prompt scored by
  its summed log-likelihood (per token with `normalize`), accuracy per prompt, median
  over prompts, mean over `datasets` (None: the 11 of the suite).

  `arch` reads a causal decoder checkpoint as non-causal or back; `vocabulary` defaults
  to the checkpoint's; prompts keep their first `inputs_length` tokens and choices their
  first `targets_length`; `bootstrap` > 0 adds a 95% interval of the average;
  `paper` adds the paper's numbers to results.md; `dtype` is the activation dtype (the
  parameters stay as restored, float32); `suite` replaces the T0 suite by other held-out
  datasets (the local overlay's world families) and then `datasets` is ignored; a
  `data_dir` written by `arch-objective data example` (its `t0_eval/`, holding
  `suite.json`) is the world's held-out suite, `datasets` choosing among its families;
  `compilation_cache_dir` is the persistent compilation cache's folder (None: the
  default, '': off; see `use_compilation_cache`). A `vocabulary` other than the one the
  checkpoint was trained with (its recorded SHA-256) is refused unless
  `allow_other_vocabulary`; results.json records the vocabulary used (`vocabulary`:
  path, sha256, `same_as_checkpoint`). `paradigm` ([NLU], [NLG] or [S2S]: UL2's mode
  switching) starts every prompt with that paradigm token; results record it.
  """
  from arch_objective.objectives import ul2
  from arch_objective.training import example_data
  from arch_objective.prompts import datasets as datasets_lib
  checkpoint = _require_checkpoint(checkpoint, EVAL_T0)
  _check_max_examples(max_examples)
  _check_integer(EVAL_T0, "inputs_length", inputs_length, 1, " (prompt tokens kept)")
  _check_integer(EVAL_T0, "targets_length", targets_length, 1, " (choice tokens kept)")
  _check_integer(EVAL_T0, "bootstrap", bootstrap, 0, " (0: no interval)")
  option = f"{EVAL_T0}: --paradigm (gin: PARADIGM)"
  ul2.check_paradigm(paradigm, option)
  if suite is None and example_data.is_world_suite(data_dir):
    suite = example_data.read_world_suite(data_dir)
    if datasets:
      known = {f.name for f in suite}
      unknown = [d for d in _names(datasets, "datasets") if d not in known]
      if unknown:
        raise UserError(f"{EVAL_T0}: --datasets {unknown} are not in the world suite of "
                        f"--data_dir {data_dir}; it holds {', '.join(sorted(known))}.")
      suite = [f for f in suite if f.name in datasets]
    data_dir = None
  if suite is None:
    suite = t0_eval.select(_names(datasets, "datasets"))
  model, params, meta, step, vocab, used, prefix = open_for_prompts(
      EVAL_T0, checkpoint, arch=arch, dtype=dtype, vocabulary=vocabulary,
      allow_other_vocabulary=allow_other_vocabulary, paradigm=paradigm, option=option)
  _compilation_cache(compilation_cache_dir, log)
  scorer = rank_classification.RankScorer(model, params, inputs_length=inputs_length,
                                          targets_length=targets_length)
  out_dir = out_dir or default_out_dir(checkpoint, step, EVAL_T0)
  run = dict(checkpoint=checkpoint, step=step, arch=model.name,
             trained_as=meta.get("arch"), lineage=meta.get("lineage", []), vocabulary=used,
             **({"paradigm": paradigm} if paradigm else {}))
  results = t0_eval.evaluate_suite(
      scorer, vocab.encode, suite=suite, data_dir=data_dir,
      mapping=datasets_lib.load_mapping(mapping), max_examples=max_examples,
      normalize=normalize, bootstrap=bootstrap, log=log, partial_dir=out_dir, metadata=run,
      prompt_prefix=prefix)
  results.update(run)
  files = list(t0_eval.write(results, out_dir, paper=paper))
  files += _write_config(out_dir, config_text)
  return EvalRun(results, files, t0_eval.markdown(results, paper=paper))


def eval_harness(*, checkpoint: Optional[str] = None, out_dir: Optional[str] = None,
                 tasks: Sequence[str] = (_EAI_EVAL,), include_path: Optional[str] = None,
                 arch: Optional[str] = None, vocabulary: Optional[str] = None,
                 truncation: str = "modern", limit=None,
                 batch_tokens: int = _HARNESS_BATCH_TOKENS, dtype: str = "float32",
                 bootstrap_iters: int = 100000, compilation_cache_dir: Optional[str] = None,
                 allow_other_vocabulary: bool = False, paradigm: Optional[str] = None,
                 log: Callable[[str], None] = _progress,
                 config_text: Optional[Callable[[], str]] = None) -> EvalRun:
  """EAI-Eval of `checkpoint` (spec §4.2): lm-evaluation-harness `tasks` zero-shot
  (`eai_eval` = the paper's 31), summarised with `acc`; see `harness.run_harness` for
  `truncation` (paper | modern), `limit`, `batch_tokens`, `dtype` (activations) and
  `allow_other_vocabulary` and `paradigm` (as `eval_t0`'s), and `use_compilation_cache`
  for `compilation_cache_dir`."""
  from arch_objective.evaluation import harness
  checkpoint = _require_checkpoint(checkpoint, EVAL_HARNESS)
  _check_limit(limit)
  _check_integer(EVAL_HARNESS, "bootstrap_iters", bootstrap_iters, 0, " (0 skips them)")
  _check_integer(EVAL_HARNESS, "batch_tokens", batch_tokens, 1)
  names = _names(tasks, "tasks")
  if out_dir is None:
    _, step = checkpoints.load_meta(checkpoint)
    out_dir = default_out_dir(checkpoint, step, EVAL_HARNESS)
  log(f"EAI-Eval of {checkpoint}: {', '.join(names)} -> {out_dir}")
  _compilation_cache(compilation_cache_dir, log)
  results = harness.run_harness(checkpoint, names, include_path=include_path, arch=arch,
                                vocabulary=vocabulary, truncation=truncation, limit=limit,
                                out_dir=out_dir, batch_tokens=batch_tokens, dtype=dtype,
                                bootstrap_iters=bootstrap_iters,
                                allow_other_vocabulary=allow_other_vocabulary,
                                allow_option=_ALLOW_OTHER_VOCABULARY.format(kind=EVAL_HARNESS),
                                paradigm=paradigm)
  files = [paths.join(out_dir, harness.RESULTS_FILE), paths.join(out_dir, harness.SUMMARY_FILE)]
  files += _write_config(out_dir, config_text)
  return EvalRun(results, files, harness.summarize(results)["markdown"])


# How a user accepts a vocabulary other than the checkpoint's (`loading.check_vocabulary`).
_ALLOW_OTHER_VOCABULARY = ("--allow_other_vocabulary (gin: "
                           "--gin.{kind}.allow_other_vocabulary=True)")

RUNS = {EVAL_T0: eval_t0, EVAL_HARNESS: eval_harness, INFER: _infer.infer}
_NOT_BINDABLE = ("log", "config_text")


def parameters(kind: str) -> list[str]:
  """The gin-bindable parameters of an evaluation run."""
  return [p for p in inspect.signature(RUNS[kind]).parameters if p not in _NOT_BINDABLE]


gin_utils.register(RUNS, denylist=_NOT_BINDABLE)


# ----------------------------------------------------------------------------------------
# Gin: which run the files configure, its bound values, `plan`
# ----------------------------------------------------------------------------------------
def configured_run(kind: Optional[str] = None) -> Optional[str]:
  """The evaluation run the parsed gin config binds (`kind` only, if given), or None."""
  kinds = [kind] if kind else list(RUNS)
  for k in kinds:
    if any(gin_utils.bound(k, p) != (None, None) for p in parameters(k)):
      return k
  return None


def bound_values(kind: str) -> dict:
  """`{param: value}` of every bound parameter of `kind` (macros resolved)."""
  return gin_utils.bound_values(kind, parameters(kind))


def _option_bindings(kind: str, gin_files: Sequence[str], bindings: Sequence[str],
                     given: dict) -> tuple[list[str], dict[str, str]]:
  """Gin bindings of the options given on the command line (`MACRO = value` where the
  files feed the parameter from a macro, else `kind.param = value`), and which
  parameter each macro feeds."""
  from arch_objective.training import plan
  plan.parse_with_placeholders(gin_files, bindings)
  if configured_run(kind) is None:
    experiment = f"experiments/paper/{kind}.gin"
    example = (f", e.g. {experiment}" if any(
        os.path.isfile(os.path.join(root, experiment))
        for root in gin_utils.gin_search_paths()) else "")
    raise UserError(f"the gin files {list(gin_files)} configure no {kind} run (no "
                    f"{kind}.* binding); include 'runs/{kind}.gin' or an experiment that "
                    f"does{example}.")
  return gin_utils.option_bindings(kind, parameters(kind), given)


def run_from_gin(kind: str, gin_files: Sequence[str], bindings: Sequence[str] = (),
                 given: Optional[dict] = None,
                 log: Callable[[str], None] = _progress) -> EvalRun:
  """Run `kind` as the gin files and bindings configure it; `given` ({param: value},
  the command-line options) is bound last, so it wins, and the operative config that
  lands next to the results records it."""
  import gin
  extra, feeds = _option_bindings(kind, gin_files, bindings, dict(given or {}))
  try:
    gin_utils.parse(gin_files, list(bindings) + extra)
  except ValueError as e:
    required = re.search(r"gin macro (\w+) is required", str(e))
    if required and required.group(1) in feeds:
      raise UserError(f"{e} (or give {_flag(feeds[required.group(1)])})") from None
    raise
  return gin.get_configurable(kind)(log=log, config_text=gin.operative_config_str)


def plan_eval(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> Optional[dict]:
  """`arch-objective plan` of an evaluation run (None if the files configure none): the
  settings, and the model, step and lineage of the checkpoint if one is set."""
  from arch_objective.training import plan
  unset = plan.parse_with_placeholders(gin_files, bindings)
  kind = configured_run()
  if kind is None:
    return None
  settings = bound_values(kind)
  report = {"gin_files": list(gin_files), "run": kind, "settings": settings,
            "unset_macros": unset, "problems": [],
            "note": "an evaluation run: no training budget, mesh or memory estimate."}
  checkpoint = settings.get("checkpoint")
  if not checkpoint:
    report["note"] += (" Bind CHECKPOINT_PATH (e.g. --gin.CHECKPOINT_PATH=\"'gs://b/run'\") "
                       "to see the model it evaluates.")
    return report
  try:
    report.update(describe_checkpoint(str(checkpoint), settings.get("arch")))
  except (ValueError, OSError) as e:
    report["problems"].append(str(e))
  return report


def describe_checkpoint(checkpoint: str, arch: Optional[str] = None) -> dict:
  """Architecture, parameter count, step and lineage of a checkpoint (reads its meta
  only)."""
  model, _, meta, step = checkpoints.open_model_dir(checkpoint, arch=arch, read_params=False)
  return {"checkpoint": checkpoint, "arch": model.name, "trained_as": meta.get("arch"),
          "params": models.count_params(model), "step": step, "task": meta.get("task"),
          "vocabulary": meta.get("vocabulary"), "lineage": meta.get("lineage", [])}


# The command-line option of a parameter where it is not `--<param>` (cli.py's parsers).
_FLAGS = {"out_dir": "--out"}


def _flag(param: str) -> str:
  return _FLAGS.get(param, f"--{param}")
