"""`python -m bench --smoke --only eval_cache`: three fresh processes (cold, warm, off)
give identical scores; the warm one reads back what the cold one wrote. No timing
assertions: the ratio is reported, not tested."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

# End to end: `python -m bench --smoke` in fresh processes (see pytest.ini).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_eval_cache_smoke_warm_reads_back_what_cold_wrote(tmp_path):
  out = tmp_path / "bench"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "eval_cache",
                         "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((out / "results.json").read_text())["benchmarks"]["eval_cache"]
  cold, warm, off = (result["runs"][k] for k in ("cold", "warm", "off"))
  assert result["scores_identical"] is True
  # cold compiles and writes every program; warm compiles none; off keeps no cache.
  assert cold["misses"] > 0 and cold["cache_files"] > 0
  assert warm["hits"] >= cold["misses"] and warm["misses"] == 0
  assert warm["cache_files"] == cold["cache_files"]
  assert off["cache"] is None and off["hits"] == off["misses"] == 0
  assert cold["cache"] == warm["cache"] and cold["cache"].endswith("jax-cache")
  assert result["ratio"] == pytest.approx(cold["first_pass_seconds"] / warm["first_pass_seconds"])
  summary = (out / "summary.md").read_text()
  assert "## eval_cache" in summary and "cold / warm first pass" in summary
  assert [l.split("|")[1].strip() for l in summary.splitlines()
          if l.startswith("| cold") or l.startswith("| warm") or l.startswith("| off")] == [
              "cold", "warm", "off"]
