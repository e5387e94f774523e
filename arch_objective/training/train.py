"""`train()`: the training loop around the pure `trainer.train_step`, configured by gin.

The loop only places things on devices, compiles, and keeps the books: it takes the
directory's lock (one writer per MODEL_DIR), restores the newest readable checkpoint in
`model_dir` (state and data position, after checking that the run is the same run) or
initialises, runs the jitted step, logs, evaluates, saves finite states only, stops
cleanly on a non-finite loss, and on SIGTERM/SIGINT finishes its step, saves and returns.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import logging
import math
import numbers
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arch_objective import architectures, models, paths
from arch_objective.errors import UserError, integer_at_least
from arch_objective.training import (checkpoints, data, metrics as metrics_lib, optimizers,
                                     partitioning, preemption, run_lock, trainer)

Hook = Callable[[int, dict], None]

# Dense bf16 peak FLOP/s per device, for the model-FLOPs-utilisation estimate.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
              "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


class NonFiniteLossError(UserError, RuntimeError):
  """Training produced a NaN or infinite loss (or parameters)."""

# Model config fields that make the run's size (what a resume must not change).
SIZE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
               "num_encoder_layers", "num_decoder_layers")


@dataclasses.dataclass
class TrainResult:
  state: Any
  history: list[dict]           # one summary per step of this run
  model_dir: str
  last_checkpoint: Optional[int]
  stopped_by: Optional[str] = None   # the signal that stopped the run early, if one did


log = logging.getLogger(__name__)


def _check_int(name: str, value, minimum: int, macro: str = ""):
  """A clear error for a wrong type or range (gin passes whatever was written)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise UserError(f"{name}{f' ({macro})' if macro else ''} must be an integer, found "
                    f"{value!r} ({type(value).__name__}).")
  if value < minimum:
    raise UserError(f"{name}{f' ({macro})' if macro else ''} must be >= {minimum}, found "
                    f"{value}.")


def _file_sha256(path: str) -> str:
  return hashlib.sha256(paths.read_bytes(path)).hexdigest()


def run_identity(model, dataset: data.DatasetConfig, spec, vocab, input_shapes: dict,
                 seed: int, optimizer: Optional[Callable] = None) -> dict:
  """What a resume in the same MODEL_DIR must keep (`checkpoints.IDENTITY_FIELDS`);
  `optimizer` is `train`'s (see `optimizer_identity`)."""
  identity = {"arch": model.name,
              "size": {k: getattr(model.config, k) for k in SIZE_FIELDS},
              "task": spec.name, "batch_size": dataset.batch_size,
              "lengths": {k: list(v[1:]) for k, v in sorted(input_shapes.items())},
              "vocabulary_sha256": _file_sha256(vocab.path),
              "seed": {"train": seed, "data": dataset.seed},
              "optimizer": optimizer_identity(optimizer)}
  if getattr(spec, "kind", None) == "ul2":    # UL2's mixture decides which rows come
    identity["denoisers"] = [[d.kind, d.mean_span, d.density, d.rate]
                             for d in spec.denoisers]
  return identity


# Optimizer arguments a resume may change: the learning rate (the schedule, given to
# `train` on its own) and the implementation (`optimizers.adafactor`'s "fused" and
# "optax" compute the same numbers and keep the same state).
_FREE_OPTIMIZER_ARGS = ("learning_rate", "implementation")


def _jsonable(value: Any) -> Any:
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return repr(value)


