"""First-pass evaluation time with JAX's persistent compilation cache cold, warm and off.

  python -m bench.eval_cache [--smoke] [--out DIR]      (DIR: bench/results/eval_cache)

The `eval` commands keep JAX's persistent compilation cache (`evaluation.runs.
use_compilation_cache`). This measures what it buys on the first pass of an evaluation,
the pass that compiles every batch shape: each run is a fresh process that turns the
cache on (or off), initialises an encoder-decoder (`size`, float32, seeded) and scores
the T0-style suite of `bench.scoring` once with `RankScorer`, as T0-Eval does:

  cold   an empty cache folder: every program compiled, and written
  warm   the same folder again, in another process: every program read back
  off    no cache: every program compiled, nothing written

`ratio = cold / warm` seconds of the first pass (initialisation included), the runs in one
session; the scores of all three must be identical. Absolute seconds drift with the
machine's load; the ratio is what the run is for. `--smoke`: the tiny model, 8 prompts.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "eval_cache")
ENV = "ARCH_OBJECTIVE_COMPILATION_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class Settings:
  size: str = "small"
  prompts: int = 32
  vocabulary_pieces: int = 2000
  vocabulary_documents: int = 400
  passage_sentences: int = 4
  seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", prompts=8, vocabulary_pieces=400, vocabulary_documents=60,
                 passage_sentences=1)


# ---------------------------------------------------------------------------
# One evaluation pass (in its own process)
# ---------------------------------------------------------------------------
def child(requests_path: str, size: str, vocab_size: int, seed: int) -> dict:
  """Turn the cache on as the `eval` commands do (the folder from the environment),
  then initialise the model and score every request once; seconds and cache events."""
  start = time.perf_counter()
  import threading
  from jax import monitoring
  counts: dict[str, int] = {}
  lock = threading.Lock()      # the scorer compiles on a pool of threads

  def count(event, **_):
    with lock:
      counts[event] = counts.get(event, 0) + 1
  monitoring.register_event_listener(count)
  import jax
  from arch_objective import models
  from arch_objective.evaluation import rank_classification, runs
  folder = runs.use_compilation_cache(None)
  imported = time.perf_counter()
  data = np.load(requests_path)
  requests = [rank_classification.Request(
      data[f"prompt_{i}"], tuple(data[f"choice_{i}_{j}"] for j in range(int(data[f"n_{i}"]))))
      for i in range(int(data["count"]))]
  model = models.build_model(models.ENCODER_DECODER, size, dtype="float32",
                             vocab_size=vocab_size)
  params = model.get_initial_variables(
      jax.random.PRNGKey(seed),
      models.default_input_shapes(models.ENCODER_DECODER, 1, 8, 8, 8))["params"]
  jax.block_until_ready(params)
  initialised = time.perf_counter()
  scores = rank_classification.RankScorer(model, params).score(requests)
  done = time.perf_counter()
  return {"cache": folder, "import_seconds": imported - start,
          "init_seconds": initialised - imported, "score_seconds": done - initialised,
          "first_pass_seconds": done - imported,
          "hits": counts.get("/jax/compilation_cache/cache_hits", 0),
          "misses": counts.get("/jax/compilation_cache/cache_misses", 0),
          "scores": [s.tolist() for s in scores]}


def _run_child(requests_path: str, settings: Settings, vocab_size: int, cache: str) -> dict:
  env = dict(os.environ, **{ENV: cache})
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, "-m", "bench.eval_cache", "--child", requests_path, "--size",
       settings.size, "--vocab-size", str(vocab_size), "--seed", str(settings.seed)],
      cwd=ROOT, env=env, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"eval_cache child failed:\n{proc.stderr[-3000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result["process_seconds"] = time.perf_counter() - start
  return result


def _files(folder: str) -> tuple[int, int]:
  if not os.path.isdir(folder):
    return 0, 0
  paths = [os.path.join(folder, name) for name in os.listdir(folder)]
  return len(paths), sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def run_benchmark(options, log=print) -> dict:
  """`python -m bench`'s entry: the smoke or the full settings."""
  return run(SMOKE if options.smoke else FULL, log)


