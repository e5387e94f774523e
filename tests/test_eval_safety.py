"""Evaluation refuses what would give wrong numbers in silence: a vocabulary other than
the checkpoint's, options out of range, fewer batches than asked (said in a warning), and
it ends without a second traceback from background threads; task YAML and T0-Eval file
errors name every file at fault. Real runs of `arch-objective evaluate`, `eval t0` and
`eval harness` on one tiny model trained on the local world (`gin/local.gin`)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from arch_objective import cli

import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVALUATE = ["evaluate", "--gin_file=models/causal_decoder.gin",
            "--gin_file=objectives/full_lm.gin", "--gin_file=runs/evaluate.gin",
            "--gin_file=local.gin"]
T0 = ["eval", "t0", "--gin_file=experiments/paper/eval_t0.gin", "--gin_file=local.gin",
      "--max_examples", "2"]
HARNESS = ["eval", "harness", "--gin_file=experiments/paper/eval_harness.gin",
           "--gin_file=local.gin", "--tasks", "world_nli", "--limit", "2",
           "--bootstrap_iters", "0"]
DIFFER = "their SHA-256 hashes differ"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A causal decoder trained for 2 steps on the local world (its checkpoint records the
  vocabulary's SHA-256), the world's vocabulary, and another of the same size (two
  pieces swapped: other tokens, other hash)."""
  from sentencepiece import sentencepiece_model_pb2
  from arch_objective.training import local
  root = tmp_path_factory.mktemp("eval_safety")
  model_dir = root / "cd"
  assert cli.main(["train", "--gin_file=experiments/paper/cd_flm.gin", "--gin_file=local.gin",
                   f"--gin.MODEL_DIR='{model_dir}'", "--gin.LOCAL_STEPS=2"]) == 0
  vocabulary = local.prepare().vocabulary
  proto = sentencepiece_model_pb2.ModelProto.FromString(pathlib.Path(vocabulary).read_bytes())
  proto.pieces[10].piece, proto.pieces[11].piece = proto.pieces[11].piece, proto.pieces[10].piece
  other = root / "other.model"
  other.write_bytes(proto.SerializeToString())
  return {"model_dir": str(model_dir), "vocabulary": vocabulary, "other": str(other),
          "root": root}


def _run(argv, capsys):
  """(exit status, stdout, stderr) of a command run in-process."""
  return helpers.run_cli(capsys, argv)


_one_line = helpers.one_line


# ----------------------------------------------------------------------------------------
# The vocabulary: the checkpoint's, or another one only when allowed, and always recorded
# ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_refuses_another_vocabulary_unless_allowed(run, capsys):
  model_dir, other = run["model_dir"], run["other"]
  base = EVALUATE + [f"--gin.MODEL_DIR='{model_dir}'"]
  rc, out, err = _run(base + [f"--gin.LOCAL_VOCABULARY='{other}'"], capsys)
  assert rc == 2 and "Traceback" not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith(f"arch-objective evaluate: VOCABULARY {other} is not the "
                         f"vocabulary checkpoint {model_dir}/checkpoints/2 was trained with "
                         f"({run['vocabulary']}): {DIFFER} ("), line
  assert "--gin.evaluate.allow_other_vocabulary=True" in line

  rc, out, err = _run(base + [f"--gin.LOCAL_VOCABULARY='{other}'",
                              "--gin.evaluate.allow_other_vocabulary=True"], capsys)
  assert rc == 0, err
  result = json.loads(out)
  assert result["vocabulary"]["path"] == other
  assert result["vocabulary"]["same_as_checkpoint"] is False
  assert result["vocabulary"]["checkpoint_vocabulary"]["path"] == run["vocabulary"]
  assert json.loads(pathlib.Path(result["path"]).read_text())["vocabulary"] == \
      result["vocabulary"]

  # The checkpoint's own vocabulary: recorded too.
  rc, out, err = _run(base, capsys)
  assert rc == 0, err
  used = json.loads(out)["vocabulary"]
  assert used["path"] == run["vocabulary"] and used["same_as_checkpoint"] is True
  assert len(used["sha256"]) == 64