def optimizer_identity(optimizer: Optional[Callable] = None) -> dict:
  """The optimizer settings a resume must keep: `{"name": "<module>.<function>",
  <argument>: value, ...}` of the function that builds the optimizer from the schedule
  (`optimizer`, default `optimizers.adafactor`): its defaults, updated by the keywords
  of a `functools.partial` and, for a gin configurable (`train.optimizer = @adafactor`),
  by the gin bindings it is called with. The schedule and the implementation are left
  out (`_FREE_OPTIMIZER_ARGS`); values are JSON (others by their repr)."""
  fn, given = optimizer or optimizers.adafactor, {}
  while isinstance(fn, functools.partial):
    given = {**fn.keywords, **given}
    fn = fn.func
  base = inspect.unwrap(fn)
  gin = sys.modules.get("gin")
  if base is not fn and gin is not None:   # gin's wrapper calls `base` with its bindings
    try:
      given = {**gin.get_bindings(fn), **given}
    except Exception:  # a wrapper that is not gin's: its arguments are unknown
      pass
  try:
    parameters = inspect.signature(base).parameters.values()
  except (TypeError, ValueError):  # a builtin or a class without a signature
    parameters = ()
  values = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
  values.update(given)
  name = f"{getattr(base, '__module__', '')}.{getattr(base, '__qualname__', repr(base))}"
  return {"name": name, **{k: _jsonable(v) for k, v in sorted(values.items())
                           if k not in _FREE_OPTIMIZER_ARGS}}


def _lock(model_dir: str, is_chief: bool) -> Optional[run_lock.RunLock]:
  """Process 0 takes the run's lock; on multi-host runs every process learns whether it
  did, so all of them stop together when another run holds the directory."""
  lock, error = None, None
  if is_chief:
    lock = run_lock.RunLock(model_dir)
    try:
      lock.acquire()
    except run_lock.RunLockError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if int(failed) and error is None:
      error = run_lock.RunLockError(f"MODEL_DIR {model_dir} is in use by another run "
                                    f"(see process 0's error).")
  if error is not None:
    raise error
  return lock


def _check_model_dir(model_dir: str) -> str:
  """`model_dir` normalised (local: absolute; gs://: verbatim), created, and proved
  writable."""
  model_dir = checkpoints.checkpoint_path(model_dir, "MODEL_DIR")
  probe = paths.join(model_dir, f".write_probe_{jax.process_index()}_{os.getpid()}")
  try:
    paths.makedirs(model_dir)
    paths.write_text(probe, "ok")
    paths.remove(probe)
  except Exception as e:  # the storage backends raise their own error types
    reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
    raise UserError(f"MODEL_DIR {model_dir!r} cannot be written ({reason}); choose a "
                    f"directory you can write to (--gin.MODEL_DIR=...).") from e
  return model_dir


def state_shardings(partitioner: partitioning.Partitioner, model, abstract_state,
                    input_shapes) -> Any:
  """NamedShardings of the train state: parameters by their logical axes; optimiser
  leaves like the parameter they belong to when shaped like it, else replicated."""
  param_shardings = partitioner.logical_to_mesh(model.logical_axes(input_shapes)["params"])
  partitioner.check_divisible(abstract_state.params, param_shardings)
  by_path = {jax.tree_util.keystr(p): (s, leaf.shape) for (p, s), leaf in zip(
      jax.tree_util.tree_flatten_with_path(param_shardings)[0],
      jax.tree_util.tree_leaves(abstract_state.params))}
  replicated = partitioner.replicated()

  def opt_sharding(path, leaf):
    key = jax.tree_util.keystr(path)
    for param_path, (sharding, shape) in by_path.items():
      if key.endswith(param_path) and tuple(leaf.shape) == tuple(shape):
        return sharding
    return replicated

  opt = jax.tree_util.tree_map_with_path(opt_sharding, abstract_state.opt_state)
  return trainer.TrainState(step=replicated, params=param_shardings, opt_state=opt)


def _with_shardings(abstract, shardings):
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _peak_flops(device) -> Optional[float]:
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_FLOPS.items():
    if kind.startswith(name):
      return flops
  return None


