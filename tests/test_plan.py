"""`plan` over the paper's experiment files: parameter counts, token budgets, meshes."""
import json
import pathlib

import jax
import pytest

from arch_objective.training import plan

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_FILES = sorted(p.stem for p in (ROOT / "gin" / "experiments" / "paper").glob("*.gin"))
EVALUATION = ["eval_harness", "eval_t0"]
PAPER = [name for name in PAPER_FILES if name not in EVALUATION]   # the training runs
TOKENS_PER_STEP = 2048 * 626        # every pretraining and adaptation step (spec §8.1)
MTF_TOKENS_PER_STEP = 1024 * 1280   # the paper's MT-F batch (spec §3.1)


def run_plan(name, mesh=None, **kw):
  return plan.plan_run([f"experiments/paper/{name}.gin"], [], mesh or {"data": 16, "model": 4},
                       **kw)


def test_the_paper_suite_has_every_run():
  expected = {"cd_flm", "cd_mlm", "nd_plm", "nd_mlm", "ed_plm", "ed_mlm", "lm_a", "nc_a",
              "nc_a_mtf", "cd_flm_219b", "cd_flm_219b_cd_mtf", "cd_flm_219b_nd_mtf"}
  expected |= {f"{r}_mtf" for r in ("cd_flm", "cd_mlm", "nd_plm", "nd_mlm", "ed_plm", "ed_mlm")}
  assert set(PAPER) == expected
  assert set(PAPER_FILES) == expected | set(EVALUATION)


@pytest.mark.parametrize("name", PAPER)
def test_every_paper_run_plans_with_the_paper_numbers(name):
  report = run_plan(name)
  expected_params = 11_003_736_064 if name.startswith("ed_") else 4_762_357_760
  assert report["params"] == expected_params
  assert report["problems"] == []
  assert "MODEL_DIR" in report["unset_macros"]
  if name.endswith("_mtf"):
    assert report["tokens_per_step"] == MTF_TOKENS_PER_STEP
    assert report["tokens_this_run"] == 10_000 * MTF_TOKENS_PER_STEP  # 13.1B
    assert report["lineage"]["continues_step"] is True
  elif name in ("cd_flm", "cd_mlm", "nd_plm", "nd_mlm", "ed_plm", "ed_mlm"):
    assert report["tokens_per_step"] == TOKENS_PER_STEP
    assert report["steps"] == 131_072
    assert report["tokens_this_run"] == 131_072 * TOKENS_PER_STEP  # 168B
  elif name == "nc_a":
    assert report["tokens_this_run"] == 39_936 * TOKENS_PER_STEP  # 51.2B
    assert report["arch"] == "non_causal_decoder"
  elif name == "lm_a":
    assert report["arch"] == "causal_decoder"
    assert report["tokens_this_run"] == pytest.approx(105e9, rel=0.001)


def test_plan_reports_meshes_that_do_not_divide_and_models_that_do_not_fit():
  report = run_plan("cd_flm", mesh={"data": 8, "model": 3}, num_devices=32)
  problems = " | ".join(report["problems"])
  assert "num_heads=64 is not divisible by the model axis 3" in problems
  assert "24 devices, but 32 are available" in problems
  small = run_plan("ed_mlm", mesh={"data": 1, "model": 1}, device_memory_gib=16)
  assert small["fits"] is False and "exceeds the 16 GiB" in " ".join(small["problems"])
  # Parameters alone: 11.0B x 4 bytes on one device.
  assert small["memory_per_device_gib"]["parameters"] == pytest.approx(
      11_003_736_064 * 4 / 1024 ** 3, rel=1e-6)
  sharded = run_plan("ed_mlm", mesh={"data": 1, "model": 4})
  assert sharded["memory_per_device_gib"]["parameters"] < small["memory_per_device_gib"][
      "parameters"] / 3.9


# ---------------------------------------------------------------------------
# Evaluation runs: settings and the checkpoint, no training budget
# ---------------------------------------------------------------------------
def plan_command(capsys, *args):
  from arch_objective import cli
  capsys.readouterr()
  rc = cli.main(["plan", *args])
  captured = capsys.readouterr()
  return rc, captured