@pytest.mark.slow
def test_eval_t0_refuses_another_vocabulary_unless_allowed(run, capsys):
  model_dir, other, out_dir = run["model_dir"], run["other"], run["root"] / "t0"
  base = T0 + ["--checkpoint", model_dir, "--out", str(out_dir)]
  rc, _, err = _run(base + ["--vocabulary", other], capsys)
  assert rc == 2
  assert _one_line(err) == (
      f"arch-objective eval t0: --vocabulary {other} is not the vocabulary checkpoint "
      f"{model_dir} was trained with ({run['vocabulary']}): {DIFFER} "
      f"({_sha(other)[:12]} vs {_sha(run['vocabulary'])[:12]}), so every score would be "
      f"computed on other tokens. Use the checkpoint's vocabulary, or give "
      f"--allow_other_vocabulary (gin: --gin.eval_t0.allow_other_vocabulary=True) to "
      f"evaluate with this one.")
  assert not (out_dir / "results.json").exists()

  rc, _, err = _run(base + ["--vocabulary", other, "--allow_other_vocabulary"], capsys)
  assert rc == 0, err
  used = json.loads((out_dir / "results.json").read_text())["vocabulary"]
  assert used == {"path": other, "sha256": _sha(other), "same_as_checkpoint": False,
                  "checkpoint_vocabulary": {"path": run["vocabulary"],
                                            "sha256": _sha(run["vocabulary"])}}

  rc, _, err = _run(base, capsys)
  assert rc == 0, err
  used = json.loads((out_dir / "results.json").read_text())["vocabulary"]
  assert used == {"path": run["vocabulary"], "sha256": _sha(run["vocabulary"]),
                  "same_as_checkpoint": True}


@pytest.mark.slow
def test_eval_harness_refuses_another_vocabulary_unless_allowed(run, capsys):
  model_dir, other, out_dir = run["model_dir"], run["other"], run["root"] / "harness"
  base = HARNESS + ["--checkpoint", model_dir, "--out", str(out_dir)]
  rc, _, err = _run(base + ["--vocabulary", other], capsys)
  assert rc == 2 and "Traceback" not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith(f"arch-objective eval harness: --vocabulary {other} is not the "
                         f"vocabulary checkpoint {model_dir} was trained with "
                         f"({run['vocabulary']}): {DIFFER} ("), line
  assert "--allow_other_vocabulary (gin: --gin.eval_harness.allow_other_vocabulary=True)" \
      in line
  assert not (out_dir / "harness_results.json").exists()

  rc, _, err = _run(base + ["--vocabulary", other, "--allow_other_vocabulary"], capsys)
  assert rc == 0, err
  used = json.loads((out_dir / "harness_results.json").read_text())["arch_objective"][
      "vocabulary"]
  assert used["path"] == other and used["sha256"] == _sha(other)
  assert used["same_as_checkpoint"] is False

  # A vocabulary of more ids than the model embeds is refused even when allowed.
  t5 = str(helpers.VOCAB)
  if os.path.isfile(t5):
    rc, _, err = _run(base + ["--vocabulary", t5, "--allow_other_vocabulary"], capsys)
    assert rc == 2
    assert (f"--vocabulary {t5} has 32100 ids but the model of checkpoint {model_dir} "
            f"embeds only 512") in err.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_lm_eval_model_refuses_another_vocabulary_unless_allowed(run):
  """`arch-objective-lm-eval --model_args checkpoint=...,vocabulary=...` builds the model
  from its arguments: the same check, allowed by `allow_other_vocabulary=True`."""
  from arch_objective.evaluation import harness
  model_dir, other = run["model_dir"], run["other"]
  with pytest.raises(ValueError) as e:
    harness.ArchObjectiveLM(checkpoint=model_dir, vocabulary=other)
  assert str(e.value).startswith(f"vocabulary= {other} is not the vocabulary checkpoint "
                                 f"{model_dir} was trained with"), str(e.value)
  assert "allow_other_vocabulary=True (in --model_args)" in str(e.value)
  with pytest.raises(ValueError, match="allow_other_vocabulary must be True or False"):
    harness.ArchObjectiveLM(checkpoint=model_dir, vocabulary=other,
                            allow_other_vocabulary="maybe")
  lm = harness.ArchObjectiveLM(checkpoint=model_dir, vocabulary=other,
                               allow_other_vocabulary="True")
  assert lm.get_model_info()["arch_objective"]["vocabulary"] == {
      "path": other, "sha256": _sha(other), "same_as_checkpoint": False,
      "checkpoint_vocabulary": {"path": run["vocabulary"], "sha256": _sha(run["vocabulary"])}}
  lm = harness.ArchObjectiveLM(checkpoint=model_dir)       # the checkpoint's own
  assert lm.get_model_info()["arch_objective"]["vocabulary"]["same_as_checkpoint"] is True


