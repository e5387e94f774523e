"""`training/checkpoints.py`: a train state saved and restored exactly (with its data
position and meta), a restore that does not fit the run refused before any array is
read and the checks behind it (identity, parameter shapes, state structure, vocabulary),
damaged and missing checkpoints named, a transient read error retried, a full disk
recognised in either form, and the paths a checkpoint is named by."""
import errno
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arch_objective import logs
from arch_objective.training import checkpoints, data, optimizers, train, trainer

from helpers import TENSORSTORE_ENOSPC, needs_data
from helpers import local_dataset as dataset, tiny_float32 as tiny


def toy_state(scale: float = 1.0, step: int = 0, momentum=0.9):
  """A TrainState of two small arrays (`w` = scale * [[0, 1, 2], [3, 4, 5]], `b` = scale
  * [1, 1, 1]) and SGD's optimiser state (a momentum trace unless `momentum` is None)."""
  params = {"decoder": {"w": scale * jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
                        "b": jnp.full((3,), scale, jnp.float32)}}
  state = trainer.TrainState.create(params, optax.sgd(0.1, momentum=momentum))
  return state.replace(step=jnp.asarray(step, jnp.int32))


def restore_target(state):
  """`state` as the ShapeDtypeStructs (on the first device) a restore reads into."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)


# ---------------------------------------------------------------------------
# Saving and restoring
# ---------------------------------------------------------------------------
def test_a_saved_state_restores_exactly_with_its_data_position_and_meta(tmp_path):
  meta = {"arch": "toy", "vocab_size": 10}
  ckpt = checkpoints.Checkpoints(str(tmp_path / "checkpoints"), async_save=False)
  try:
    ckpt.save(1, toy_state(1.0, step=1), {"batches": 1}, meta)
    ckpt.save(2, toy_state(2.0, step=2), {"batches": 2}, meta)
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
    state, position, saved_meta = ckpt.restore(restore_target(toy_state()), 1)
    assert int(state.step) == 1 and position == {"batches": 1} and saved_meta == meta
    np.testing.assert_array_equal(state.params["decoder"]["w"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(state.opt_state[0].trace["decoder"]["b"], [0, 0, 0])
    assert {k: tuple(v.shape) for k, v in ckpt.saved_params(2)["decoder"].items()} == {
        "w": (2, 3), "b": (3,)}
    # The parameters alone (the latest step): the optimiser state is not read, so one of
    # another structure (no momentum) is no obstacle; a full restore refuses it.
    plain = restore_target(toy_state(momentum=None))
    latest, latest_meta = ckpt.restore_params(plain)
    assert int(latest.step) == 2 and latest_meta == meta
    assert latest.opt_state is plain.opt_state
    np.testing.assert_array_equal(latest.params["decoder"]["b"], [2, 2, 2])
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"another structure than this run's \(3 entries differ; the "
                             r"first, opt_state/0: the checkpoint has nothing, this run "
                             r"expects an empty entry\)"):
      ckpt.restore(plain, 2)
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"no checkpoint at step 5 in .*; available steps: \[1, 2\]"):
      ckpt.restore(restore_target(toy_state()), 5)
    with pytest.raises(checkpoints.CheckpointError,
                       match="was trained with vocab_size=10 but this run uses 12"):
      ckpt.restore(restore_target(toy_state()), 2, expected_meta={"vocab_size": 12})
  finally:
    ckpt.close()
  # The one-call readers, from the model directory (its latest step) or a step.
  params, read_meta, step = checkpoints.load_params(str(tmp_path))
  assert step == 2 and read_meta == meta and isinstance(params["decoder"]["w"], np.ndarray)
  np.testing.assert_array_equal(params["decoder"]["w"], [[0, 2, 4], [6, 8, 10]])
  assert checkpoints.load_meta(str(tmp_path / "checkpoints" / "1")) == (meta, 1)
  saved = checkpoints.state_metadata(str(tmp_path / "checkpoints" / "1"))
  assert tuple(saved["params"]["decoder"]["w"].shape) == (2, 3)
  assert checkpoints.complete_steps(str(tmp_path / "checkpoints")) == [1, 2]


@needs_data
@pytest.mark.slow
def test_a_transient_read_error_is_retried_before_a_checkpoint_is_moved_aside(
    tmp_path, monkeypatch, capsys):
  """On gs:// a read can fail for a moment; the newest checkpoint is read again (twice by
  default there) and only moved aside when every try fails."""
  kwargs = dict(model=tiny(), dataset=dataset(), save_every=2, progress=False,
                learning_rate_schedule=optimizers.constant(0.01))
  train.train(model_dir=str(tmp_path), train_steps=4, **kwargs)
  original = checkpoints.Checkpoints.restore
  failures = []

  def flaky(self, *args, **kw):
    if len(failures) < 2:
      failures.append(1)
      raise OSError("503 Service Unavailable")
    return original(self, *args, **kw)

  monkeypatch.setattr(checkpoints.Checkpoints, "restore", flaky)
  first = next(data.batches(dataset(), "causal_decoder"))
  shapes = {k: v.shape for k, v in first.items()}
  tx = optimizers.adafactor(optimizers.constant(0.01))
  abstract = jax.eval_shape(lambda r: trainer.init_state(tiny(), tx, shapes, r),
                            jax.random.PRNGKey(0))
  ckpt = checkpoints.Checkpoints(str(tmp_path / "checkpoints"))
  logs.show_on_stderr()
  capsys.readouterr()
  state, position, _ = ckpt.restore_newest_readable(abstract, retries=2, retry_wait=0)
  ckpt.close()
  assert int(state.step) == 4 and len(failures) == 2
  assert capsys.readouterr().err.count("trying again") == 2
  assert not (tmp_path / "checkpoints" / "4.unreadable").exists()


# ---------------------------------------------------------------------------
# What a resume must fit: the run's identity, the model's shapes, the state's structure
# ---------------------------------------------------------------------------
def test_settings_an_older_checkpoint_did_not_record_are_not_compared():
  """A setting added to the optimizer later (absent from an older checkpoint's identity)
  does not make the resume another run; a recorded one that changed does."""
  saved = {"optimizer": {"name": "adafactor", "decay_rate": 0.8}}
  checkpoints.check_identity(saved, {"optimizer": {"name": "adafactor", "decay_rate": 0.8,
                                                   "new_setting": 3}}, (), "ckpt")
  with pytest.raises(checkpoints.CheckpointError, match="decay_rate': 0.8} -> {'decay_rate"):
    checkpoints.check_identity(saved, {"optimizer": {"name": "adafactor", "decay_rate": 0.5,
                                                     "new_setting": 3}}, (), "ckpt")


def test_only_identity_fields_may_be_allowed_to_change():
  checkpoints.check_allowed_changes(["batch_size", "optimizer"])
  checkpoints.check_allowed_changes([])
  with pytest.raises(ValueError, match=r"allow_resume_changes: unknown field\(s\) "
                                       r"\['batchsize'\]; valid fields: arch, size, task"):
    checkpoints.check_allowed_changes(["batch_size", "batchsize"])


def test_a_checkpoint_of_another_vocabulary_size_is_refused():
  checkpoints.check_compatible({"vocab_size": 10}, {"vocab_size": 10}, "ckpt")
  checkpoints.check_compatible({}, {"vocab_size": 10}, "ckpt")     # recorded none: not compared
  with pytest.raises(checkpoints.CheckpointError,
                     match="checkpoint ckpt was trained with vocab_size=10 but this run uses 12"):
    checkpoints.check_compatible({"vocab_size": 10}, {"vocab_size": 12}, "ckpt")


def test_saved_parameter_shapes_must_be_the_models():
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  saved = {"a": shape(2, 3), "b": shape(4)}
  checkpoints.check_shapes(saved, {"a": shape(2, 3), "b": shape(4)}, "ckpt")
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"checkpoint ckpt lacks 1 parameter\(s\) the model needs, e.g. "
                           r"\['c'\]"):
    checkpoints.check_shapes(saved, {"a": shape(2, 3), "b": shape(4), "c": shape(1)}, "ckpt")
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"checkpoint ckpt: \['a'\] has shape \(2, 3\) but the model "
                           r"expects \(3, 3\)"):
    checkpoints.check_shapes(saved, {"a": shape(3, 3), "b": shape(4)}, "ckpt")


def test_the_state_structure_names_every_array_and_empty_entry():
  state = {"params": {"w": np.zeros((2, 3))},
           "opt_state": ({"v": np.zeros(3)}, optax.EmptyState(), None)}
  assert checkpoints.state_structure(state) == {
      "params/w": (2, 3), "opt_state/0/v": (3,), "opt_state/1": None, "opt_state/2": None}
  checkpoints.check_state_structure(state, state, "ckpt")
  other = {"params": {"w": np.zeros((2, 3))}, "opt_state": ({"v": np.zeros(4)}, None, None)}
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"checkpoint ckpt holds a train state of another structure than "
                           r"this run's \(1 entry differs; the first, opt_state/0/v: the "
                           r"checkpoint has an array of shape \(4,\), this run expects an "
                           r"array of shape \(3,\)\)"):
    checkpoints.check_state_structure(other, state, "ckpt")


def test_all_finite_looks_at_floating_point_leaves_only():
  assert checkpoints.all_finite({"w": jnp.ones((2, 3)), "count": jnp.arange(3)})
  assert checkpoints.all_finite({"count": np.arange(3)})      # nothing floating: finite
  assert checkpoints.all_finite({})
  assert not checkpoints.all_finite({"w": jnp.array([1.0, jnp.nan]), "b": jnp.ones(2)})
  assert not checkpoints.all_finite({"w": jnp.array([jnp.inf], jnp.bfloat16)})


def test_cast_floating_casts_floating_point_leaves_only():
  tree = {"w": np.array([1.5, -2.0], np.float32), "count": np.array([3], np.int32)}
  assert checkpoints.cast_floating(tree, None) is tree
  cast = checkpoints.cast_floating(tree, jnp.bfloat16)
  assert cast["w"].dtype == jnp.bfloat16 and cast["count"].dtype == np.int32
  np.testing.assert_array_equal(cast["w"].astype(np.float32), [1.5, -2.0])
  np.testing.assert_array_equal(cast["count"], [3])


# ---------------------------------------------------------------------------
# Damaged and missing checkpoints
# ---------------------------------------------------------------------------
@needs_data
@pytest.mark.slow
def test_a_truncated_checkpoint_names_what_is_missing(copy_of_base):
  step_dir = copy_of_base / "checkpoints" / "2"
  (step_dir / "state" / "_METADATA").unlink()
  expected = rf"checkpoint {step_dir} .*state/_METADATA missing"
  with pytest.raises(checkpoints.UnreadableCheckpointError, match=expected):
    checkpoints.load_params(str(step_dir))
  ckpt = checkpoints.Checkpoints(str(copy_of_base / "checkpoints"))
  try:
    with pytest.raises(checkpoints.UnreadableCheckpointError, match=expected):
      ckpt.saved_state(2)
  finally:
    ckpt.close()
  shutil.rmtree(step_dir / "meta")
  with pytest.raises(checkpoints.UnreadableCheckpointError,
                     match=rf"checkpoint {step_dir} is incomplete: state/_METADATA, "
                           rf"meta/metadata missing"):
    ckpt = checkpoints.Checkpoints(str(copy_of_base / "checkpoints"))
    try:
      ckpt.restore(None, 2)
    finally:
      ckpt.close()


@needs_data
@pytest.mark.slow
def test_a_missing_step_is_named_with_the_steps_there_are(base_run):
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"no step 99 in .*/checkpoints; steps are \[1, 2\]"):
    checkpoints.load_meta(str(base_run / "checkpoints" / "99"))


# ---------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------
def test_disk_full_error_recognises_both_forms():
  store = ValueError(TENSORSTORE_ENOSPC.format(d="/x"))
  try:
    try:
      raise store
    except ValueError as e:
      raise RuntimeError("Failed to run 5 Handler Commit operations") from e
  except RuntimeError as e:
    assert checkpoints.disk_full_error(e) is store
  full = OSError(errno.ENOSPC, "No space left on device")
  wrapped = RuntimeError("save failed")
  wrapped.__context__ = full
  assert checkpoints.disk_full_error(wrapped) is full
  assert checkpoints.disk_full_error(ValueError("RESOURCE_EXHAUSTED: 429 rate limit")) is None
  assert checkpoints.disk_full_error(OSError(errno.EACCES, "denied")) is None


def test_tree_bytes_counts_the_arrays_of_a_tree():
  tree = {"a": np.zeros((3, 4), np.float32), "b": jnp.zeros((2,), jnp.bfloat16),
          "c": jax.ShapeDtypeStruct((5,), jnp.int8), "step": 3}
  assert checkpoints.tree_bytes(tree) == 3 * 4 * 4 + 2 * 2 + 5      # the int has no dtype
  assert checkpoints.tree_bytes({}) == 0


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------
def test_checkpoints_are_kept_on_a_local_disk_or_gs(tmp_path):
  assert checkpoints.checkpoint_path("gs://bucket/run/", "MODEL_DIR") == "gs://bucket/run"
  assert checkpoints.checkpoint_path("run", "MODEL_DIR") == os.path.abspath("run")
  assert checkpoints.checkpoint_path(str(tmp_path), "MODEL_DIR") == str(tmp_path)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"MODEL_DIR 's3://bucket/run': checkpoints are kept on a local "
                           r"disk or on gs://; found 's3://'"):
    checkpoints.checkpoint_path("s3://bucket/run", "MODEL_DIR")


def test_a_checkpoint_path_splits_into_its_directory_and_step(tmp_path):
  model_dir = tmp_path / "run"
  (model_dir / "checkpoints").mkdir(parents=True)
  ckpts = str(model_dir / "checkpoints")
  assert checkpoints.split_checkpoint_path(str(model_dir)) == (ckpts, None)
  assert checkpoints.split_checkpoint_path(ckpts) == (ckpts, None)
  assert checkpoints.split_checkpoint_path(str(model_dir / "checkpoints" / "7")) == (ckpts, 7)
  assert checkpoints.split_checkpoint_path("gs://bucket/run/checkpoints/12") == (
      "gs://bucket/run/checkpoints", 12)
