"""Local and remote paths (`arch_objective.paths`), and a whole run on a gs:// MODEL_DIR.

The gs:// runs use `fake_bucket`: every storage layer that reads gs:// (etils.epath, which
orbax and `paths` use; orbax's tensorstore gcs driver and its GCS-only helpers; the
TensorBoard writer) is pointed at a local folder, `BUCKET_ROOT/<bucket>/...`. The code
under test sees only gs:// strings, so a path mangled into a local one (or written with
`open`/`os.makedirs`) shows up as a stray folder in the working directory or as a file
missing from the bucket.
"""
import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest

from arch_objective import paths

from helpers import CORPUS, SHARED, VOCAB, needs_data

EVAL_DIR = SHARED / "eval"


# ----------------------------------------------------------------------------------------
# The helper
# ----------------------------------------------------------------------------------------
def test_local_paths_become_absolute_and_remote_ones_stay_verbatim(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert paths.normalize("runs/cd") == str(tmp_path / "runs" / "cd")
  assert paths.normalize("~/runs/cd") == str(tmp_path / "home" / "runs" / "cd")
  assert paths.normalize("/abs/x/") == "/abs/x"
  for remote in ("gs://bucket/runs/cd", "s3://bucket/runs/cd", "az://c/runs/cd"):
    assert paths.normalize(remote) == remote
    assert paths.normalize(remote + "/") == remote
    assert paths.is_remote(remote) and not paths.is_remote(paths.normalize("runs/cd"))
  assert paths.scheme("GS://b/x") == "gs" and paths.scheme("/gcs/b/x") is None
  assert paths.join("gs://b/run", "checkpoints", "12") == "gs://b/run/checkpoints/12"
  assert paths.join("/r", "checkpoints") == os.path.join("/r", "checkpoints")
  assert paths.basename("gs://b/run/checkpoints/12/") == "12"
  assert paths.dirname("gs://b/run/checkpoints/12") == "gs://b/run/checkpoints"
  assert paths.dirname("gs://b/run") == "gs://b"


def test_a_scheme_that_cannot_be_used_is_an_error_naming_the_option():
  with pytest.raises(ValueError, match=r"MODEL_DIR 'memory://x/run' has the scheme "
                                       r"'memory://'.*expected a local path or one of "
                                       r"gs://, s3://, az://"):
    paths.normalize("memory://x/run", "MODEL_DIR")
  with pytest.raises(ValueError, match="'http://'"):
    paths.exists("http://example.com/x")


def test_checkpoints_refuse_schemes_orbax_cannot_write():
  from arch_objective import build_model
  from arch_objective.training import checkpoints, train
  message = r"checkpoints are kept on a local disk or on gs://; found 's3://'"
  with pytest.raises(ValueError, match=r"MODEL_DIR 's3://b/run': " + message):
    train.train(model_dir="s3://b/run", model=build_model("causal_decoder", "tiny"),
                dataset=None, train_steps=1)
  with pytest.raises(checkpoints.CheckpointError, match=message):
    checkpoints.load_params("s3://b/run/checkpoints/4")


def test_local_files_and_trees(tmp_path):
  src = tmp_path / "src"
  paths.makedirs(str(src / "a" / "b"))
  paths.write_text(str(src / "a" / "b" / "x.txt"), "hello")
  paths.write_bytes(str(src / "top.bin"), b"\x00\x01")
  paths.write_text(str(src / "skip.txt"), "no")
  assert paths.isdir(str(src / "a")) and paths.isfile(str(src / "top.bin"))
  assert not paths.isfile(str(src / "a")) and not paths.exists(str(src / "none"))
  assert paths.listdir(str(src)) == ["a", "skip.txt", "top.bin"]
  assert paths.listdir(str(tmp_path / "none")) == []
  paths.copytree(str(src), str(tmp_path / "dst"), skip=("skip.txt",))
  assert paths.read_text(str(tmp_path / "dst" / "a" / "b" / "x.txt")) == "hello"
  assert paths.read_bytes(str(tmp_path / "dst" / "top.bin")) == b"\x00\x01"
  assert not (tmp_path / "dst" / "skip.txt").exists()
  paths.remove(str(tmp_path / "dst" / "top.bin"))
  assert not (tmp_path / "dst" / "top.bin").exists()


# ----------------------------------------------------------------------------------------
# A fake bucket: gs://<bucket>/<key> lives at BUCKET_ROOT/<bucket>/<key>
# ----------------------------------------------------------------------------------------
class FakeBucket:
  def __init__(self, root: pathlib.Path):
    self.root = root

  def local(self, path) -> str:
    path = os.fspath(path)
    return str(self.root / path[len("gs://"):]) if path.startswith("gs://") else path

  def remote(self, path) -> str:
    path = os.fspath(path)
    root = str(self.root)
    return "gs://" + path[len(root) + 1:] if path.startswith(root + "/") else path


def _fake_backend(bucket: FakeBucket):
  """epath's local backend with every gs:// path mapped into the bucket folder."""
  from etils.epath import backend

  class Backend(backend._OsPathBackend):
    def open(self, path, mode):
      return super().open(bucket.local(path), mode)

    def exists(self, path):
      return super().exists(bucket.local(path))

    def isdir(self, path):
      return super().isdir(bucket.local(path))

    def listdir(self, path):
      return super().listdir(bucket.local(path))

    def glob(self, path):
      return [bucket.remote(p) for p in super().glob(bucket.local(path))]

    def walk(self, top, **kwargs):
      for root, dirs, files in super().walk(bucket.local(top), **kwargs):
        yield bucket.remote(root), dirs, files

    def makedirs(self, path, **kwargs):
      return super().makedirs(bucket.local(path), **kwargs)

    def mkdir(self, path, **kwargs):
      return super().mkdir(bucket.local(path), **kwargs)

    def rmtree(self, path):
      return super().rmtree(bucket.local(path))

    def remove(self, path):
      return super().remove(bucket.local(path))

    def rename(self, path, dst):
      return super().rename(bucket.local(path), bucket.local(dst))

    def replace(self, path, dst):
      return super().replace(bucket.local(path), bucket.local(dst))

    def copy(self, path, dst, overwrite):
      return super().copy(bucket.local(path), bucket.local(dst), overwrite)

    def stat(self, path):
      return super().stat(bucket.local(path))

  return Backend()


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """gs:// served from a local folder; the working directory is an empty folder."""
  from etils.epath import gpath
  from orbax.checkpoint._src.path import gcs_utils
  from arch_objective.training import metrics
  bucket = FakeBucket(tmp_path / "bucket_root")
  bucket.root.mkdir()
  fake = _fake_backend(bucket)
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", fake)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                      lambda path: {"driver": "file", "path": bucket.local(path)})
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  monkeypatch.setattr(gcs_utils, "rmtree", lambda path, missing_ok=False: fake.rmtree(path))
  writer = metrics._tensorboard_writer
  monkeypatch.setattr(metrics, "_tensorboard_writer",
                      lambda logdir: writer(bucket.local(logdir)))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield bucket
  assert list(cwd.iterdir()) == [], "something wrote into the working directory"


def test_the_fake_bucket_is_reached_through_paths(fake_bucket):
  paths.makedirs("gs://b/x/y")
  paths.write_text("gs://b/x/y/f.txt", "z")
  assert (fake_bucket.root / "b" / "x" / "y" / "f.txt").read_text() == "z"
  assert paths.listdir("gs://b/x") == ["y"] and paths.isdir("gs://b/x/y")
  paths.copytree("gs://b/x", "gs://b/copy")
  paths.copytree("gs://b/x", str(fake_bucket.root.parent / "local_copy"))
  assert paths.read_text("gs://b/copy/y/f.txt") == "z"
  assert (fake_bucket.root.parent / "local_copy" / "y" / "f.txt").read_text() == "z"


# ----------------------------------------------------------------------------------------
# Train, resume, evaluate, convert and T0-Eval with MODEL_DIR on gs://
# ----------------------------------------------------------------------------------------
def _dataset(**kwargs):
  from arch_objective.training import data, sources
  return data.DatasetConfig(task="local_full_lm", batch_size=2, length=32,
                            source=sources.LocalCorpus(str(CORPUS)), vocabulary=str(VOCAB),
                            **kwargs)


@needs_data
@pytest.mark.slow
def test_train_resume_evaluate_and_convert_on_gs(fake_bucket, capsys):
  from arch_objective import build_model, cli
  from arch_objective.convert import model_dir
  from arch_objective.training import checkpoints, evaluate, train
  model = build_model("causal_decoder", "tiny", dtype="float32")
  run, local = "gs://bucket/runs/cd", fake_bucket.root / "bucket" / "runs" / "cd"
  first = train.train(model_dir=run + "/", model=model, dataset=_dataset(), train_steps=2,
                      save_every=2, log_every=1, progress=False,
                      config_text=lambda: "TRAIN_STEPS = 2\n")
  assert first.model_dir == run and first.last_checkpoint == 2
  assert (local / "checkpoints" / "2" / "commit_success.txt").is_file()   # orbax's gs:// way
  assert (local / "config.gin").read_text() == "TRAIN_STEPS = 2\n"
  assert list((local / "tensorboard").iterdir())
  # Resume: steps 3 and 4 only, on the batches the run would have seen.
  second = train.train(model_dir=run, model=model, dataset=_dataset(), train_steps=4,
                       save_every=2, log_every=1, progress=False)
  assert [h["step"] for h in second.history] == [3, 4]
  rows = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert checkpoints.complete_steps(run + "/checkpoints") == [2, 4]
  params, meta, step = checkpoints.load_params(run)
  assert step == 4 and meta["arch"] == "causal_decoder"
  np.testing.assert_array_equal(
      params["decoder"]["token_embedder"]["embedding"],
      np.asarray(second.state.params["decoder"]["token_embedder"]["embedding"]))

  result = evaluate.evaluate(model_dir=run, model=model, dataset=_dataset(split="validation"),
                             eval_steps=1)
  assert result["path"] == f"{run}/eval/local_full_lm_validation_4.json"
  assert json.loads((local / "eval" / "local_full_lm_validation_4.json").read_text())[
      "step"] == 4

  # A fine-tuning run restores the gs:// checkpoint and records it in its lineage.
  tuned = train.train(model_dir="gs://bucket/runs/tuned", model=model, dataset=_dataset(),
                      train_steps=5, progress=False, restore_checkpoint=run + "/checkpoints/4")
  assert [h["step"] for h in tuned.history] == [5]
  _, tuned_meta, _ = checkpoints.load_params("gs://bucket/runs/tuned")
  assert tuned_meta["lineage"][0]["checkpoint"] == run + "/checkpoints/4"

  # CD -> ND on the bucket; the copy is complete for orbax and readable.
  written = model_dir.switch_arch(run, "non_causal_decoder", "gs://bucket/runs/nd")
  assert written == "gs://bucket/runs/nd/checkpoints/4"
  assert checkpoints.complete_steps("gs://bucket/runs/nd/checkpoints") == [4]
  nd_params, nd_meta, _ = checkpoints.load_params("gs://bucket/runs/nd")
  assert nd_meta["arch"] == "non_causal_decoder" and nd_meta["lineage"][-1]["step"] == 4
  np.testing.assert_array_equal(nd_params["decoder"]["token_embedder"]["embedding"],
                                params["decoder"]["token_embedder"]["embedding"])

  capsys.readouterr()
  assert cli.main(["plan", "--model_dir", "gs://bucket/runs/nd"]) == 0
  plan = json.loads(capsys.readouterr().out)
  assert plan["arch"] == "non_causal_decoder" and plan["lineage"]["step"] == 4

  # Hugging Face export and import through the bucket.
  from arch_objective.convert import hf
  hf.export_hf(params, model.config, "causal_decoder", "gs://bucket/export/cd",
               meta={"vocabulary": str(VOCAB)})
  arch, _, back = hf.import_hf("gs://bucket/export/cd")
  assert arch == "causal_decoder"
  np.testing.assert_array_equal(back["decoder"]["token_embedder"]["embedding"],
                                params["decoder"]["token_embedder"]["embedding"])
  assert hf.read_export_meta("gs://bucket/export/cd") == {"vocabulary": str(VOCAB)}


@needs_data
@pytest.mark.skipif(importlib.util.find_spec("promptsource") is None
                    or not (EVAL_DIR / "super_glue" / "RTE" / "val.jsonl").is_file(),
                    reason="promptsource or the SuperGLUE RTE validation file is missing")
@pytest.mark.slow
def test_eval_t0_reads_and_writes_gs(fake_bucket, capsys):
  import jax
  from arch_objective import build_model, cli
  from arch_objective.convert import model_dir
  model = build_model("encoder_decoder", "tiny", dtype="float32", num_encoder_layers=1,
                      num_decoder_layers=1)
  shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
  params = jax.jit(lambda r: model.get_initial_variables(r, shapes))(
      jax.random.PRNGKey(0))["params"]
  model_dir.write_model_dir("gs://bucket/runs/ed", "encoder_decoder", model.config, params,
                            step=3, vocabulary=str(VOCAB), vocab_size=32100)
  rc = cli.main(["eval", "t0", "--gin_file", "runs/eval_t0.gin",
                 "--checkpoint", "gs://bucket/runs/ed/checkpoints/3",
                 "--data_dir", str(EVAL_DIR), "--datasets", "super_glue/rte",
                 "--max_examples", "2", "--inputs_length", "16", "--targets_length", "4"])
  assert rc == 0, capsys.readouterr().err
  out = fake_bucket.root / "bucket" / "runs" / "ed" / "eval_t0" / "3"
  results = json.loads((out / "results.json").read_text())
  assert results["checkpoint"] == "gs://bucket/runs/ed/checkpoints/3" and results["step"] == 3
  assert (out / "results.md").is_file() and (out / "config.gin").is_file()


@pytest.mark.parametrize("name,inside", [
    ("model-00001-of-00002.safetensors", True), ("sub/../model.safetensors", True),
    ("./a/b", True), ("a/../../b", False), ("../outside/model.safetensors", False),
    ("/etc/passwd", False), ("\\\\server\\share", False), ("gs://bucket/x", False),
    ("a\\..\\..\\b", False), ("..", False)])
def test_stays_inside(name, inside):
  assert paths.stays_inside(name) is inside
