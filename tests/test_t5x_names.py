"""t5x's gin names and flags: TASK_FEATURE_LENGTHS, RANDOM_SEED, USE_CACHED_TASKS,
--gin_search_paths, EVAL_PERIOD, as a t5x user types them."""
import json
import subprocess
import sys

import gin
import pytest

from arch_objective.objectives import pipeline
from arch_objective.training import gin_utils

from helpers import ROOT

REQUIRED = ["MODEL_DIR='/tmp/unused'"]


def parsed(gin_file, *bindings):
  gin_utils.parse([gin_file], REQUIRED + list(bindings))
  return lambda name: gin.query_parameter(f"{name}/macro.value")


@pytest.mark.parametrize("gin_file,lengths,macro,expected", [
    ("experiments/paper/ed_mlm.gin", {"inputs": 512, "targets": 114}, "LENGTH", 626),
    ("experiments/paper/nd_mlm.gin", {"inputs": 256, "targets": 58}, "LENGTH", 314),
    ("experiments/paper/cd_flm.gin", {"targets": 1024}, "LENGTH", 1024),
    ("experiments/paper/nd_plm.gin", {"inputs": 626, "targets": 626}, "LENGTH", 626),
    ("experiments/paper/ed_plm.gin", {"inputs": 400, "targets": 399}, "LENGTH", 400),
])
def test_task_feature_lengths_set_the_length_of_each_objective(gin_file, lengths, macro,
                                                                expected):
  value = parsed(gin_file, f"TASK_FEATURE_LENGTHS={lengths!r}")(macro)
  assert value == expected
  if "mlm" in gin_file:     # the span corruption of that length has t5x's lengths
    assert pipeline.mlm_lengths(value) == (lengths["inputs"], lengths["targets"])


def test_task_feature_lengths_of_a_prompted_run_set_inputs_and_targets():
  value = parsed("experiments/paper/ed_mlm_mtf.gin", "INITIAL_CHECKPOINT_PATH='/tmp/c'",
                 "TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 64}")
  assert (value("INPUTS_LENGTH"), value("TARGETS_LENGTH")) == (512, 64)


def test_task_feature_lengths_in_a_gin_file_as_t5x_writes_them(tmp_path):
  run = tmp_path / "mine.gin"
  run.write_text("include 'experiments/paper/cd_flm.gin'\n"
                 "TASK_FEATURE_LENGTHS = {'targets': 512}\n")
  gin_utils.parse([str(run)], REQUIRED)
  assert gin.query_parameter("LENGTH/macro.value") == 512


@pytest.mark.parametrize("gin_file,lengths,message", [
    ("experiments/paper/ed_mlm.gin", {"inputs": 500, "targets": 114},
     r"chunks gives inputs \d+ and targets \d+"),
    ("experiments/paper/cd_flm.gin", {"inputs": 10, "targets": 20}, "'targets' only"),
    ("experiments/paper/ed_plm.gin", {"inputs": 512, "targets": 114}, "targets' must hold"),
    ("experiments/paper/nd_plm.gin", {"targets": 626}, "targets' must hold"),
    ("experiments/paper/ed_mlm.gin", {"input": 512}, "keys 'inputs' and/or 'targets'"),
    ("experiments/paper/ed_mlm.gin", [512, 114], "must be a dict"),
])
def test_task_feature_lengths_that_cannot_be_met_are_refused(gin_file, lengths, message):
  with pytest.raises(ValueError, match=message):
    parsed(gin_file, f"TASK_FEATURE_LENGTHS={lengths!r}")


def test_random_seed_and_use_cached_tasks():
  value = parsed("experiments/paper/cd_flm.gin", "RANDOM_SEED=17", "USE_CACHED_TASKS=False")
  assert value("SEED") == 17
  with pytest.raises(ValueError, match="no seqio cache.*USE_CACHED_TASKS=False"):
    parsed("experiments/paper/cd_flm.gin", "USE_CACHED_TASKS=True")


def test_eval_period_is_the_validation_interval():
  value = parsed("experiments/paper/cd_flm.gin", "EVAL_PERIOD=250")
  assert value("EVAL_PERIOD") == 250
  assert str(gin.query_parameter("train.eval_every")) == "%EVAL_PERIOD"


@pytest.mark.slow
def test_gin_search_paths_flag_finds_files_and_their_includes(tmp_path):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "base.gin").write_text(
      "include 'experiments/paper/cd_flm.gin'\nBATCH_SIZE = 96\n")
  (tmp_path / "mine" / "run.gin").write_text("include 'base.gin'\nTRAIN_STEPS = 7\n")
  cmd = [sys.executable, "-m", "arch_objective.cli", "plan", "--gin_file", "run.gin",
         "--gin_search_paths", f"{tmp_path / 'mine'},{tmp_path / 'other'}",
         "--gin.MODEL_DIR='/tmp/x'", "--gin.TASK_FEATURE_LENGTHS={'targets': 128}"]
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert result.returncode == 2, result.stderr            # 'other' does not exist
  assert "--gin_search_paths" in result.stderr and "other" in result.stderr
  (tmp_path / "other").mkdir()
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert report["batch_size"] == 96 and report["steps"] == 7
  assert report["feature_lengths"] == {"decoder": 128}
