"""The package's import graph flows one way: a module imports only modules of its own
layer or of layers below it (function-level imports included), so the data code runs
without JAX and the model core without the input pipeline."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "arch_objective"

# Lowest first. The package root only re-exports (lazily) and is not checked.
LAYERS = (
    ("errors", "features", "paths", "layouts", "architectures", "testing", "logs", "host_memory"),
    ("objectives", "data"),
    ("prompts",),
    ("data.world",),               # the synthetic world: data only, no JAX; reads prompts
    ("layers", "stacking", "network", "losses", "decoding", "models"),
    ("training",),
    ("evaluation", "convert"),
    ("study",),                    # the study's stages and report
    ("cli",),
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
# Imports that go up today, each with where it is to move (none).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _top(module: str):
  """The layer name of `module`: its top-level package, or `data.world` for the world
  (which sits above the rest of `data`: it builds prompted tasks)."""
  parts = module.split(".")
  if parts[0] != "arch_objective" or len(parts) < 2:
    return None
  if parts[1:3] == ["data", "world"]:
    return "data.world"
  return parts[1]


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
        # `from a.b import c` is read as `a.b.c`: the most specific name decides the layer
        # (`from arch_objective.data import world` imports the world, not the sources).
        names = [f"{node.module}.{a.name}" for a in node.names]
      for name in names:
        other = _top(name)
        if other in LEVEL and own in LEVEL and LEVEL[other] > LEVEL[own]:
          found.add((module, other))
  return found


def test_every_module_is_in_a_layer():
  tops = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
          if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
  tops.add("data.world")
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


def test_the_world_sits_between_prompts_and_the_model_core(tmp_path):
  """The world may read the rest of `data` and `prompts` but not the model core; the rest
  of `data` may not read the world."""
  package = tmp_path / "arch_objective"
  world = package / "data" / "world"
  world.mkdir(parents=True)
  (world / "bad.py").write_text("from arch_objective import models\n")
  (world / "fine.py").write_text("from arch_objective.data.world import facts\n"
                                 "from arch_objective.data import sources\n"
                                 "from arch_objective import prompts\n")
  (package / "data" / "reads_world.py").write_text("from arch_objective.data import world\n")
  assert upward_imports(package) == {("arch_objective.data.world.bad", "models"),
                                     ("arch_objective.data.reads_world", "data.world")}


def test_training_and_the_study_read_the_world():
  """`training/local.py` builds the local overlay's data from the world, as the study
  does: a layer below both, above `prompts` and below the model core."""
  assert LEVEL["data"] < LEVEL["prompts"] < LEVEL["data.world"] < LEVEL["layers"]
  assert LEVEL["data.world"] < LEVEL["training"] < LEVEL["study"]
