"""Every command printed in the README and under docs/ runs as printed, offline, on one CPU.

The pages are read in CHAINS. A chain runs its pages' commands (```bash and ```python
blocks) in order in one fresh folder, so a page reads what the page before wrote (the train
guide's `/tmp/nd_mlm` feeds the MT-F guide), with `/tmp/` moved into that folder,
`.venv/bin/NAME` as the console script NAME beside this interpreter and the Hugging Face
Hub switched off. A command is not run when the comment above it starts with `needs`
(the Hub, GCS, a TPU, files the repository cannot ship): `NEEDS` counts them per page, so
a new one is a decision. The two `make` commands are the Makefile's (CI runs `make test`;
`make run` is the study command the results chain runs), and `SHRINK` lists the commands
that run smaller here than printed, and how.
"""
import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
pytestmark = pytest.mark.slow  # trains, evaluates and converts small models end to end

CHAINS = {
    "common commands": ["README.md#Common commands"],
    "paper runs on a laptop": ["README.md#Try a paper run on your laptop",
                               "docs/getting-started.md#Try a paper run on your laptop"],
    "guides": ["docs/guides/train.md", "docs/guides/mtf.md", "docs/guides/evaluate-t0.md",
               "docs/guides/evaluate-every-checkpoint.md", "docs/guides/infer.md",
               "docs/guides/convert.md", "docs/guides/evaluate-eai.md",
               "docs/guides/gin-and-plan.md", "docs/concepts/objectives.md"],
    "results": ["docs/results/study.md", "docs/results/study-medium-full.md"],
    "python api": ["docs/guides/python-api.md"],
    "gcs": ["docs/guides/gcs.md"],
    "quick start": ["README.md#Quick start",
                    "docs/getting-started.md#Set-up and the two `make` targets"],
}
NEEDS = {"docs/guides/mtf.md": 1, "docs/guides/evaluate-t0.md": 1,
         "docs/guides/evaluate-every-checkpoint.md": 1, "docs/guides/infer.md": 1,
         "docs/guides/evaluate-eai.md": 2, "docs/guides/gin-and-plan.md": 3,
         "docs/guides/gcs.md": 2}
# (printed, run, folder copied first): the study presets take minutes to hours, smoke runs
# every stage of the same command; smoke's own width (32) is the study the chain ran
# before, which the width sweep resumes as it resumes any finished width.
SHRINK = [("--preset quick --out out/study", "--preset smoke --out out/study", None),
          ("--preset quick --out runs/scale --widths 64,128,256",
           "--preset smoke --out runs/scale --widths 16,32", ("out/study", "runs/scale/width_32"))]
# compare-studies of the committed studies writes what is committed beside them.
COMMITTED_STUDIES = ROOT / "docs" / "study"


@dataclasses.dataclass(frozen=True)
class Command:
  page: str
  section: str    # the heading above it
  language: str   # bash or python
  comment: str    # the comment lines above it, joined
  text: str       # continuation lines joined (bash) or the whole block (python)

  @property
  def needs(self) -> bool:
    return bool(re.match(r"#\s*needs\b", self.comment))


def page_commands(page: str) -> list[Command]:
  """The commands of every ```bash and ```python block of `page`, with the heading above
  each; a comment applies to the commands after it up to the next comment or blank line."""
  commands, section, fence, block = [], "", None, []
  for line in (ROOT / page).read_text().splitlines():
    stripped = line.strip()
    if fence is None:
      if stripped.startswith("```"):
        fence, block = stripped[3:], []
      elif line.startswith("#"):
        section = line.lstrip("#").strip()
      continue
    if stripped != "```":
      block.append(line)
      continue
    if fence == "python":
      commands.append(Command(page, section, "python", "", textwrap.dedent("\n".join(block))))
    elif fence == "bash":
      commands.extend(_bash_commands(page, section, textwrap.dedent("\n".join(block))))
    fence = None
  return commands


def _bash_commands(page, section, block):
  commands, comment, current, after_comment = [], "", "", False
  for line in block.splitlines():
    stripped = line.strip()
    if not stripped:
      comment, after_comment = "", False
    elif stripped.startswith("#") and not current:
      comment = f"{comment} {stripped}" if after_comment else stripped
      after_comment = True
    else:
      after_comment = False
      current += stripped[:-1].rstrip() + " " if stripped.endswith("\\") else stripped
      if not stripped.endswith("\\"):
        commands.append(Command(page, section, "bash", comment, current))
        current = ""
  return commands


def chain_pages(chain: str) -> list[Command]:
  """The commands of a chain's pages (or sections of a page), in order."""
  out = []
  for entry in CHAINS[chain]:
    page, _, section = entry.partition("#")
    out += [c for c in page_commands(page) if not section or c.section == section]
  return out


def chain_commands(chain: str) -> list[Command]:
  """`chain_pages` with each command once (getting-started repeats the README's)."""
  seen, out = set(), []
  for command in chain_pages(chain):
    if command.text not in seen:
      seen.add(command.text)
      out.append(command)
  return out


def documented_pages() -> list[str]:
  pages = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")
                                 if "reference" not in p.parts)
  return [p for p in pages if page_commands(p)]


