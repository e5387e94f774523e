"""`evaluation/sweep.py`: `eval t0|harness --steps ... [--watch]` over every checkpoint.

The fast tests sweep made-up run directories (each checkpoint a meta and a data
position, no arrays) with a stand-in evaluation that writes results.json and counts its
calls, or with results already in place (read back, never scored). The slow ones train a
tiny causal decoder for 4 steps on `data example`'s world and score it for real: a
`--steps all` sweep and its rerun, a watcher started before training, killed midway and
started again, and an adapted run counting the tokens of the checkpoint it restored.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from arch_objective.evaluation import runs, sweep
from arch_objective.evaluation.kinds import EVAL_HARNESS, EVAL_T0

from helpers import ROOT, one_line, run_cli

ROWS, LENGTH = 16, 64          # the local overlay's rows per step and decoder length
PER_STEP = ROWS * LENGTH       # tokens per step of a tiny causal decoder run


# ----------------------------------------------------------------------------------------
# Made-up runs and a stand-in evaluation
# ----------------------------------------------------------------------------------------
def fake_checkpoint(model_dir: pathlib.Path, step: int, *, batches=None, task="c4_full_lm",
                    arch="causal_decoder", lineage=(), identity=True, rows=ROWS,
                    length=LENGTH):
  """`model_dir/checkpoints/<step>/` with a meta and a data position (`batches`,
  default `step`); no arrays."""
  step_dir = model_dir / "checkpoints" / str(step)
  (step_dir / "meta").mkdir(parents=True)
  meta = {"arch": arch, "task": task, "lineage": list(lineage)}
  if identity:
    meta["identity"] = {"arch": arch, "batch_size": rows,
                        "lengths": {"decoder_input_tokens": [length],
                                    "decoder_target_tokens": [length]}}
  (step_dir / "meta" / "metadata").write_text(json.dumps(meta))
  if batches is not False:
    (step_dir / "data").mkdir()
    (step_dir / "data" / "metadata").write_text(
        json.dumps({"batches": step if batches is None else batches}))
  return step_dir


def fake_run(model_dir: pathlib.Path, steps, train_steps=None, **kw) -> pathlib.Path:
  model_dir.mkdir(parents=True, exist_ok=True)
  for step in steps:
    fake_checkpoint(model_dir, step, **kw)
  if train_steps is not None:
    (model_dir / "config.gin").write_text(
        f"# Macros:\nTRAIN_STEPS = {train_steps}\n\ntrain.train_steps = %TRAIN_STEPS\n")
  return model_dir


def t0_results(step: int) -> dict:
  return {"datasets": {"world_nli": {"median": 40.0 + step, "prompts": {"p": 40.0 + step}},
                       "world_coreference": {"median": 60.0, "prompts": {"p": 60.0}}},
          "average": 50.0 + step / 2, "random_average": 50.0, "step": step}


def write_results(out: pathlib.Path, step: int, kind=EVAL_T0) -> pathlib.Path:
  (out / str(step)).mkdir(parents=True, exist_ok=True)
  if kind == EVAL_T0:
    path = out / str(step) / "results.json"
    path.write_text(json.dumps(t0_results(step)))
  else:
    path = out / str(step) / "harness_results.json"
    path.write_text(json.dumps({"results": {"world_nli": {"acc,none": 0.25 + step / 100},
                                            "world_cause_effect": {"acc,none": 0.5}}}))
  return path


@pytest.fixture
def scored(monkeypatch):
  """Replace T0-Eval by a stand-in that writes results.json for the checkpoint it is
  given and records its step; `scored.hook(step)` runs first when set."""
  calls = []

  def stand_in(*, checkpoint, out_dir, **options):
    step = int(os.path.basename(checkpoint))
    if stand_in.hook:
      stand_in.hook(step)
    calls.append(step)
    write_results(pathlib.Path(out_dir).parent, step)
    return runs.EvalRun(t0_results(step), [], "")

  stand_in.hook = None
  stand_in.calls = calls
  monkeypatch.setitem(runs.RUNS, EVAL_T0, stand_in)
  return stand_in


def scalars(logdir) -> dict:
  """{tag: [(step, value)]} of the TensorBoard event files in `logdir`."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  accumulator = EventAccumulator(str(logdir))
  accumulator.Reload()
  return {tag: [(e.step, round(e.value, 4)) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


# ----------------------------------------------------------------------------------------
# --steps and bad input
# ----------------------------------------------------------------------------------------
def test_steps_parse_all_lists_and_every():
  assert sweep.parse_steps(None) == sweep.parse_steps("all") == sweep.Selection("all")
  assert sweep.parse_steps("4,1, 2,4").listed == (1, 2, 4)
  every = sweep.parse_steps("every:3")
  assert every.every == 3
  assert [s for s in range(1, 9) if every.wants(s, last_step=8)] == [3, 6, 8]
  assert [s for s in range(1, 9) if every.wants(s, last_step=None)] == [3, 6]


@pytest.mark.parametrize("text,found", [("every:0", "'every:0'"), ("5,x", "'x' is not a step"),
                                        ("every:two", "'every:two'"), ("0", "'0' is not"),
                                        ("1,,2", "'' is not a step")])
def test_bad_steps_are_one_line_naming_the_option(tmp_path, capsys, text, found):
  run = fake_run(tmp_path / "run", [1, 2])
  rc, _, err = run_cli(capsys, ["eval", "t0", "--checkpoint", str(run), "--steps", text])
  line = one_line(err)
  assert rc == 2 and "--steps must be all, N,M,... " in line and "every:K" in line
  assert found in line


def test_a_step_the_run_lacks_is_refused_naming_the_runs_steps(tmp_path, capsys, scored):
  run = fake_run(tmp_path / "run", [2, 4])
  rc, _, err = run_cli(capsys, ["eval", "t0", "--checkpoint", str(run), "--steps", "2,3"])
  line = one_line(err)
  assert rc == 2 and "no checkpoint at step 3" in line and "its steps are 2, 4" in line
  assert scored.calls == []


def test_paths_without_a_run_are_refused(tmp_path, capsys):
  not_a_run = tmp_path / "photos"
  not_a_run.mkdir()
  (not_a_run / "cat.jpg").write_text("")
  a_file = tmp_path / "notes.txt"
  a_file.write_text("")
  step = fake_run(tmp_path / "run", [1]) / "checkpoints" / "1"
  cases = [([str(not_a_run), "--watch"], "holds no run"),
           ([str(a_file), "--steps", "all"], "is a file"),
           ([str(tmp_path / "missing"), "--steps", "all"], "no such run directory"),
           ([str(step), "--steps", "all"], "must be its model directory"),
           ([str(tmp_path / "missing"), "--watch", "--poll", "0.05", "--time_limit", "0.2"],
            "no checkpoint appeared")]
  for args, message in cases:
    rc, _, err = run_cli(capsys, ["eval", "t0", "--checkpoint", *args])
    last = err.strip().splitlines()[-1]       # after the watcher's progress lines
    assert rc == 2 and message in last and "Traceback" not in err, (args, err)


def test_an_empty_run_and_a_selection_of_nothing_are_refused(tmp_path):
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(ValueError, match="no complete checkpoint"):
    sweep.sweep(EVAL_T0, {"checkpoint": str(tmp_path / "empty")}, steps="all")
  run = fake_run(tmp_path / "run", [1, 2])      # no TRAIN_STEPS recorded: multiples only
  with pytest.raises(ValueError, match=r"--steps every:5 selects none of the steps .*1, 2"):
    sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="every:5")


# ----------------------------------------------------------------------------------------
# Sweeps of made-up runs
# ----------------------------------------------------------------------------------------
def test_a_sweep_scores_each_step_writes_tensorboard_and_the_curve_and_a_rerun_reads_back(
    tmp_path, scored):
  run = fake_run(tmp_path / "run", [1, 2, 3, 4], train_steps=4)
  result = sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="all")
  out = run / "eval_t0"
  assert scored.calls == [1, 2, 3, 4] and result.scored == [1, 2, 3, 4]
  assert all((out / str(s) / "results.json").is_file() for s in range(1, 5))
  tags = scalars(out / "tensorboard")
  assert sorted(tags) == ["eval_t0/average", "eval_t0/world_coreference", "eval_t0/world_nli"]
  assert tags["eval_t0/average"] == [(s, 50.0 + s / 2) for s in range(1, 5)]
  assert tags["eval_t0/world_nli"] == [(s, 40.0 + s) for s in range(1, 5)]
  curve = json.loads((out / "curve.json").read_text())
  assert curve["x"] == "tokens_seen"
  assert [(p["step"], p["tokens_seen"], p["tokens"]) for p in curve["points"]] == [
      (s, s * PER_STEP, "recorded") for s in range(1, 5)]
  assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
  assert "| 4 | 4,096 | **52.0** | 60.0 | 44.0 |" in (out / "curve.md").read_text()
  assert result.markdown.startswith((out / "curve.md").read_text())
  events = sorted((out / "tensorboard").iterdir())
  mtimes = [(out / str(s) / "results.json").stat().st_mtime_ns for s in range(1, 5)]

  again = sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="all")
  assert scored.calls == [1, 2, 3, 4]                  # nothing scored twice
  assert again.scored == [] and again.read_back == [1, 2, 3, 4]
  assert [(out / str(s) / "results.json").stat().st_mtime_ns for s in range(1, 5)] == mtimes
  assert sorted((out / "tensorboard").iterdir()) == events      # no new event file
  assert scalars(out / "tensorboard") == tags                    # each step once


