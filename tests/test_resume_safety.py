"""A run directory keeps its checkpoints: a resume that does not fit is refused before
anything is read or moved, an unreadable checkpoint is set aside only once an older one
reads (never the last), a full disk stops the run at the failing save, bad options are
refused before training, and an error leaves no background thread behind."""
import errno
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from arch_objective.training import checkpoints, optimizers, train

from helpers import ROOT, TENSORSTORE_ENOSPC, VOCAB, needs_data
from helpers import local_dataset as dataset, tiny_float32 as tiny, train_run as run

SCHEDULE = optimizers.constant(0.01)


def snapshot(model_dir) -> dict:
  """{relative path: size} of every file under `checkpoints/`: equal before and after
  means nothing was moved, renamed, deleted or written."""
  root = pathlib.Path(model_dir) / "checkpoints"
  return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _refused(model_dir, match, **kw):
  before = snapshot(model_dir)
  with pytest.raises(checkpoints.CheckpointError, match=match) as info:
    run(model_dir, steps=3, **kw)
  assert snapshot(model_dir) == before
  assert not list((model_dir / "checkpoints").glob("*" + checkpoints.UNREADABLE_SUFFIX))
  return str(info.value)


# ---------------------------------------------------------------------------
# A resume that does not fit the run: refused, every checkpoint in place
# ---------------------------------------------------------------------------
# (setting, old, new, what a resume with it gets): "structure" where the new setting gives
# the optimiser state of the tiny model another structure (no way to accept it),
# "accepted" where `allow_resume_changes=['optimizer']` then resumes, "offered" where the
# message offers it (step_offset's resume is not trained: its jump in the schedule sends
# the tiny model's loss to infinity).
OPTIMIZER_CHANGES = [("momentum", None, 0.9, "structure"),
                     ("min_dim_size_to_factor", 128, 16, "structure"),
                     ("factored", True, False, "accepted"),     # no tiny dimension >= 128
                     ("clipping_threshold", 1.0, None, "structure"),
                     ("multiply_by_parameter_scale", True, False, "structure"),
                     ("decay_rate", 0.8, 0.5, "accepted"), ("epsilon1", 1e-30, 1e-20, "accepted"),
                     ("step_offset", 0, 10, "offered")]


@needs_data
@pytest.mark.parametrize("field,old,new,outcome", OPTIMIZER_CHANGES,
                         ids=[c[0] for c in OPTIMIZER_CHANGES])
@pytest.mark.slow
def test_a_resume_with_another_optimizer_setting_is_refused_in_place(copy_of_base, field, old,
                                                                     new, outcome):
  """Refused naming the setting; the way to accept the change is offered only where the
  saved state fits the new setting, and there it works."""
  optimizer = functools.partial(optimizers.adafactor, **{field: new})
  message = _refused(copy_of_base, "with a different run", optimizer=optimizer)
  assert f"optimizer: {{'{field}': {old!r}}} -> {{'{field}': {new!r}}}" in message
  if outcome == "structure":
    assert "allow_resume_changes" not in message
    assert "has another structure than this run's, so it cannot be resumed" in message
    return
  assert "allow_resume_changes=\"['optimizer']\"" in message
  if outcome == "accepted":
    result = run(copy_of_base, steps=3, optimizer=optimizer, allow_resume_changes=["optimizer"])
    assert result.last_checkpoint == 3


@needs_data
@pytest.mark.slow
def test_the_optimizer_implementation_is_not_part_of_the_identity(copy_of_base):
  """`implementation='optax'` keeps the numbers and the state of the fused one."""
  meta = json.loads((copy_of_base / "checkpoints" / "2" / "meta" / "metadata").read_text())
  assert meta["identity"]["optimizer"]["name"] == "arch_objective.training.optimizers.adafactor"
  assert "implementation" not in meta["identity"]["optimizer"]
  same = train.optimizer_identity(functools.partial(optimizers.adafactor,
                                                    implementation="optax"))
  assert same == meta["identity"]["optimizer"]


@needs_data
def test_a_gin_configured_optimizer_records_its_bindings():
  import gin
  from arch_objective.training import gin_utils
  gin_utils.register_configurables()
  gin.clear_config()
  try:
    gin.parse_config(["adafactor.momentum = 0.9"])
    identity = train.optimizer_identity(gin.get_configurable("adafactor"))
    assert identity["momentum"] == 0.9 and identity["min_dim_size_to_factor"] == 128
    # The plain function ignores gin's bindings, and so does its identity.
    assert train.optimizer_identity(None)["momentum"] is None
  finally:
    gin.clear_config()