def train(*, model_dir: str, model: models.BaseModel, dataset: data.DatasetConfig,
          train_steps: int, learning_rate_schedule: Optional[Callable] = None,
          optimizer: Optional[Callable] = None, num_microbatches: int = 1,
          mesh_data: int = -1, mesh_model: int = 1, fsdp: bool = False,
          save_every: int = 1000, keep_checkpoints: Optional[int] = None,
          async_checkpoints: bool = True, eval_dataset: Optional[data.DatasetConfig] = None,
          eval_every: int = 0, eval_steps: int = 10, eval_split: str = "validation",
          log_every: int = 10, seed: int = 0, run_steps: Optional[int] = None,
          hooks: Sequence[Hook] = (), progress: bool = True,
          devices: Optional[Sequence[Any]] = None,
          restore_checkpoint: Optional[str] = None, restore_dtype: Optional[str] = None,
          reset_step: bool = False, reset_optimizer: bool = False, reset_schedule: bool = False,
          allow_resume_changes: Sequence[str] = (),
          config_text: Optional[Callable[[], str]] = None) -> TrainResult:
  """Train `model` on `dataset` until `train_steps` (counting restored steps).

  A run in a `model_dir` that holds checkpoints resumes from the latest one, on the
  batches it would have seen. Otherwise `restore_checkpoint` (a `.../checkpoints/<step>`
  directory, or a model directory for its latest step) gives the initial train state:
  parameters, optimiser state and step continue, as t5x's fine-tuning does, the data
  starts afresh, parameters are cast to `restore_dtype` if given, and the source is
  appended to the run's lineage. `reset_step` restarts the step counter at 0 (then
  `train_steps` counts this run's steps), `reset_optimizer` restarts Adafactor's second
  moments, `reset_schedule` the learning-rate schedule and Adafactor's decay.
  `learning_rate_schedule` defaults to the paper's 1/sqrt(max(step, 1e4));
  `optimizer(schedule)` to t5x's Adafactor.

  Validation (t5x's `eval_period`): every `eval_every` steps, the loss and token accuracy
  over `eval_steps` batches of `eval_dataset` (default: `dataset` on `eval_split`) go to
  metrics.jsonl and TensorBoard with split 'validation'.

  `run_steps` stops this invocation after that many steps (a checkpoint is saved there)
  even when `train_steps` is further: the step counter, schedule and `train_steps` stay
  what they are, so a later run continues where it stopped (the local overlay,
  `gin/local.gin`, uses it to try any experiment file for a few steps).

  Robustness: one run writes a `model_dir` at a time (`run_lock`); a resume that changes
  the run's identity (architecture, size, task, batch size, lengths, vocabulary file,
  seeds, optimizer settings: `optimizer_identity`) is refused unless the changed fields
  are in `allow_resume_changes`, and one whose saved train state (the optimiser state
  included) has another structure is refused too, before any array is read or any
  checkpoint moved; a state with non-finite parameters is never saved; an unreadable
  latest checkpoint is moved aside once an older one has been restored (never the only
  one: then the run stops, naming it), and a `checkpoints/` that holds only such
  `<step>.unreadable` directories is refused rather than trained over from step 0; a
  save that runs out of disk space stops the run (`checkpoints.DiskFullError`; on a
  local disk before its next step, see `Checkpoints.save`), the checkpoints before it
  intact; SIGTERM or SIGINT
  finishes the current step, saves, and returns (`TrainResult.stopped_by`). Orbax's
  background threads are ended on every exit, error or not.
  `keep_checkpoints` is a positive integer (the newest ones kept) or None (all).
  """
  _check_int("train_steps", train_steps, 1, "TRAIN_STEPS")
  _check_int("save_every", save_every, 1, "SAVE_EVERY")
  if run_steps is not None:
    _check_int("run_steps", run_steps, 1)
  _check_int("eval_every", eval_every, 0, "EVAL_PERIOD")
  if eval_every:
    _check_int("eval_steps", eval_steps, 1, "EVAL_STEPS")
  _check_int("num_microbatches", num_microbatches, 1, "NUM_MICROBATCHES")
  _check_int("log_every", log_every, 1)
  _check_int("seed", seed, 0)
  if keep_checkpoints is not None and not integer_at_least(keep_checkpoints, 1):
    raise UserError(f"train.keep_checkpoints must be a positive integer (how many of the "
                    f"newest checkpoints to keep) or None (keep all), found "
                    f"{keep_checkpoints!r}; e.g. --gin.train.keep_checkpoints=3.")
  if isinstance(model_dir, os.PathLike):
    model_dir = os.fspath(model_dir)
  if not isinstance(model_dir, str) or not model_dir.strip():
    raise UserError(f"MODEL_DIR (train.model_dir) must name the run's directory, found "
                    f"{model_dir!r}; give one, e.g. --gin.MODEL_DIR=\"'/tmp/my_run'\" (an "
                    f"empty one would write into the current directory).")
  checkpoints.check_allowed_changes(tuple(allow_resume_changes))
  model_dir = _check_model_dir(model_dir)
  is_chief = jax.process_index() == 0
  lock = _lock(model_dir, is_chief)
  try:
    return _train(
        model_dir=model_dir, model=model, dataset=dataset, train_steps=train_steps,
        learning_rate_schedule=learning_rate_schedule, optimizer=optimizer,
        num_microbatches=num_microbatches, mesh_data=mesh_data, mesh_model=mesh_model,
        fsdp=fsdp, save_every=save_every, keep_checkpoints=keep_checkpoints,
        async_checkpoints=async_checkpoints, eval_dataset=eval_dataset,
        eval_every=eval_every, eval_steps=eval_steps, eval_split=eval_split,
        log_every=log_every, seed=seed, run_steps=run_steps, hooks=hooks, progress=progress,
        devices=devices, restore_checkpoint=restore_checkpoint, restore_dtype=restore_dtype,
        reset_step=reset_step, reset_optimizer=reset_optimizer,
        reset_schedule=reset_schedule, allow_resume_changes=tuple(allow_resume_changes),
        config_text=config_text, is_chief=is_chief, lock=lock)
  finally:
    if lock is not None:
      lock.release()


