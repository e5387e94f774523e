"""`python -m bench --smoke --only resume`: well-formed results whose ratios are the
quotients of what was measured (no speed is asserted: speeds live in benchmarks)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

# End to end: `python -m bench --smoke` in fresh processes (see pytest.ini).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench_resume")
  proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "resume",
                         "--out", str(out)], cwd=str(ROOT), capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((out / "results.json").read_text()), (out / "summary.md").read_text()


def test_resume_ratios_are_quotients_and_shares_cover_the_corpus(results):
  data, summary = results
  result = data["benchmarks"]["resume"]
  for name in ("state", "replay"):
    entry = result["resume"][name]
    assert entry["ratio"] == pytest.approx(entry["late_seconds"] / entry["early_seconds"])
  shares = result["shares"]
  assert shares["hosts"] == 4 and len(shares["per_host_bytes"]) == 4
  assert sum(shares["per_host_bytes"]) == shares["whole_bytes"]
  assert all(abs(f - 0.25) < 0.05 for f in shares["fractions"]), shares["fractions"]
  for entry in result["paper_shapes"]:
    assert entry["ratio"] == pytest.approx(entry["pipeline_tokens_per_second"]
                                           / entry["host_consumes_tokens_per_second"])
    assert entry["flops_per_token"] > 6 * 4e9        # the paper-size model: ~5B parameters
  assert "## resume" in summary and "bytes decoded per host" in summary
