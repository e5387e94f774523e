"""Shared fixtures: the real data under ../shared/data; a registry and a logger that
do not leak from one test to the next."""
import logging
import os
import pathlib
import sys

import pytest

# Evaluations in the tests keep no persistent compilation cache (the user's ~/.cache stays
# untouched); tests of the cache give their own folder.
os.environ.setdefault("ARCH_OBJECTIVE_COMPILATION_CACHE_DIR", "")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