def _train(*, model_dir, model, dataset, train_steps, learning_rate_schedule, optimizer,
           num_microbatches, mesh_data, mesh_model, fsdp, save_every, keep_checkpoints,
           async_checkpoints, eval_dataset, eval_every, eval_steps, eval_split, log_every,
           seed, run_steps, hooks, progress, devices, restore_checkpoint, restore_dtype,
           reset_step, reset_optimizer, reset_schedule, allow_resume_changes, config_text,
           is_chief, lock) -> TrainResult:
  mesh = partitioning.make_mesh(mesh_data, mesh_model, devices)
  partitioner = partitioning.Partitioner(mesh, fsdp)
  partitioner.check_batch_size(dataset.batch_size)

  spec = dataset.spec(model.name)
  vocab = spec.vocab()
  if model.config.vocab_size < vocab.vocab_size:
    raise UserError(f"the model's vocab_size {model.config.vocab_size} is smaller than the "
                    f"vocabulary {vocab.path!r} ({vocab.vocab_size} ids with extra ids); set "
                    f"build_model.vocab_size to at least {vocab.vocab_size} (e.g. "
                    f"{-(-vocab.vocab_size // 128) * 128}).")
  schedule = learning_rate_schedule or optimizers.rsqrt_decay()
  tx = (optimizer or optimizers.adafactor)(schedule)
  meta = {"arch": model.name, "config": dataclasses.asdict(model.config),
          "vocabulary": checkpoints.stored_vocabulary_path(vocab.path),
          "vocab_size": vocab.vocab_size, "task": spec.name}

  ckpt = checkpoints.Checkpoints(paths.join(model_dir, "checkpoints"), keep=keep_checkpoints,
                                 async_save=async_checkpoints)
  with _closing(ckpt) as opened:     # on every exit: orbax's threads must end
    start_step = ckpt.latest_step() or 0
    if not start_step:
      _refuse_only_unreadable(ckpt.directory)
    shard = dict(shard_index=jax.process_index(), num_shards=jax.process_count())
    batches = data.batches(dataset, model.name, **shard)
    first = next(batches)
    input_shapes = {k: (dataset.batch_size,) + v.shape[1:] for k, v in first.items()}
    meta["identity"] = run_identity(model, dataset, spec, vocab, input_shapes, seed, optimizer)

    rng = jax.random.PRNGKey(seed)
    init_fn = lambda r: trainer.init_state(model, tx, input_shapes, r)
    abstract = jax.eval_shape(init_fn, rng)
    shardings = state_shardings(partitioner, model, abstract, input_shapes)
    target = _with_shardings(abstract, shardings)
    with partitioner.activation_context():
      if start_step:
        check = lambda saved, step: checkpoints.check_identity(
            saved.get("identity"), meta["identity"], allow_resume_changes,
            f"{ckpt.directory}/{step}")
        state, position, saved_meta = ckpt.restore_newest_readable(
            target, expected_meta=meta, check_meta=check)
        start_step = ckpt.latest_step()
        meta["lineage"] = saved_meta.get("lineage", [])
        batches.set_state(position.get("state") or {"batches": int(position["batches"])})
        pending = []
        log.info(f"resumed from step {start_step} ({ckpt.directory})")
      elif restore_checkpoint:
        state, meta["lineage"] = _restore_initial(restore_checkpoint, target, meta,
                                                  params_only=reset_optimizer)
        state = jax.device_put(_reset(state, tx, reset_step, reset_optimizer, reset_schedule),
                               shardings)
        state = dataclasses.replace(state, params=checkpoints.cast_floating(state.params,
                                                                             restore_dtype))
        start_step = int(state.step)
        pending = [first]
        position = {"batches": 0}
      else:
        state = jax.jit(init_fn, out_shardings=shardings)(rng)
        pending = [first]
        position = {"batches": 0}
    data_position = int(position["batches"])
    stop_step = train_steps if run_steps is None else min(train_steps, start_step + run_steps)
    if eval_every and eval_dataset is None:
      eval_dataset = dataclasses.replace(dataset, split=eval_split)
    if eval_every and stop_step // eval_every > start_step // eval_every:
      _check_eval_dataset(eval_dataset, model.name)   # this run validates at least once

    batch_shardings = {k: partitioner.batch_sharding() for k in first}
    step_fn = jax.jit(
        lambda s, b, r: trainer.train_step(model, tx, schedule, num_microbatches, s, b, r),
        in_shardings=(shardings, batch_shardings, partitioner.replicated()),
        out_shardings=(shardings, partitioner.replicated()), donate_argnums=(0,))

    writer = metrics_lib.MetricsWriter(model_dir, enabled=is_chief, resume_step=start_step)
    opened.append(writer)
    bar = metrics_lib.Progress(stop_step, start_step, enabled=progress and is_chief)
    flops_per_token = models.training_flops_per_token(
        model, *_lengths(model, input_shapes))
    peak = _peak_flops(jax.devices()[0])
    history: list[dict] = []
    last_saved = start_step or None
    step = start_step
    window_t, window_tokens = time.time(), 0.0
    stopped_by = None
    with preemption.StopSignals() as stop:
      for step in range(start_step, stop_step):
        ckpt.check_save()     # a background save that failed stops the run here
        local = pending.pop() if pending else next(batches)
        batch = partitioner.shard_batch(local)
        t0 = time.time()
        with partitioner.activation_context():
          new_state, step_metrics = step_fn(state, batch, rng)
        summary = trainer.summarize(step_metrics)
        if not math.isfinite(summary["loss"]):
          raise NonFiniteLossError(
              f"the loss is {summary['loss']} at step {step + 1}; training stopped. "
              f"{_last_good(ckpt, last_saved)}; lower the learning rate or check the data of "
              f"that step.")
        state = new_state
        data_position += 1
        summary["step_time"] = time.time() - t0
        window_tokens += summary["num_tokens"]
        history.append({"step": step + 1, **summary})
        if step == start_step and is_chief and config_text is not None:
          _write_config(model_dir, config_text(), start_step)
        done = step + 1
        if done % log_every == 0 or done == stop_step:
          elapsed = time.time() - window_t
          tokens_per_s = window_tokens / max(elapsed, 1e-9)
          scalars = dict(summary, tokens_per_second=tokens_per_s)
          if peak:
            scalars["mfu"] = tokens_per_s * flops_per_token / (peak * jax.device_count())
          writer.write(done, scalars)
          window_t, window_tokens = time.time(), 0.0
          bar.update(done, summary["loss_per_token"], force_line=True)
        else:
          bar.update(done, summary["loss_per_token"])
        if done % save_every == 0 or done == stop_step:
          last_saved = _save(ckpt, done, state, data_position, batches, meta, summary,
                             last_saved)
        if lock is not None:
          lock.heartbeat()
        if eval_every and done % eval_every == 0:
          validation = evaluate_params(model, state.params, eval_dataset, eval_steps,
                                       partitioner)
          writer.write(done, validation, split="validation")
          if is_chief and progress:
            log.info(f"step {done}: validation loss/token {validation['loss_per_token']:.4f}, "
                  f"accuracy {validation['accuracy']:.4f} ({validation['batches']} batches)")
        for hook in hooks:
          hook(done, summary)
        if stop.requested():
          if last_saved != done:
            last_saved = _save(ckpt, done, state, data_position, batches, meta, summary,
                             last_saved)
          stopped_by = stop.signal_name
          break
    if stopped_by and is_chief:
      log.warning(f"stopped by {stopped_by} after step {step + 1} of {train_steps}; checkpoint "
                  f"saved in {ckpt.directory}/{last_saved}. Run the same command again to "
                  f"resume there.")
    return TrainResult(state=state, history=history, model_dir=model_dir,
                       last_checkpoint=last_saved, stopped_by=stopped_by)