def _other_vocabulary(tmp_path) -> str:
  from sentencepiece import sentencepiece_model_pb2
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(VOCAB.read_bytes())
  proto.pieces[100].score -= 1.0       # same 32000 pieces, another model
  path = tmp_path / "other_vocab.model"
  path.write_bytes(proto.SerializeToString())
  return str(path)


IDENTITY_CHANGES = {
    "arch": (dict(model=tiny("non_causal_decoder")), r"arch: 'causal_decoder' -> "
             r"'non_causal_decoder'"),
    # a decoder-only model has no encoder: its parameters keep their shapes
    "size": (dict(model=tiny(num_encoder_layers=3)),
             r"size: \{'num_encoder_layers': 2\} -> \{'num_encoder_layers': 3\}"),
    "task": (dict(ds=dataset("local_prefix_lm")), r"task: 'local_full_lm' -> "
             r"'local_prefix_lm_decoder'"),
    "batch_size": (dict(ds=dataset(batch_size=8)), r"batch_size: 4 -> 8"),
    "lengths": (dict(ds=dataset(length=32)), r"lengths: .*64.* -> .*32"),
    "vocabulary_sha256": ({}, r"vocabulary_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"),
    "seed": (dict(seed=1), r"seed: \{'train': 0\} -> \{'train': 1\}"),
    "optimizer": (dict(optimizer=functools.partial(optimizers.adafactor, momentum=0.5)),
                  r"optimizer: \{'momentum': None\} -> \{'momentum': 0.5\}"),
}


def test_every_identity_field_has_a_test():
  # denoisers: recorded by UL2 runs only; its refusal is tested in tests/test_ul2.py
  assert sorted(IDENTITY_CHANGES) == sorted(set(checkpoints.IDENTITY_FIELDS) - {"denoisers"})


@needs_data
@pytest.mark.parametrize("field", sorted(IDENTITY_CHANGES))
@pytest.mark.slow
def test_a_resume_that_changes_an_identity_field_is_refused_in_place(copy_of_base, tmp_path,
                                                                    field):
  kw, pattern = IDENTITY_CHANGES[field]
  kw = dict(kw)
  if field == "vocabulary_sha256":
    kw["ds"] = dataset(vocabulary=_other_vocabulary(tmp_path))
  message = _refused(copy_of_base, pattern, **kw)
  assert f"{copy_of_base}/checkpoints/2" in message and "a new MODEL_DIR" in message


@needs_data
@pytest.mark.slow
def test_a_checkpoint_without_a_recorded_optimizer_is_checked_by_its_state_structure(
    copy_of_base):
  """Checkpoints written before the optimizer was recorded still resume with the same
  optimizer; with another, the saved state's structure (orbax metadata only) is
  compared with the run's and the first difference named."""
  for step in (1, 2):
    path = copy_of_base / "checkpoints" / str(step) / "meta" / "metadata"
    meta = json.loads(path.read_text())
    del meta["identity"]["optimizer"]
    path.write_text(json.dumps(meta))
  message = _refused(copy_of_base, "another structure",
                     optimizer=functools.partial(optimizers.adafactor, momentum=0.9))
  assert "the first, opt_state/4/count: the checkpoint has nothing, this run expects an " \
         "array of shape ()" in message
  message = _refused(copy_of_base, "another structure",
                     optimizer=functools.partial(optimizers.adafactor,
                                                 min_dim_size_to_factor=16))
  assert "opt_state/0/v_row/" in message and "the checkpoint has an array of shape (1,), " \
         "this run expects an array of shape (" in message
  result = run(copy_of_base, steps=3)
  assert [h["step"] for h in result.history] == [3]


# ---------------------------------------------------------------------------
# Unreadable checkpoints: never the last one moved
# ---------------------------------------------------------------------------
def _truncate_arrays(step_dir: pathlib.Path):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for p in files:
    p.write_bytes(p.read_bytes()[:16])


