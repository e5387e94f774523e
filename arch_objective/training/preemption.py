"""Stopping a run cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C).

A TPU VM, SLURM or Kubernetes sends SIGTERM some seconds before it takes the machine
away. `StopSignals` turns the first SIGTERM or SIGINT into a request: the loop finishes
the step it is in, saves a checkpoint (train state and data position) and returns
normally, so the command exits 0 and a restart resumes exactly there. A second SIGINT
stops at once (Python's KeyboardInterrupt), for a user who does not want to wait.

On multi-host runs the hosts must stop after the same step, or the ones still running
would wait forever in the next step's collectives: `requested()` takes the maximum of
every host's flag (one small all-gather per step), so all hosts see a request as soon
as any host received a signal, at the same step.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_logger = logging.getLogger(__name__)


class StopSignals:
  """`with StopSignals() as stop: ... if stop.requested(): save; break`."""

  def __init__(self, log=None):
    """`log`: where the line saying a signal arrived goes (default: this module's
    logger, as a warning)."""
    self.signal_name: Optional[str] = None
    self._previous: dict = {}
    self._log = log or _logger.warning

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt   # a second Ctrl-C: stop now
    if self.signal_name is None:
      self.signal_name = name
      self._log(f"received {name}: finishing this step, then saving a checkpoint and "
                f"stopping (Ctrl-C again stops at once, without saving)")

  def requested(self) -> bool:
    """Whether any host asked to stop (all hosts get the same answer at a step)."""
    local = self.signal_name is not None
    import jax
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(local))
    if np.max(flags) and self.signal_name is None:
      self.signal_name = "a signal on another host"
    return bool(np.max(flags))

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