@contextlib.contextmanager
def _closing(ckpt: checkpoints.Checkpoints):
  """Close what is appended to the yielded list (the metrics file), then `ckpt`, waiting
  for its last save, on any exit. On an error path a failed save is not raised over the
  error in flight; on success it is (DiskFullError for a full disk)."""
  opened: list = []
  try:
    yield opened
  except BaseException:
    for thing in reversed(opened):
      try:
        thing.close()
      except Exception as e:  # the error in flight is the one to report
        log.debug(f"closing {thing!r}: {e}")
    ckpt.close(raise_errors=False)
    raise
  try:
    for thing in reversed(opened):
      thing.close()
  finally:
    ckpt.close()      # the last save is waited for even if a writer fails to close


def _refuse_only_unreadable(directory: str):
  """Refuse to start from step 0 in a checkpoint directory that holds no checkpoint but
  `<step>.unreadable` ones (set aside because they could not be read)."""
  if not paths.isdir(directory):
    return
  aside = sorted((n for n in paths.listdir(directory)
                  if str(n).endswith(checkpoints.UNREADABLE_SUFFIX)),
                 key=lambda n: (len(str(n)), str(n)))
  if aside:
    raise checkpoints.CheckpointError(
        f"{directory} holds no checkpoint, only {', '.join(map(str, aside))} (set aside "
        f"because they could not be read); training will not start over them from step "
        f"0. Repair and rename one back to its step to resume, or move them out of "
        f"{directory} (or use a new MODEL_DIR) to start afresh.")