@needs_data
@pytest.mark.slow
def test_the_only_checkpoint_is_never_moved_aside(copy_of_base):
  shutil.rmtree(copy_of_base / "checkpoints" / "1")
  _truncate_arrays(copy_of_base / "checkpoints" / "2")
  before = snapshot(copy_of_base)
  with pytest.raises(checkpoints.UnreadableCheckpointError,
                     match=r"checkpoint .*/checkpoints/2 cannot be read: a file under .*/2/state "
                           r"is truncated or damaged.*\. It is the only checkpoint of the run "
                           r"and stays where it is"):
    run(copy_of_base, steps=3)
  assert snapshot(copy_of_base) == before
  # Every checkpoint unreadable: none is moved either.
  shutil.copytree(copy_of_base / "checkpoints" / "2", copy_of_base / "checkpoints" / "1")
  before = snapshot(copy_of_base)
  with pytest.raises(checkpoints.UnreadableCheckpointError,
                     match=r"no checkpoint in .* can be read \(steps \[1, 2\]; the newest: "
                           r"checkpoint .*/2 cannot be read: .*\); all stay where they are"):
    run(copy_of_base, steps=3)
  assert snapshot(copy_of_base) == before


@needs_data
@pytest.mark.slow
def test_running_out_of_memory_in_a_restore_sets_no_checkpoint_aside(copy_of_base, monkeypatch):
  """A restore that runs out of memory says nothing about the files: the error propagates
  and both checkpoints stay where they are (a damaged file would set step 2 aside)."""
  import orbax.checkpoint as ocp
  real = ocp.CheckpointManager.restore

  def restore(self, step, *args, **kw):
    items = getattr(kw.get("args"), "keys", lambda: ())()
    if "state" in items:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0G.")
    return real(self, step, *args, **kw)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
  before = snapshot(copy_of_base)
  with pytest.raises(RuntimeError, match="Out of memory"):
    run(copy_of_base, steps=3)
  assert snapshot(copy_of_base) == before
  assert checkpoints.out_of_memory(MemoryError())
  assert not checkpoints.out_of_memory(ValueError(
      "RESOURCE_EXHAUSTED: write failed: No space left on device"))


def test_only_unreadable_checkpoints_are_not_trained_over_from_step_zero(tmp_path):
  aside = tmp_path / "checkpoints" / ("4" + checkpoints.UNREADABLE_SUFFIX)
  aside.mkdir(parents=True)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"holds no checkpoint, only 4\.unreadable .* move them out of .* "
                           r"\(or use a new MODEL_DIR\) to start afresh"):
    run(tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4.unreadable"]
  assert not (tmp_path / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------
# Options refused before anything starts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, -1, 1.5, "2", True])
def test_keep_checkpoints_must_be_a_positive_integer_or_none(tmp_path, keep):
  with pytest.raises(ValueError, match=r"train.keep_checkpoints must be a positive integer .* "
                                       r"or None .*, found"):
    run(tmp_path / "run", keep_checkpoints=keep)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model_dir", ["", "  "])
def test_an_empty_model_dir_is_refused(tmp_path, monkeypatch, model_dir):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"MODEL_DIR \(train.model_dir\) must name the run's "
                                       r"directory"):
    train.train(model_dir=model_dir, model=tiny(), dataset=dataset(), train_steps=1)
  assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------
def _trained_steps(model_dir) -> list:
  """The steps metrics.jsonl recorded (each step's line is written before its save)."""
  rows = [json.loads(l) for l in (pathlib.Path(model_dir) / "metrics.jsonl").read_text()
          .splitlines()]
  return [r["step"] for r in rows if "split" not in r]


@needs_data
@pytest.mark.parametrize("form", ["tensorstore", "oserror"])
@pytest.mark.slow
def test_a_full_disk_stops_the_run_at_the_failing_save(copy_of_base, monkeypatch, form):
  """A run resumed at step 2 saves step 3, which fails as tensorstore (or the OS)
  reports a full disk: the run stops there with one line, trains no further step, and
  the same command resumes from step 2 once there is space."""
  model_dir = copy_of_base
  directory = model_dir / "checkpoints"
  original = checkpoints.ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 3:
      if form == "tensorstore":
        raise ValueError(TENSORSTORE_ENOSPC.format(d=directory))
      try:
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "3"))
      except OSError as e:
        raise RuntimeError("a checkpoint save failed") from e
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", save)
  before = _trained_steps(model_dir)
  with pytest.raises(checkpoints.DiskFullError) as info:
    run(model_dir, steps=6, log_every=1)
  message = str(info.value)
  assert len(message.splitlines()) == 1
  assert message.startswith(f"no space left on the device for checkpoint {directory}/3; a "
                            f"checkpoint of this run needs about ")
  assert "the last complete checkpoint, step 2, is intact" in message
  assert "run the same command again to resume from it" in message
  assert checkpoints.disk_full_error(info.value) is info.value
  assert _trained_steps(model_dir) == before + [3]     # step 3 trained, its save failed
  assert checkpoints.complete_steps(str(directory)) == [1, 2]
  if form == "tensorstore":
    monkeypatch.undo()
    result = run(model_dir, steps=3)
    assert [h["step"] for h in result.history] == [3]


