"""Where training metrics go: a JSON-lines log, TensorBoard event files, a progress line.

`MODEL_DIR/metrics.jsonl` gets one object per logged step (`step`, `loss`, ...; eval
rows carry `"split": "validation"`); a resumed run first drops the rows after its
checkpoint's step, so every step appears once. TensorBoard files go to `MODEL_DIR/tensorboard/`
when TensorFlow is importable (it is not on every accelerator machine; the JSON log is
always written). On a terminal a progress line with the ETA is redrawn in place;
otherwise one line per logged step is printed.

A remote MODEL_DIR (`gs://...`) cannot be appended to: the log is kept in memory and
the whole file rewritten at most every `remote_flush_seconds` and on `close`
(TensorBoard writes to gs:// itself).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Mapping, Optional, TextIO

from arch_objective import paths

METRICS_FILE = "metrics.jsonl"


def _tensorboard_writer(logdir: str):
  """(tf module, summary writer) for `logdir`, or (None, None) without TensorFlow."""
  try:
    import tensorboard  # noqa: F401  (tf.summary needs it)
    import tensorflow as tf
  except ImportError:
    return None, None
  return tf, tf.summary.create_file_writer(logdir)


def _lines_through(text: str, step: int) -> list[str]:
  """The lines of a metrics log up to and including `step` (a resumed run rewrites the
  steps after its checkpoint, so each step appears once)."""
  kept = []
  for line in text.splitlines(keepends=True):
    try:
      if json.loads(line)["step"] > step:
        continue
    except (ValueError, KeyError, TypeError):
      continue   # a line cut short by a crash
    kept.append(line if line.endswith("\n") else line + "\n")
  return kept


class _JsonLines:
  """Appends lines to a local file; for a remote one, rewrites it whole now and then.
  With `resume_step`, rows of later steps (written by the run before its last
  checkpoint was lost to a crash or preemption) are dropped first."""

  def __init__(self, path: str, remote_flush_seconds: float, resume_step: Optional[int] = None):
    self.path, self.remote = path, paths.is_remote(path)
    self.every, self.last_flush = remote_flush_seconds, time.time()
    existing = paths.read_text(path) if paths.exists(path) else ""
    kept = _lines_through(existing, resume_step) if resume_step is not None else None
    if self.remote:
      self.lines = kept if kept is not None else ([existing] if existing else [])
    else:
      if kept is not None and "".join(kept) != existing:
        paths.write_text(path, "".join(kept))
      self.file = open(path, "a", encoding="utf-8")

  def write(self, line: str):
    if not self.remote:
      self.file.write(line)
      self.file.flush()
      return
    self.lines.append(line)
    if time.time() - self.last_flush >= self.every:
      self.flush()

  def flush(self):
    if self.remote:
      paths.write_text(self.path, "".join(self.lines))
      self.last_flush = time.time()

  def close(self):
    if self.remote:
      self.flush()
    else:
      self.file.close()


class MetricsWriter:
  def __init__(self, model_dir: str, enabled: bool = True,
               remote_flush_seconds: float = 60.0, resume_step: Optional[int] = None):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    self._jsonl = _JsonLines(paths.join(model_dir, METRICS_FILE), remote_flush_seconds,
                             resume_step)
    self._tf, self._tb = _tensorboard_writer(paths.join(model_dir, "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float], split: str = "train"):
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    if split != "train":
      row["split"] = split
    self._jsonl.write(json.dumps(row) + "\n")
    if self._tb is not None:
      with self._tb.as_default():
        for key, value in scalars.items():
          name = key if split == "train" else f"{split}/{key}"
          self._tf.summary.scalar(name, float(value), step=int(step))
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """`step 120/1000 [####......] 12% loss 3.21 | 45.1 steps/s | ETA 0:00:19`."""

  def __init__(self, total_steps: int, start_step: int = 0, stream: Optional[TextIO] = None,
               enabled: bool = True):
    self.total, self.start = total_steps, start_step
    self.stream = stream if stream is not None else sys.stderr   # the current one
    self.enabled = enabled
    self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.time()

  def update(self, step: int, loss: Optional[float] = None, force_line: bool = False):
    if not self.enabled:
      return
    done = step - self.start
    elapsed = time.time() - self.t0
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    frac = step / max(self.total, 1)
    bar = "#" * int(frac * 20)
    text = (f"step {step}/{self.total} [{bar:<20}] {100 * frac:3.0f}%"
            + (f" loss {loss:.4g}" if loss is not None else "")
            + f" | {rate:.2f} steps/s | ETA {_hms(eta)}")
    if self.tty:
      self.stream.write("\r" + text + ("\n" if step >= self.total else ""))
    elif force_line:
      self.stream.write(text + "\n")
    self.stream.flush()


def _hms(seconds: float) -> str:
  if seconds != seconds or seconds == float("inf"):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