def test_every_k_takes_the_multiples_and_the_recorded_last_step(tmp_path, scored):
  run = fake_run(tmp_path / "run", [1, 2, 3, 4, 5], train_steps=5)
  assert sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="every:2").scored == [2, 4, 5]
  assert sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="3").scored == [3]
  curve = json.loads((run / "eval_t0" / "curve.json").read_text())
  assert [p["step"] for p in curve["points"]] == [2, 3, 4, 5]    # every step evaluated


def test_out_puts_each_step_under_it_and_the_curve_beside(tmp_path, scored):
  run = fake_run(tmp_path / "run", [1, 2])
  out = tmp_path / "elsewhere"
  result = sweep.sweep(EVAL_T0, {"checkpoint": str(run), "out_dir": str(out)}, steps="all")
  assert result.out_dir == str(out) and scored.calls == [1, 2]
  assert sorted(p.name for p in out.iterdir()) == ["1", "2", "curve.json", "curve.md",
                                                   "curve.png", "tensorboard"]
  assert not (run / "eval_t0").exists()


def test_harness_results_are_read_back_with_the_paper_table_of_a_paper_run(tmp_path,
                                                                         monkeypatch):
  monkeypatch.setitem(runs.RUNS, EVAL_HARNESS, lambda **_: pytest.fail("scored again"))
  run = fake_run(tmp_path / "run", [1, 2])
  for step in (1, 2):
    write_results(run / "eval_harness", step, EVAL_HARNESS)
  result = sweep.sweep(EVAL_HARNESS, {"checkpoint": str(run)}, steps="all")
  assert result.read_back == [1, 2]
  tags = scalars(run / "eval_harness" / "tensorboard")
  assert tags["eval_harness/average"] == [(1, 38.0), (2, 38.5)]
  assert tags["eval_harness/world_nli"] == [(1, 26.0), (2, 27.0)]
  assert [row["paper"] for row in result.paper] == [None, 42.4, 44.2]    # CD:FLM, spec §6
  assert "The paper's EAI-Eval averages by token budget, CD:FLM (pretraining):" in (
      result.markdown)
  assert "| 168B | 2 | 2,048* | 38.5 | 44.2 |" in result.markdown
  assert "*: more than 10% away from the budget's tokens." in result.markdown


