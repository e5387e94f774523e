"""The documentation: the generated reference is current, the site builds with no warning,
the README stays a landing page, and every relative link points at a file."""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _gen_reference():
  spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_generated_reference_is_current(monkeypatch):
  """docs/reference/*.md equal what `python docs/gen_reference.py` writes now."""
  monkeypatch.setenv("COLUMNS", "100")
  pages = _gen_reference().pages()
  assert {p.name for p in pages} == {"cli.md", "gin.md"}
  for path, text in pages.items():
    assert path.exists(), f"{path} is missing: run .venv/bin/python docs/gen_reference.py"
    assert path.read_text() == text, \
        f"{path.relative_to(ROOT)} is out of date: run .venv/bin/python docs/gen_reference.py"


def test_the_cli_reference_holds_every_command():
  from arch_objective import cli
  text = (DOCS / "reference" / "cli.md").read_text()
  for command in cli.EXAMPLES:
    assert f"## arch-objective {command}\n" in text, command
  gin = (DOCS / "reference" / "gin.md").read_text()
  for path in (ROOT / "gin").rglob("*.gin"):
    assert f"### `{path.relative_to(ROOT / 'gin').as_posix()}`" in gin, path


def test_the_site_builds_strict_with_no_warning(tmp_path):
  if importlib.util.find_spec("mkdocs") is None:
    pytest.skip("mkdocs is not installed: pip install -r requirements/docs.txt")
  out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                        "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  log = out.stdout + out.stderr
  assert out.returncode == 0, log[-4000:]
  assert "WARNING" not in log, log[-4000:]
  assert (tmp_path / "site" / "index.html").exists()
  assert (tmp_path / "site" / "reference" / "cli.html").exists()


def test_the_readme_is_a_landing_page():
  readme = (ROOT / "README.md").read_text()
  assert len(readme.splitlines()) <= 300
  assert "## Quick start" in readme
  assert "make run" in readme and "make test" in readme
  assert "arxiv.org/abs/2204.05832" in readme
  assert "paper_spec" not in readme
  cff = (ROOT / "CITATION.cff").read_text()
  assert "preferred-citation:" in cff and "2204.05832" in cff


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
# scanned left to right: a code span is skipped whole, a link (whose text may hold code) kept
_TOKEN = re.compile(r"(?P<code>`[^`\n]*`)"
                    r"|!?\[(?:[^\[\]`]|`[^`]*`)*\]\(\s*<?(?P<target>[^)\s>]+)>?"
                    r"(?:\s+\"[^\"]*\")?\s*\)")


def _links(text: str):
  """The targets of the Markdown links and images of `text`, outside code."""
  text = _FENCE.sub("", text)
  return [m.group("target") for m in _TOKEN.finditer(text) if m.group("target")]


def _markdown_files():
  return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path):
  broken = []
  for target in _links(path.read_text()):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
      continue                                  # a URL (https:, mailto:) or an anchor
    file = target.split("#", 1)[0].split("?", 1)[0]
    resolved = (path.parent / file).resolve()
    if not resolved.exists() or ROOT not in resolved.parents:
      broken.append(target)
  assert not broken, f"{path.relative_to(ROOT)}: links to nothing: {broken}"


def test_the_link_check_sees_links():
  text = "a [b](x.md) ![c](d.png) [`e`](f/g.md#h) `[no](code.md)`\n```\n[no](fence.md)\n```\n"
  assert _links(text) == ["x.md", "d.png", "f/g.md#h"]
