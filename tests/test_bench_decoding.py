"""`python -m bench --smoke --only decoding`: well-formed results whose ratios are the
quotients of what was measured, greedy decoding with the cache choosing the naive loop's
tokens, and beam search under HF's rules returning `generate`'s sequences. No speed is
asserted: speeds live in the benchmark's report."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from arch_objective import models

# End to end: `python -m bench --smoke` in a fresh process (see pytest.ini).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHS = [models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[dict, str]:
  """(the decoding result, summary.md) of one smoke run in a fresh process."""
  out = tmp_path_factory.mktemp("bench_decoding")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "decoding",
                         "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  assert results["mode"] == "smoke" and list(results["benchmarks"]) == ["decoding"]
  return results["benchmarks"]["decoding"], (out / "summary.md").read_text()


def _check_rate(entry: dict, rounds: int, prompts: int, new_tokens: int):
  assert len(entry["seconds"]) == rounds and all(t > 0 for t in entry["seconds"])
  assert entry["best_seconds"] == min(entry["seconds"])
  assert entry["prompts"] == prompts and entry["new_tokens"] == new_tokens
  assert entry["tokens_per_second"] == pytest.approx(
      prompts * new_tokens / entry["median_seconds"])
  assert entry["seconds_per_prompt"] == pytest.approx(entry["median_seconds"] / prompts)


def test_greedy_with_the_cache_chooses_the_naive_loops_tokens_and_ratios_are_quotients(
    smoke_run):
  result, summary = smoke_run
  s = result["settings"]
  assert s["size"] == "tiny" and s["num_decodes"] == 4 and s["alpha"] == 0.6
  assert result["targets"] == {"cache_ratio": 3.0, "beam_cost_limit": 4.0, "hf_ratio": 1.0}
  assert list(result["architectures"]) == ARCHS
  for arch, a in result["architectures"].items():
    assert a["arch"] == arch and a["params"] > 0
    g, b = a["greedy"], a["beam"]
    assert g["tokens_identical"] is True
    _check_rate(g["cache"], s["rounds"], s["prompts"], s["new_tokens"])
    _check_rate(g["naive"], s["naive_rounds"], s["prompts"], s["new_tokens"])
    assert g["cache"]["compile_seconds"] > 0 and g["naive"]["compile_seconds"] > 0
    # The naive rows grow in buckets up to every new token; one program per bucket.
    assert g["naive"]["row_lengths"][-1] == s["new_tokens"]
    assert g["naive"]["programs"] == len(g["naive"]["row_lengths"])
    assert g["ratio"] == pytest.approx(g["cache"]["tokens_per_second"]
                                       / g["naive"]["tokens_per_second"])
    assert g["meets_target"] == (g["ratio"] >= 3.0)
    _check_rate(b["beam"], s["rounds"], s["prompts"], s["new_tokens"])
    assert b["greedy"] == g["cache"]                      # measured in the same rounds
    assert b["ratio"] == pytest.approx(b["beam"]["seconds_per_prompt"]
                                       / g["cache"]["seconds_per_prompt"])
    assert b["below_limit"] == (b["ratio"] < 4.0)
    assert b["beam"]["num_decodes"] == 4 and b["beam"]["rules"] == "t5x"
  assert "## decoding" in summary
  rows = [l for l in summary.splitlines() if l.startswith("| greedy tokens/s")]
  assert [r.split("|")[2].strip() for r in rows] == ARCHS
  assert all("same tokens" in r for r in rows)
  assert sum("MISSED" in r for r in rows) == sum(
      not a["greedy"]["meets_target"] for a in result["architectures"].values())


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("torch", "transformers")),
                    reason="needs torch and transformers (the eval extra)")
def test_beam_search_under_hf_rules_returns_generates_sequences(smoke_run):
  result, summary = smoke_run
  s, h = result["settings"], result["hf"]
  assert h["error"] is None and h["sequences_identical"] is True
  assert h["sequences_compared"] == s["prompts"] * s["num_decodes"]
  _check_rate(h["ours"], s["hf_rounds"], s["prompts"], s["new_tokens"])
  assert sorted(e["torch_threads"] for e in h["entries"]) == sorted(h["hf_threads"])
  for e in h["entries"]:
    _check_rate(e, s["hf_rounds"], s["prompts"], s["new_tokens"])
  c = h["comparison"]
  baseline = max(h["entries"], key=lambda e: e["prompts_per_second"])
  assert c["baseline"] == baseline["name"]
  assert c["ratio"] == pytest.approx(h["ours"]["prompts_per_second"]
                                     / baseline["prompts_per_second"])
  assert c["meets_target"] == (c["ratio"] >= 1.0)
  rows = [l for l in summary.splitlines() if l.startswith("| prompts/s: beam (rules=hf)")]
  assert len(rows) == len(h["entries"])
  assert all(f"same {h['sequences_compared']} sequences" in r for r in rows)
  assert ("MISSED" in "".join(rows)) == (not c["meets_target"])
