"""The `>>>` examples in `arch_objective`'s docstrings run as printed.

Each module's examples run with `doctest` (no option flags: the output must match as
printed) in the folder its prose assumes: `data.vocabularies` next to the T5 vocabulary
(`t5_spiece.model`, in ../shared/data/vocab), `data.sources` in a folder holding the files
its examples name (`a.txt` holding "one\\n\\ntwo\\n", and `data/{a,b1,b2,c}.txt`). A module
that gains examples must be listed here, in `MODULES` or in `SKIPPED` with the reason
(`test_every_module_with_examples_is_listed`).
"""
import doctest
import importlib
import pathlib

import pytest

from helpers import ROOT

# module -> the folder its examples run in: None (any), "t5_vocab" or "source_files".
MODULES = {
    "arch_objective.layouts": None,
    "arch_objective.testing": None,
    "arch_objective.evaluation.scoring.shapes": None,
    "arch_objective.data.sources": "source_files",
    "arch_objective.data.vocabularies": "t5_vocab",
    "arch_objective.data.world": None,
    "arch_objective.data.world.facts": None,
    "arch_objective.data.world.prompts": None,
    "arch_objective.study.scale": None,
}

# module -> why its examples are not run (an example that is wrong: fix it, then move the
# module to MODULES). None at present.
SKIPPED: dict = {}


def _source_files(folder: pathlib.Path) -> pathlib.Path:
  """The files `data.sources`' examples name."""
  (folder / "a.txt").write_text("one\n\ntwo\n", encoding="utf-8")
  (folder / "data").mkdir()
  for name in ("a", "b1", "b2", "c"):
    (folder / "data" / f"{name}.txt").write_text(f"{name}\n", encoding="utf-8")
  return folder


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_examples_of_a_module_run_as_printed(name, tmp_path, monkeypatch, request):
  where = MODULES[name]
  if where == "t5_vocab":
    folder = pathlib.Path(request.getfixturevalue("t5_vocab_path")).parent
  elif where == "source_files":
    folder = _source_files(tmp_path)
  else:
    folder = tmp_path
  monkeypatch.chdir(folder)
  module = importlib.import_module(name)
  runner = doctest.DocTestRunner(optionflags=0)
  report = []
  for test in doctest.DocTestFinder().find(module, name):
    runner.run(test, out=report.append)
  assert runner.tries > 0, f"{name} has no examples: take it off MODULES"
  assert runner.failures == 0, "".join(report)


def test_every_module_with_examples_is_listed():
  """A module whose docstrings hold `>>>` examples is run above or skipped with a reason."""
  found = set()
  for path in sorted((ROOT / "arch_objective").rglob("*.py")):
    if any(line.lstrip().startswith(">>> ") for line in path.read_text("utf-8").splitlines()):
      parts = path.relative_to(ROOT).with_suffix("").parts
      found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
  assert found == set(MODULES) | set(SKIPPED)
  assert not set(MODULES) & set(SKIPPED)
