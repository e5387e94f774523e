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
once an older one has been read; a checkpoint that reads but does not fit the run (its
identity, its shapes, its optimiser state) is never moved, and neither is the only
one left. Directories may be local or remote (`gs://...`, see `paths`).

A saved model is read through one door, `open_model_dir(path)`: `(model, params, meta,
step)` of MODEL_DIR, MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step>, the model
built from the meta's exact config. Its parts stand alone too: `step_directory` (the
step a path names: the one step resolver), `load_meta` (the meta JSON, no array read)
and `load_params` (the parameters, no optimiser state).

A save that runs out of space (an OSError ENOSPC, or tensorstore's ValueError
`RESOURCE_EXHAUSTED ... No space left on device` that orbax wraps) raises
`DiskFullError`, one line naming the directory and the space a checkpoint needs;
`disk_full_error` finds either form in an exception chain.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from arch_objective import paths
from arch_objective.errors import UserError

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


class CheckpointError(UserError):
  """A checkpoint that is missing or does not fit the model."""


class UnreadableCheckpointError(CheckpointError):
  """A checkpoint whose files are missing, truncated or unreadable (not a mismatch with
  the run: `restore_newest_readable` falls back to an older checkpoint for this one)."""


class DiskFullError(CheckpointError):
  """A save failed for want of space. `str()` is the whole one-line message (the
  directory, the space a checkpoint needs, what to do); `directory`, `needed_bytes`,
  `free_bytes` (None where unknown) and `original` (the error the storage raised) say
  the same to code."""

  def __init__(self, message: str, directory: str, needed_bytes: Optional[int] = None,
               free_bytes: Optional[int] = None, original: Optional[BaseException] = None):
    super().__init__(message)
    self.directory, self.needed_bytes, self.free_bytes = directory, needed_bytes, free_bytes
    self.original = original


_NO_SPACE = "No space left on device"


def disk_full_error(error: Optional[BaseException]) -> Optional[BaseException]:
  """The exception in `error`'s chain (`__cause__`, `__context__`, an exception group's
  members) that says the disk is full, or None: a `DiskFullError`, an OSError with errno
  ENOSPC, or an error whose message says "No space left on device" (tensorstore's
  ValueError `RESOURCE_EXHAUSTED: ... No space left on device`, which orbax re-raises
  from its writer threads)."""
  seen, todo = set(), [error]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno == errno.ENOSPC):
      return e
    if _NO_SPACE in str(e):
      return e
    todo.extend([e.__cause__, e.__context__] + list(getattr(e, "exceptions", None) or ()))
  return None


