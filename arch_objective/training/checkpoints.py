"""Orbax checkpoints of the train state, the data position and the run's metadata.

`MODEL_DIR/checkpoints/<step>/` holds three items:
  state   the TrainState (params, optimiser state, step), sharded arrays
  data    {"batches": n}: how many batches the run had consumed
  data_state  each process's input pipeline state (`data.Batches.get_state`, one JSON
          file per process, written by grain's orbax handler), so a resumed run
          continues on exactly the batches it would have seen without replaying them
  meta    the architecture, model config and vocabulary, the run's identity (checked on
          resume: `check_identity`) and lineage
Saves are asynchronous; orbax writes each step into a temporary directory that is
renamed into place only when complete (on gs://, marked complete by a
`commit_success.txt` file), so a process killed mid-save leaves the last good checkpoint
as the latest one. A latest checkpoint that cannot be read all the same (a truncated
or deleted file) is moved aside to `<step>.unreadable` by `restore_newest_readable`,
which then restores the newest one that reads. Directories may be local or remote
(`gs://...`, see `paths`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from arch_objective import paths

STATE, DATA, META, DATA_STATE = "state", "data", "meta", "data_state"


class _FrozenState:
  """A data iterator's state as it was when the save was asked for (orbax may write
  it later, while the iterator moves on); what grain's checkpoint handler reads and
  writes, one `process_<i>-of-<n>.json` per process."""

  def __init__(self, state: Optional[dict] = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes):
    self.state = json.loads(state)

  def start_prefetch(self):
    pass


class CheckpointError(ValueError):
  """A checkpoint that is missing or does not fit the model."""


UNREADABLE_SUFFIX = ".unreadable"
_logger = logging.getLogger(__name__)


def checkpoint_path(path: str, what: str) -> str:
  """`paths.normalize(path)`, refusing remote schemes orbax cannot write (it writes
  gs:// through tensorstore's gcs driver and everything else as local files)."""
  path = paths.normalize(path, what)
  if paths.is_remote(path) and paths.scheme(path) != "gs":
    raise CheckpointError(f"{what} {path!r}: checkpoints are kept on a local disk or on "
                          f"gs://; found '{paths.scheme(path)}://'.")
  return path


class Checkpoints:
  """Periodic saves and restores under `directory`."""

  def __init__(self, directory: str, *, keep: Optional[int] = None, async_save: bool = True):
    self.directory = checkpoint_path(directory, "checkpoint directory")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, DATA, META, DATA_STATE))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_position: dict, meta: dict,
           data_state: Optional[dict] = None) -> bool:
    items = {STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_position),
             META: ocp.args.JsonSave(meta)}
    if data_state is not None:
      import grain
      items[DATA_STATE] = grain.checkpoint.CheckpointSave(_FrozenState(data_state))
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def wait(self):
    self._manager.wait_until_finished()

  def restore_newest_readable(self, abstract_state: Any, expected_meta: Optional[dict] = None,
                              log=None, check_meta: Optional[Callable[[dict, int], None]] = None,
                              retries: Optional[int] = None, retry_wait: float = 5.0
                              ) -> tuple[Any, dict, dict]:
    """`restore` of the newest step that reads. A step that fails to read for any reason
    but a mismatch with the run (CheckpointError) is read again `retries` times (default:
    2 on gs://, where a read can fail for a moment; 0 on a local disk), waiting
    `retry_wait * 2**attempt` seconds between tries; a step that still fails is renamed
    `<step>.unreadable`, with a warning naming the error, and the step before it is
    tried. `check_meta(meta, step)` runs before any array is read (see `restore`). The
    warnings go to `log` (default: this module's logger)."""
    log = log or _logger.warning
    if retries is None:
      retries = 2 if paths.is_remote(self.directory) else 0
    while True:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no readable checkpoint left in {self.directory}.")
      try:
        return self._restore_with_retries(abstract_state, step, expected_meta, check_meta,
                                          retries, retry_wait, log)
      except CheckpointError:
        raise
      except Exception as e:  # orbax and tensorstore raise many types for a bad file
        aside = paths.join(self.directory, f"{step}{UNREADABLE_SUFFIX}")
        log(f"warning: checkpoint {self.directory}/{step} cannot be read "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
            f"moved to {aside}; falling back to the newest earlier checkpoint.")
        _move(paths.join(self.directory, str(step)), aside)
        self._manager.reload()

  def _restore_with_retries(self, abstract_state, step, expected_meta, check_meta, retries,
                            retry_wait, log):
    for attempt in range(retries + 1):
      try:
        return self.restore(abstract_state, step, expected_meta, check_meta)
      except CheckpointError:
        raise
      except Exception as e:
        if attempt == retries:
          raise
        wait = retry_wait * 2 ** attempt
        log(f"warning: reading checkpoint {self.directory}/{step} failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); trying again in {wait:g} s "
            f"({attempt + 1} of {retries} retries)")
        time.sleep(wait)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def saved_params(self, step: int) -> Any:
    """The tree of saved parameter metadata (shapes, dtypes) of a step."""
    with _quiet_missing_step_metadata():
      metadata = ocp.StandardCheckpointer().metadata(
          paths.join(self.directory, str(step), STATE))
    return getattr(metadata, "item_metadata", metadata)["params"]

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              expected_meta: Optional[dict] = None,
              check_meta: Optional[Callable[[dict, int], None]] = None
              ) -> tuple[Any, dict, dict]:
    """(state, data position, meta) of `step` (the latest if None) into the shapes and
    shardings of `abstract_state` (a tree of ShapeDtypeStructs with shardings).
    `check_meta(meta, step)` (e.g. the run's identity check) runs on the small meta item
    after the saved shapes were compared (array metadata only) and before any array is
    read, so a refused resume costs no restore."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self.all_steps():
      raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; available "
                            f"steps: {self.all_steps() or 'none'}.")
    meta = self._manager.restore(step, args=ocp.args.Composite(**{
        META: ocp.args.JsonRestore()}))[META]
    if expected_meta is not None:
      check_compatible(meta, expected_meta, f"{self.directory}/{step}")
    check_shapes(self.saved_params(step), abstract_state.params, f"{self.directory}/{step}")
    if check_meta is not None:
      check_meta(meta, step)
    items = {STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}
    # This process's iterator state; absent in checkpoints written before states were
    # saved, or by a run with another number of processes (then each host's share is
    # another range of the corpus and the position is replayed by count).
    has_data_state = paths.exists(paths.join(
        self.directory, str(step), DATA_STATE,
        f"process_{jax.process_index()}-of-{jax.process_count()}.json"))
    if has_data_state:
      import grain
      items[DATA_STATE] = grain.checkpoint.CheckpointRestore(_FrozenState())
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    position = dict(restored[DATA])
    if has_data_state:
      position["state"] = restored[DATA_STATE].state
    return restored[STATE], position, meta


def _move(src: str, dst: str):
  if paths.is_remote(src):
    paths.copytree(src, dst)
    paths.as_path(src).rmtree()
  else:
    os.replace(src, dst)


IDENTITY_FIELDS = ("arch", "size", "task", "batch_size", "lengths", "vocabulary_sha256",
                   "seed")


def check_identity(saved: Optional[dict], current: dict, allow: Sequence[str], where: str):
  """Refuse a resume that changes what the run is (see IDENTITY_FIELDS), naming the field
  with its old and new value, unless the field is in `allow`."""
  if not saved:
    return    # written before identities were recorded
  check_allowed_changes(allow)
  changed = [(k, saved.get(k), current.get(k)) for k in IDENTITY_FIELDS
             if k in saved and k in current and saved[k] != current[k] and k not in allow]
  if changed:
    what = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changed)
    raise CheckpointError(
        f"resuming {where} with a different run: {what}. The data position would point at "
        f"other rows. Use the original settings, a new MODEL_DIR, or accept the change "
        f"explicitly with --gin.train.allow_resume_changes=\"{[k for k, _, _ in changed]}\".")


def check_allowed_changes(allow: Sequence[str]):
  """Refuse an `allow_resume_changes` that names a field that is not an identity field."""
  unknown = sorted(set(allow) - set(IDENTITY_FIELDS))
  if unknown:
    raise ValueError(f"allow_resume_changes: unknown field(s) {unknown}; valid fields: "
                     f"{', '.join(IDENTITY_FIELDS)}.")


def all_finite(tree: Any) -> bool:
  """Whether every floating-point leaf of `tree` is finite (one reduction on device)."""
  import jax.numpy as jnp
  leaves = [x for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(getattr(x, "dtype", np.int32), jnp.floating)]
  if not leaves:
    return True
  return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(
      leaves))


def check_compatible(found: dict, expected: dict, where: str):
  """Raise if the checkpoint's vocabulary or model shapes differ from the run's."""
  for key in ("vocab_size",):
    if key in expected and key in found and found[key] != expected[key]:
      raise CheckpointError(f"checkpoint {where} was trained with {key}={found[key]!r} but "
                            f"this run uses {expected[key]!r}; restore with the same "
                            f"vocabulary or start a new MODEL_DIR.")


def check_shapes(saved_tree: Any, abstract_params: Any, where: str):
  """Compare the saved parameter shapes with the model's, naming the first mismatch."""
  saved = {jax.tree_util.keystr(p): tuple(getattr(x, "shape", ()))
           for p, x in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  wanted = {jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  missing = sorted(set(wanted) - set(saved))
  if missing:
    raise CheckpointError(f"checkpoint {where} lacks {len(missing)} parameter(s) the model "
                          f"needs, e.g. {missing[0]}; it was written by a different "
                          f"architecture or size.")
  for path, shape in wanted.items():
    if saved[path] != shape:
      raise CheckpointError(f"checkpoint {where}: {path} has shape {saved[path]} but the model "
                            f"expects {shape}; check the size and vocabulary options.")


def cast_floating(tree: Any, dtype) -> Any:
  """Cast every floating-point leaf to `dtype` (restore-time dtype casts)."""
  if dtype is None:
    return tree
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x, tree)


def split_checkpoint_path(path: str) -> tuple[str, Optional[int]]:
  """`.../checkpoints/<step>` -> (checkpoints dir, step); a model dir -> (its
  checkpoints dir, None for the latest). Local paths come back absolute, remote ones
  (`gs://...`) verbatim."""
  path = checkpoint_path(path, "checkpoint")
  if paths.basename(path).isdigit():
    return paths.dirname(path), int(paths.basename(path))
  if paths.isdir(paths.join(path, "checkpoints")):
    return paths.join(path, "checkpoints"), None
  return path, None


def complete_steps(directory: str) -> list[int]:
  """The steps of `directory` whose save completed, ascending (orbax's own test: no
  temporary name locally, a `commit_success.txt` on gs://)."""
  if not paths.isdir(directory):
    return []
  return sorted(ocp.path.step.checkpoint_steps(directory))


def step_directory(path: str) -> tuple[str, int]:
  """(`.../checkpoints/<step>`, step) of a checkpoint path (the latest complete step of
  a model directory); CheckpointError if there is none."""
  directory, step = split_checkpoint_path(path)
  if not paths.isdir(directory):
    raise CheckpointError(f"checkpoint {path!r}: no such directory {directory!r}.")
  if step is None:
    steps = complete_steps(directory)
    if not steps:
      raise CheckpointError(f"checkpoint {path!r}: no complete checkpoint in {directory}.")
    step = steps[-1]
  return paths.join(directory, str(step)), step


def load_meta(path: str) -> tuple[dict, int]:
  """(meta, step) of a checkpoint without reading any array: the meta JSON (arch,
  config, vocabulary, lineage; empty if the checkpoint has none)."""
  step_dir, step = step_directory(path)
  meta_path = paths.join(step_dir, META, "metadata")
  meta = json.loads(paths.read_text(meta_path)) if paths.exists(meta_path) else {}
  return meta, step


class _DropMessage(logging.Filter):
  def __init__(self, text: str):
    super().__init__()
    self.text = text

  def filter(self, record: logging.LogRecord) -> bool:
    return self.text not in str(record.msg)


@contextlib.contextmanager
def _quiet_missing_step_metadata():
  """Orbax warns that an item directory has no `_CHECKPOINT_METADATA` (that file lives
  one level up, in the step directory the manager wrote); the warning means nothing here."""
  drop = _DropMessage("Metadata file does not exist")
  logger = logging.getLogger("absl")
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def load_params(path: str, dtype=None) -> tuple[Any, dict, int]:
  """(parameters, meta, step) of a checkpoint, without the optimiser state, as host
  numpy arrays. `path` is a model directory (latest step), its `checkpoints/`
  directory, or `.../checkpoints/<step>`, local or remote."""
  step_dir, step = step_directory(path)
  state_dir = paths.join(step_dir, STATE)
  if not paths.isdir(state_dir):
    raise CheckpointError(f"checkpoint {step_dir} has no '{STATE}' item; is it one of ours?")
  checkpointer = ocp.PyTreeCheckpointer()
  with _quiet_missing_step_metadata():
    saved = checkpointer.metadata(state_dir)
  saved = getattr(saved, "item_metadata", saved)
  if saved is None or "params" not in saved:
    raise CheckpointError(f"checkpoint {state_dir} has no 'params' in its state; found "
                          f"{sorted(saved) if saved else 'nothing'}.")
  item = jax.tree_util.tree_map(lambda m: np.zeros((0,), np.float32), saved["params"])
  restore_args = jax.tree_util.tree_map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray),
                                        saved["params"])
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item={"params": item}, restore_args={"params": restore_args}, partial_restore=True))
  params = cast_floating(restored["params"], dtype)
  meta, _ = load_meta(step_dir)
  return params, meta, step