def test_the_t0_paper_table_needs_paper(tmp_path, scored):
  run = fake_run(tmp_path / "run", [1])
  plain = sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="all")
  assert plain.paper == [] and "The paper's" not in plain.markdown
  asked = sweep.sweep(EVAL_T0, {"checkpoint": str(run), "paper": True}, steps="all")
  assert [row["paper"] for row in asked.paper] == [None, None, 42.4]
  assert json.loads((run / "eval_t0" / "curve.json").read_text())["paper"] == asked.paper


# ----------------------------------------------------------------------------------------
# --watch on made-up runs
# ----------------------------------------------------------------------------------------
class Training:
  """A stand-in for the training job: each `sleep` of the watcher saves the next
  checkpoints of `plan` (a list of step lists), as training would between two polls."""

  def __init__(self, model_dir, plan, train_steps=None):
    self.model_dir, self.plan, self.train_steps, self.sleeps = model_dir, list(plan), \
        train_steps, 0

  def __call__(self, seconds):
    self.sleeps += 1
    if self.plan:
      fake_run(self.model_dir, self.plan.pop(0), train_steps=self.train_steps)
    else:
      time.sleep(seconds)


def test_the_last_step_is_train_steps_of_the_latest_operative_config(tmp_path):
  run = fake_run(tmp_path / "run", [2], train_steps=4)
  assert sweep.recorded_train_steps(str(run)) == 4
  (run / "config-4.gin").write_text("TRAIN_STEPS = 8\n")       # resumed with more steps
  (run / "config-8.gin").write_text("train.train_steps = 12\n")
  assert sweep.recorded_train_steps(str(run)) == 12
  assert sweep.recorded_train_steps(str(tmp_path / "missing")) is None


