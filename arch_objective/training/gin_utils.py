"""Gin wiring: the configurable names, search paths, parsing with strict checks.

Configurable names (what gin files bind):
  train                  arch_objective.training.train.train
  evaluate               arch_objective.training.evaluate.evaluate
  build_model            arch_objective.models.build_model
  DatasetConfig          arch_objective.training.data.DatasetConfig
  C4, LocalCorpus, PromptedDatasets, corpus_source
                         arch_objective.training.sources (`DatasetConfig.source`)
  adafactor              arch_objective.training.optimizers.adafactor
  learning_rate_schedule arch_objective.training.optimizers.make_schedule
  eval_t0, eval_harness  arch_objective.evaluation.runs (which hands them to `register`
                         when it is imported, as gin/runs/eval_*.gin do: the training
                         layer does not import evaluation)
  local_batch_size, local_dataset, local_suite, local_harness_tasks
                         arch_objective.training.local (the local overlay, gin/local.gin)

`register` is the one place configurables are made bindable; `bound`, `bound_values` and
`option_bindings` read a parsed config back (which macro feeds a parameter, what it holds)
and turn command-line options into the bindings that override it.

The repository's `gin/` directory is on the search path whether the package is
installed editable (the source tree) or as a wheel (shipped as `arch_objective.gin_files`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import tokenize
from typing import Any, Callable, Mapping, Optional, Sequence

import gin

from arch_objective import models
from arch_objective.errors import UserError, integer_at_least
from arch_objective.training import data, optimizers, sources

_REGISTERED: dict[str, Callable] = {}


def register(configurables: Mapping[str, Callable], denylist: Sequence[str] = ()):
  """Make each `{name: function or class}` bindable from gin as `name` (its parameters
  but those of `denylist`). Idempotent; a name already taken by something else is an
  error naming both."""
  with gin.unlock_config():
    for name, fn in configurables.items():
      if name in _REGISTERED:
        if _REGISTERED[name] is not fn:
          raise UserError(f"gin configurable {name!r} is already {_REGISTERED[name]!r}; "
                          f"cannot register {fn!r} under that name.")
        continue
      gin.external_configurable(fn, name, denylist=list(denylist))
      _REGISTERED[name] = fn


def register_configurables():
  """The training layer's configurables (the module docstring's table)."""
  from arch_objective.training import evaluate as evaluate_lib
  from arch_objective.training import local
  from arch_objective.training import train as train_lib
  register({
      "train": train_lib.train, "evaluate": evaluate_lib.evaluate,
      "build_model": models.build_model, "DatasetConfig": data.DatasetConfig,
      "C4": sources.C4, "LocalCorpus": sources.LocalCorpus,
      "PromptedDatasets": sources.PromptedDatasets, "corpus_source": sources.corpus_source,
      "adafactor": optimizers.adafactor, "learning_rate_schedule": optimizers.make_schedule,
      "local_batch_size": local.local_batch_size, "local_dataset": local.local_dataset,
      "local_suite": local.local_suite, "local_harness_tasks": local.local_harness_tasks})


def bound(configurable: str, param: str) -> tuple[Any, Optional[str]]:
  """(bound value, macro name or None) of `configurable.param` in the parsed config;
  (None, None) if unbound, (None, macro) if it names a macro that holds nothing."""
  try:
    value = gin.query_parameter(f"{configurable}.{param}")
  except ValueError:
    return None, None
  text = str(value)
  if not text.startswith("%"):
    return value, None
  macro = text[1:]
  try:
    return gin.query_parameter(f"{macro}/macro.value"), macro
  except ValueError:
    return None, macro


def bound_values(configurable: str, params: Sequence[str]) -> dict:
  """`{param: value}` of every bound parameter among `params` (macros resolved)."""
  values = {}
  for param in params:
    value, macro = bound(configurable, param)
    if value is not None or macro is not None:
      values[param] = value
  return values


def option_bindings(configurable: str, params: Sequence[str], given: Mapping[str, Any]
                    ) -> tuple[list[str], dict[str, str]]:
  """The bindings that set `given` (`{param: value}`, e.g. command-line options) over
  the parsed config: `MACRO = value` where the config feeds the parameter from a macro
  (so a file's required macro is satisfied too), else `configurable.param = value`; and
  `{macro: param}` of the macros that feed `params`."""
  feeds = {}
  for param in params:
    macro = bound(configurable, param)[1]
    if macro:
      feeds[macro] = param
  macros = {p: m for m, p in feeds.items()}
  out = [f"{macros.get(p) or configurable + '.' + p} = {value!r}" for p, value in given.items()]
  return out, feeds


def gin_search_paths() -> list[str]:
  """The repository's gin/ (source tree) and the installed copy, in that order."""
  package = pathlib.Path(__file__).resolve().parents[1]
  candidates = (package.parent / "gin", package / "gin_files")
  return [str(p) for p in candidates if p.is_dir()]


_SEARCH_PATHS: Optional[list[str]] = None   # of the config being parsed (see `parse`)


def _locate(path: str, roots: Optional[Sequence[str]] = None, include: bool = False) -> str:
  """A gin file given on the command line: as given, else under a search path. An
  included file (`include: True`): under a search path first, then as given, which is
  the order `_gin_reading` makes gin read includes in, so a `runs/` or `models/` folder
  in the working directory cannot shadow the shipped files. A clear error if neither."""
  if roots is None:
    roots = _SEARCH_PATHS if _SEARCH_PATHS is not None else gin_search_paths()
  candidates = [os.path.join(root, path) for root in roots]
  candidates = candidates + [path] if include else [path] + candidates
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)   # gin then reads this file, not a namesake
  raise UserError(f"gin file {path!r} not found in the working directory nor in "
                  f"{list(roots)}.")