@pytest.mark.slow
def test_a_checkpoint_without_the_hash_accepts_any_vocabulary(run):
  """Imports and older runs record no SHA-256: accepted as before, recorded as unknown."""
  from arch_objective.training import evaluate
  used = evaluate.check_vocabulary({"vocabulary": run["vocabulary"]}, run["other"], "ckpt",
                                   allow_other=False, option="--vocabulary",
                                   allow_option="--allow_other_vocabulary")
  assert used == {"path": run["other"], "sha256": _sha(run["other"]),
                  "same_as_checkpoint": None}


def _sha(path):
  import hashlib
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------
# Options out of range: one line naming the option, what it expects and what it found
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command,args,message", [
    (T0, ["--inputs_length", "0"],
     "eval_t0: --inputs_length (gin: INPUTS_LENGTH, or eval_t0.inputs_length) must be a "
     "positive integer (prompt tokens kept), found 0."),
    (T0, ["--targets_length", "-2"],
     "eval_t0: --targets_length (gin: TARGETS_LENGTH, or eval_t0.targets_length) must be "
     "a positive integer (choice tokens kept), found -2."),
    (T0, ["--bootstrap", "-1"],
     "eval_t0: --bootstrap (gin: BOOTSTRAP, or eval_t0.bootstrap) must be an integer >= 0 "
     "(0: no interval), found -1."),
    (T0, ["--gin.BOOTSTRAP=-1"],
     "eval_t0: --bootstrap (gin: BOOTSTRAP, or eval_t0.bootstrap) must be an integer >= 0 "
     "(0: no interval), found -1."),
    (HARNESS, ["--bootstrap_iters", "-5"],
     "eval_harness: --bootstrap_iters (gin: BOOTSTRAP_ITERS, or "
     "eval_harness.bootstrap_iters) must be an integer >= 0 (0 skips them), found -5."),
    (HARNESS, ["--limit", "-1"],
     "eval_harness: --limit (gin: LIMIT, or eval_harness.limit) must be a number of "
     "examples >= 1 or a fraction between 0 and 1, found -1; leave it unset (None) for "
     "every example."),
    (HARNESS, ["--limit", "0"],
     "eval_harness: --limit (gin: LIMIT, or eval_harness.limit) must be a number of "
     "examples >= 1 or a fraction between 0 and 1, found 0; leave it unset (None) for "
     "every example."),
], ids=["inputs_length", "targets_length", "bootstrap", "gin_bootstrap", "bootstrap_iters",
        "limit", "limit_zero"])
@pytest.mark.slow
def test_eval_options_out_of_range_name_the_option(run, capsys, command, args, message):
  out_dir = run["root"] / "never"
  rc, _, err = _run(command + ["--checkpoint", run["model_dir"], "--out", str(out_dir)]
                    + args, capsys)
  assert rc == 2
  assert _one_line(err) == f"arch-objective {' '.join(command[:2])}: {message}"
  assert not out_dir.exists()


@pytest.mark.slow
def test_evaluate_eval_steps(run, capsys):
  base = EVALUATE + [f"--gin.MODEL_DIR='{run['model_dir']}'"]
  rc, _, err = _run(base + ["--gin.EVAL_STEPS=0"], capsys)
  assert rc == 2
  assert _one_line(err) == (
      "arch-objective evaluate: evaluate: eval_steps (gin: EVAL_STEPS, or "
      "evaluate.eval_steps) must be a positive number of batches, found 0.")

  # More batches asked than the split has: all of them, and a warning that says so.
  rc, out, err = _run(base + ["--gin.EVAL_STEPS=100000"], capsys)
  assert rc == 0, err
  result = json.loads(out)
  assert 0 < result["batches"] < 100000 and result["eval_steps"] == 100000
  assert _one_line(err) == (
      f"warning: evaluate: split 'validation' of task local_full_lm has only "
      f"{result['batches']} batch(es) of 16 rows; evaluated {result['batches']} of the "
      f"100000 asked (EVAL_STEPS).")


