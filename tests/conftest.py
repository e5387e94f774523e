"""Shared fixtures: the real data under ../shared/data; a registry and a logger that
do not leak from one test to the next; the toy vocabulary, tiny model directories, tiny
parameters and a short finished training run, made once per session (tests only read
them)."""
import logging
import os
import pathlib
import shutil
import sys

import pytest

import helpers

# Evaluations in the tests keep no persistent compilation cache (the user's ~/.cache stays
# untouched); tests of the cache give their own folder.
os.environ.setdefault("ARCH_OBJECTIVE_COMPILATION_CACHE_DIR", "")

SHARED_DATA = helpers.SHARED


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The folder of test data next to the repository (`../shared/data`)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared test data not found at {SHARED_DATA} (a clone of the repository "
                f"alone has no ../shared/data); these tests need the real T5 vocabulary "
                f"and C4 sample.")
  return SHARED_DATA


def _shared_file(shared_data: pathlib.Path, relative: str) -> str:
  path = shared_data / relative
  if not path.is_file():
    pytest.skip(f"shared test file {path} not found; see ../shared/data/README.md.")
  return str(path)


@pytest.fixture(scope="session")
def t5_vocab_path(shared_data) -> str:
  """The T5 SentencePiece model (32000 pieces; 32100 ids with 100 extra ids)."""
  return _shared_file(shared_data, "vocab/t5_spiece.model")


@pytest.fixture(scope="session")
def c4_sample_path(shared_data) -> str:
  """300 C4 English documents, one `{"text": ...}` object per line."""
  return _shared_file(shared_data, "pretrain/c4_sample.jsonl")


@pytest.fixture(autouse=True)
def _logging_as_it_was():
  """A command run in-process (`cli.main`) shows the `arch_objective` records on stderr
  and stops their propagation; put the logger back so the next test's `caplog` sees
  them."""
  logger = logging.getLogger("arch_objective")
  saved = (list(logger.handlers), logger.level, logger.propagate)
  yield
  logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def clean_registry():
  """Restore the task registry (and seqio's, if imported) after the test."""
  from arch_objective.data import registry

  saved = dict(registry._SPECS)
  seqio_before = (set(sys.modules["seqio"].TaskRegistry.names())
                  if "seqio" in sys.modules else set())
  try:
    yield registry
  finally:
    registry._SPECS.clear()
    registry._SPECS.update(saved)
    if "seqio" in sys.modules:
      task_registry = sys.modules["seqio"].TaskRegistry
      for name in sorted(set(task_registry.names()) - seqio_before):
        task_registry.remove(name)


@pytest.fixture
def offline(monkeypatch, tmp_path):
  """No network: the HF datasets and hub offline switches, and a private datasets cache;
  returns the test's folder."""
  datasets = pytest.importorskip("datasets")
  import huggingface_hub.constants
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
  return tmp_path


@pytest.fixture(scope="session")
def toy_vocab(tmp_path_factory):
  """A 200-piece SentencePiece model trained on `helpers.sentences()` (+100 extra ids)."""
  from arch_objective.data import vocabularies
  prefix = tmp_path_factory.mktemp("toy_vocab") / "spm"
  path = vocabularies.train_sentencepiece(helpers.sentences(), str(prefix), 200)
  return vocabularies.SentencePieceVocabulary(path)


TINY_STEP = 3


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
  """`tiny_model_dirs(arch)`: (path, params) of a model directory at step `TINY_STEP` of
  the `tiny` float32 model of `arch` with 128 rows (`helpers.random_params`, seed 4),
  recording vocabulary "test.model" of 100 ids; written once per session and arch. Tests
  only read it (copy it to change it)."""
  made = {}

  def make(arch: str):
    if arch not in made:
      from arch_objective import build_model
      from arch_objective.convert import model_dir
      model = build_model(arch, "tiny", dtype="float32", vocab_size=128)
      params = helpers.random_params(model, seed=4)
      out = str(tmp_path_factory.mktemp("tiny_model_dir") / arch)
      model_dir.write_model_dir(out, arch, model.config, params, step=TINY_STEP,
                                vocabulary="test.model", vocab_size=100)
      made[arch] = (out, params)
    return made[arch]
  return make


@pytest.fixture(scope="session")
def tiny_params():
  """Parameters of `helpers.tiny_model` (float32, `helpers.TINY_VOCAB` ids), seed 0:
  `"dec"` of the decoder-only models (shared by CD and ND) and `"ed"` of ED."""
  return {"dec": helpers.init_params(helpers.tiny_model("causal_decoder"),
                                     {"decoder_input_tokens": (1, 8)}),
          "ed": helpers.init_params(helpers.tiny_model("encoder_decoder"),
                                    {"encoder_input_tokens": (1, 8),
                                     "decoder_input_tokens": (1, 8)})}


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
  """A finished run of 2 steps with checkpoints 1 and 2 (`helpers.train_run`, trained
  once per session). Tests only read it (`copy_of_base` to change it)."""
  if not helpers.CORPUS.exists() or not helpers.VOCAB.exists():
    pytest.skip("shared test data not found")
  from arch_objective.training import checkpoints
  model_dir = tmp_path_factory.mktemp("base") / "run"
  helpers.train_run(model_dir)
  assert checkpoints.complete_steps(str(model_dir / "checkpoints")) == [1, 2]
  return model_dir


@pytest.fixture
def copy_of_base(base_run, tmp_path):
  """A copy of `base_run` of the test's own."""
  target = tmp_path / "run"
  shutil.copytree(base_run, target)
  return target