# ---------------------------------------------------------------------------
# t5x's names
# ---------------------------------------------------------------------------
# t5x macro -> the macro these files use for it
T5X_RENAMED = {"RANDOM_SEED": "SEED"}


def translate_t5x_bindings(bindings: Sequence[str]) -> tuple[list[str], Optional[dict]]:
  """(bindings in this codebase's names, t5x's TASK_FEATURE_LENGTHS if bound).

  `RANDOM_SEED=s` binds SEED; `USE_CACHED_TASKS=False` is accepted (tasks are read on
  the fly) and `True` refused; `TASK_FEATURE_LENGTHS={...}` is returned so that
  `lengths_bindings` can set the lengths these files use."""
  out, lengths = [], None
  for binding in bindings:
    match = _MACRO_BINDING.match(binding)
    name = match.group(1) if match else None
    value = binding.partition("=")[2].strip()
    if name in T5X_RENAMED:
      out.append(f"{T5X_RENAMED[name]}={value}")
    elif name == "USE_CACHED_TASKS":
      if _literal(binding, value) is not False:
        raise UserError(f"gin binding {binding!r}: tasks are read and preprocessed on the "
                        f"fly, there is no seqio cache to read; bind USE_CACHED_TASKS=False "
                        f"or leave it out.")
    elif name == "TASK_FEATURE_LENGTHS":
      lengths = _check_feature_lengths(_literal(binding, value), binding)
    else:
      out.append(binding)
  return out, lengths


def _literal(binding: str, value: str):
  import ast
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    raise UserError(f"gin binding {binding!r}: expected a Python literal, found "
                    f"{value!r}.") from None


def _check_feature_lengths(lengths, where: str) -> dict:
  if (not isinstance(lengths, dict) or not lengths
      or not set(lengths) <= {"inputs", "targets"}
      or not all(integer_at_least(v, 1) for v in lengths.values())):
    raise UserError(f"{where}: TASK_FEATURE_LENGTHS must be a dict of positive integers "
                    f"with keys 'inputs' and/or 'targets' (t5x's task feature lengths, "
                    f"e.g. {{'inputs': 512, 'targets': 114}}), found {lengths!r}.")
  return dict(lengths)