@needs_data
@pytest.mark.parametrize("how", ["space check", "failed write"])
@pytest.mark.slow
def test_a_full_tmpfs_stops_the_run_at_the_save_that_does_not_fit(tmp_path, monkeypatch, how):
  """A real 40 MB file system (a checkpoint of this model takes 16 MB): the third save
  does not fit; the run stops at step 3 with the first two checkpoints complete. Either
  the space check before the save refuses it, or (told there is room, though too little
  to be sure) the save is waited for and its failed write reported at once."""
  if how == "failed write":
    monkeypatch.setattr(checkpoints, "_free_bytes", lambda directory: 25_000_000)
  mount = tmp_path / "disk"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
  try:
    with pytest.raises(checkpoints.DiskFullError,
                       match=r"no space left on the device for checkpoint .*/3; a checkpoint "
                             r"of this run needs about \d+\.\d MB, \d+\.\d MB free\. Training "
                             r"stopped; the last complete checkpoint, step 2, is intact"):
      run(mount / "run", steps=6, log_every=1)
    assert _trained_steps(mount / "run") == [1, 2, 3]
    assert checkpoints.complete_steps(str(mount / "run" / "checkpoints")) == [1, 2]
  finally:
    subprocess.run(["umount", str(mount)], capture_output=True)


# ---------------------------------------------------------------------------
# One line at the command line, and no thread left behind
# ---------------------------------------------------------------------------
@needs_data
@pytest.mark.slow
def test_a_bad_corpus_is_one_line_with_no_background_thread_traceback(tmp_path):
  corpus = tmp_path / "binary.jsonl"
  corpus.write_bytes(bytes(range(128, 256)) * 64)
  args = [sys.executable, "-m", "arch_objective.cli", "train",
          "--gin_file=models/causal_decoder.gin", "--gin_file=sizes/tiny.gin",
          "--gin_file=objectives/full_lm.gin", "--gin_file=runs/pretrain.gin",
          f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
          "--gin.LENGTH=32", f"--gin.CORPUS='{corpus}'", f"--gin.VOCABULARY='{VOCAB}'",
          "--gin.MIXTURE_OR_TASK_NAME='local_full_lm'", "--gin.EVAL_PERIOD=0"]
  proc = subprocess.run(args, env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"),
                        cwd=str(ROOT), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  # (native libraries may print their own start-up lines before Python logs anything)
  lines = [l for l in proc.stderr.splitlines()
           if not l.startswith(("WARNING: All log messages before absl", "I0000", "W0000"))]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("arch-objective train: ") and "not valid UTF-8" in lines[0]
  assert "Traceback" not in proc.stderr and "cannot schedule new futures" not in proc.stderr


@needs_data
@pytest.mark.slow
def test_a_run_of_other_optimizer_settings_is_evaluated_and_finetuned(tmp_path):
  """Evaluation and a restore that resets the optimiser read the parameters only, so a
  run trained with momentum (another optimiser state) is evaluated, and finetuned with
  the default optimiser, on exactly its parameters."""
  from arch_objective.training import evaluate
  momentum = functools.partial(optimizers.adafactor, momentum=0.9)
  source = tmp_path / "momentum"
  trained = run(source, optimizer=momentum)
  result = evaluate.evaluate(model_dir=str(source), model=tiny(),
                             dataset=dataset(split="validation"), eval_steps=1)
  assert result["step"] == 2 and np.isfinite(result["loss"])
  params, _, _ = checkpoints.load_params(str(source))
  finetuned = train.train(model_dir=str(tmp_path / "mtf"), model=tiny(), dataset=dataset(),
                          train_steps=3, save_every=1, progress=False,
                          learning_rate_schedule=optimizers.constant(0.0),
                          restore_checkpoint=str(source), reset_optimizer=True)
  assert finetuned.last_checkpoint == 3     # one step at rate 0: the parameters stay
  again, _, _ = checkpoints.load_params(str(tmp_path / "mtf"))
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert trained.last_checkpoint == 2
  with pytest.raises(checkpoints.CheckpointError, match="another structure"):
    train.train(model_dir=str(tmp_path / "kept"), model=tiny(), dataset=dataset(),
                train_steps=3, save_every=1, progress=False, learning_rate_schedule=SCHEDULE,
                restore_checkpoint=str(source))