def test_plan_of_the_paper_evaluation_runs_without_a_checkpoint(capsys):
  rc, captured = plan_command(capsys, "--gin_file", "experiments/paper/eval_t0.gin")
  assert rc == 0, captured.err
  report = json.loads(captured.out)
  assert report["run"] == "eval_t0" and report["unset_macros"] == ["CHECKPOINT_PATH"]
  assert len(report["settings"]["datasets"]) == 11
  assert report["settings"]["normalize"] is False
  assert (report["settings"]["inputs_length"], report["settings"]["targets_length"]) == (1024,
                                                                                          256)
  assert "no training budget" in report["note"] and "CHECKPOINT_PATH" in report["note"]
  assert "steps" not in report and "params" not in report
  rc, captured = plan_command(capsys, "--gin_file", "experiments/paper/eval_harness.gin")
  report = json.loads(captured.out)
  assert rc == 0 and report["run"] == "eval_harness"
  assert report["settings"]["tasks"] == ["eai_eval"]
  assert report["settings"]["truncation"] == "paper"
  assert report["settings"]["dtype"] == "bfloat16"


@pytest.mark.slow
def test_plan_of_an_evaluation_run_describes_its_checkpoint(capsys, tmp_path):
  from arch_objective import build_model, models
  from arch_objective.convert import model_dir
  model = build_model(models.NON_CAUSAL_DECODER, "tiny", dtype="float32")
  params = jax.jit(lambda r: model.get_initial_variables(
      r, models.default_input_shapes(model.name, 1, 8, 8, 8)))(jax.random.PRNGKey(0))["params"]
  source = {"checkpoint": "gs://b/cd_flm/checkpoints/131072", "step": 131072,
            "arch": models.CAUSAL_DECODER, "task": "c4_full_lm"}
  model_dir.write_model_dir(str(tmp_path / "nd"), models.NON_CAUSAL_DECODER, model.config,
                            params, step=9, vocabulary="spm.model", lineage=[source])
  rc, captured = plan_command(capsys, "--gin_file", "experiments/paper/eval_t0.gin",
                              f"--gin.CHECKPOINT_PATH='{tmp_path / 'nd'}'")
  assert rc == 0, captured.err
  report = json.loads(captured.out)
  assert report["arch"] == "non_causal_decoder" and report["step"] == 9
  assert report["params"] == models.count_params(model)
  assert report["lineage"] == [source] and report["problems"] == []
  # Read as an encoder-decoder: a problem, exit status 1; a missing checkpoint too.
  rc, captured = plan_command(capsys, "--gin_file", "runs/eval_harness.gin",
                              f"--gin.CHECKPOINT_PATH='{tmp_path / 'nd'}'",
                              "--gin.ARCH='encoder_decoder'")
  assert rc == 1 and "cannot be read as encoder_decoder" in json.loads(captured.out)[
      "problems"][0]
  rc, captured = plan_command(capsys, "--gin_file", "runs/eval_t0.gin",
                              f"--gin.CHECKPOINT_PATH='{tmp_path / 'none'}'")
  assert rc == 1 and "no such directory" in json.loads(captured.out)["problems"][0]


def test_plan_prints_no_gin_search_noise_and_still_names_missing_files(capsys, caplog,
                                                                       tmp_path):
  import logging
  caplog.set_level(logging.INFO)
  rc, captured = plan_command(capsys, "--gin_file", "experiments/paper/cd_flm_mtf.gin")
  assert rc == 0
  assert "Path not found" not in captured.err + caplog.text
  broken = tmp_path / "broken.gin"
  broken.write_text("include 'runs/no_such_run.gin'\n")
  rc, captured = plan_command(capsys, "--gin_file", str(broken))
  assert rc == 2 and "gin file 'runs/no_such_run.gin' not found" in captured.err


def test_plan_counts_the_optimizer_state_of_the_runs_adafactor_settings():
  """`--gin.adafactor.momentum=0.9` adds a float32 first moment per parameter to the
  optimizer state the plan counts (the run files bind `train.optimizer = @adafactor`)."""
  mesh = {"data": 1, "model": 1}
  default = plan.plan_run(["experiments/paper/cd_flm.gin"], [], mesh)
  momentum = plan.plan_run(["experiments/paper/cd_flm.gin"], ["adafactor.momentum=0.9"], mesh)
  added = (momentum["memory_per_device_gib"]["optimizer_state"]
           - default["memory_per_device_gib"]["optimizer_state"])
  assert added == pytest.approx(default["params"] * 4 / 2**30, rel=1e-6)