def summary(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  """`python -m bench`'s table: one row per run, the ratio in the notes."""
  header = ["run", "first pass s", "init s", "scoring s", "cache hits", "misses",
            "cache files"]
  rows = [[name, f"{r['first_pass_seconds']:.1f}", f"{r['init_seconds']:.1f}",
           f"{r['score_seconds']:.1f}", str(r["hits"]), str(r["misses"]),
           str(r["cache_files"])] for name, r in result["runs"].items()]
  s = result["settings"]
  notes = [f"ED `{s['size']}`, float32, {result['suite']['prompts']} prompts "
           f"({result['suite']['pairs']} choices), each run a fresh process.",
           f"cold / warm first pass: {result['ratio']:.2f}x (scoring alone "
           f"{result['ratio_scoring']:.2f}x); scores identical in all three runs."]
  return header, rows, notes


def run(settings: Settings, log=print) -> dict:
  from arch_objective.data import vocabularies
  from bench import corpus
  from bench import scoring as scoring_bench
  from bench.training import load_average, usable_cpus
  load_start = load_average()
  with tempfile.TemporaryDirectory(prefix="bench_eval_cache_") as directory:
    texts = itertools.chain(corpus.documents(settings.vocabulary_documents, settings.seed),
                            [scoring_bench._TEMPLATE_TEXT] * 20)
    spiece = corpus.train_vocabulary(texts, os.path.join(directory, "spiece"),
                                     settings.vocabulary_pieces)
    vocab = vocabularies.SentencePieceVocabulary(spiece, vocabularies.DEFAULT_EXTRA_IDS)
    suite = scoring_bench.make_suite(settings.prompts, settings.seed,
                                     settings.passage_sentences)
    requests = scoring_bench.to_requests(vocab, suite)
    arrays = {"count": np.asarray(len(requests))}
    for i, r in enumerate(requests):
      arrays[f"prompt_{i}"], arrays[f"n_{i}"] = r.prompt, np.asarray(len(r.choices))
      for j, c in enumerate(r.choices):
        arrays[f"choice_{i}_{j}"] = c
    requests_path = os.path.join(directory, "requests.npz")
    np.savez(requests_path, **arrays)
    vocab_size = vocabularies.padded_vocab_size(vocab.vocab_size)
    cache = os.path.join(directory, "jax-cache")
    runs = {}
    for name, folder in (("cold", cache), ("warm", cache), ("off", "")):
      runs[name] = _run_child(requests_path, settings, vocab_size, folder)
      runs[name]["cache_files"], runs[name]["cache_bytes"] = _files(cache)
      log(f"  {name:5s} first pass {runs[name]['first_pass_seconds']:7.1f} s (init "
          f"{runs[name]['init_seconds']:.1f} s, scoring {runs[name]['score_seconds']:.1f} s); "
          f"cache hits {runs[name]['hits']}, misses {runs[name]['misses']}, files "
          f"{runs[name]['cache_files']}")
  scores = [r.pop("scores") for r in runs.values()]
  if any(s != scores[0] for s in scores[1:]):
    raise ValueError("eval_cache benchmark: the scores of the cold, warm and uncached passes "
                     "differ; a cached program computed something else.")
  cold, warm = runs["cold"], runs["warm"]
  return {"settings": dataclasses.asdict(settings), "runs": runs,
          "ratio": cold["first_pass_seconds"] / warm["first_pass_seconds"],
          "ratio_scoring": cold["score_seconds"] / warm["score_seconds"],
          "scores_identical": True, "suite": {"prompts": len(requests),
                                              "pairs": sum(len(r.choices) for r in requests)},
          "load_average": {"start": load_start, "end": load_average()},
          "usable_cpus": usable_cpus()}


def markdown(result: dict) -> str:
  s, runs = result["settings"], result["runs"]
  lines = [
      "# Persistent compilation cache: first evaluation pass cold, warm and off", "",
      f"Run {result['created']}. ED `{s['size']}`, float32; {result['suite']['prompts']} "
      f"T0-style prompts ({result['suite']['pairs']} choices) scored once by RankScorer in a "
      f"fresh process, after the model's initialisation (both timed).", "",
      "| run | first pass s | init s | scoring s | cache hits | misses | cache files |",
      "|---|---|---|---|---|---|---|"]
  for name, r in runs.items():
    lines.append(f"| {name} | {r['first_pass_seconds']:.1f} | {r['init_seconds']:.1f} | "
                 f"{r['score_seconds']:.1f} | {r['hits']} | {r['misses']} | "
                 f"{r['cache_files']} |")
  lines += ["", f"- cold / warm first pass: {result['ratio']:.2f}x (scoring alone "
                f"{result['ratio_scoring']:.2f}x); scores identical in all three runs.",
            f"- Load average {result['load_average']['start']} at the start, "
            f"{result['load_average']['end']} at the end, on {result['usable_cpus']} usable "
            f"CPUs.", ""]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.eval_cache", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true", help="the tiny model, 8 prompts")
  parser.add_argument("--out", default=DEFAULT_OUT,
                      help="folder for results.json and summary.md")
  parser.add_argument("--child", metavar="REQUESTS", help=argparse.SUPPRESS)
  parser.add_argument("--size", help=argparse.SUPPRESS)
  parser.add_argument("--vocab-size", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
  options = parser.parse_args(argv)
  if options.child:
    print(json.dumps(child(options.child, options.size, options.vocab_size, options.seed)))
    return 0
  settings = SMOKE if options.smoke else FULL
  result = run(settings)
  result["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")
  result["mode"] = "smoke" if options.smoke else "full"
  os.makedirs(options.out, exist_ok=True)
  with open(os.path.join(options.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  summary = markdown(result)
  with open(os.path.join(options.out, "summary.md"), "w", encoding="utf-8") as f:
    f.write(summary)
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
