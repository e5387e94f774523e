"""One writer per MODEL_DIR: a lock file taken when a run starts, released when it ends.

`MODEL_DIR/run.lock` holds JSON naming its holder: `{"host", "pid", "started",
"heartbeat"}` (times in seconds since the epoch). A second run on the same directory is
refused with one line naming the holder. A lock is stale, and taken over with a warning
that names its old holder, when

  - its holder ran on this host and that process no longer exists, or
  - its heartbeat is older than `stale_after` seconds (a holder on another host that
    died without releasing it; a live run refreshes the heartbeat every
    `heartbeat_every` seconds, far more often).

Local directories are locked atomically (`O_CREAT | O_EXCL`, takeover by rename). On
gs:// the lock is written and read back: two runs started within the same second can
both win, which the heartbeat then shows; a pod launches one run per directory.
On multi-host runs process 0 holds the lock for the run.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Optional

from arch_objective import paths
from arch_objective.errors import UserError

_logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockError(UserError, RuntimeError):
  """Another live run holds the MODEL_DIR."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:       # exists, owned by someone else
    return True
  return True


class RunLock:
  """`with RunLock(model_dir): ...` holds `model_dir/run.lock` for the block."""

  def __init__(self, model_dir: str, *, stale_after: float = 900.0,
               heartbeat_every: float = 60.0, log=None):
    self.path = paths.join(model_dir, LOCK_FILE)
    self.stale_after, self.heartbeat_every = stale_after, heartbeat_every
    self.host, self.pid = socket.gethostname(), os.getpid()
    self.started = time.time()
    self.held = False
    self._last_beat = 0.0
    self._log = log or _logger.warning   # the stale-lock takeover line

  def _record(self) -> str:
    return json.dumps({"host": self.host, "pid": self.pid, "started": self.started,
                       "heartbeat": time.time()})

  def _read(self) -> Optional[dict]:
    try:
      return json.loads(paths.read_text(self.path))
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {}   # unreadable (half-written): treated as stale once old enough

  def _stale_reason(self, holder: dict) -> Optional[str]:
    """Why `holder`'s lock may be taken over, or None if it belongs to a live run."""
    if holder.get("host") == self.host and isinstance(holder.get("pid"), int):
      if holder["pid"] == self.pid:
        return "this process"
      return None if _pid_alive(holder["pid"]) else "its process no longer exists"
    beat = holder.get("heartbeat")
    age = time.time() - beat if isinstance(beat, (int, float)) else None
    if age is None:
      age = time.time() - self._mtime()
    if age > self.stale_after:
      return f"its heartbeat is {age:.0f} s old (stale after {self.stale_after:.0f} s)"
    return None

  def _mtime(self) -> float:
    try:
      return paths.as_path(self.path).stat().mtime
    except Exception:  # the storage backends raise their own error types
      return time.time()

  def _describe(self, holder: dict) -> str:
    started = holder.get("started")
    since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
             if isinstance(started, (int, float)) else "an unknown time")
    return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} (since {since})"

  def acquire(self):
    if self._create():
      self.held = True
      self._last_beat = time.time()
      return
    holder = self._read() or {}
    reason = self._stale_reason(holder)
    if reason is None:
      raise RunLockError(
          f"MODEL_DIR {paths.dirname(self.path)} is in use by {self._describe(holder)}: one "
          f"run writes a directory at a time. Wait for it, stop it, or use another "
          f"MODEL_DIR (a lock of a dead run is taken over after {self.stale_after:.0f} s; "
          f"delete {self.path} to take it now).")
    if reason != "this process":
      self._log(f"taking over the stale lock of {self._describe(holder)} on "
                f"{paths.dirname(self.path)}: {reason}")
    self._replace()
    self.held = True
    self._last_beat = time.time()

  def _create(self) -> bool:
    if paths.is_remote(self.path):
      if paths.exists(self.path):
        return False
      paths.write_text(self.path, self._record())
      return (self._read() or {}).get("pid") == self.pid
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._record())
    return True

  def _replace(self):
    if paths.is_remote(self.path):
      paths.write_text(self.path, self._record())
      return
    tmp = f"{self.path}.{self.host}.{self.pid}"
    with open(tmp, "w") as f:
      f.write(self._record())
    os.replace(tmp, self.path)

  def heartbeat(self, force: bool = False):
    """Refresh the heartbeat (at most every `heartbeat_every` seconds unless forced)."""
    if self.held and (force or time.time() - self._last_beat >= self.heartbeat_every):
      self._replace()
      self._last_beat = time.time()

  def release(self):
    if not self.held:
      return
    self.held = False
    holder = self._read() or {}
    if holder.get("host") == self.host and holder.get("pid") == self.pid:
      try:
        paths.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
