"""The README's common commands run as printed, in order, offline, from a fresh folder.

A command whose comment line says what it needs (the Hugging Face Hub, GCS, a TPU) is
not run; every other one is, with `/tmp/` moved into the test's folder and
`.venv/bin/arch-objective` as this interpreter's `-m arch_objective.cli`.
"""
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_commands(section: str = "## Common commands") -> list[tuple[str, str]]:
  """(comment before it, command) of each command of the first bash block of `section`,
  continuation lines joined."""
  text = (ROOT / "README.md").read_text()
  start = text.index(section)
  block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
  commands, comment, current = [], "", ""
  for line in block.splitlines():
    if line.startswith("#"):
      comment = line
      continue
    current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
      commands.append((comment, current.strip()))
      current = ""
  return commands


def test_the_readme_lists_its_common_commands_with_what_they_need():
  commands = readme_commands()
  assert [c.split()[1:3] for _, c in commands] == [
      ["data", "example"], ["train", "--gin_file=models/non_causal_decoder.gin"],
      ["plan", "--gin_file=experiments/paper/nc_a.gin"], ["eval", "t0"],
      ["eval", "harness"], ["convert", "hf-out"]]
  needs = [c.split()[1:3] for comment, c in commands if "needs" in comment]
  assert needs == [["eval", "harness"]]


def test_the_readmes_common_commands_run_as_printed(tmp_path):
  ran = []
  for comment, command in readme_commands():
    if "needs" in comment:
      continue
    argv = shlex.split(command.replace("/tmp/", f"{tmp_path}/"))
    assert argv[0] == ".venv/bin/arch-objective", command
    out = subprocess.run([sys.executable, "-m", "arch_objective.cli", *argv[1:]],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, (command, out.stderr[-3000:])
    ran.append(argv[1])
  assert ran == ["data", "train", "plan", "eval", "convert"]
  assert (tmp_path / "example" / "spm.model").is_file()
  assert (tmp_path / "nd_mlm" / "checkpoints" / "20").is_dir()
  assert (tmp_path / "t0" / "results.json").is_file()
  assert (tmp_path / "nd_hf" / "config.json").is_file()