def test_every_command_belongs_to_one_chain_and_every_skip_says_what_it_needs():
  covered = {(c.page, c.text) for chain in CHAINS for c in chain_pages(chain)}
  for page in documented_pages():
    for command in page_commands(page):
      assert (page, command.text) in covered, f"{page}: {command.text[:80]!r} is in no chain"
  needs = {}
  for page in documented_pages():
    for command in page_commands(page):
      if command.needs:
        needs[page] = needs.get(page, 0) + 1
  assert needs == NEEDS
  makes = [c.text for c in chain_commands("quick start")]
  assert makes == ["make run    # the main job: set up .venv, then run the laptop-scale study "
                   "(quick preset)", "make test   # set up .venv, then run the test suite"]


def test_make_run_is_the_study_command_the_results_chain_runs():
  makefile = (ROOT / "Makefile").read_text()
  recipe = re.search(r"^run:.*\n\t\$\(VENV\)/bin/(.*)$", makefile, re.M).group(1)
  study = chain_commands("results")[0].text
  assert recipe.replace("$(STUDY_OUT)", "out/study") in study.replace(".venv/bin/", "")
  assert (ROOT / ".ci" / "run").read_text().count("make test") == 1


def test_the_parser_reads_comments_continuations_and_sections(tmp_path, monkeypatch):
  page = tmp_path / "page.md"
  page.write_text("# Title\n\n## Run\n\n```bash\n# needs the Hub\na --x \\\n  --y\nb\n\n"
                  "c   # trailing\n```\n\n```text\nnot a command\n```\n\n```python\n"
                  "  print(1)\n```\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
  commands = page_commands("page.md")
  assert [(c.section, c.language, c.comment, c.text, c.needs) for c in commands] == [
      ("Run", "bash", "# needs the Hub", "a --x --y", True),
      ("Run", "bash", "# needs the Hub", "b", True),
      ("Run", "bash", "", "c   # trailing", False),
      ("Run", "python", "", "print(1)", False)]


def _environment(folder):
  return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
              TRANSFORMERS_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3",
              ARCH_OBJECTIVE_COMPILATION_CACHE_DIR="")


def run_command(command: Command, folder: pathlib.Path):
  text = command.text
  for printed, shrunk, seed in SHRINK:
    if printed in text:
      text = text.replace(printed, shrunk)
      if seed:
        shutil.copytree(folder / seed[0], folder / seed[1])
  text = text.replace("/tmp/", f"{folder}/")
  if command.language == "python":
    argv = [sys.executable, "-c", text]
  else:
    argv = shlex.split(text, comments=True)
    assert argv[0].startswith(".venv/bin/"), command
    argv[0] = str(BIN / argv[0][len(".venv/bin/"):])
  done = subprocess.run(argv, cwd=folder, env=_environment(folder), capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, (command.page, command.text, done.stderr[-3000:])
  return done


@pytest.mark.parametrize("chain", ["common commands", "paper runs on a laptop", "guides",
                                   "results", "python api"])
def test_the_commands_run_as_printed(chain, tmp_path):
  if chain == "results":   # compare-studies reads the committed studies in docs/study/
    (tmp_path / "docs" / "study").mkdir(parents=True)
    for study in COMMITTED_STUDIES.iterdir():
      if (study / "results.json").is_file():
        (tmp_path / "docs" / "study" / study.name).symlink_to(study)
  ran = []
  for command in chain_commands(chain):
    if not command.needs:
      run_command(command, tmp_path)
      ran.append(command)
  assert ran, chain
  if chain == "common commands":
    assert (tmp_path / "example" / "harness_tasks" / "world_nli.yaml").is_file()
    assert (tmp_path / "nd_mlm" / "checkpoints" / "20").is_dir()
    assert (tmp_path / "t0" / "results.json").is_file()
    assert (tmp_path / "eai" / "harness_results.json").is_file()
    assert (tmp_path / "nd_hf" / "config.json").is_file()
  elif chain == "paper runs on a laptop":
    assert (tmp_path / "local" / "nc_a_mtf" / "eval_harness").is_dir()
  elif chain == "guides":
    assert (tmp_path / "nd_mtf" / "checkpoints" / "150").is_dir()
    assert sorted(p.name for p in (tmp_path / "world_eai_cli").iterdir()) == [
        re.sub(r"[/\\]", "__", str(tmp_path / "nd_mtf"))]
    assert (tmp_path / "nd_back" / "checkpoints" / "150").is_dir()
  elif chain == "results":
    # What compare-studies wrote equals what is committed, byte for byte.
    for command in ran:
      out = shlex.split(command.text)[-1]
      if out.startswith("docs/study/"):
        written, committed = tmp_path / out, ROOT / out
        assert sorted(os.listdir(written)) == sorted(os.listdir(committed)), out
        for name in os.listdir(committed):
          assert (written / name).read_bytes() == (committed / name).read_bytes(), (out, name)
    assert (tmp_path / "out" / "study" / "results.md").is_file()
    assert (tmp_path / "runs" / "scale" / "scale.md").is_file()
