"""The package's import graph flows one way: a module imports only modules of its own
layer or of layers below it (function-level imports included), so the data code runs
without JAX and the model core without the input pipeline."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "arch_objective"

# Lowest first. The package root only re-exports (lazily) and is not checked.
LAYERS = (
    ("paths", "architectures"),
    ("objectives", "data"),
    ("prompts",),
    ("layers", "stacking", "network", "losses", "decoding", "models"),
    ("training",),
    ("evaluation", "convert"),
    ("study", "study_report"),
    ("cli",),
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
# Imports that go up today, each with where it is to move.
KNOWN_UPWARD = {
    ("arch_objective.data.world", "prompts"),          # the world belongs to the study
    ("arch_objective.data.world_prompts", "prompts"),  # (a package of its own, above prompts)
}


def _top(module: str):
  parts = module.split(".")
  return parts[1] if parts[0] == "arch_objective" and len(parts) > 1 else None


def upward_imports(root: pathlib.Path = ROOT) -> set[tuple[str, str]]:
  """(importing module, imported top-level name) for every import of a higher layer."""
  found = set()
  for path in root.rglob("*.py"):
    module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    own = _top(module)
    if own is None or own == "__init__":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      for name in names:
        other = _top(name)
        if other in LEVEL and own in LEVEL and LEVEL[other] > LEVEL[own]:
          found.add((module, other))
  return found


def test_every_module_is_in_a_layer():
  tops = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
          if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
  assert tops - {"__init__"} <= set(LEVEL), sorted(tops - {"__init__"} - set(LEVEL))


def test_no_layer_imports_a_layer_above_it():
  upward = upward_imports()
  assert upward <= KNOWN_UPWARD, sorted(upward - KNOWN_UPWARD)


def test_the_check_catches_an_upward_import(tmp_path):
  package = tmp_path / "arch_objective"
  (package / "data").mkdir(parents=True)
  (package / "data" / "bad.py").write_text(
      "def f():\n  from arch_objective import models\n  return models\n")
  assert upward_imports(package) == {("arch_objective.data.bad", "models")}