def test_watch_evaluates_each_new_checkpoint_once_and_stops_after_the_last_step(
    tmp_path, scored):
  run = tmp_path / "run"
  training = Training(run, [[], [1], [2, 3], [], [4]], train_steps=4)

  def keep_checkpoints(step):      # training deletes step 3 while step 2 is evaluated
    if step == 2:
      shutil.rmtree(run / "checkpoints" / "3")
  scored.hook = keep_checkpoints
  result = sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, watch=True, poll_seconds=0.01,
                       time_limit=30, sleep=training)
  assert scored.calls == [1, 2, 4] and result.skipped == [3]
  assert [p["step"] for p in result.points] == [1, 2, 4]
  assert [s for s, _ in scalars(run / "eval_t0" / "tensorboard")["eval_t0/average"]] == [
      1, 2, 4]
  assert not training.plan            # it waited for step 4, then stopped


def test_watch_with_listed_steps_stops_once_they_are_evaluated(tmp_path, scored):
  run = tmp_path / "run"
  training = Training(run, [[1, 2], [3]])         # no TRAIN_STEPS recorded
  sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, watch=True, steps="2,3",
              poll_seconds=0.01, sleep=training)
  assert scored.calls == [2, 3]


def test_watch_without_a_recorded_last_step_stops_after_the_time_limit(tmp_path, scored,
                                                                       caplog):
  run = fake_run(tmp_path / "run", [1, 2])
  with caplog.at_level("INFO", logger="arch_objective"):
    result = sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, watch=True, poll_seconds=0.02,
                         time_limit=0.2)
  assert result.scored == [1, 2]
  assert "records no TRAIN_STEPS" in caplog.text and "--time_limit 0.2" in caplog.text


def test_watch_refuses_listed_steps_past_the_last_step(tmp_path, scored):
  run = fake_run(tmp_path / "run", [1], train_steps=4)
  with pytest.raises(ValueError, match="step 6 is past the run's last step 4"):
    sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, watch=True, steps="2,6",
                poll_seconds=0.01, time_limit=1)


# ----------------------------------------------------------------------------------------
# Tokens seen
# ----------------------------------------------------------------------------------------
def test_tokens_count_the_restored_checkpoint_as_recorded_or_by_the_fallbacks(tmp_path):
  source = fake_run(tmp_path / "pretrain", [8], rows=4, length=32)        # 8 x 128 tokens
  entry = {"checkpoint": str(source / "checkpoints" / "8"), "step": 8,
           "arch": "causal_decoder", "task": "c4_full_lm"}
  adapted = tmp_path / "adapted"
  recorded = fake_checkpoint(adapted, 10, batches=2, lineage=[{**entry, "tokens_seen": 999}])
  assert sweep.checkpoint_tokens(str(recorded)) == (2 * PER_STEP + 999, "recorded")
  older = fake_checkpoint(adapted, 11, batches=3, lineage=[entry])   # before tokens_seen
  assert sweep.checkpoint_tokens(str(older)) == (3 * PER_STEP + 8 * 128, "recorded")
  shutil.rmtree(source)                                    # the source is gone: estimated
  assert sweep.checkpoint_tokens(str(older)) == (3 * PER_STEP + 8 * PER_STEP, "estimated")
  no_position = fake_checkpoint(adapted, 12, batches=False, lineage=[entry])
  assert sweep.checkpoint_tokens(str(no_position)) == (4 * PER_STEP + 8 * PER_STEP,
                                                       "estimated")
  converted = fake_checkpoint(tmp_path / "converted", 5, identity=False)
  assert sweep.checkpoint_tokens(str(converted)) == (None, "unknown")


