"""`arch-objective data example` end to end: its corpus and vocabulary train a model,
the checkpoint records the vocabulary absolute (a run from another folder finds it),
`evaluate` says when the split has fewer batches than EVAL_STEPS, and `eval t0
--data_dir DIR/t0_eval` scores the world's held-out suite."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from arch_objective.errors import MissingFile

from helpers import ROOT, run_cli

pytestmark = pytest.mark.slow  # writes the world's data and trains a model

FAMILIES = ["world_nli", "world_coreference", "world_cause_effect", "world_story_ending"]


def _command(argv, cwd, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
             ARCH_OBJECTIVE_COMPILATION_CACHE_DIR="")
  return subprocess.run([sys.executable, "-m", "arch_objective.cli", *argv], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
  """The example data (a shrunk corpus) and a causal decoder trained one step on it, from
  a run in the data folder that names the files relatively."""
  root = tmp_path_factory.mktemp("newcomer")
  data = root / "data"
  done = _command(["data", "example", "--out", str(data), "--corpus_bytes", "200000",
                   "--eval_examples", "20"], cwd=root)
  assert done.returncode == 0, done.stderr[-3000:]
  written = json.loads(done.stdout)
  local = ["--gin.LOCAL_CORPUS='corpus.jsonl'", "--gin.LOCAL_VOCABULARY='spm.model'"]
  done = _command(["train", "--gin_file=experiments/paper/cd_flm.gin",
                   "--gin_file=local.gin", *local, "--gin.LOCAL_STEPS=1",
                   f"--gin.MODEL_DIR='{root / 'cd'}'"], cwd=data)
  assert done.returncode == 0, done.stderr[-3000:]
  return {"root": root, "data": data, "written": written, "model_dir": root / "cd",
          "local": local}


def test_the_example_data_is_written_and_printed(example):
  data, written = example["data"], example["written"]
  assert written["corpus"] == str(data / "corpus.jsonl")
  assert written["vocabulary"] == str(data / "spm.model") and written["vocab_size"] == 500
  assert written["families"] == {f: 20 for f in FAMILIES}
  with open(data / "corpus.jsonl") as f:
    first = json.loads(f.readline())
  assert isinstance(first["text"], str) and first["text"]
  suite = json.loads((data / "t0_eval" / "suite.json").read_text())
  assert sorted(suite["families"]) == sorted(FAMILIES)
  assert "eval t0" in (data / "README.txt").read_text()


def test_the_harness_tasks_are_the_local_overlays_over_the_examples_written(example):
  """`harness_tasks/` holds one lm-eval task per family: the local overlay's task (its
  first prompt) over the first `--eval_examples` examples, its YAML naming its rows."""
  from arch_objective.training import local
  written, overlay = example["data"] / "harness_tasks", local.local_harness_tasks()
  assert sorted(p.name for p in written.iterdir()) == sorted(
      [f"{f}.jsonl" for f in FAMILIES] + [f"{f}.yaml" for f in FAMILIES])
  for family in FAMILIES:
    rows = (written / f"{family}.jsonl").read_text().splitlines()
    full = (pathlib.Path(overlay) / f"{family}.jsonl").read_text().splitlines()
    assert 0 < len(rows) <= 20 and rows == full[:len(rows)], family
    first = json.loads(rows[0])
    assert 0 <= first["gold"] < len(first["choices"]) and first["query"]
    assert f"validation: {written / family}.jsonl" in (written / f"{family}.yaml").read_text()


def test_data_example_refuses_a_folder_with_files(example, capsys):
  rc, _, err = run_cli(capsys, ["data", "example", "--out", str(example["data"])])
  assert rc == 2 and "not an empty directory" in err and "Traceback" not in err


def test_the_corpus_and_vocabulary_feed_data_stats(example, capsys):
  data = example["data"]
  rc, out, err = run_cli(capsys, ["data", "stats", "--task", "local_full_lm", "--corpus",
                                  str(data / "corpus.jsonl"), "--vocabulary",
                                  str(data / "spm.model"), "--length", "64", "--num", "4"])
  assert rc == 0, err
  assert json.loads(out)["corpus_task"] == "local_full_lm"


def test_training_records_the_vocabulary_absolute(example):
  from arch_objective.training import checkpoints
  meta, step = checkpoints.load_meta(str(example["model_dir"]))
  assert step == 1 and meta["vocabulary"] == str(example["data"] / "spm.model")


def test_evaluate_says_it_ran_fewer_batches_than_eval_steps(example):
  done = _command(["evaluate", "--gin_file=models/causal_decoder.gin",
                   "--gin_file=objectives/full_lm.gin", "--gin_file=runs/evaluate.gin",
                   "--gin_file=local.gin", *example["local"], "--gin.EVAL_STEPS=100000",
                   f"--gin.MODEL_DIR='{example['model_dir']}'"], cwd=example["data"])
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout)
  assert result["eval_steps"] == 100000 and 1 <= result["batches"] < 100000
  assert (f"evaluated {result['batches']} of the 100000 asked (EVAL_STEPS)"
          in done.stderr), done.stderr[-3000:]


def test_eval_t0_reads_the_written_suite_from_another_folder(example, tmp_path, capsys,
                                                             monkeypatch):
  monkeypatch.chdir(tmp_path)
  out = tmp_path / "t0"
  rc, _, err = run_cli(capsys, ["eval", "t0", "--checkpoint", str(example["model_dir"]),
                                "--data_dir", str(example["data"] / "t0_eval"),
                                "--max_examples", "2", "--inputs_length", "64",
                                "--targets_length", "16", "--out", str(out)])
  assert rc == 0, err
  results = json.loads((out / "results.json").read_text())
  assert list(results["datasets"]) == FAMILIES
  assert all(r["examples"] == 2 for r in results["datasets"].values())
  assert results["vocabulary"]["path"] == str(example["data"] / "spm.model")


def test_a_missing_suite_file_is_named(example, tmp_path, capsys):
  import shutil
  suite = tmp_path / "t0_eval"
  shutil.copytree(example["data"] / "t0_eval", suite)
  (suite / "world_nli" / "validation.jsonl").unlink()
  (suite / "world_story_ending" / "validation.jsonl").unlink()
  rc, _, err = run_cli(capsys, ["eval", "t0", "--checkpoint", str(example["model_dir"]),
                                "--data_dir", str(suite), "--out", str(tmp_path / "o")])
  line = err.strip().splitlines()[-1]
  assert rc == 2 and "Traceback" not in err
  assert line.count("world_nli") == 1 and line.count("world_story_ending") == 1, line


def test_an_old_relative_vocabulary_is_found_beside_the_model_dir(tmp_path, monkeypatch):
  from arch_objective.training import checkpoints
  model_dir = tmp_path / "run"
  (model_dir / "checkpoints" / "3").mkdir(parents=True)
  (model_dir / "spm.model").write_bytes(b"x")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  meta = {"vocabulary": "spm.model"}
  for checkpoint in (model_dir, model_dir / "checkpoints" / "3"):
    assert checkpoints.recorded_vocabulary(meta, str(checkpoint)) == str(
        model_dir / "spm.model")
  (elsewhere / "spm.model").write_bytes(b"y")          # found from the cwd first
  assert checkpoints.recorded_vocabulary(meta, str(model_dir)) == "spm.model"
  assert checkpoints.recorded_vocabulary({"vocabulary": "gs://b/spm.model"},
                                         str(model_dir)) == "gs://b/spm.model"
  with pytest.raises(MissingFile) as e:
    checkpoints.recorded_vocabulary({"vocabulary": "vocab/t5.model"}, str(model_dir))
  message = str(e.value)
  assert str(elsewhere / "vocab" / "t5.model") in message
  assert str(model_dir / "vocab" / "t5.model") in message and "\n" not in message


def test_the_stored_vocabulary_path_is_absolute_and_remote_paths_stay(tmp_path, monkeypatch):
  from arch_objective.training import checkpoints
  monkeypatch.chdir(tmp_path)
  assert checkpoints.stored_vocabulary_path("spm.model") == str(tmp_path / "spm.model")
  assert checkpoints.stored_vocabulary_path("gs://b/v/spm.model") == "gs://b/v/spm.model"