def _save(ckpt, done: int, state, data_position: int, batches: data.Batches, meta: dict,
          summary: dict, last_saved: Optional[int]) -> int:
  """Save step `done` if its parameters are finite (else NonFiniteLossError); returns it."""
  if not checkpoints.all_finite(state.params):
    raise NonFiniteLossError(
        f"the parameters are not finite after step {done} (the loss of that step, "
        f"{summary['loss']:.4g}, was computed before the update); not saved. "
        f"{_last_good(ckpt, last_saved)}; lower the learning rate or check the data of "
        f"that step.")
  ckpt.save(done, state, {"batches": data_position}, meta, data_state=batches.get_state())
  return done


def _last_good(ckpt, last_saved: Optional[int]) -> str:
  if last_saved is None:
    return f"No checkpoint was saved in {ckpt.directory} yet"
  return (f"The last good checkpoint is step {last_saved} in {ckpt.directory} and stays "
          f"restorable")


def _write_config(model_dir: str, text: str, start_step: int):
  """`config.gin` of the run; a resume with another config keeps the first one and
  writes its own beside it as `config-<start step>.gin`."""
  path = paths.join(model_dir, "config.gin")
  if start_step and paths.exists(path):
    if paths.read_text(path) == text:
      return
    path = paths.join(model_dir, f"config-{start_step}.gin")
  paths.write_text(path, text)