def test_a_run_without_an_identity_is_drawn_against_steps(tmp_path, scored):
  run = fake_run(tmp_path / "run", [1, 2], identity=False)
  sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="all")
  curve = json.loads((run / "eval_t0" / "curve.json").read_text())
  assert curve["x"] == "step" and [p["tokens"] for p in curve["points"]] == ["unknown"] * 2


def test_tokens_of_a_deleted_checkpoint_come_from_the_earlier_curve(tmp_path, scored):
  run = fake_run(tmp_path / "run", [1, 2])
  sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="all")
  shutil.rmtree(run / "checkpoints" / "1")
  result = sweep.sweep(EVAL_T0, {"checkpoint": str(run)}, steps="all")
  assert [(p["step"], p["tokens_seen"]) for p in result.points] == [(1, PER_STEP),
                                                                    (2, 2 * PER_STEP)]


# ----------------------------------------------------------------------------------------
# The paper's table
# ----------------------------------------------------------------------------------------
def test_paper_runs_and_the_nearest_checkpoint_per_budget():
  from arch_objective.prompts import t0
  assert sweep.paper_run({"arch": "causal_decoder", "task": "c4_full_lm"}) == (
      "pretrain", "CD:FLM")
  assert sweep.paper_run({"arch": "encoder_decoder", "task": "c4_prefix_lm"}) == (
      "pretrain", "ED:PLM")
  mtf = {"arch": "non_causal_decoder", "task": "t0_train",
         "lineage": [{"arch": "non_causal_decoder", "task": "c4_span_corruption"}]}
  assert sweep.paper_run(mtf) == ("mtf", "ND:MLM")
  adapted = {"arch": "non_causal_decoder", "task": "c4_span_corruption",
             "lineage": [{"arch": "causal_decoder", "task": "c4_full_lm"}]}
  assert sweep.paper_run(adapted) is None
  b = sweep.BUDGETS
  points = [{"step": s, "tokens_seen": t, "average": a}
            for s, t, a in ((1, 10**9, 40.0), (2, b["42B"] + 10**9, 45.0),
                            (3, b["84B"] - 10**9, 50.0), (4, b["168B"] + 10**10, 52.0))]
  rows = sweep.paper_table(EVAL_T0, points, ("pretrain", "CD:FLM"))
  assert [(r["budget"], r["step"], r["paper"], r["at_budget"]) for r in rows] == [
      ("42B", 2, None, True), ("84B", 3, None, True), ("168B", 4, 42.4, True)]
  rows = sweep.paper_table(EVAL_T0, points[:2], ("pretrain", "CD:FLM"))
  assert [(r["step"], r["at_budget"]) for r in rows] == [(2, True), (2, False), (2, False)]
  mtf_points = [{**p, "tokens_seen": p["tokens_seen"] + sweep.MTF_TOKENS} for p in points]
  rows = sweep.paper_table(EVAL_T0, mtf_points, ("mtf", "ED:MLM"))
  assert [(r["step"], r["paper"]) for r in rows] == [(2, 53.7), (3, 56.5), (4, 60.6)]
  # The 168B numbers are those `t0.PAPER_T0_EVAL` keeps for single evaluations.
  for cell in ("CD:FLM", "ND:PLM", "ED:PLM"):
    assert sweep.PAPER_BY_BUDGET[EVAL_T0, "pretrain", cell, "168B"] == (
        t0.PAPER_T0_EVAL[f"{cell} (168B)"])
  for cell in ("CD:FLM", "ND:PLM", "ED:PLM", "CD:MLM", "ND:MLM", "ED:MLM"):
    arch = cell.split(":")[0]
    assert sweep.PAPER_BY_BUDGET[EVAL_T0, "mtf", cell, "168B"] == (
        t0.PAPER_T0_EVAL[f"{cell} + {arch}:MTF"])


# ----------------------------------------------------------------------------------------
# A real run: trained for 4 steps, scored for real
# ----------------------------------------------------------------------------------------
def _env():
  return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
              ARCH_OBJECTIVE_COMPILATION_CACHE_DIR="", JAX_PLATFORMS="cpu")


