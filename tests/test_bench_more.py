"""`python -m bench --smoke --only training|scoring` and `bench/gpu.py`: the results they
write are well-formed, the scores they compare agree, and the GPU script stays free of
TensorFlow; the scoring benchmark's unpacked baseline (`bench/scoring_baselines.py`)
scores as the packed scorer does. No timing assertions: speed targets live in the
benchmarks' reports."""
import functools
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys

import numpy as np
import pytest

import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "seqio", "gin", "sentencepiece", "torch", "transformers", "lm_eval",
           "tasks", "arch_objective.data")


def _env(**extra) -> dict:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
  # Unoptimised XLA code without the fusion emitters compiles in about a third of the
  # time; smoke numbers are not read.
  env["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
                  "--xla_cpu_use_fusion_emitters=false") if f)
  env.update(extra)
  return env


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[dict, str, str]:
  """(results, summary.md, stdout) of one smoke run of both benchmarks in a fresh process."""
  out = tmp_path_factory.mktemp("bench_more")
  proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "training",
                         "scoring", "--out", str(out)], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  assert results["mode"] == "smoke"
  assert sorted(results["benchmarks"]) == ["scoring", "training"]
  return results, (out / "summary.md").read_text(), proc.stdout


def _section(summary: str, name: str) -> str:
  """The part of summary.md under `## name`."""
  assert f"## {name}\n" in summary, summary
  return summary.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]


def _check_step(e: dict, system: str, peak: float):
  """A timed step's rates are the quotients of its recorded times and counts."""
  assert e["system"] == system
  assert e["tokens_per_step"] == e["rows"] * e["tokens_per_row"] > 0
  assert e["params"] > 0 and e["flops_per_token"] > 0 and math.isfinite(e["loss"])
  seconds = e["step_seconds"]
  assert len(seconds) >= 1 and all(t > 0 for t in seconds)
  assert e["median_step_seconds"] == statistics.median(seconds)
  assert e["best_step_seconds"] == min(seconds)
  assert e["tokens_per_second"] == pytest.approx(e["tokens_per_step"] / e["median_step_seconds"])
  assert e["tokens_per_second_best"] == pytest.approx(
      e["tokens_per_step"] / e["best_step_seconds"])
  assert e["model_flops_per_second"] == pytest.approx(
      e["tokens_per_second"] * e["flops_per_token"])
  assert e["mfu"] == pytest.approx(e["model_flops_per_second"] / peak) and e["mfu"] > 0


@pytest.mark.slow
def test_training_smoke_results_are_well_formed(smoke_run):
  results, summary, stdout = smoke_run
  result = results["benchmarks"]["training"]
  peak = result["matmul_peak"]
  assert peak["flops_per_second"] == max(
      peak[w][k]["flops_per_second"] for w in ("start", "end") for k in ("jax", "torch")
      if k in peak[w]) > 0
  peak = peak["flops_per_second"]
  assert [e["name"] for e in result["entries"]] == ["CD", "ND", "ED"]
  for e in result["entries"]:
    _check_step(e, "ours", peak)
    assert e["size"] == "tiny"
  cd, nd, ed = result["entries"]
  assert cd["tokens_per_step"] == nd["tokens_per_step"] == cd["rows"] * cd["lengths"]["length"]
  assert ed["tokens_per_row"] == ed["lengths"]["inputs"] + ed["lengths"]["targets"]
  hf = result["hf"]["entries"]
  assert hf and result["hf"]["error"] is None
  assert sorted(e["torch_threads"] for e in hf) == sorted(result["hf_threads"])
  for e in hf:
    _check_step(e, "hf", peak)
    assert e["tokens_per_step"] == ed["tokens_per_step"]
    assert e["flops_per_token"] == pytest.approx(ed["flops_per_token"])
    assert e["params"] == ed["params"]      # the same model on both sides
    assert len(e["step_seconds"]) == len(ed["step_seconds"])   # interleaved rounds
  c = result["comparison"]
  baseline = max(hf, key=lambda e: e["tokens_per_second"])
  assert c["baseline"] == baseline["name"]
  assert c["hf_tokens_per_second"] == baseline["tokens_per_second"]
  assert c["ratio"] == pytest.approx(ed["tokens_per_second"] / baseline["tokens_per_second"])
  assert c["ratio_best"] == pytest.approx(
      ed["tokens_per_second_best"] / baseline["tokens_per_second_best"])
  assert c["meets_target"] == (c["ratio"] >= c["target_ratio"] == 1.0)
  assert c["meets_aim"] == (c["ratio"] >= c["aim_ratio"] == 1.25)
  b = result["breakdown"]      # from the medians of the parts timed in the same rounds
  forward = statistics.median(b["ours_part_step_seconds"]["ED forward"])
  both = statistics.median(b["ours_part_step_seconds"]["ED forward+backward"])
  assert b["ours"] == pytest.approx({"forward": forward, "backward": both - forward,
                                     "optimizer": ed["median_step_seconds"] - both})
  assert all(len(t) == len(ed["step_seconds"]) for t in b["ours_part_step_seconds"].values())
  assert b["hf_name"] == c["baseline"] and min(b["hf"].values()) > 0
  assert sum(b["hf"].values()) == pytest.approx(baseline["median_step_seconds"])
  scaling = result["scaling"]
  s = result["settings"]
  assert sorted((e["size"], e["lengths"]["length"]) for e in scaling) == sorted(
      (size, length) for size in s["scaling_sizes"] for length in s["scaling_lengths"])
  assert len(scaling) >= 2
  for e in scaling:
    _check_step(e, "ours", peak)
    assert e["arch"] == cd["arch"]
  assert len(result["load_average"]["start"]) == 3
  summary = _section(summary, "training")
  assert "Load average" in summary
  rows = summary.splitlines()
  assert any(line.startswith("| ED |") and f"{c['ratio']:.2f}x" in line for line in rows)
  assert sum(line.startswith("| scaling: CD ") for line in rows) == len(scaling)
  assert "Forward / backward / optimizer" in summary
  assert ("MISSED" in summary) == (not c["meets_target"])
  assert "ED HF" in stdout