def _reset(state, tx, reset_step: bool, reset_optimizer: bool, reset_schedule: bool):
  """Apply the restore options (see `train`) to a restored state."""
  count = state.opt_state
  if reset_optimizer:
    fresh = jax.jit(tx.init)(state.params)
    count = trainer.set_optimizer_count(fresh, int(state.step))
  if reset_schedule:
    count = trainer.set_optimizer_count(count, 0)
  step = jnp.zeros_like(state.step) if reset_step else state.step
  return trainer.TrainState(step=step, params=state.params, opt_state=count)


def _restore_initial(path: str, target, meta: dict, params_only: bool = False
                     ) -> tuple[Any, list]:
  """(state, lineage) of the checkpoint a run starts from (`restore_checkpoint`); with
  `params_only` (the optimiser is reset) its optimiser state is not read, so it may have
  been written with other optimiser settings.

  The lineage is the restored checkpoint's own, plus one entry for it: `checkpoint`
  (its path), `step`, `arch`, `task`, and `tokens_seen` (`tokens_seen` of its meta and
  data position: the tokens its parameters were trained on, its own lineage included),
  left out where that checkpoint cannot say (no identity in its meta, or a lineage entry
  of its own without `tokens_seen`: `evaluation/sweep.py` then falls back)."""
  directory, step = checkpoints.split_checkpoint_path(path)
  if not paths.isdir(directory):
    raise checkpoints.CheckpointError(f"restore_checkpoint {path!r}: no such checkpoint "
                                      f"directory {directory!r}.")
  if not checkpoints.complete_steps(directory):
    raise checkpoints.CheckpointError(
        f"restore_checkpoint {path!r} (INITIAL_CHECKPOINT_PATH): no checkpoint in "
        f"{directory}; give the MODEL_DIR of a trained run, its checkpoints/ directory or "
        f"one .../checkpoints/<step>.")
  if step is not None:
    checkpoints.step_directory(path)    # a step that is not there: names those that are
  source = checkpoints.Checkpoints(directory)
  try:
    if params_only:
      state, saved = source.restore_params(target, step, expected_meta=meta)
      position = None
    else:
      state, position, saved = source.restore(target, step, expected_meta=meta)
  finally:
    source.close()
  step_dir = paths.join(directory, str(int(state.step)))
  entry = {"checkpoint": step_dir, "step": int(state.step), "arch": saved.get("arch"),
           "task": saved.get("task")}
  batches = (position or {}).get("batches")
  tokens = tokens_seen(saved, batches if batches is not None else data_batches(step_dir))
  if tokens is not None:
    entry["tokens_seen"] = tokens
  if saved.get("arch") != meta["arch"]:
    log.info(f"restoring a {saved.get('arch')} checkpoint into a {meta['arch']} model (the "
          f"parameter trees match)")
  return state, saved.get("lineage", []) + [entry]


