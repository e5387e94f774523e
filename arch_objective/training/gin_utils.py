"""Gin wiring: the configurable names, search paths, parsing with strict checks.

Configurable names (what gin files bind):
  train                  arch_objective.training.train.train
  evaluate               arch_objective.training.evaluate.evaluate
  build_model            arch_objective.models.build_model
  DatasetConfig          arch_objective.training.data.DatasetConfig
  adafactor              arch_objective.training.optimizers.adafactor
  learning_rate_schedule arch_objective.training.optimizers.make_schedule
  eval_t0, eval_harness  arch_objective.evaluation.runs (registered when that module is
                         imported, as gin/runs/eval_*.gin do)
  local_batch_size, local_dataset, local_suite, local_harness_tasks
                         arch_objective.training.local (the local overlay, gin/local.gin)

The repository's `gin/` directory is on the search path whether the package is
installed editable (the source tree) or as a wheel (shipped as `arch_objective.gin_files`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
from typing import Optional, Sequence

import gin

from arch_objective import models
from arch_objective.training import data, optimizers

_REGISTERED = False


def register_configurables():
  global _REGISTERED
  if _REGISTERED:
    return
  from arch_objective.training import evaluate as evaluate_lib
  from arch_objective.training import local
  from arch_objective.training import train as train_lib
  with gin.unlock_config():
    gin.external_configurable(train_lib.train, "train")
    gin.external_configurable(evaluate_lib.evaluate, "evaluate")
    gin.external_configurable(models.build_model, "build_model")
    gin.external_configurable(data.DatasetConfig, "DatasetConfig")
    gin.external_configurable(optimizers.adafactor, "adafactor")
    gin.external_configurable(optimizers.make_schedule, "learning_rate_schedule")
    gin.external_configurable(local.local_batch_size, "local_batch_size")
    gin.external_configurable(local.local_dataset, "local_dataset")
    gin.external_configurable(local.local_suite, "local_suite")
    gin.external_configurable(local.local_harness_tasks, "local_harness_tasks")
  _REGISTERED = True


def gin_search_paths() -> list[str]:
  """The repository's gin/ (source tree) and the installed copy, in that order."""
  package = pathlib.Path(__file__).resolve().parents[1]
  candidates = (package.parent / "gin", package / "gin_files")
  return [str(p) for p in candidates if p.is_dir()]


def _locate(path: str) -> str:
  """A gin file as given, else under a search path; a clear error if neither."""
  if os.path.exists(path):
    return path
  for root in gin_search_paths():
    candidate = os.path.join(root, path)
    if os.path.exists(candidate):
      return candidate
  raise ValueError(f"gin file {path!r} not found in the working directory nor in "
                   f"{gin_search_paths()}.")


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
    todo.extend(_locate(p) for p in _INCLUDE.findall(text))
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


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (),
          search_paths: Optional[Sequence[str]] = None):
  """Parse gin files and `NAME=value` bindings; unknown names are errors.

  gin itself rejects bindings of unknown configurables; a binding of a macro that no
  file uses is rejected here (a typo would otherwise be silently ignored).
  """
  register_configurables()
  gin.clear_config()
  for path in (search_paths if search_paths is not None else gin_search_paths()):
    gin.add_config_file_search_path(path)
  files = [_locate(f) for f in gin_files]
  _check_binding_syntax(bindings)
  _check_macro_bindings(files, bindings)
  try:
    with _quiet_gin_search():
      gin.parse_config_files_and_bindings(files, list(bindings), skip_unknown=False)
  except SyntaxError as e:   # in a gin file (bindings were checked above)
    where = f"{e.filename}:{e.lineno}" if getattr(e, "filename", None) else "a gin file"
    raise ValueError(f"gin syntax error in {where}: {e.msg}") from None
  except (ValueError, KeyError) as e:
    required = re.search(r"([A-Za-z0-9_]+)/macro.value set to `%gin.REQUIRED`", str(e))
    if required:
      name = required.group(1)
      raise ValueError(f"gin macro {name} is required by the run file: bind it, e.g. "
                       f"--gin.{name}=...") from None
    unbound = re.search(r"No bindings specified for '([A-Za-z0-9_]+)/gin.macro'", str(e))
    if unbound:
      name = unbound.group(1)
      raise ValueError(f"gin macro {name} is used but never set: include the gin file that "
                       f"sets it or bind it, e.g. --gin.{name}=...") from None
    raise ValueError(f"gin configuration error: {str(e).splitlines()[0]}") from e


def _check_binding_syntax(bindings: Sequence[str]):
  """One line naming the binding whose value gin cannot read (`LENGTH=12a8`, an unquoted
  string such as `MODEL_DIR=runs/x`)."""
  for binding in bindings:
    try:
      for _ in gin.config_parser.ConfigParser(binding, gin.config.ParserDelegate(
          skip_unknown=True)):
        pass
    except SyntaxError as e:
      name, _, value = binding.partition("=")
      name, value = name.strip(), value.strip()
      hint = ""
      if value and value[0] not in "'\"[({%@":
        hint = (f" A string needs quotes inside the shell's: --gin.{name}=\"'{value}'\".")
      reason = (e.msg or "").strip().splitlines()[-1:] or ["unreadable"]
      raise ValueError(f"gin binding {binding!r}: the value is not a Python literal, a "
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
        raise ValueError(f"unknown gin macro {name!r} in binding {binding!r}: no gin file uses "
                         f"%{name}. Macros in use: {', '.join(used) or '(none)'}.")
