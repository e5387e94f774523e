"""`python -m bench --smoke --only data_pipeline`: the results it writes are well-formed
(test_bench_more.py runs the other benchmarks). No timing assertions: speed targets live
in the benchmark's report, not in tests."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from arch_objective.objectives import pipeline

# End to end: `python -m bench --smoke` in fresh processes (see pytest.ini).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
FEATURE_LENGTHS = {
    "CD:FLM": {"decoder_target_tokens": 626},
    "CD:MLM": {"decoder_target_tokens": 626},
    "ND:PLM": {"decoder_target_tokens": 626},
    "ND:MLM": {"decoder_target_tokens": 626},
    "ED:PLM": {"encoder_input_tokens": 626, "decoder_target_tokens": 626},
    "ED:MLM": {"encoder_input_tokens": 512, "decoder_target_tokens": 114},
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """(output folder, stdout) of one smoke run of the data pipeline benchmark in a fresh
  process."""
  out = tmp_path_factory.mktemp("bench")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
  # Unoptimised XLA code without the fusion emitters compiles in about a third of the
  # time; smoke numbers are not read.
  env["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
                  "--xla_cpu_use_fusion_emitters=false") if f)
  proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "data_pipeline",
                         "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return out, proc.stdout


def test_results_json_has_one_consistent_entry_per_paper_pair(smoke_run):
  out, _ = smoke_run
  results = json.loads((out / "results.json").read_text())
  assert results["mode"] == "smoke" and list(results["benchmarks"]) == ["data_pipeline"]
  result = results["benchmarks"]["data_pipeline"]
  assert result["target_ratio"] == 2.0
  entries = result["entries"]
  assert [(e["arch"], e["objective"]) for e in entries] == list(pipeline.PAPER_RUNS)
  assert [e["name"] for e in entries] == list(FEATURE_LENGTHS)
  for e in entries:
    pipe, step = e["pipeline"]["tokens_per_second"], e["step"]["tokens_per_second"]
    assert pipe > 0 and step > 0 and e["objective_only"]["tokens_per_second"] > 0
    assert e["ratio"] == pytest.approx(pipe / step, rel=1e-9)
    assert e["meets_target"] == (e["ratio"] >= 2.0)
    assert e["feature_lengths"] == FEATURE_LENGTHS[e["name"]]
    assert e["tokens_per_row"] == sum(FEATURE_LENGTHS[e["name"]].values())
    for part in ("pipeline", "objective_only"):
      assert e[part]["tokens"] == e[part]["rows"] * e["tokens_per_row"]
      assert e[part]["rows"] == 4 * e[part]["batches"] > 0
    assert e["step"]["tokens"] == e["step"]["steps"] * 4 * e["tokens_per_row"]
    assert e["step"]["model_size"] == "tiny"
    assert e["step"]["model_vocab_size"] % 128 == 0
    assert e["step"]["model_vocab_size"] >= result["data"]["vocab_size"]


def test_results_json_describes_the_machine(smoke_run):
  out, _ = smoke_run
  machine = json.loads((out / "results.json").read_text())["machine"]
  assert machine["platform"] and machine["cpu_count"] >= 1
  assert machine["versions"]["jax"] and machine["versions"]["numpy"]
  assert machine["jax_devices"] and machine["jax_backend"]


def test_summary_and_stdout_have_a_row_per_pair(smoke_run):
  out, stdout = smoke_run
  summary = (out / "summary.md").read_text()
  assert "## data_pipeline" in summary and "Machine:" in summary
  rows = [line for line in summary.splitlines() if line.startswith("| ")]
  for name in FEATURE_LENGTHS:
    assert sum(line.startswith(f"| {name} |") for line in rows) == 1, summary
    assert sum(line.startswith(f"{name} ") for line in stdout.splitlines()) >= 1, stdout