def data_batches(step_dir: str) -> Optional[int]:
  """The data position a checkpoint records (`checkpoints/<step>/data`: the batches its
  run consumed, restored steps not counted), or None where it records none."""
  import json
  path = paths.join(step_dir, checkpoints.DATA, "metadata")
  if not paths.exists(path):
    return None
  try:
    batches = json.loads(paths.read_text(path)).get("batches")
  except (ValueError, AttributeError):
    return None
  return int(batches) if integer_at_least(batches, 0) else None


def tokens_per_step(meta: dict) -> Optional[int]:
  """Tokens one training step of the run that wrote `meta` reads: the identity's
  `batch_size` rows x the tokens of a row at its `lengths` (`Architecture.row_tokens`:
  the decoder length, or inputs + targets); None where the meta has no identity (a
  converted checkpoint). E.g. the paper's CD:FLM: 2048 x 626 = 1,282,048."""
  identity = meta.get("identity") or {}
  batch_size, lengths = identity.get("batch_size"), identity.get("lengths")
  spec = architectures.find(identity.get("arch") or meta.get("arch"))
  if spec is None or not integer_at_least(batch_size, 1) or not isinstance(lengths, dict):
    return None
  shapes = {feature: [batch_size] + list(length) for feature, length in lengths.items()}
  try:
    return int(batch_size) * spec.row_tokens(spec.lengths_of(shapes))
  except (UserError, TypeError, IndexError):
    return None


def tokens_seen(meta: dict, batches: Optional[int]) -> Optional[int]:
  """Tokens the parameters of a checkpoint were trained on: `batches` (its data
  position, `data_batches`) x `tokens_per_step(meta)`, plus the restored checkpoint's
  (the last lineage entry's `tokens_seen`: an adapted or finetuned run counts what it
  started from). None where a part is not recorded: no identity, no data position, or a
  last lineage entry without `tokens_seen` (written before it was recorded)."""
  per_step = tokens_per_step(meta)
  if per_step is None or batches is None:
    return None
  lineage = meta.get("lineage") or []
  before = lineage[-1].get("tokens_seen") if lineage else 0
  if before is None:
    return None
  return int(batches) * per_step + int(before)


def _lengths(model, input_shapes) -> tuple[int, int, int]:
  """(length, inputs_length, targets_length) of `models.training_flops_per_token` for
  `input_shapes`, 0 for the lengths the architecture has not."""
  lengths = architectures.get(model.name).lengths_of(input_shapes)
  return lengths.get("decoder", 0), lengths.get("inputs", 0), lengths.get("targets", 0)


def _check_eval_dataset(dataset: data.DatasetConfig, arch: str):
  """Fail before training when the validation data yields no batch (not at step N)."""
  shard = dict(shard_index=jax.process_index(), num_shards=jax.process_count())
  if next(data.batches(dataset, arch, repeat=False, **shard), None) is None:
    raise UserError(f"validation: split {dataset.split!r} of task {dataset.task!r} yields "
                    f"no batch of {dataset.batch_size} rows; use a larger validation split "
                    f"or set eval_every (EVAL_PERIOD) to 0.")


def evaluate_params(model, params, dataset: data.DatasetConfig, num_batches: int,
                    partitioner: partitioning.Partitioner) -> dict[str, float]:
  """Loss and token accuracy over the first `num_batches` batches of `dataset`."""
  shard = dict(shard_index=jax.process_index(), num_shards=jax.process_count())
  totals = None
  eval_fn = jax.jit(lambda p, b: trainer.eval_step(model, p, b))
  count = 0
  for local in data.batches(dataset, model.name, repeat=False, **shard):
    if count == num_batches:
      break
    with partitioner.activation_context():
      m = eval_fn(params, partitioner.shard_batch(local))
    totals = m if totals is None else jax.tree_util.tree_map(jnp.add, totals, m)
    count += 1
  if totals is None:
    raise UserError(f"evaluation split {dataset.split!r} of task {dataset.task!r} produced "
                    f"no batch of {dataset.batch_size} rows.")
  out = trainer.summarize(totals)
  out["batches"] = count
  return out