# ----------------------------------------------------------------------------------------
# Errors end the command with one line: no background thread fails after it
# ----------------------------------------------------------------------------------------
def _subprocess(argv, cwd):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-m", "arch_objective.cli", *argv], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
  # (XLA's C++ start-up lines are not ours)
  err = "\n".join(l for l in out.stderr.splitlines() if not l.startswith(("I0000", "W0000")))
  return out.returncode, err


@pytest.mark.slow
def test_evaluate_errors_leave_no_background_traceback(run, tmp_path):
  missing = tmp_path / "missing"
  rc, err = _subprocess(EVALUATE + [f"--gin.MODEL_DIR='{missing}'"], tmp_path)
  assert rc == 2
  assert _one_line(err) == (f"arch-objective evaluate: MODEL_DIR {missing} does not exist; "
                            f"expected the MODEL_DIR of a trained run.")
  assert not missing.exists()
  # An error once the checkpoint manager runs: a model of another width.
  rc, err = _subprocess(EVALUATE + [f"--gin.MODEL_DIR='{run['model_dir']}'",
                                    "--gin.build_model.mlp_dim=64"], tmp_path)
  assert rc == 2
  assert _one_line(err).startswith(f"arch-objective evaluate: checkpoint "
                                   f"{run['model_dir']}/checkpoints/2: ")


def test_evaluate_model_dir_without_checkpoints(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  rc, _, err = _run(EVALUATE + [f"--gin.MODEL_DIR='{tmp_path / 'empty'}'"], capsys)
  assert rc == 2
  assert _one_line(err) == (
      f"arch-objective evaluate: MODEL_DIR {tmp_path / 'empty'} holds no checkpoint (no "
      f"complete step in {tmp_path / 'empty' / 'checkpoints'}); expected the MODEL_DIR of "
      f"a trained run.")
  assert list((tmp_path / "empty").iterdir()) == []


# ----------------------------------------------------------------------------------------
# Files at fault are named: a task YAML that does not parse, missing T0-Eval files
# ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_task_yaml_that_does_not_parse_is_named_with_its_line(run, tmp_path, capsys):
  from arch_objective.training import local
  tasks = tmp_path / "tasks"
  shutil.copytree(local.local_harness_tasks(), tasks)
  broken = tasks / "world_nli.yaml"
  lines = broken.read_text().splitlines()
  lines[2] += ": : [oops"                              # line 3
  broken.write_text("\n".join(lines) + "\n")
  rc, _, err = _run(["eval", "harness", "--checkpoint", run["model_dir"], "--include_path",
                     str(tasks), "--tasks", "world_nli", "--out", str(tmp_path / "out")],
                    capsys)
  assert rc == 2 and "Traceback" not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith(f"arch-objective eval harness: unknown task(s) ['world_nli']: 1 "
                         f"task YAML file(s) of include_path {tasks} do not parse, and "
                         f"lm-eval skips them: {broken}: line 3, column "), line
  assert "mapping values are not allowed here" in line


@pytest.mark.slow
def test_missing_t0_eval_files_name_every_dataset_once(run, tmp_path, capsys):
  empty = tmp_path / "data"
  empty.mkdir()
  rc, _, err = _run(["eval", "t0", "--checkpoint", run["model_dir"], "--data_dir", str(empty),
                     "--datasets", "super_glue/rte", "super_glue/cb",
                     "--out", str(tmp_path / "out")], capsys)
  assert rc == 2
  line = err.strip().splitlines()[-1]
  assert "Traceback" not in err
  assert line.startswith("arch-objective eval t0: T0-Eval: 2 datasets cannot be read. "
                         f"super_glue/rte validation: no file in {empty}; expected "), line
  assert f". super_glue/cb validation: no file in {empty}; expected " in line
  for name in ("super_glue/rte", "super_glue/cb"):
    assert line.count(f"{name} validation: no file") == 1, line
