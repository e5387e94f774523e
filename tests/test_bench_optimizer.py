"""`python -m bench --smoke --only optimizer training`: the optimizer benchmark's update
times and ratios, and the training benchmark's reference step (our ED step with optax's
Adafactor), are well-formed quotients of what was measured in the run. No timing
assertions: speed targets live in the benchmarks' reports."""
import json
import os
import pathlib
import statistics
import subprocess
import sys

import pytest

# End to end: `python -m bench --smoke` in fresh processes (see pytest.ini).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[dict, str]:
  """(results, summary.md) of one smoke run of both benchmarks in a fresh process."""
  out = tmp_path_factory.mktemp("bench_optimizer")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
  # Unoptimised XLA code without the fusion emitters compiles in about a third of the
  # time; smoke numbers are not read.
  env["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
                  "--xla_cpu_use_fusion_emitters=false") if f)
  proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "optimizer",
                         "training", "--out", str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  assert results["mode"] == "smoke"
  return results, (out / "summary.md").read_text()


def _section(summary: str, name: str) -> str:
  assert f"## {name}\n" in summary, summary
  return summary.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]


def test_optimizer_update_times_and_ratios(smoke_run):
  results, summary = smoke_run
  result = results["benchmarks"]["optimizer"]
  entries = {e["name"]: e for e in result["entries"]}
  hf = [e for e in result["entries"] if e["system"] == "hf"]
  assert list(entries)[:2] == ["fused", "optax"] and hf and result["hf"]["error"] is None
  assert sorted(e["torch_threads"] for e in hf) == sorted(result["hf_threads"])
  rounds = result["settings"]["rounds"]
  for e in result["entries"]:
    assert len(e["seconds"]) == rounds and all(t > 0 for t in e["seconds"])
    assert e["median_seconds"] == statistics.median(e["seconds"])
    assert e["best_seconds"] == min(e["seconds"]) and e["first_seconds"] > 0
    assert e["params"] == entries["fused"]["params"] > 0     # equally sized trees
  fused, reference = entries["fused"], entries["optax"]
  c = result["comparison"]
  assert c["speedup_vs_reference"] == pytest.approx(
      reference["median_seconds"] / fused["median_seconds"])
  baseline = min(hf, key=lambda e: e["median_seconds"])
  assert c["baseline"] == baseline["name"]
  assert c["ratio"] == pytest.approx(baseline["median_seconds"] / fused["median_seconds"])
  assert c["reference_ratio"] == pytest.approx(
      baseline["median_seconds"] / reference["median_seconds"])
  assert c["meets_target"] == (c["ratio"] >= c["target_ratio"] == 1.0)
  agreement = result["agreement"]
  assert agreement["agree"] is True and agreement["updates"] == rounds + 1
  assert 0 <= agreement["max_abs_diff"] <= agreement["tolerance"]
  section = _section(summary, "optimizer")
  assert "| fused (ours) |" in section and "| optax (reference) |" in section
  assert f"{c['speedup_vs_reference']:.2f}x faster" in section
  assert ("MISSED" in section) == (not c["meets_target"])


def test_training_reports_the_reference_step_in_the_same_rounds(smoke_run):
  results, summary = smoke_run
  result = results["benchmarks"]["training"]
  ed, reference = result["entries"][-1], result["reference"]
  assert ed["adafactor"] == "fused" and reference["adafactor"] == "optax"
  assert reference["name"] == "ED (optax)"
  assert len(reference["step_seconds"]) == len(ed["step_seconds"])
  assert reference["tokens_per_step"] == ed["tokens_per_step"]
  assert reference["params"] == ed["params"]
  c = result["comparison"]
  hf = max(result["hf"]["entries"], key=lambda e: e["tokens_per_second"])
  assert c["reference_ratio"] == pytest.approx(
      reference["tokens_per_second"] / hf["tokens_per_second"])
  assert c["speedup_vs_reference"] == pytest.approx(
      ed["tokens_per_second"] / reference["tokens_per_second"])
  b = result["breakdown"]
  both = statistics.median(b["ours_part_step_seconds"]["ED forward+backward"])
  assert b["reference_optimizer"] == pytest.approx(reference["median_step_seconds"] - both)
  section = _section(summary, "training")
  assert any(line.startswith("| ED (optax) |") and f"{c['reference_ratio']:.2f}x" in line
             for line in section.splitlines())
  assert "ED step with the fused Adafactor / with optax's" in section