_FEATURE_LENGTHS_LINE = re.compile(r"^\s*TASK_FEATURE_LENGTHS\s*=\s*(\{[^}]*\})", re.M)


def _file_feature_lengths(files: Sequence[str]) -> Optional[dict]:
  """TASK_FEATURE_LENGTHS as a t5x gin file sets it (the last one wins), or None."""
  found = None
  for text in reversed(_texts(files)):
    for value in _FEATURE_LENGTHS_LINE.findall(text):
      found = _check_feature_lengths(_literal(f"TASK_FEATURE_LENGTHS = {value}", value),
                                     "TASK_FEATURE_LENGTHS in a gin file")
  return found


def _macro(name: str, default=None):
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return default


def lengths_bindings(lengths: dict, files: Sequence[str]) -> list[str]:
  """The bindings of this codebase's length macros that give t5x's task feature lengths
  `lengths` for the run the parsed config describes (its task and ARCH):

    prompted tasks (MT-F, T0-Eval)   INPUTS_LENGTH, TARGETS_LENGTH
    span corruption                  LENGTH = inputs + targets, which must be a pair the
                                     objective produces (512 + 114 = 626)
    full LM                          LENGTH = targets
    prefix LM                        LENGTH = inputs, the chunk split at a random point
                                     (t5's prefix_lm); targets >= inputs - 1 holds the rest
  (the lengths `tasks.seqio_tasks`' tasks take from `get_dataset`'s sequence_length).
  """
  from arch_objective import architectures
  from arch_objective.objectives import pipeline
  used = set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)", "\n".join(_texts(files))))
  inputs, targets = lengths.get("inputs"), lengths.get("targets")
  where = f"TASK_FEATURE_LENGTHS={lengths!r}"
  if "INPUTS_LENGTH" in used and "LENGTH" not in used:
    if inputs is None or targets is None:
      raise UserError(f"{where}: a prompted run needs both 'inputs' and 'targets'.")
    return [f"INPUTS_LENGTH={inputs}", f"TARGETS_LENGTH={targets}"]
  if "LENGTH" not in used:
    raise UserError(f"{where}: these gin files set no sequence length (no %LENGTH or "
                    f"%INPUTS_LENGTH); drop TASK_FEATURE_LENGTHS.")
  task = str(_macro("MIXTURE_OR_TASK_NAME", ""))
  arch = _macro("ARCH")
  if task.endswith("span_corruption"):
    if inputs is None or targets is None:
      raise UserError(f"{where}: span corruption needs 'inputs' and 'targets'.")
    length = inputs + targets
    if pipeline.mlm_lengths(length) != (inputs, targets):
      raise UserError(f"{where}: span corruption of {length}-token chunks gives inputs "
                      f"{pipeline.mlm_lengths(length)[0]} and targets "
                      f"{pipeline.mlm_lengths(length)[1]}; use those (the paper's are "
                      f"{{'inputs': 512, 'targets': 114}}) or bind LENGTH directly.")
  elif task.endswith("_ul2"):
    if inputs is None or targets is None:
      raise UserError(f"{where}: UL2 needs 'inputs' and 'targets'.")
    length = inputs + targets
    if pipeline.task_feature_lengths(pipeline.UL2, length) != {"inputs": inputs,
                                                                "targets": targets}:
      raise UserError(f"{where}: UL2 at {length} tokens per row reads inputs and targets "
                      f"of {pipeline.task_feature_lengths(pipeline.UL2, length)}; use those "
                      f"or bind LENGTH directly.")
  elif task.endswith("full_lm"):
    if inputs is not None or targets is None:
      raise UserError(f"{where}: the full LM has 'targets' only (t5x's decoder-only "
                      f"feature lengths, e.g. {{'targets': 626}}).")
    length = targets
  elif "prefix_lm" in task:
    if inputs is None or targets is None or targets < inputs - 1:
      raise UserError(f"{where}: the prefix LM splits chunks of 'inputs' tokens at a random "
                      f"point, so 'targets' must hold any split's rest (>= inputs - 1), as "
                      f"the seqio tasks (paper: {{'inputs': 626, 'targets': 626}}).")
    length = inputs
  else:
    raise UserError(f"{where}: task {task!r} has no known feature lengths; bind LENGTH "
                    f"(the decoder length) directly.")
  return [f"LENGTH={length}"]