def _cli(argv, cwd, timeout=600):
  return subprocess.run([sys.executable, "-m", "arch_objective.cli", *argv], cwd=cwd,
                        env=_env(), capture_output=True, text=True, timeout=timeout)


def _train_args(data: pathlib.Path, model_dir: pathlib.Path, local_steps: int,
                train_steps: int = 4):
  """A tiny CD:FLM run of the local overlay on the example world, saving every step."""
  return ["train", "--gin_file=experiments/paper/cd_flm.gin", "--gin_file=local.gin",
          f"--gin.LOCAL_CORPUS='{data / 'corpus.jsonl'}'",
          f"--gin.LOCAL_VOCABULARY='{data / 'spm.model'}'",
          f"--gin.LOCAL_STEPS={local_steps}", f"--gin.TRAIN_STEPS={train_steps}",
          "--gin.SAVE_EVERY=1", f"--gin.MODEL_DIR='{model_dir}'"]


def _eval_args(data: pathlib.Path, model_dir: pathlib.Path):
  return ["eval", "t0", "--checkpoint", str(model_dir), "--data_dir", str(data / "t0_eval"),
          "--max_examples", "2", "--inputs_length", "48", "--targets_length", "16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The example world's data, and a CD:FLM run of 4 steps on it (checkpoints 1-4)."""
  root = tmp_path_factory.mktemp("sweep")
  done = _cli(["data", "example", "--out", str(root / "data"), "--corpus_bytes", "200000",
               "--eval_examples", "4"], cwd=root)
  assert done.returncode == 0, done.stderr[-3000:]
  done = _cli(_train_args(root / "data", root / "cd", 4), cwd=root)
  assert done.returncode == 0, done.stderr[-3000:]
  return {"root": root, "data": root / "data", "run": root / "cd"}


@pytest.mark.slow
def test_steps_all_scores_every_checkpoint_and_a_rerun_scores_none(world, tmp_path, capsys):
  run = tmp_path / "cd"
  shutil.copytree(world["run"], run)
  rc, out, err = run_cli(capsys, _eval_args(world["data"], run) + ["--steps", "all"])
  assert rc == 0, err
  results = [run / "eval_t0" / str(s) / "results.json" for s in range(1, 5)]
  assert [json.loads(p.read_text())["step"] for p in results] == [1, 2, 3, 4]
  assert err.count(": T0-Eval of ") == 4
  tags = scalars(run / "eval_t0" / "tensorboard")
  assert sorted(tags) == ["eval_t0/average", "eval_t0/world_cause_effect",
                          "eval_t0/world_coreference", "eval_t0/world_nli",
                          "eval_t0/world_story_ending"]
  assert all([s for s, _ in values] == [1, 2, 3, 4] for values in tags.values())
  averages = [json.loads(p.read_text())["average"] for p in results]
  assert [v for _, v in tags["eval_t0/average"]] == pytest.approx(averages, abs=1e-4)
  # Tokens seen, counted apart from the code: rows x length of the local overlay per step.
  config = (run / "config.gin").read_text()
  assert "LENGTH = 64" in config and "rows = 16" in config
  curve = json.loads((run / "eval_t0" / "curve.json").read_text())
  assert [(p["step"], p["tokens_seen"]) for p in curve["points"]] == [
      (s, s * 16 * 64) for s in range(1, 5)]
  assert out.startswith("## T0-Eval of every checkpoint")
  mtimes = [p.stat().st_mtime_ns for p in results]

  rc, out, err = run_cli(capsys, _eval_args(world["data"], run) + ["--steps", "all"])
  assert rc == 0, err
  assert ": T0-Eval of " not in err and err.count("read back, not scored") == 4
  assert "Scored now: none; read back: 1, 2, 3, 4" in out
  assert [p.stat().st_mtime_ns for p in results] == mtimes
  assert scalars(run / "eval_t0" / "tensorboard") == tags


def _wait_for_points(curve: pathlib.Path, count: int, process, timeout=240.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if curve.exists():
      try:
        if len(json.loads(curve.read_text())["points"]) >= count:
          return
      except ValueError:
        pass                        # being written
    assert process.poll() is None, process.communicate()[1][-3000:]
    time.sleep(0.5)
  raise AssertionError(f"the watcher did not evaluate {count} steps in {timeout} s")


@pytest.mark.slow
def test_a_watcher_started_before_training_and_restarted_midway_evaluates_each_step_once(
    world, tmp_path):
  data, run = world["data"], tmp_path / "cd"
  watch = [*_eval_args(data, run), "--watch", "--poll", "0.5", "--time_limit", "300"]

  def watcher():
    return subprocess.Popen([sys.executable, "-m", "arch_objective.cli", *watch],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  first = watcher()                           # before the run directory exists
  try:
    done = _cli(_train_args(data, run, local_steps=2), cwd=tmp_path)   # steps 1 and 2
    assert done.returncode == 0, done.stderr[-3000:]
    _wait_for_points(run / "eval_t0" / "curve.json", 2, first)
  finally:
    first.send_signal(signal.SIGTERM)
    _, first_err = first.communicate(timeout=60)
  assert first.returncode != 0                # stopped, not finished
  results = {s: run / "eval_t0" / str(s) / "results.json" for s in (1, 2)}
  mtimes = {s: p.stat().st_mtime_ns for s, p in results.items()}

  second = watcher()
  try:
    done = _cli(_train_args(data, run, local_steps=2), cwd=tmp_path)   # steps 3 and 4
    assert done.returncode == 0, done.stderr[-3000:]
    out, second_err = second.communicate(timeout=300)
  finally:
    if second.poll() is None:
      second.kill()
  assert second.returncode == 0, second_err[-3000:]

  def scored_steps(err):
    return [int(line.split(":")[0].split()[-1]) for line in err.splitlines()
            if ": T0-Eval of " in line]
  assert scored_steps(first_err) == [1, 2]
  assert scored_steps(second_err) == [3, 4]
  assert "step 1: results already" in second_err and "step 2: results already" in second_err
  assert "the run's last step, 4, is evaluated: done" in second_err
  assert {s: p.stat().st_mtime_ns for s, p in results.items()} == mtimes
  tags = scalars(run / "eval_t0" / "tensorboard")
  assert all([s for s, _ in values] == [1, 2, 3, 4] for values in tags.values()), tags
  curve = json.loads((run / "eval_t0" / "curve.json").read_text())
  assert [(p["step"], p["tokens_seen"]) for p in curve["points"]] == [
      (s, s * 16 * 64) for s in range(1, 5)]
  assert "Scored now: 3, 4; read back: 1, 2" in out


@pytest.mark.slow
def test_an_adapted_run_records_and_counts_the_restored_tokens(world, tmp_path, monkeypatch):
  """NC-A of the 4-step CD:FLM run for one step: the lineage entry records the source's
  tokens (4 x 16 x 64), and the sweep's curve adds this run's step to them."""
  from arch_objective.objectives import pipeline
  data, adapted = world["data"], tmp_path / "nc_a"
  done = _cli(["train", "--gin_file=models/non_causal_decoder.gin", "--gin_file=sizes/tiny.gin",
               "--gin_file=objectives/span_corruption.gin", "--gin_file=runs/adapt.gin",
               "--gin_file=local.gin", f"--gin.LOCAL_CORPUS='{data / 'corpus.jsonl'}'",
               f"--gin.LOCAL_VOCABULARY='{data / 'spm.model'}'", "--gin.LOCAL_STEPS=1",
               "--gin.TRAIN_STEPS=5", "--gin.SAVE_EVERY=1", "--gin.EVAL_PERIOD=0",
               f"--gin.INITIAL_CHECKPOINT_PATH='{world['run']}'",
               f"--gin.MODEL_DIR='{adapted}'"], cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  meta = json.loads((adapted / "checkpoints" / "5" / "meta" / "metadata").read_text())
  (entry,) = meta["lineage"]
  assert entry["step"] == 4 and entry["tokens_seen"] == 4 * 16 * 64
  row = sum(pipeline.mlm_lengths(64))                 # ND span corruption: inputs ++ targets
  monkeypatch.setitem(runs.RUNS, EVAL_T0, lambda **_: pytest.fail("scored"))
  write_results(adapted / "eval_t0", 5)
  result = sweep.sweep(EVAL_T0, {"checkpoint": str(adapted)}, steps="all")
  assert [(p["step"], p["tokens_seen"], p["tokens"]) for p in result.points] == [
      (5, 4 * 16 * 64 + 1 * 16 * row, "recorded")]
