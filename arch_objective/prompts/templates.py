"""promptsource templates: load them, render examples into (inputs, targets, choices).

Prompt names are promptsource's template names sanitised as in its seqio task names
(every run of characters other than letters, digits, `_` and `.` becomes `_`):
'C1 or C2? premise, so/because…' -> 'C1_or_C2_premise_so_because_'.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from typing import Any, Mapping, Optional, Sequence

from arch_objective.errors import MissingDependency, UserError


def sanitize(name: str) -> str:
  return re.sub(r"[^\w\d\._]+", "_", name)


@dataclasses.dataclass(frozen=True)
class Rendered:
  """One example under one prompt. `gold` holds every index of `choices` that matches
  the target (empty when the template has no answer choices)."""
  inputs: str
  targets: str
  choices: tuple[str, ...]
  gold: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A promptsource template of one dataset."""
  dataset: str
  subset: Optional[str]
  name: str                   # sanitised
  template: Any = dataclasses.field(compare=False, repr=False)

  @property
  def original_name(self) -> str:
    return self.template.name

  @property
  def has_choices(self) -> bool:
    return bool(self.template.answer_choices)

  @property
  def original_task(self) -> bool:
    return bool(getattr(self.template.metadata, "original_task", False))

  def apply(self, example: Mapping[str, Any]) -> Optional[tuple[str, str]]:
    """`(inputs, targets)` of the example as T0's training tasks read it, or None when
    the template yields no example for it.

    As promptsource's seqio `apply_template` (which T0 trained with): the example's
    field names lose their hyphens first (`remove_hyphens`), the template is applied,
    and an output that is not one `inputs ||| targets` pair or has empty inputs is no
    example (None: T0 filters it out). The targets may be empty (T0 trains on them as
    '<NO LABEL>'; `mixture.NO_LABEL`).

    Raises ValueError naming the dataset, template and field when the example lacks a
    field the template reads (promptsource itself would render it as empty text).
    """
    parts = self._apply(remove_hyphens(example))[0]
    if len(parts) != 2 or not parts[0]:
      return None
    return parts[0], parts[1]

  def render(self, example: Mapping[str, Any]) -> Optional[Rendered]:
    """The rendered example with its answer choices, or None when the template yields
    no example for it or an empty target (nothing to score); see `apply`."""
    example = remove_hyphens(example)
    parts, choices = self._apply(example, with_choices=True)
    if len(parts) != 2 or not parts[0] or not parts[1]:
      return None
    inputs, targets = parts
    gold = tuple(i for i, c in enumerate(choices) if c == targets)
    return Rendered(inputs=inputs, targets=targets, choices=choices, gold=gold)

  def _apply(self, example: dict, with_choices: bool = False
             ) -> tuple[list[str], tuple[str, ...]]:
    """promptsource's `apply` (the parts between `|||`, stripped) and, if asked, the
    answer choices (stripped)."""
    missing = [f for f in _fields(self.template.jinja, self.template.answer_choices or "")
               if f not in example]
    if missing:
      raise UserError(f"{dataset_key(self.dataset, self.subset)} template {self.name!r}: the "
                      f"example lacks field(s) {missing} the template reads; it has "
                      f"{sorted(example)}.")
    try:
      parts = [p.strip() for p in self.template.apply(dict(example))]
      choices = (self.template.get_answer_choices_list(dict(example)) or []
                 if with_choices else [])
    except Exception as e:  # jinja's UndefinedError and friends
      missing = re.findall(r"'(\w+)' is undefined", str(e))
      field = f" field {missing[0]!r}" if missing else ""
      raise UserError(f"{dataset_key(self.dataset, self.subset)} template {self.name!r}: cannot "
                      f"render an example with fields {sorted(example)}{field}: {e}") from e
    return parts, tuple(c.strip() for c in choices)


def remove_hyphens(example: Mapping[str, Any]) -> dict[str, Any]:
  """The example with every `-` in its field names replaced by `_`, as promptsource's
  `utils.removeHyphen` does before T0 applies a template: jinja cannot name a field
  with a hyphen, so the templates read e.g. trec's `label-coarse` as `label_coarse`."""
  if not any("-" in k for k in example):
    return example if isinstance(example, dict) else dict(example)
  return {k.replace("-", "_"): v for k, v in example.items()}


@functools.lru_cache(maxsize=None)
def _fields(jinja_source: str, choices_source: str) -> tuple[str, ...]:
  """Example fields a template reads (its undeclared jinja variables)."""
  import jinja2.meta
  from promptsource.templates import env  # its filters (choice, most_frequent, ...)
  names = set()
  for source in (jinja_source, choices_source):
    names |= jinja2.meta.find_undeclared_variables(env.parse(source))
  return tuple(sorted(names - {"answer_choices"}))


def dataset_key(dataset: str, subset: Optional[str]) -> str:
  return f"{dataset}/{subset}" if subset else dataset


@functools.lru_cache(maxsize=None)
def _collection(dataset: str, subset: Optional[str]):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
      from promptsource import templates as promptsource_templates
      from promptsource.templates import DatasetTemplates
    except ImportError as e:
      raise MissingDependency("promptsource is not installed; `make install` installs it "
                              "(pip install --no-deps --ignore-requires-python promptsource==0.2.3 "
                              "plus jinja2 pyyaml pandas 'setuptools<82').") from e
    _compile_once(promptsource_templates.env)
    return DatasetTemplates(dataset, subset)


def _compile_once(env):
  """promptsource compiles a template's jinja source on every render (milliseconds each,
  the bulk of an MT-F input pipeline): hand back the template compiled the first time."""
  if getattr(env.from_string, "_compiles_once", False):
    return
  original, compiled = env.from_string, {}

  def from_string(source, *args, **kwargs):
    if args or kwargs or not isinstance(source, str):
      return original(source, *args, **kwargs)
    if source not in compiled:
      compiled[source] = original(source)
    return compiled[source]

  from_string._compiles_once = True
  env.from_string = from_string


def load_prompts(dataset: str, subset: Optional[str] = None,
                 names: Optional[Sequence[str]] = None) -> list[Prompt]:
  """The prompts of a dataset, all of them or the given (sanitised) names in order."""
  collection = _collection(dataset, subset)
  by_name = {sanitize(n): collection[n] for n in collection.all_template_names}
  if not by_name:
    raise UserError(f"promptsource has no templates for {dataset_key(dataset, subset)}.")
  if names is None:
    return [Prompt(dataset, subset, n, t) for n, t in sorted(by_name.items())]
  missing = [n for n in names if n not in by_name]
  if missing:
    raise UserError(f"{dataset_key(dataset, subset)}: prompt(s) {missing} not found; "
                    f"available: {sorted(by_name)}.")
  return [Prompt(dataset, subset, n, by_name[n]) for n in names]
