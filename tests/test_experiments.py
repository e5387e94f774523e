"""Every shipped experiment file runs as shipped, through the local overlay (gin/local.gin).

Training files run in lineage order through the command line, as a user runs them:
each pretraining run, its MT-F from the resulting checkpoint, LM-A and NC-A from their
sources, NC-A's MT-F, the 219B controls; then the two evaluation files score the
results. A run that another file restores from is trained once per test session (shared
by the pytest-xdist workers under a file lock) and reused along the chain.

The parametrisation lists the directory, so a new experiment file is covered when it is
added; its source run is read from its header ("INITIAL_CHECKPOINT_PATH (the <name>
run").
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import re

import pytest

from arch_objective import cli, network
from arch_objective.training import checkpoints

GIN = pathlib.Path(__file__).resolve().parents[1] / "gin"
EXPERIMENTS = GIN / "experiments"
PAPER = EXPERIMENTS / "paper"
STEPS = 2                     # LOCAL_STEPS: one validation at step 2 (EVAL_PERIOD 2)
EVAL_FILES = ("eval_t0", "eval_harness")
_SOURCE = re.compile(r"INITIAL_CHECKPOINT_PATH \(the (\w+) run")


def _files(folder: pathlib.Path) -> list[str]:
  return sorted(p.stem for p in folder.glob("*.gin"))


def _text(name: str) -> str:
  return (PAPER / f"{name}.gin").read_text()


def source_of(name: str):
  """The run whose checkpoint `name` restores, from the file's header (None: none)."""
  text = _text(name)
  if "INITIAL_CHECKPOINT_PATH" not in text:
    return None
  match = _SOURCE.search(text.replace("\n# ", " "))
  assert match, f"{name}.gin restores a checkpoint but its header names no source run"
  return match.group(1)


def _macro(name: str, macro: str) -> str:
  match = re.search(rf"^{macro}\s*=\s*(.+)$", _text(name), re.M)
  return match.group(1).strip() if match else None