def tree_bytes(tree: Any) -> int:
  """Bytes of the arrays of `tree` (global sizes: what one checkpoint of it holds,
  before compression)."""
  return int(sum(int(np.prod(getattr(x, "shape", ()))) * np.dtype(x.dtype).itemsize
                 for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype")))


def _megabytes(n: int) -> str:
  return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _free_bytes(directory: str) -> Optional[int]:
  """Free bytes of the local file system holding `directory` (None on gs://)."""
  if paths.is_remote(directory):
    return None
  path = directory
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


class _DropDiskFullNoise(logging.Filter):
  """Drops orbax's tracebacks of a save that ran out of space (one per writer thread
  and item): the save raises `DiskFullError`, which says it once."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return disk_full_error(error) is None and _NO_SPACE not in str(record.msg)


_DISK_FULL_NOISE = _DropDiskFullNoise()


class _DropDamagedReadNoise(logging.Filter):
  """Drops asyncio's "... exception was never retrieved" of tensorstore reads of a
  damaged checkpoint and of writes to a full disk: the read or the save raised, and
  reported it, already."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ("exception was never retrieved" in str(record.msg)
                and isinstance(error, ValueError)
                and ("tensorstore_spec" in str(error) or disk_full_error(error) is not None))


_closed_loop_hook_installed = False


def _quiet_damaged_read_noise():
  """Once per process: drop what a failed read of a damaged checkpoint, or a save to a
  full disk, leaves behind after the read or save itself raised (one error):
  tensorstore callbacks of the other reads, still in flight, that reach orbax's closed
  asyncio loop (`RuntimeError: Event loop is closed` in `call_soon_threadsafe`, through
  `sys.unraisablehook`), and asyncio's never-retrieved tasks of those reads and writes.
  Every other unraisable exception still reaches the hook that was there."""
  global _closed_loop_hook_installed
  if _closed_loop_hook_installed:
    return
  _closed_loop_hook_installed = True
  logging.getLogger("asyncio").addFilter(_DropDamagedReadNoise())
  previous = sys.unraisablehook

  def hook(unraisable):
    error, tb = unraisable.exc_value, unraisable.exc_traceback
    names = set()
    while tb is not None:
      names.add(tb.tb_frame.f_code.co_name)
      tb = tb.tb_next
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
            and "call_soon_threadsafe" in names):
      previous(unraisable)

  sys.unraisablehook = hook


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
  """Periodic saves and restores under `directory`. `close` it on every path (a
  `try/finally`): orbax's background threads must end before the interpreter does."""

  def __init__(self, directory: str, *, keep: Optional[int] = None, async_save: bool = True):
    self.directory = checkpoint_path(directory, "checkpoint directory")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, DATA, META, DATA_STATE))
    self._await_cleanup()
    self._pending: Optional[tuple[int, int]] = None   # (step, bytes) of the save in flight
    logging.getLogger("absl").addFilter(_DISK_FULL_NOISE)
    _quiet_damaged_read_noise()

  def _await_cleanup(self):
    """Wait for the removal of interrupted saves' temporary directories, which orbax
    starts in a thread of its own when it opens the directory (a thread left running
    fails at interpreter shutdown)."""
    wait = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if wait is not None:
      wait()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_position: dict, meta: dict,
           data_state: Optional[dict] = None) -> bool:
    """Start saving `step` (in the background unless `async_save=False`), after the save
    before it has finished. DiskFullError, with nothing written, when the local disk
    holds less free space than the state's bytes (single-process runs); when it holds
    less than twice that, the save is waited for here, so that a write that runs out of
    space all the same stops the run before its next step. DiskFullError too when a
    write runs out of space (this save's or the one before). A failed save leaves the
    checkpoints before it as they were."""
    self.wait()
    needed = tree_bytes(state)
    free = _free_bytes(self.directory) if jax.process_count() == 1 else None
    if free is not None and free < needed:
      raise self._disk_full(step, needed, free, None)
    items = {STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_position),
             META: ocp.args.JsonSave(meta)}
    if data_state is not None:
      import grain
      items[DATA_STATE] = grain.checkpoint.CheckpointSave(_FrozenState(data_state))
    self._pending = (step, needed)
    error = None
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # tensorstore and orbax raise many types for a failed write
      error = self._translate(e)
      if error is e:
        raise
    if error is not None:     # raised outside the handler: one line, not a chain of
      raise error             # tracebacks (`error.original` keeps the storage's error)
    if free is not None and free < 2 * needed:
      self.wait()             # a tight disk: know now whether it fitted
    return saved

  def check_save(self):
    """Raise the error of a background save that has failed already (DiskFullError for a
    full disk), without waiting for one still being written. The training loop calls it
    before each step, so a run whose save failed trains no further."""
    ref = getattr(self._manager, "_finalize_thread", None)
    try:
      failed = ref is not None and ref.map(
          lambda t: t is not None and not t.is_alive() and t.exception is not None)
    except Exception:  # another orbax version: the next save or `close` raises it
      failed = False
    if failed:
      self.wait()

  def wait(self):
    """Wait for the save in flight; a failure is raised (DiskFullError for a full disk)."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # the writer threads' error, re-raised by orbax
      error = self._translate(e)
      if error is e:
        raise
    else:
      self._pending = None
      return
    raise error

  def _translate(self, error: BaseException) -> BaseException:
    """A DiskFullError for an error that says the disk is full, else `error`."""
    full = disk_full_error(error)
    if full is None or isinstance(full, DiskFullError):
      return error if full is None else full
    step, needed = self._pending or (None, None)
    self._pending = None
    return self._disk_full(step, needed, _free_bytes(self.directory), full)

  def _disk_full(self, step: Optional[int], needed: Optional[int], free: Optional[int],
                 original: Optional[BaseException]) -> DiskFullError:
    target = f"{self.directory}/{step}" if step is not None else self.directory
    size = (f"; a checkpoint of this run needs about {_megabytes(needed)}"
            if needed else "")
    if free is not None:
      size += f", {_megabytes(free)} free"
    done = [s for s in complete_steps(self.directory) if s != step]
    last = (f"the last complete checkpoint, step {done[-1]}, is intact" if done else
            "no checkpoint was completed before it")
    return DiskFullError(
        f"no space left on the device for checkpoint {target}{size}. Training stopped; "
        f"{last}. Free space on that disk (or keep fewer checkpoints with "
        f"train.keep_checkpoints) and run the same command again"
        f"{' to resume from it' if done else ''}.", self.directory, needed, free, original)

  def restore_newest_readable(self, abstract_state: Any, expected_meta: Optional[dict] = None,
                              log=None, check_meta: Optional[Callable[[dict, int], None]] = None,
                              retries: Optional[int] = None, retry_wait: float = 5.0
                              ) -> tuple[Any, dict, dict]:
    """`restore` of the newest step that reads.

    A step that does not fit the run (a CheckpointError other than
    UnreadableCheckpointError: its identity, shapes or state structure, all checked
    before any array is read, see `restore`) is refused at once, and nothing is moved.
    A step that fails to read (missing or truncated files, any error of orbax or
    tensorstore) is read again `retries` times (default: 2 on gs://, where a read can
    fail for a moment; 0 on a local disk), waiting `retry_wait * 2**attempt` seconds
    between tries, then the step before it is tried. Only once an older step has been
    restored are the newer unreadable ones renamed `<step>.unreadable`, each with a
    warning naming its error; when no step reads, UnreadableCheckpointError names them
    and every checkpoint stays where it is (a directory never loses its last
    checkpoint this way). The warnings go to `log` (default: this module's logger).
    """
    log = log or _logger.warning
    if retries is None:
      retries = 2 if paths.is_remote(self.directory) else 0
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}.")
    failed: list[tuple[int, BaseException]] = []
    for step in steps:
      try:
        result = self._restore_with_retries(abstract_state, step, expected_meta, check_meta,
                                            retries, retry_wait, log)
      except UnreadableCheckpointError as e:
        failed.append((step, e))
      except CheckpointError:
        raise
      except Exception as e:  # orbax and tensorstore raise many types for a bad file
        if out_of_memory(e):
          raise
        failed.append((step, e))
      else:
        for bad, error in failed:
          aside = paths.join(self.directory, f"{bad}{UNREADABLE_SUFFIX}")
          log(f"warning: checkpoint {self.directory}/{bad} cannot be read "
              f"({_first_line(error)}); moved to {aside}; resumed from step {step}, the "
              f"newest checkpoint that reads.")
          _move(paths.join(self.directory, str(bad)), aside)
        if failed:
          self._manager.reload()
        return result
    step, error = failed[0]
    why = (str(error).rstrip(".") if isinstance(error, UnreadableCheckpointError) else
           f"checkpoint {self.directory}/{step} cannot be read ({_first_line(error)})")
    if len(steps) == 1:
      raise UnreadableCheckpointError(
          f"{why}. It is the only checkpoint of the run and stays where it is: repair or "
          f"restore its files, or move it away (or use a new MODEL_DIR) to start afresh.")
    raise UnreadableCheckpointError(
        f"no checkpoint in {self.directory} can be read (steps {sorted(steps)}; the newest: "
        f"{why}); all stay where they are. Repair or restore their files, or move them "
        f"away (or use a new MODEL_DIR) to start afresh.")

  def _restore_with_retries(self, abstract_state, step, expected_meta, check_meta, retries,
                            retry_wait, log):
    for attempt in range(retries + 1):
      try:
        return self.restore(abstract_state, step, expected_meta, check_meta)
      except CheckpointError as e:
        if not isinstance(e, UnreadableCheckpointError) or attempt == retries:
          raise
        error = e
      except Exception as e:
        if attempt == retries or out_of_memory(e):
          raise
        error = e
      wait = retry_wait * 2 ** attempt
      log(f"warning: reading checkpoint {self.directory}/{step} failed "
          f"({_first_line(error, 200)}); trying again in {wait:g} s ({attempt + 1} of "
          f"{retries} retries)")
      time.sleep(wait)

  def close(self, raise_errors: bool = True):
    """Wait for the last save, then end orbax's threads. The save's failure is raised
    (DiskFullError for a full disk) if `raise_errors`; with False (the caller is handling
    another error already) it is logged at debug level. The threads end either way."""
    error = None
    try:
      self.wait()
    except Exception as e:
      error = e
      ref = getattr(self._manager, "_finalize_thread", None)
      if ref is not None and hasattr(ref, "set"):
        ref.set(None)     # its error is taken: let the manager's `close` run to the end
    self._await_cleanup()
    try:
      self._manager.close()
    except Exception as e:
      error = error or e
    if error is not None:
      if raise_errors:
        raise error
      _logger.debug(f"closing {self.directory}: {_first_line(error)}")

  def saved_state(self, step: int) -> Any:
    """The tree of the saved train state's array metadata (shapes, dtypes) of a step,
    read without any array; UnreadableCheckpointError naming what is missing if it
    cannot be read."""
    return _state_metadata(paths.join(self.directory, str(step)))

  def saved_params(self, step: int) -> Any:
    """The tree of saved parameter metadata (shapes, dtypes) of a step."""
    return self.saved_state(step)["params"]

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              expected_meta: Optional[dict] = None,
              check_meta: Optional[Callable[[dict, int], None]] = None
              ) -> tuple[Any, dict, dict]:
    """(state, data position, meta) of `step` (the latest if None) into the shapes and
    shardings of `abstract_state` (a tree of ShapeDtypeStructs with shardings).

    Before any array is read: the meta item (`expected_meta`'s vocab_size), the saved
    parameter shapes, `check_meta(meta, step)` (e.g. the run's identity check), then
    the whole saved state's structure against `abstract_state` (optimiser state
    included; `check_state_structure`), so a refused resume costs no restore. A step
    with missing files raises UnreadableCheckpointError naming them."""
    step, where, meta = self._checked_step(step, expected_meta)
    saved = self.saved_state(step)
    check_shapes(saved["params"], abstract_state.params, where)
    try:
      check_state_structure(saved, abstract_state, where)
      other_structure = None
    except CheckpointError as e:
      other_structure = e
    if check_meta is not None:
      try:
        check_meta(meta, step)
      except IdentityError as e:
        if other_structure is None:
          raise
        # Accepting the change cannot help: the saved state does not fit this run's.
        raise CheckpointError(f"{e.head}Its optimiser state has another structure than this "
                              f"run's, so it cannot be resumed with these settings: use the "
                              f"original settings or a new MODEL_DIR.") from None
    if other_structure is not None:
      raise other_structure
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
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax and tensorstore raise many types for a bad file
      if out_of_memory(e):   # the files may be fine: not a reason to set them aside
        raise
      raise UnreadableCheckpointError(f"checkpoint {where} cannot be read (a file under it "
                                      f"is truncated or damaged: {_first_line(e, 200)}).") from e
    if restored[DATA] is None:
      raise UnreadableCheckpointError(f"checkpoint {where} is incomplete: its {DATA} item "
                                      f"(the data position) cannot be read.")
    position = dict(restored[DATA])
    if has_data_state:
      position["state"] = restored[DATA_STATE].state
    return restored[STATE], position, meta


  def _checked_step(self, step: Optional[int], expected_meta: Optional[dict]
                    ) -> tuple[int, str, dict]:
    """(step, its directory, its meta) of `step` (the latest if None), once its files
    are all there and its meta fits `expected_meta` (`check_compatible`)."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self.all_steps():
      raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; available "
                            f"steps: {self.all_steps() or 'none'}.")
    where = f"{self.directory}/{step}"
    missing = _missing_files(where)
    if missing:
      raise UnreadableCheckpointError(f"checkpoint {where} is incomplete: "
                                      f"{', '.join(missing)} missing (a truncated copy or a "
                                      f"deleted file).")
    meta = _read_meta(where)
    if expected_meta is not None:
      check_compatible(meta, expected_meta, where)
    return step, where, meta

  def restore_params(self, abstract_state: Any, step: Optional[int] = None,
                     expected_meta: Optional[dict] = None) -> tuple[Any, dict]:
    """(state, meta) of `step` (the latest if None) with the parameters and the step
    counter read into the shapes and shardings of `abstract_state` and its `opt_state`
    left as `abstract_state` has it (abstract): what evaluation and a restore that resets
    the optimiser need. The optimiser state is not read, so a checkpoint written with
    other optimiser settings reads all the same. Checks as `restore` (files, meta,
    parameter shapes)."""
    step, where, meta = self._checked_step(step, expected_meta)
    check_shapes(self.saved_state(step)["params"], abstract_state.params, where)
    wanted = {"params": abstract_state.params, "step": abstract_state.step}
    restore_args = jax.tree_util.tree_map(
        lambda x: ocp.ArrayRestoreArgs(sharding=getattr(x, "sharding", None),
                                       global_shape=x.shape, dtype=x.dtype), wanted)
    _quiet_damaged_read_noise()
    try:
      with _quiet_missing_step_metadata():
        restored = ocp.PyTreeCheckpointer().restore(
            paths.join(where, STATE), args=ocp.args.PyTreeRestore(
                item=wanted, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # orbax and tensorstore raise many types for a bad file
      raise UnreadableCheckpointError(f"checkpoint {where} cannot be read (a file under it "
                                      f"is truncated or damaged: {_first_line(e, 200)}).") from e
    state = type(abstract_state)(step=restored["step"], params=restored["params"],
                                 opt_state=abstract_state.opt_state)
    return state, meta


def out_of_memory(error: BaseException) -> bool:
  """Whether `error` says memory (host or device) ran out: XLA's `RESOURCE_EXHAUSTED: Out
  of memory ...` or Python's MemoryError. A restore that fails so says nothing about the
  checkpoint's files."""
  if isinstance(error, MemoryError):
    return True
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text and "memory" in text.lower() and _NO_SPACE not in text


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = str(error).splitlines()[0][:limit] if str(error) else ""
  return f"{type(error).__name__}: {text}"


def _missing_files(step_dir: str) -> list[str]:
  """The files a complete checkpoint step holds that `step_dir` lacks, as
  `item/file` names (an OCDBT state: its manifest and data folder too)."""
  needed = [f"{STATE}/_METADATA", f"{META}/metadata", f"{DATA}/metadata"]
  state_dir = paths.join(step_dir, STATE)
  if not paths.isdir(state_dir):
    return [f"{STATE}/ (the train state)"] + needed[1:]
  names = paths.listdir(state_dir)
  if any(str(n).startswith("ocdbt.process_") or n == "manifest.ocdbt" for n in names):
    needed += [f"{STATE}/manifest.ocdbt", f"{STATE}/d"]
    for n in names:
      if str(n).startswith("ocdbt.process_"):
        needed += [f"{STATE}/{n}/manifest.ocdbt", f"{STATE}/{n}/d"]
  return [f for f in needed if not paths.exists(paths.join(step_dir, f))]


def state_metadata(path: str) -> Any:
  """The saved train state's metadata tree (shapes, dtypes; no array read) of a
  checkpoint path (`step_directory`'s forms); UnreadableCheckpointError naming what is
  missing or damaged."""
  return _state_metadata(step_directory(path)[0])


def _state_metadata(step_dir: str) -> Any:
  """The saved train state's metadata tree of a step directory (no array read)."""
  state_dir = paths.join(step_dir, STATE)
  if not paths.isdir(state_dir):
    raise UnreadableCheckpointError(f"checkpoint {step_dir} has no '{STATE}' item (the "
                                    f"train state); is it a complete checkpoint of ours?")
  missing = _missing_files(step_dir)
  metadata, error = None, None
  _quiet_damaged_read_noise()
  try:
    with _quiet_missing_step_metadata():
      metadata = ocp.PyTreeCheckpointer().metadata(state_dir)
  except Exception as e:  # orbax and tensorstore raise many types for a bad file
    error = e
  item = getattr(metadata, "item_metadata", metadata)
  if item is None or error is not None or not hasattr(item, "keys"):
    why = (f"{', '.join(missing)} missing" if missing else
           f"a file under {state_dir} is truncated or damaged" +
           (f" ({_first_line(error, 200)})" if error is not None else ""))
    raise UnreadableCheckpointError(f"checkpoint {step_dir} cannot be read: {why}; the "
                                    f"metadata of its train state is unreadable.")
  if "params" not in item:
    raise CheckpointError(f"checkpoint {state_dir} has no 'params' in its state; found "
                          f"{sorted(item.keys())}. Is it a checkpoint of ours?")
  return item


def _move(src: str, dst: str):
  if paths.is_remote(src):
    paths.copytree(src, dst)
    paths.as_path(src).rmtree()
  else:
    os.replace(src, dst)


IDENTITY_FIELDS = ("arch", "size", "task", "batch_size", "lengths", "vocabulary_sha256",
                   "seed", "optimizer", "denoisers")
# The identity fields whose change would move the data position onto other rows.
_DATA_FIELDS = ("task", "batch_size", "lengths", "vocabulary_sha256", "seed", "denoisers")
_ABSENT = object()


def _difference(old: Any, new: Any) -> str:
  """`old -> new`; of two dicts only the keys whose values differ."""
  if isinstance(old, dict) and isinstance(new, dict):
    keys = [k for k in list(old) + [k for k in new if k not in old]
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)]
    old, new = ({k: d[k] for k in keys if k in d} for d in (old, new))
  return f"{old!r} -> {new!r}"


def check_identity(saved: Optional[dict], current: dict, allow: Sequence[str], where: str):
  """Refuse a resume that changes what the run is (see IDENTITY_FIELDS), naming each
  changed field with its old and new value (of a dict field, e.g. `optimizer`, the keys
  that changed), unless the field is in `allow`. A field the checkpoint did not record
  (written before it was part of the identity) is not compared."""
  if not saved:
    return    # written before identities were recorded
  check_allowed_changes(allow)
  changed = [(k, saved.get(k), current.get(k)) for k in IDENTITY_FIELDS
             if k in saved and k in current and not _same(k, saved[k], current[k])
             and k not in allow]
  if changed:
    what = "; ".join(f"{k}: {_difference(old, new)}" for k, old, new in changed)
    why = []
    if any(k in _DATA_FIELDS for k, _, _ in changed):
      why.append("The data position would point at other rows.")
    if any(k == "optimizer" for k, _, _ in changed):
      why.append("The optimiser state in the checkpoint was built with the old settings.")
    head = f"resuming {where} with a different run: {what}. {' '.join(why) + ' ' if why else ''}"
    raise IdentityError(
        head + f"Use the original settings, a new MODEL_DIR, or accept the change explicitly "
        f"with --gin.train.allow_resume_changes=\"{[k for k, _, _ in changed]}\".", head)


class IdentityError(CheckpointError):
  """A resume that changes the run's identity (`check_identity`); `head` is the message
  without the way to accept the change."""

  def __init__(self, message: str, head: str):
    super().__init__(message)
    self.head = head


def _same(field: str, old: Any, new: Any) -> bool:
  """Whether an identity field kept its value. Of the optimizer's settings only those
  both sides recorded are compared: a setting added to the optimizer later (absent from
  older checkpoints) does not make a resume another run."""
  if field == "optimizer" and isinstance(old, dict) and isinstance(new, dict):
    return all(old[k] == new[k] for k in set(old) & set(new))
  return old == new


def check_allowed_changes(allow: Sequence[str]):
  """Refuse an `allow_resume_changes` that names a field that is not an identity field."""
  unknown = sorted(set(allow) - set(IDENTITY_FIELDS))
  if unknown:
    raise UserError(f"allow_resume_changes: unknown field(s) {unknown}; valid fields: "
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


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _is_empty(x: Any) -> bool:
  return x is None or (isinstance(x, (tuple, list, dict)) and len(x) == 0)


def state_structure(tree: Any) -> dict[str, Optional[tuple]]:
  """`{path: shape}` of every array of a train state, or of its saved metadata tree, and
  `{path: None}` of every empty entry (an optax EmptyState, which orbax saves as None);
  paths read `opt_state/0/v_row/decoder/...` in both, so the two compare equal exactly
  when the saved state restores into the abstract one."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_empty)[0]
  return {"/".join(_key_name(k) for k in path):
          None if _is_empty(x) else tuple(getattr(x, "shape", ())) for path, x in leaves}


def _describe_entry(entry: Any) -> str:
  if entry is _ABSENT:
    return "nothing"
  return "an empty entry" if entry is None else f"an array of shape {entry}"


def check_state_structure(saved_tree: Any, abstract_state: Any, where: str):
  """Refuse a saved train state (its metadata tree: no array is read) whose structure
  or shapes differ from `abstract_state`'s, the optimiser state included, naming how
  many entries differ and the first one, saved vs. expected."""
  saved, wanted = state_structure(saved_tree), state_structure(abstract_state)
  if saved == wanted:
    return
  order = list(wanted) + [p for p in saved if p not in wanted]
  diffs = [p for p in order if saved.get(p, _ABSENT) != wanted.get(p, _ABSENT)]
  first = diffs[0]
  raise CheckpointError(
      f"checkpoint {where} holds a train state of another structure than this run's "
      f"({len(diffs)} entr{'y differs' if len(diffs) == 1 else 'ies differ'}; the first, "
      f"{first}: the checkpoint has {_describe_entry(saved.get(first, _ABSENT))}, this "
      f"run expects {_describe_entry(wanted.get(first, _ABSENT))}). It was written with "
      f"other optimizer settings (e.g. adafactor.momentum, factored, "
      f"min_dim_size_to_factor, clipping_threshold, multiply_by_parameter_scale, or "
      f"another train.optimizer) or another model: resume with the settings that wrote "
      f"it, or use a new MODEL_DIR.")


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
    answered = " (the storage answered: it does not exist)" if paths.is_remote(
        directory) else ""
    raise CheckpointError(f"checkpoint {path!r}: no such directory {directory!r}"
                          f"{answered}.")
  steps = complete_steps(directory)
  if step is None:
    if not steps:
      raise CheckpointError(f"checkpoint {path!r}: no complete checkpoint in {directory}.")
    step = steps[-1]
  elif step not in steps:
    if paths.isdir(paths.join(directory, str(step))):
      raise CheckpointError(f"checkpoint {path!r}: step {step} in {directory} is incomplete "
                            f"(its save did not finish); complete steps are {steps}.")
    raise CheckpointError(f"checkpoint {path!r}: no step {step} in {directory}; steps are "
                          f"{steps}. Give one of them, or the model directory for the "
                          f"latest.")
  return paths.join(directory, str(step)), step


def load_meta(path: str) -> tuple[dict, int]:
  """(meta, step) of a checkpoint path (`step_directory`'s forms) without reading any
  array: the meta JSON (arch, config, vocabulary, lineage; empty if the checkpoint has
  none). A meta file that is not a JSON object is an UnreadableCheckpointError naming
  it."""
  step_dir, step = step_directory(path)
  return _read_meta(step_dir), step


def stored_vocabulary_path(vocabulary: Optional[str]) -> Optional[str]:
  """The vocabulary path a checkpoint's meta records: a local one absolute (`~`
  expanded), so that the checkpoint is evaluated from any folder; gs:// and other remote
  paths unchanged."""
  return None if vocabulary is None else paths.normalize(vocabulary, "vocabulary")


def recorded_vocabulary(meta: dict, checkpoint: str) -> Optional[str]:
  """The vocabulary `meta` (of `checkpoint`, a model directory or one of its steps)
  records, as a path that can be opened: remote and absolute paths as recorded; a
  relative one (older checkpoints stored it as typed) from the current folder if it
  exists there, else from the model directory. MissingFile naming both places when
  neither holds it; None when the meta records none."""
  from arch_objective.errors import MissingFile
  recorded = meta.get("vocabulary")
  if not recorded or paths.is_remote(recorded):
    return recorded
  expanded = os.path.expanduser(recorded)
  if os.path.isabs(expanded) or os.path.exists(expanded):
    return expanded
  directory, _ = split_checkpoint_path(checkpoint)
  model_dir = (paths.dirname(directory) if paths.basename(directory) == "checkpoints"
               else directory)
  beside = paths.join(model_dir, expanded)
  if paths.exists(beside):
    return beside
  raise MissingFile(f"checkpoint {checkpoint}: its recorded vocabulary {recorded!r} is a "
                    f"relative path found neither from the current folder "
                    f"({os.path.abspath(expanded)}) nor from the model directory "
                    f"({beside}); give the SentencePiece model with --vocabulary.")


def _read_meta(step_dir: str) -> dict:
  """The meta JSON of a step directory (empty if it has none): what `load_meta` and a
  restore read."""
  meta_path = paths.join(step_dir, META, "metadata")
  if not paths.exists(meta_path):
    return {}
  try:
    meta = json.loads(paths.read_text(meta_path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UnreadableCheckpointError(f"checkpoint {step_dir}: its {META}/metadata is not "
                                    f"valid JSON ({e}).") from None
  if not isinstance(meta, dict):
    raise UnreadableCheckpointError(f"checkpoint {step_dir}: its {META}/metadata holds no "
                                    f"JSON object (found {type(meta).__name__}).")
  return meta


class _DropMessage(logging.Filter):
  def __init__(self, text: str):
    super().__init__()
    self.text = text

  def filter(self, record: logging.LogRecord) -> bool:
    return self.text not in str(record.msg)


@contextlib.contextmanager
def _quiet_missing_step_metadata():
  """Orbax warns that an item directory has no `_CHECKPOINT_METADATA` (that file lives
  one level up, in the step directory the manager wrote), which means nothing here, and
  that it failed to read a damaged item's metadata, which the caller raises itself."""
  drops = [_DropMessage("Metadata file does not exist"),
           _DropMessage("Failed to get item metadata")]   # (a damaged one: we raise)
  logger = logging.getLogger("absl")
  for drop in drops:
    logger.addFilter(drop)
  try:
    yield
  finally:
    for drop in drops:
      logger.removeFilter(drop)


def load_params(path: str, dtype=None) -> tuple[Any, dict, int]:
  """(parameters, meta, step) of a checkpoint, without the optimiser state, as host
  numpy arrays. `path` is a model directory (latest step), its `checkpoints/`
  directory, or `.../checkpoints/<step>`, local or remote."""
  step_dir, step = step_directory(path)
  state_dir = paths.join(step_dir, STATE)
  saved = _state_metadata(step_dir)
  item = jax.tree_util.tree_map(lambda m: np.zeros((0,), np.float32), saved["params"])
  restore_args = jax.tree_util.tree_map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray),
                                        saved["params"])
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"params": item}, restore_args={"params": restore_args}, partial_restore=True))
  except Exception as e:  # orbax and tensorstore raise many types for a bad file
    missing = _missing_files(step_dir)
    why = (f"{', '.join(missing)} missing" if missing else
           f"a file under {state_dir} is truncated or damaged")
    raise UnreadableCheckpointError(f"checkpoint {step_dir}: its parameters cannot be read "
                                    f"({why}: {_first_line(e, 200)}).") from e
  params = cast_floating(restored["params"], dtype)
  meta, _ = load_meta(step_dir)
  return params, meta, step