@pytest.mark.slow
def test_scoring_smoke_scores_agree_and_ratios_are_quotients(smoke_run):
  results, summary, _ = smoke_run
  result = results["benchmarks"]["scoring"]
  ours, naive, lm = result["ours"], result["naive"], result["lm_eval"]
  suite = result["suite"]
  assert ours["prompts"] == suite["prompts"] == sum(suite["templates"].values()) > 0
  assert ours["pairs"] == suite["pairs"] >= 2 * ours["prompts"]
  for e in [ours, naive] + lm["entries"]:
    assert e["median_seconds"] == statistics.median(e["seconds"]) > 0
    assert e["best_seconds"] == min(e["seconds"])
    assert e["examples_per_second"] == pytest.approx(e["prompts"] / e["median_seconds"])
    assert e["pairs_per_second"] == pytest.approx(e["pairs"] / e["median_seconds"])
    assert e["examples_per_second_best"] == pytest.approx(e["prompts"] / e["best_seconds"])
  for checks in (naive, lm):
    assert checks["agree"] is True
    assert 0 <= checks["max_rel_diff"] <= checks["tolerance"]
  assert naive["tolerance"] == 1e-6 and lm["tolerance"] == 1e-5
  assert lm["tokens_identical"] is True and lm["error"] is None
  assert 0 < naive["prompts"] <= ours["prompts"]
  assert result["ratio_vs_naive"] == pytest.approx(
      ours["examples_per_second"] / naive["examples_per_second"])
  c = result["comparison"]
  best = max(lm["entries"], key=lambda e: e["examples_per_second"])
  assert c["baseline"] == best["name"]
  assert c["ratio"] == pytest.approx(ours["examples_per_second"] / best["examples_per_second"])
  assert c["ratio_best"] == pytest.approx(
      ours["examples_per_second_best"] / best["examples_per_second_best"])
  assert c["meets_target"] == (c["ratio"] >= c["target_ratio"] == 3.0)
  pad = ours["padding"]
  assert pad["batches"] >= 1
  assert pad["encoder_tokens"] >= pad["prompt_tokens"] > 0
  assert pad["decoder_tokens"] >= pad["choice_tokens"] >= ours["pairs"]
  assert pad["prompt_tokens_once_per_choice"] > pad["prompt_tokens"]
  assert pad["cross_attention_key_tokens"] == pad["encoder_tokens"]   # once per prompt
  compiling = ours["compiling"]
  assert compiling["workers"] >= 1 and compiling["programs"] >= 2
  assert compiling["first_pass_speedup"] == pytest.approx(
      compiling["first_seconds_one_worker"] / ours["first_seconds"])
  fine = result["fine"]         # length buckets, not packed rows, in the same rounds
  assert fine["agree"] is True and fine["pairs"] == ours["pairs"]
  assert fine["ratio"] == pytest.approx(ours["examples_per_second"]
                                        / fine["examples_per_second"])
  assert fine["first_pass_speedup"] == pytest.approx(fine["first_seconds"]
                                                     / ours["first_seconds"])
  assert fine["padding"]["prompt_tokens"] == pad["prompt_tokens"]
  assert fine["padding"]["encoder_tokens"] >= fine["padding"]["prompt_tokens"]
  kv = result["cross_kv"]       # fine, projecting keys/values per choice row
  assert kv["agree"] is True and kv["pairs"] == ours["pairs"]
  assert kv["ratio"] == pytest.approx(fine["examples_per_second"] / kv["examples_per_second"])
  summary = _section(summary, "scoring")
  rows = [line for line in summary.splitlines() if line.startswith("| lm-eval HF")]
  assert len(rows) == len(lm["entries"]) and all("| True (max diff" in r for r in rows)
  assert ("MISSED" in summary) == (not c["meets_target"])
  assert f"compiles {compiling['programs']} programs on {compiling['workers']} threads" in summary


