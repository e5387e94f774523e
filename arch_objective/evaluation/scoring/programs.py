"""The scoring programs, and how a plan of calls to them is compiled and run.

A plan is a list of `Step`s: a jitted program of `(model, params, *args, *static)`, its
arguments (host arrays, or `Output(k)`: what step k returns, on the device), and
where its result goes (`into`; None when only later steps read it). `compile_plan`
looks up each step's compiled program in the process's cache, keyed by (program,
model, static arguments, parameters' and arguments' shapes), so that scorers of one
model share them; it lowers the ones missing (an `Output` argument has the shapes its
step's lowering reports, `out_info`, without running anything) and compiles them on a
pool of threads (XLA's compiler releases the GIL, so a first pass waits for its longest
compilations, not their sum). `run_plan` then runs the steps in order. The persistent
compilation cache serves repeat runs in other processes.

The packed programs (`scorer`'s layouts) return per position the log-likelihood of its
target (0 off the choices) and, when asked (`greedy`, static: it adds an argmax over
the logits, which plain scoring does not pay for), whether the target is the argmax;
the host sums them per choice.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp

from arch_objective import losses
from arch_objective.features import DECODER_LOSS_WEIGHTS, DECODER_TARGET_TOKENS


@dataclasses.dataclass(frozen=True)
class Output:
  """A step's argument that is the output of the plan's earlier step `step`."""
  step: int


@dataclasses.dataclass(frozen=True)
class Step:
  """One call of a jitted `program(model, params, *args, *static)`.

  `args`: arrays, Python scalars, or `Output`s of earlier steps; `static`: the program's
  trailing static arguments; `into`: where the result goes, handed back with its host
  copy by `run_plan` (None: only later steps read it, and it stays on the device)."""
  program: Callable
  args: tuple
  static: tuple = ()
  into: Any = None


# ----------------------------------------------------------------------------------------
# The packed programs
# ----------------------------------------------------------------------------------------
def _token_scores(logits, targets, weights, greedy):
  """`([b, l] log p(target) where `weights`, else 0; [b, l] the target is the argmax, or
  None)`: packed rows sum them per segment on the host."""
  scores = losses.token_log_likelihoods(logits, targets) * (weights > 0)
  return scores, (jnp.argmax(logits, axis=-1) == targets) if greedy else None


@functools.partial(jax.jit, static_argnums=(0, 3))
def decoder_packed_scores(model, params, batch, greedy):
  """Token scores of a packed decoder-only `batch` (each feature `[b, l] int32`)."""
  logits = model.compute_logits(params, batch)                         # [b, l, v]
  return _token_scores(logits, batch[DECODER_TARGET_TOKENS], batch[DECODER_LOSS_WEIGHTS],
                       greedy)


@functools.partial(jax.jit, static_argnums=(0,))
def ed_packed_encode_kv(model, params, enc, enc_seg):
  """Every decoder layer's cross-attention keys and values `[layers, P, i, h, e]` of the
  packed encoder rows `enc [P, i] int32` (segments `enc_seg [P, i] int32`)."""
  encoded = model.encode(params, enc, encoder_segment_ids=enc_seg)     # [P, i, d]
  return model.cross_key_values(params, encoded)                       # [layers, P, i, h, e]


@functools.partial(jax.jit, static_argnums=(0, 10))
def ed_packed_decode_scores(model, params, key_values, enc, enc_seg, idx, inputs, targets,
                            segments, cross, greedy):
  """Decoder row r, packed choices (`segments`), against the keys and values of the
  prompt rows `idx[r]` (`[R, k]`, one after another), each position reading its prompt's
  segment (`cross`) of `enc_seg`."""
  logits = model.decode_logits(params, None, enc, inputs, targets, cross_key_values=key_values,
                               cross_rows=idx, encoder_segment_ids=enc_seg,
                               decoder_segment_ids=segments, cross_segment_ids=cross)
  return _token_scores(logits, targets, targets, greedy)


# ----------------------------------------------------------------------------------------
# The compiled programs of the process
# ----------------------------------------------------------------------------------------
# (program, model, static arguments, params' signature, arguments' signature) ->
# (compiled, output shapes)
_PROGRAMS: dict = {}


def clear_programs():
  """Drop every compiled scoring program of this process (the next call compiles again)."""
  _PROGRAMS.clear()


def default_compile_workers() -> int:
  """The CPUs this process may use, at most 8 (each compilation holds its own memory)."""
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:                 # (not on every platform)
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, 8))


def signature(tree) -> tuple:
  """The structure and per-leaf (shape, dtype, weak type) of `tree` (a Python scalar: its
  type), and the default device programs are placed on."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return treedef, jax.config.jax_default_device, tuple(
      (tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)))
      if hasattr(x, "dtype") else type(x) for x in leaves)


def _abstract(out_info):
  """A program's output shapes as arguments of another's lowering (no placement)."""
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out_info)


def compile_plan(steps: Sequence[Step], model, params, *, params_signature: tuple,
                 workers: int) -> tuple[list, int]:
  """`(per step its compiled program, how many programs were compiled)`: the programs
  `steps` need that are not compiled yet are lowered, then compiled on `workers`
  threads, each kept for the process as it finishes. Runs nothing."""
  keys, shapes, entries, lowered = [], [], {}, {}
  for step in steps:
    args = tuple(shapes[a.step] if isinstance(a, Output) else a for a in step.args)
    key = (step.program, model, step.static, params_signature, signature(args))
    if key not in entries and key not in lowered:
      entry = _PROGRAMS.get(key)
      if entry is None:
        lowered[key] = step.program.lower(model, params, *args, *step.static)
      else:
        entries[key] = entry
    shapes.append(_abstract(entries[key][1] if key in entries else lowered[key].out_info))
    keys.append(key)
  entries.update(_compile(lowered, workers))
  return [entries[key][0] for key in keys], len(lowered)


def _compile(lowered: dict, workers: int) -> dict:
  """The lowered programs of `lowered` compiled on `workers` threads (one: on this one),
  each kept in `_PROGRAMS` as it finishes: key -> (compiled, output shapes)."""
  items = list(lowered.items())
  done = {}
  if min(workers, len(items)) <= 1:
    for key, program in items:
      done[key] = _PROGRAMS[key] = (program.compile(), program.out_info)
    return done
  pool = concurrent.futures.ThreadPoolExecutor(min(workers, len(items)))
  futures = {pool.submit(program.compile): (key, program) for key, program in items}
  try:
    for future in concurrent.futures.as_completed(futures):
      key, program = futures[future]
      done[key] = _PROGRAMS[key] = (future.result(), program.out_info)
  finally:
    pool.shutdown(wait=True, cancel_futures=True)   # on an error, start no more
  return done


def run_plan(steps: Sequence[Step], compiled: Sequence, params) -> Iterator[tuple[Any, Any]]:
  """Runs `steps` in order with their `compiled` programs (`compile_plan`'s); yields
  `(step.into, its output on the host)` for each step with an `into`. An output that
  later steps read stays on the device until the last of them has run."""
  last_read = {a.step: k for k, step in enumerate(steps) for a in step.args
               if isinstance(a, Output)}
  outputs: dict[int, Any] = {}
  for k, (step, program) in enumerate(zip(steps, compiled)):
    args = tuple(outputs[a.step] if isinstance(a, Output) else a for a in step.args)
    out = program(params, *args)
    for a in step.args:
      if isinstance(a, Output) and last_read[a.step] == k:
        outputs.pop(a.step, None)
    if k in last_read:
      outputs[k] = out
    if step.into is not None:
      yield step.into, jax.device_get(out)