@pytest.fixture(scope="session")
def chain_root(tmp_path_factory, worker_id) -> pathlib.Path:
  """A folder shared by every xdist worker of this session (runs, the local world)."""
  base = tmp_path_factory.getbasetemp()
  root = (base.parent if worker_id != "master" else base) / "experiment_chain"
  root.mkdir(parents=True, exist_ok=True)
  return root


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  with open(str(path) + ".lock", "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _train(name: str, root: pathlib.Path, model_dir: pathlib.Path, capsys) -> dict:
  argv = ["train", f"--gin_file=experiments/paper/{name}.gin", "--gin_file=local.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.LOCAL_STEPS={STEPS}",
          f"--gin.LOCAL_DATA_DIR='{root / 'world'}'"]
  source = source_of(name)
  if source:
    argv.append(f"--gin.INITIAL_CHECKPOINT_PATH='{trained(source, root, capsys)}'")
  code = cli.main(argv)
  out = capsys.readouterr()
  assert code == 0, f"{name}: exit {code}\n{out.err[-3000:]}"
  return json.loads(out.out.strip().splitlines()[-1])


def trained(name: str, root: pathlib.Path, capsys) -> pathlib.Path:
  """The model directory of `name` trained through the overlay (once per session)."""
  model_dir = root / "runs" / name
  model_dir.parent.mkdir(exist_ok=True)
  with _locked(model_dir):
    if not (model_dir / "done").exists():
      _train(name, root, model_dir, capsys)
      (model_dir / "done").write_text("ok")
  return model_dir


def _step(model_dir: pathlib.Path) -> int:
  return checkpoints.load_meta(str(model_dir))[1]


TRAINING = [n for n in _files(PAPER) if n not in EVAL_FILES]


def test_the_directory_holds_what_the_chain_covers():
  # The paper's 18 training runs and its two evaluation files; a new file is covered by
  # the parametrisation below without editing this test.
  assert len(TRAINING) == 18
  assert set(EVAL_FILES) <= set(_files(PAPER))
  sources = {n: source_of(n) for n in TRAINING}
  assert sources["nc_a"] == "cd_flm" and sources["lm_a"] == "nd_mlm"
  assert sources["nc_a_mtf"] == "nc_a" and sources["cd_flm_219b_nd_mtf"] == "cd_flm_219b"
  assert sources["cd_flm"] is None and sources["ed_plm_mtf"] == "ed_plm"
  for name, source in sources.items():
    assert source is None or source in TRAINING, f"{name} restores unknown run {source}"


@pytest.mark.parametrize("name", TRAINING)
@pytest.mark.slow
def test_paper_training_file_runs_through_the_local_overlay(name, chain_root, capsys):
  model_dir = trained(name, chain_root, capsys)
  meta, step = checkpoints.load_meta(str(model_dir))
  source = source_of(name)
  # The file's architecture, the overlay's size and data, the file's microbatches.
  assert meta["arch"] == _macro_arch(name)
  assert meta["config"]["emb_dim"] == network.SIZES["tiny"]["emb_dim"]
  assert meta["config"]["vocab_size"] == 512
  with open(model_dir / "config.gin") as f:
    config = f.read()
  assert f"NUM_MICROBATCHES = {_macro(name, 'NUM_MICROBATCHES')}" in config
  rows = [json.loads(l) for l in open(model_dir / "metrics.jsonl")]
  train_rows = [r for r in rows if r.get("split") != "validation"]
  assert train_rows and all(abs(r["loss"]) < 1e9 for r in train_rows)
  if source is None:
    assert step == STEPS and not meta.get("lineage")
  else:
    # The step counter continues from the source's checkpoint (spec §3.1, §5).
    source_dir = chain_root / "runs" / source
    assert step == _step(source_dir) + STEPS
    assert meta["lineage"][-1]["checkpoint"].startswith(str(source_dir))
  if "runs/finetune_t0.gin" not in _text(name):
    # Pretraining and adaptation validate every EVAL_PERIOD steps (2 in the overlay).
    validation = [r for r in rows if r.get("split") == "validation"]
    assert [r["step"] for r in validation] == [step]
    assert 0 < validation[0]["loss_per_token"] < 20 and 0 <= validation[0]["accuracy"] <= 1
    assert (model_dir / "tensorboard").is_dir()


def _macro_arch(name: str) -> str:
  model = re.search(r"include 'models/(\w+)\.gin'", _text(name)).group(1)
  return model


@pytest.mark.slow
def test_paper_eval_t0_runs_on_a_finetuned_result(chain_root, capsys):
  model_dir = trained("nc_a_mtf", chain_root, capsys)
  out = chain_root / "eval_t0_out"
  code = cli.main(["eval", "t0", "--gin_file=experiments/paper/eval_t0.gin",
                   "--gin_file=local.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
                   f"--gin.LOCAL_DATA_DIR='{chain_root / 'world'}'", "--out", str(out)])
  captured = capsys.readouterr()
  assert code == 0, captured.err[-3000:]
  results = json.loads((out / "results.json").read_text())
  from arch_objective.data.world import prompts as world_prompts
  assert sorted(results["datasets"]) == sorted(world_prompts.HELDOUT_PROMPTS)
  assert 0.0 <= results["average"] <= 100.0
  assert results["step"] == _step(model_dir) and results["arch"] == "non_causal_decoder"
  # The paper file's activations are bfloat16 (parameters restored in float32).
  assert "ACTIVATION_DTYPE = 'bfloat16'" in (out / "config.gin").read_text()


@pytest.mark.slow
def test_paper_eval_harness_runs_on_a_finetuned_result(chain_root, capsys):
  model_dir = trained("ed_mlm_mtf", chain_root, capsys)
  out = chain_root / "eval_harness_out"
  code = cli.main(["eval", "harness", "--gin_file=experiments/paper/eval_harness.gin",
                   "--gin_file=local.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
                   f"--gin.LOCAL_DATA_DIR='{chain_root / 'world'}'", "--out", str(out)])
  captured = capsys.readouterr()
  assert code == 0, captured.err[-3000:]
  files = sorted(p.name for p in out.iterdir())
  assert "config.gin" in files
  summary = json.loads(next(out.glob("*.json")).read_text())
  text = json.dumps(summary)
  for family in ("world_nli", "world_story_ending"):
    assert family in text


@pytest.mark.parametrize("preset", _files(EXPERIMENTS / "study"))
def test_study_preset_files_load(preset):
  from arch_objective import study
  config = study.load_preset(preset)
  assert config.pretrain_steps >= 1 and config.batch_size % 2 == 0
  assert config.vocab_size <= 900     # what the world's lexicon can fill (see test_study)
