"""Benchmarks (not tests): speeds measured on this machine, reported as ratios against a
baseline measured in the same run.

  python -m bench [--smoke] [--out DIR] [--only NAME ...] [benchmark options]

runs every benchmark of `BENCHMARKS` and writes `DIR/results.json` (everything measured,
plus a description of the machine) and `DIR/summary.md` (one table per benchmark);
`DIR` defaults to `bench/results/`. `--smoke` shrinks every benchmark to seconds (a
tiny model, a few batches) while keeping the results well-formed.

  data_pipeline   data pipeline tokens/s per paper pair against the tokens/s that a
                  train step of the small model consumes (target: >= 2x)
  training        tokens/s and MFU of the train step of CD, ND, ED against HF T5's
                  (target: ED >= 1x HF), and at several sizes and lengths
  optimizer       seconds of one Adafactor update of the ED parameters: ours (fused)
                  against the optax reference and transformers' Adafactor (target:
                  ours at least as fast as transformers')
  scoring         T0-Eval rank classification examples/s against lm-eval's HF backend
                  (target: >= 3x) and a naive one-forward-per-choice scorer
  eval_cache      first evaluation pass in a fresh process with JAX's persistent
                  compilation cache cold, warm and off (cold / warm: what it buys)
  resume          input pipeline resume cost late vs early (target: <= 1.5x), bytes read
                  per host of 4, pipeline vs a TPU v4 host's consumption at paper shapes
  decoding        greedy tokens/s with the KV cache against a naive full-forward loop
                  (target: >= 3x), beam search / greedy per prompt (below 4x) for CD,
                  ND, ED, and ED beam search against HF T5's generate (target: >= 1x)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from typing import Any, Callable, Mapping

from bench import (data_pipeline, decoding, eval_cache, optimizer, resume, scoring,
                   training)

Summary = tuple[list[str], list[list[str]], list[str]]  # header, rows, notes


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One benchmark: `run(options) -> result` (JSON-serialisable), `summary(result)` its
  table, `add_arguments(parser)` its own command-line options."""
  description: str
  run: Callable[[argparse.Namespace], dict]
  summary: Callable[[Mapping[str, Any]], Summary]
  add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


BENCHMARKS: dict[str, Benchmark] = {
    "data_pipeline": Benchmark(
        description=("Host-side data pipeline tokens/s per paper pair against the tokens/s "
                     "a training step of the small model consumes (target: ratio >= "
                     f"{data_pipeline.TARGET_RATIO:g})."),
        run=data_pipeline.run, summary=data_pipeline.summary,
        add_arguments=data_pipeline.add_arguments),
    "training": Benchmark(
        description=("Training step tokens/s and MFU (against the matmul peak measured in the "
                     "same run) of CD, ND and ED, and of HF T5ForConditionalGeneration for ED "
                     f"(target: ours/HF >= {training.TARGET_RATIO:g}x, aim "
                     f"{training.AIM_RATIO:g}x); CD at several sizes and lengths."),
        run=training.run, summary=training.summary),
    "optimizer": Benchmark(
        description=("Seconds of one Adafactor update of the ED model's parameters: ours "
                     "(fused, the default) against optax's chain (the reference it "
                     "replaces) and transformers' Adafactor on HF T5's parameters (target: "
                     f"HF / ours >= {optimizer.TARGET_RATIO:g}x); both of ours must agree."),
        run=optimizer.run, summary=optimizer.summary),
    "scoring": Benchmark(
        description=("T0-Eval rank classification examples/s of RankScorer against "
                     "lm-evaluation-harness's HF backend on the exported same model (target: "
                     f">= {scoring.TARGET_RATIO:g}x) and against the naive scorer; scores "
                     "must agree."),
        run=scoring.run, summary=scoring.summary, add_arguments=scoring.add_arguments),
    "eval_cache": Benchmark(
        description=("First pass of an ED evaluation (initialisation and scoring, every "
                     "program compiled) in a fresh process with JAX's persistent compilation "
                     "cache cold, warm and off, as `eval` keeps it; scores must be identical."),
        run=eval_cache.run_benchmark, summary=eval_cache.summary),
    "resume": Benchmark(
        description=("Input pipeline: seconds to the first batch resuming late vs early "
                     f"(target: <= {resume.RESUME_TARGET:g}x), bytes decoded per host of 4, "
                     "and pipeline tokens/s at length 626 against a TPU v4 host's "
                     f"consumption in a paper-size step (target: >= {resume.PAPER_TARGET:g}x)."),
        run=resume.run, summary=resume.summary),
    "decoding": Benchmark(
        description=("Greedy decoding tokens/s with the KV cache (`predict_batch`) against a "
                     "naive loop of one full forward pass per new token (target: >= "
                     f"{decoding.TARGET_CACHE_RATIO:g}x; same tokens), beam search "
                     "(k=4, alpha 0.6) seconds per prompt against greedy for CD, ND and ED "
                     f"(a cost expected below {decoding.BEAM_COST_LIMIT:g}x), and ED beam "
                     "search under HF's rules against HF T5's `generate` on the export "
                     f"(target: >= {decoding.TARGET_HF_RATIO:g}x; same sequences)."),
        run=decoding.run, summary=decoding.summary),
}


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def machine() -> dict:
  """Where the numbers were measured: platform, CPUs, library versions, JAX devices."""
  import flax
  import jax
  import jaxlib
  import numpy
  import optax
  import sentencepiece

  usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count())
  return {
      "platform": platform.platform(),
      "machine": platform.machine(),
      "cpu_model": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "usable_cpus": usable,
      "python": platform.python_version(),
      "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                   "numpy": numpy.__version__, "flax": flax.__version__,
                   "optax": optax.__version__, "sentencepiece": sentencepiece.__version__},
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(d) for d in jax.devices()],
      "jax_device_kind": jax.devices()[0].device_kind,
  }