_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.M)


def _texts(files: Sequence[str]) -> list[str]:
  """The text of gin files and everything they include."""
  texts, seen, todo = [], set(), list(files)
  while todo:
    path = todo.pop()
    if path in seen:
      continue
    seen.add(path)
    with open(path) as f:
      text = f.read()
    texts.append(text)
    todo.extend(_locate(p, include=True) for p in _INCLUDE.findall(text))
  return texts


class _GinSearchNoise(logging.Filter):
  """Drops gin's "Path not found" line: gin logs it at ERROR level for each search path
  it tries before the one that holds an included file. A file found nowhere still fails:
  `_locate` raises for it before gin parses anything."""

  def filter(self, record: logging.LogRecord) -> bool:
    from_gin = record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
    return not (from_gin and record.getMessage().startswith("Path not found: "))


@contextlib.contextmanager
def _quiet_gin_search():
  root, noise = logging.getLogger(), _GinSearchNoise()
  root.addFilter(noise)
  try:
    yield
  finally:
    root.removeFilter(noise)


_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


_EXTRA_SEARCH_PATHS: list[str] = []


def set_extra_search_paths(paths: Sequence[str]):
  """t5x's `--gin_search_paths`: directories searched for gin files (and their
  includes) before the repository's gin/, by every later `parse`."""
  for path in paths:
    if not os.path.isdir(path):
      raise UserError(f"--gin_search_paths: {path!r} is not a directory.")
  _EXTRA_SEARCH_PATHS[:] = [os.path.abspath(p) for p in paths]


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (),
          search_paths: Optional[Sequence[str]] = None,
          extra_search_paths: Optional[Sequence[str]] = None):
  """Parse gin files and `NAME=value` bindings; unknown names are errors.

  gin itself rejects bindings of unknown configurables; a binding of a macro that no
  file uses is rejected here (a typo would otherwise be silently ignored). t5x's names
  are translated first (`translate_t5x_bindings`). `extra_search_paths` (t5x's
  `--gin_search_paths`) are searched before the repository's gin/ directory.
  """
  register_configurables()
  if extra_search_paths is None:
    extra_search_paths = _EXTRA_SEARCH_PATHS
  roots = list(extra_search_paths) + list(
      search_paths if search_paths is not None else gin_search_paths())
  for path in extra_search_paths:
    if not os.path.isdir(path):
      raise UserError(f"--gin_search_paths: {path!r} is not a directory.")
  global _SEARCH_PATHS
  _SEARCH_PATHS = roots
  files = [_locate(f, roots) for f in gin_files]
  _check_binding_syntax(bindings)
  bindings, feature_lengths = translate_t5x_bindings(bindings)
  if feature_lengths is None:
    feature_lengths = _file_feature_lengths(files)
  if feature_lengths is not None:
    _parse(files, bindings, roots)
    bindings = list(bindings) + lengths_bindings(feature_lengths, files)
  _parse(files, bindings, roots)


def _exists_as_resource(path: str) -> bool:
  """gin's Python-package reader's existence check (`include 'pkg.sub/file.gin'`), False
  instead of an error where the head of `path` is no regular package (gin's own check
  raises a TypeError for a namespace package such as a bare `runs/` folder)."""
  from gin import resource_reader
  try:
    return resource_reader.system_path_file_exists(path)
  except Exception:  # pylint: disable=broad-except
    return False


