"""Where gin files are read from: a shipped file's includes resolve against the shipped
gin folders, whatever the working directory holds and whatever Python can import (a
`runs/` folder left by `make run`, an installed package named `models`)."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import gin
import pytest

from arch_objective.training import gin_utils

GIN = pathlib.Path(__file__).resolve().parents[1] / "gin"
ROOT = GIN.parent
SHIPPED = sorted(str(p.relative_to(GIN)) for p in (GIN / "experiments").rglob("*.gin"))
INCLUDE_FOLDERS = ("runs", "models", "sizes", "objectives")
_REQUIRED = re.compile(r"^([A-Z_][A-Z0-9_]*)\s*=\s*%gin\.REQUIRED", re.M)


def _required(name: str) -> list[str]:
  """Bindings for the macros `name` and its includes leave to the user."""
  texts = gin_utils._texts([gin_utils._locate(name)])
  return [f"{macro}='/tmp/x'" for text in texts for macro in _REQUIRED.findall(text)]


def _config(name: str, overlay: bool) -> str:
  """The parsed configuration of a shipped file (with the local overlay or not)."""
  if name.startswith("experiments/study/"):
    from arch_objective.study import run
    run.register_gin()
  files = [name] + (["local.gin"] if overlay else [])
  gin_utils.parse(files, _required(name))
  return gin.config_str()


@pytest.fixture
def decoys(tmp_path, monkeypatch):
  """A working directory with a namesake of every folder the shipped files include from
  (each file in it unreadable as gin), and a regular package `runs` with a namesake of
  `runs/pretrain.gin` on the import path."""
  for folder in INCLUDE_FOLDERS:
    (tmp_path / folder).mkdir()
    for path in (GIN / folder).glob("*.gin"):
      (tmp_path / folder / path.name).write_text("this is not gin ((\n")
  package = tmp_path / "site" / "runs"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "pretrain.gin").write_text("this is not gin ((\n")
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  monkeypatch.syspath_prepend(str(tmp_path))       # the folders as namespace packages too
  monkeypatch.chdir(tmp_path)
  return tmp_path


def test_every_shipped_file_parses_the_same_beside_namesake_folders(decoys, monkeypatch):
  """Each experiment file, alone and with the local overlay, gives the same configuration
  from a folder full of namesakes as from the repository root with nothing in the way."""
  assert len(SHIPPED) >= 20
  shadowed = {(name, overlay): _config(name, overlay)
              for name in SHIPPED for overlay in (False, True)}
  monkeypatch.chdir(ROOT)
  for (name, overlay), text in shadowed.items():
    assert _config(name, overlay) == text, (name, overlay)
    assert "this is not gin" not in text


def test_a_file_given_on_the_command_line_is_the_one_in_the_working_directory(
    tmp_path, monkeypatch):
  """A user's own `local.gin` named on the command line is read, not the shipped one."""
  (tmp_path / "local.gin").write_text("include 'models/causal_decoder.gin'\nLOCAL_STEPS = 7\n")
  monkeypatch.chdir(tmp_path)
  assert gin_utils._locate("local.gin") == str(tmp_path / "local.gin")
  gin_utils.parse(["local.gin"])
  assert gin.query_parameter("LOCAL_STEPS/macro.value") == 7
  assert gin.query_parameter("ARCH/macro.value") == "causal_decoder"


def test_gin_search_path_and_readers_are_put_back():
  """Parsing leaves gin's own search path and file readers as they were."""
  from gin import config as gin_config
  before = list(gin_config._LOCATION_PREFIXES), list(gin_config._FILE_READERS)
  gin_utils.parse(["experiments/paper/cd_flm.gin"], ["MODEL_DIR='/tmp/x'"])
  assert (list(gin_config._LOCATION_PREFIXES), list(gin_config._FILE_READERS)) == before


@pytest.mark.slow
def test_plan_of_a_paper_file_from_the_root_after_make_run(tmp_path):
  """The command a user types from the repository root after `make run` wrote its study
  (a `runs/` folder there once made every paper file fail to parse)."""
  cwd = tmp_path / "clone"
  (cwd / "runs" / "study").mkdir(parents=True)
  code = ("import sys; from arch_objective import cli; "
          "sys.exit(cli.main(['plan', '--gin_file=experiments/paper/cd_flm.gin']))")
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, "-c", code], cwd=str(cwd), env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '"tokens_this_run": 168040595456' in done.stdout