@pytest.fixture
def blocker(tmp_path) -> pathlib.Path:
  """A sitecustomize that makes BLOCKED unimportable and logs every attempt."""
  log = tmp_path / "blocked.log"
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(
      "import sys\n"
      f"_BLOCKED, _LOG = {BLOCKED!r}, {str(log)!r}\n"
      "class _Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if any(name == b or name.startswith(b + '.') for b in _BLOCKED):\n"
      "      open(_LOG, 'a').write(name + '\\n')\n"
      "      raise ImportError('blocked for this test: ' + name)\n"
      "sys.meta_path.insert(0, _Block())\n")
  return site


@pytest.mark.slow
def test_gpu_script_exits_cleanly_without_gpu_and_imports_no_tensorflow(tmp_path, blocker):
  out = tmp_path / "gpu"
  env = _env(PYTHONPATH=str(blocker), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "bench/gpu.py", "--out", str(out)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "no GPU" in proc.stderr and "Traceback" not in proc.stderr
  assert not out.exists()
  assert not (tmp_path / "blocked.log").exists(), (tmp_path / "blocked.log").read_text()


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu_writes_results(tmp_path, blocker):
  out = tmp_path / "gpu"
  env = _env(PYTHONPATH=str(blocker), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--allow-cpu", "--out",
                         str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert not (tmp_path / "blocked.log").exists(), (tmp_path / "blocked.log").read_text()
  results = json.loads((out / "results.json").read_text())
  assert results["mode"] == "smoke" and results["machine"]["jax_backend"] == "cpu"
  training = results["benchmarks"]["gpu_training"]
  assert [e["name"] for e in training["entries"]] == ["CD", "ND", "ED"]
  assert training["spec_peak_flops_per_second"] is None    # a CPU has no spec peak
  for e in training["entries"]:
    assert e["tokens_per_second"] == pytest.approx(e["tokens_per_step"] / e["seconds_per_step"])
    assert e["mfu"] == pytest.approx(e["mfu_vs_measured_peak"])
    assert e["mfu"] > 0 and e["config"]["dtype"] == "bfloat16"
    assert e["meets_target"] == (e["mfu"] >= training["target_mfu"])
  scoring = results["benchmarks"]["gpu_scoring"]
  assert scoring["examples_per_second"] > 0 and scoring["finite"] is True
  summary = (out / "summary.md").read_text()
  assert "## gpu_training" in summary and "## gpu_scoring" in summary


# -- the scoring benchmark's baseline: the ED's requests in length buckets, unpacked ----------

@functools.lru_cache(maxsize=None)
def _tiny_ed():
  """`helpers.one_layer_model`'s ED with a 256-id vocabulary, and random parameters."""
  from arch_objective import models
  model = helpers.one_layer_model(models.ENCODER_DECODER, 256)
  return model, helpers.random_params(model, 1)


def _requests(seed, n=9):
  """Requests of random ids: prompts of 0 to 21 tokens, 1 to 3 choices of 1 to 7."""
  from arch_objective.evaluation import scoring
  rng = np.random.default_rng(seed)
  ids = lambda k: rng.integers(2, 256, k).astype(np.int32)
  return [scoring.Request(ids((0, 3, 9, 21)[i % 4]),
                          tuple(ids(int(rng.choice((1, 4, 7))))
                                for _ in range(int(rng.integers(1, 4)))))
          for i in rng.permutation(n)]


@pytest.mark.slow
def test_fine_baseline_scores_as_the_packed_scorer():
  """Unpacked length buckets, keys and values projected once per prompt or once per
  choice row, give the packed scorer's scores; packing computes fewer positions, and the
  keys and values of each encoder position are projected once, not once per choice."""
  from arch_objective.evaluation import scoring
  from bench import scoring_baselines
  model, params = _tiny_ed()
  requests = _requests(2)
  packed = scoring.Scorer(model, params)
  expected = [r.scores for r in packed.score(requests, normalize=True)]
  once = scoring_baselines.FineScorer(model, params)
  per_row = scoring_baselines.FineScorer(model, params, cross_kv_per_prompt=False)
  for scorer in (once, per_row):
    for a, b in zip(scorer.score(requests, normalize=True), expected):
      assert a.dtype == np.float64
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=0)
  total = lambda c: c["encoder_positions"] + c["decoder_positions"]
  assert total(packed.computed) < total(once.computed)
  counts = once.computed
  assert counts["cross_attention_key_positions"] == counts["encoder_positions"]
  assert (per_row.computed["cross_attention_key_positions"]
          > per_row.computed["encoder_positions"] == counts["encoder_positions"])
  assert once.score([]) == []
  with pytest.raises(ValueError, match="FineScorer scores an encoder-decoder; found the "
                                       "decoder layout"):
    scoring_baselines.FineScorer(helpers.one_layer_model("causal_decoder", 256), {})


@pytest.mark.slow
def test_new_program_cost_trades_decode_programs_for_padding_not_scores():
  """Merging choice-length buckets cuts the decode batches (and so programs), computes
  more padded positions, and gives the same scores; a second call reuses the shapes the
  first compiled."""
  from bench import scoring_baselines
  model, params = _tiny_ed()
  requests = _requests(2, n=12)
  apart = scoring_baselines.FineScorer(model, params, new_program_cost=0)
  merged = scoring_baselines.FineScorer(model, params, new_program_cost=10 ** 6)
  expected = apart.score(requests)
  for a, b in zip(merged.score(requests), expected):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert merged.computed["batches"] < apart.computed["batches"]
  assert merged.computed["decoder_positions"] > apart.computed["decoder_positions"]
  assert merged.computed["encoder_positions"] == apart.computed["encoder_positions"]
  shapes = set(merged._decode_shapes)
  merged.score(requests)
  assert merged._decode_shapes == shapes and merged.computed["programs_compiled"] == 0


def test_merge_length_groups_weighs_padding_against_new_programs():
  from bench.scoring_baselines import merge_length_groups
  groups = [(4, 2), (8, 1), (48, 6)]             # (padded length, rows), ascending
  # Free programs: every group apart (8 + 8 + 288 positions).
  assert merge_length_groups(groups, 0) == [(0, 1), (1, 2), (2, 3)]
  # 20 a program: 2 + 1 rows of 8 (24 + 20) beat 8 + 20 + 8 + 20; 12 rows of 48 do not.
  assert merge_length_groups(groups, 20) == [(0, 2), (2, 3)]
  # 1000 a program: one batch of fine_bucket(9) = 12 rows of 48 (576 + 1000).
  assert merge_length_groups(groups, 1000) == [(0, 3)]
  # A shape compiled before is free: 2 rows of 4 and 1 of 8 stay apart when both exist.
  known = {(2, 4), (1, 8)}
  assert merge_length_groups(groups, 20, known=lambda r, n: (r, n) in known) == [
      (0, 1), (1, 2), (2, 3)]
  assert merge_length_groups([(8, 1)], 5) == [(0, 1)]
  assert merge_length_groups([], 5) == []


def test_ed_chunks_stay_within_the_budget():
  from arch_objective.evaluation import scoring
  from bench.scoring_baselines import ed_chunks
  requests = [scoring.Request(np.ones(3, np.int32), (np.ones(5, np.int32),) * k)
              for k in (1, 2, 3, 1)]
  chunks = list(ed_chunks(range(4), requests, 16, 64))
  # costs 16 + 16 k: 32, 48, 64, 32
  assert chunks == [[0], [1], [2], [3]]
  assert list(ed_chunks(range(4), requests, 16, 96)) == [[0, 1], [2, 3]]
  fine = list(ed_chunks(range(4), requests, 16, 64, lambda n: scoring.fine_bucket(n, 4)))
  assert fine == [[0, 1], [2, 3]]      # costs 22, 28, 34, 22


def test_ed_batch_builders():
  from bench.scoring_baselines import ed_decoder_batch, encoder_batch
  enc = encoder_batch([np.asarray([4, 5, 6]), np.zeros(0, np.int32)], 4, 4)
  assert enc.tolist() == [[4, 5, 6, 0], [0] * 4, [0] * 4, [0] * 4] and enc.dtype == np.int32
  idx, targets = ed_decoder_batch([(1, [7, 1]), (0, [8, 9, 1])], 4, 4)
  assert idx.tolist() == [1, 0, 0, 0] and idx.dtype == np.int32
  assert targets.tolist() == [[7, 1, 0, 0], [8, 9, 1, 0], [0] * 4, [0] * 4]