@contextlib.contextmanager
def _gin_reading(roots: Sequence[str]):
  """While gin parses: it looks for an included file under `roots` first, then relative
  to the working directory, and reads it as a plain file before trying it as a Python
  package's resource. gin's default order tries the working directory first and, for
  each place, the package reader, so a `runs/` folder in the working directory (the
  namespace package `runs`) would shadow `include 'runs/pretrain.gin'` or fail it.
  gin's search path and readers are put back afterwards."""
  from gin import config as gin_config
  from gin import resource_reader
  saved = list(gin_config._LOCATION_PREFIXES), list(gin_config._FILE_READERS)
  gin_config._LOCATION_PREFIXES[:] = list(roots) + [""]
  gin_config._FILE_READERS[:] = [
      (reader, check) for reader, check in saved[1]
      if reader is not resource_reader.system_path_reader] + [
          (resource_reader.system_path_reader, _exists_as_resource)]
  try:
    yield
  finally:
    gin_config._LOCATION_PREFIXES[:], gin_config._FILE_READERS[:] = saved


def _parse(files: Sequence[str], bindings: Sequence[str], roots: Sequence[str]):
  gin.clear_config()
  _check_macro_bindings(files, bindings)
  try:
    with _quiet_gin_search(), _gin_reading(roots):
      gin.parse_config_files_and_bindings(files, list(bindings), skip_unknown=False)
  except SyntaxError as e:   # in a gin file (bindings were checked above)
    where = f"{e.filename}:{e.lineno}" if getattr(e, "filename", None) else "a gin file"
    raise UserError(f"gin syntax error in {where}: {e.msg}") from None
  except tokenize.TokenError as e:    # a bracket left open at the end of a file
    raise UserError(f"gin syntax error in one of {list(files)}: {e.args[0]} (a bracket "
                    f"or string left open).") from None
  except (ValueError, KeyError) as e:
    required = re.search(r"([A-Za-z0-9_]+)/macro.value set to `%gin.REQUIRED`", str(e))
    if required:
      name = required.group(1)
      raise UserError(f"gin macro {name} is required by the run file: bind it, e.g. "
                      f"--gin.{name}=...") from None
    unbound = re.search(r"No bindings specified for '([A-Za-z0-9_]+)/gin.macro'", str(e))
    if unbound:
      name = unbound.group(1)
      raise UserError(f"gin macro {name} is used but never set: include the gin file that "
                      f"sets it or bind it, e.g. --gin.{name}=...") from None
    raise UserError(f"gin configuration error: {str(e).splitlines()[0]}") from e


def _check_binding_syntax(bindings: Sequence[str]):
  """One line naming the binding whose value gin cannot read (`LENGTH=12a8`, an unquoted
  string such as `MODEL_DIR=runs/x`)."""
  for binding in bindings:
    try:
      for _ in gin.config_parser.ConfigParser(binding, gin.config.ParserDelegate(
          skip_unknown=True)):
        pass
    except tokenize.TokenError as e:      # an unclosed bracket: `TRAIN_STEPS=(`
      raise UserError(f"gin binding {binding!r}: the value is not a Python literal, a "
                      f"%MACRO or an @reference ({e.args[0]}).") from None
    except SyntaxError as e:
      name, _, value = binding.partition("=")
      name, value = name.strip(), value.strip()
      hint = ""
      if value and value[0] not in "'\"[({%@":
        hint = (f" A string needs quotes inside the shell's: --gin.{name}=\"'{value}'\".")
      reason = (e.msg or "").strip().splitlines()[-1:] or ["unreadable"]
      raise UserError(f"gin binding {binding!r}: the value is not a Python literal, a "
                      f"%MACRO or an @reference ({reason[0].strip()}).{hint}") from None


def _check_macro_bindings(files: Sequence[str], bindings: Sequence[str]):
  """Reject a binding of a macro that no file uses (a typo gin would silently accept)."""
  config = "\n".join(_texts(files))
  used = sorted(set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)", config)))
  for binding in bindings:
    match = _MACRO_BINDING.match(binding)
    if match and "." not in match.group(1) and "/" not in match.group(1):
      name = match.group(1)
      if name not in used:
        raise UserError(f"unknown gin macro {name!r} in binding {binding!r}: no gin file uses "
                        f"%{name}. Macros in use: {', '.join(used) or '(none)'}.")
