"""Progress and warnings: one `logging` tree under the `arch_objective` logger.

Library modules report through `logging.getLogger(__name__)`; functions that take a `log`
callable (the study, T0-Eval, the trainer's helpers) default to their module's logger at
INFO, so a caller may still collect the lines itself. Nothing is shown until an entry
point decides how: the command lines call `show_on_stderr()`, which prints each record as
a plain line on the process's current stderr (warnings prefixed `warning: `). Without it,
Python's last-resort handler still shows warnings (a preempted run, an unreadable
checkpoint), and INFO progress stays silent, as a library's should.
"""
from __future__ import annotations

import logging
import sys

ROOT = "arch_objective"


class _Plain(logging.Formatter):

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= logging.WARNING and not message.startswith("warning: "):
      message = f"warning: {message}"
    return message


class _CurrentStderr(logging.Handler):
  """Writes to `sys.stderr` as it is at each record (a redirect or a test's capture
  sees the lines), flushing each one so a log file follows a long run."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      stream = sys.stderr
      stream.write(self.format(record) + "\n")
      stream.flush()
    except Exception:  # noqa: BLE001 (logging's own contract: never raise from emit)
      self.handleError(record)


def show_on_stderr(level: int = logging.INFO) -> logging.Logger:
  """Show the `arch_objective` records at `level` and above as plain stderr lines.

  Idempotent: a second call changes the level and adds no second handler. The tree stops
  propagating to the root logger so a root handler (absl's, for one) does not print each
  line again."""
  root = logging.getLogger(ROOT)
  if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
    handler = _CurrentStderr()
    handler.setFormatter(_Plain())
    root.addHandler(handler)
  root.setLevel(level)
  root.propagate = False
  return root
