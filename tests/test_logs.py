"""Progress through `logging`: what `logs.show_on_stderr` shows, where, and how often."""
import io
import logging
import subprocess
import sys
import textwrap

from arch_objective import logs

from helpers import ROOT


def _fresh_process(code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(ROOT),
                        capture_output=True, text=True, timeout=120,
                        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_lines_are_plain_and_warnings_marked_once(monkeypatch):
  stream = io.StringIO()
  monkeypatch.setattr(sys, "stderr", stream)     # the handler writes where stderr is now
  logs.show_on_stderr()
  logs.show_on_stderr()                          # a second call adds no second handler
  logger = logging.getLogger("arch_objective.training.train")
  logger.info("resumed from step 7 (/tmp/x)")
  logger.warning("stopped by SIGTERM after step 8")
  logger.warning("warning: checkpoint /tmp/x/9 cannot be read")
  logger.debug("not shown at INFO")
  assert stream.getvalue().splitlines() == [
      "resumed from step 7 (/tmp/x)",
      "warning: stopped by SIGTERM after step 8",
      "warning: checkpoint /tmp/x/9 cannot be read",
  ]


def test_a_library_caller_sees_warnings_but_not_progress_until_it_asks():
  """Imported as a library (no handler configured): INFO progress is silent, a warning
  reaches stderr through Python's last resort; after `show_on_stderr` both are shown, each
  once, although a root handler (as orbax and jax install one) is also present."""
  quiet = _fresh_process("""
      import logging
      logger = logging.getLogger("arch_objective.study.run")
      logger.info("[1/37] world corpus: 1s")
      logger.warning("stopped by SIGTERM")
  """)
  assert quiet.returncode == 0, quiet.stderr
  assert quiet.stderr.splitlines() == ["stopped by SIGTERM"]
  shown = _fresh_process("""
      import logging
      logging.basicConfig()                       # a root handler, as some libraries add
      from arch_objective import logs
      logs.show_on_stderr()
      logger = logging.getLogger("arch_objective.study.run")
      logger.info("[1/37] world corpus: 1s")
      logger.warning("stopped by SIGTERM")
  """)
  assert shown.returncode == 0, shown.stderr
  assert shown.stderr.splitlines() == ["[1/37] world corpus: 1s", "warning: stopped by SIGTERM"]
  assert shown.stdout == ""
