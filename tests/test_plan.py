"""`plan` over the paper's experiment files: parameter counts, token budgets, meshes."""
import pathlib

import pytest

from arch_objective.training import plan

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER = sorted(p.stem for p in (ROOT / "gin" / "experiments" / "paper").glob("*.gin"))
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