def open_model_dir(path: str, step: Optional[int] = None, *, arch: Optional[str] = None,
                   dtype: Optional[str] = None, reference: bool = False,
                   read_params: bool = True) -> tuple[Any, Optional[Any], dict, int]:
  """`(model, params, meta, step)` of a model directory: the one door through which
  evaluation, conversion and `plan` read a saved model.

  `path` is MODEL_DIR (its latest complete step, or `step`), MODEL_DIR/checkpoints, or
  MODEL_DIR/checkpoints/<step> (then `step`, if given, must be that step); local or
  gs://. The model is built from the meta's arch and exact config
  (`models.from_meta`: a field that decides the model and is missing is refused,
  naming it; only the execution options may be absent) before any array is read, so a
  bad `arch` or config fails at once. `arch` may read a causal decoder as the
  non-causal one or back; `dtype` sets the activation dtype (None: as trained);
  `reference` builds it as scoring runs it (no dropout, the execution options at their
  defaults). `params` is the saved parameter tree as host numpy arrays, as saved
  (float32; no optimiser state), or None with `read_params=False` (the meta alone is
  read). `meta` is the saved meta JSON, `step` the step read. CheckpointError for a
  path without that checkpoint, UnreadableCheckpointError for damaged files,
  `paths.Unreachable` for remote storage that does not answer (credentials, network).
  """
  from arch_objective import models
  where = path
  if step is not None:
    directory, named = split_checkpoint_path(path)
    if named is not None and named != step:
      raise CheckpointError(f"checkpoint {path!r} is step {named}; step {step} names "
                            f"another. Give the model directory, or one of the two alone.")
    path = paths.join(directory, str(step))
  step_dir, step = step_directory(path)
  meta, _ = load_meta(step_dir)
  options = {} if dtype is None else {"dtype": dtype}
  model = models.from_meta(meta, where, arch, reference=reference, **options)
  if not read_params:
    return model, None, meta, step
  params, meta, _ = load_params(step_dir)
  return model, params, meta, step
