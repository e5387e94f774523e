"""Resume and sharding: what a restart costs, what each host reads, and whether one host's
pipeline feeds its chips at the paper's shapes.

  resume cost     seconds from opening the input pipeline to its first batch, resuming
                  at batch 10 and at batch 5,000 (ED:MLM, 4 rows of 64 tokens): from
                  the saved iterator state (`Batches.set_state` with `rows`) against
                  replaying the batches (what a resume cost before iterator states);
                  target: late / early <= 1.5 with the state.
  bytes per host  bytes each of 4 hosts decodes for its share of the corpus against what
                  one host decodes for the whole (target: about 1/4 each).
  paper shapes    this host's pipeline tokens/s at length 626 (CD:FLM, ED:MLM) against
                  what one host of a TPU v4-256 (4 chips) consumes in a `paper`-size
                  step at 50% MFU (275 TFLOP/s bf16 peak per chip; FLOPs per token from
                  `models.training_flops_per_token`); target >= 2x.

The corpus is `bench.corpus`'s embedded English-like text with a vocabulary trained on
it. Ratios come from one run; absolute seconds drift with the machine's load.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from typing import Any, Callable, Mapping

import tasks
from arch_objective import models
from arch_objective.data import sources
from arch_objective.training import data
from arch_objective.training import sources as source_lib
from bench import corpus

RESUME_TARGET = 1.5
PAPER_TARGET = 2.0
V4_CHIPS_PER_HOST, V4_PEAK, MFU = 4, 275e12, 0.5


@dataclasses.dataclass(frozen=True)
class Settings:
  early: int = 10
  late: int = 5000
  rows: int = 4
  length: int = 64
  documents: int = 4000
  paper_rows: int = 256
  hosts: int = 4
  repeats: int = 3


FULL = Settings()
SMOKE = Settings(early=2, late=40, rows=4, documents=400, paper_rows=8, repeats=1)


def _open_and_first(config: data.DatasetConfig, arch: str, state: dict) -> float:
  start = time.perf_counter()
  iterator = data.batches(config, arch)
  iterator.set_state(state)
  next(iterator)
  return time.perf_counter() - start


def _best(fn: Callable[[], float], repeats: int) -> float:
  return min(fn() for _ in range(repeats))


def measure_resume(config: data.DatasetConfig, settings: Settings) -> dict:
  iterator = data.batches(config, "encoder_decoder")
  states = {}
  for n in range(settings.late + 1):
    if n in (settings.early, settings.late):
      states[n] = iterator.get_state()
    if n < settings.late:
      next(iterator)
  out = {}
  for name, make, repeats in (("state", lambda n: states[n], settings.repeats),
                              ("replay", lambda n: {"batches": n}, 1)):
    early = _best(lambda: _open_and_first(config, "encoder_decoder", make(settings.early)),
                  repeats)
    late = _best(lambda: _open_and_first(config, "encoder_decoder", make(settings.late)),
                 repeats)
    out[name] = {"early_seconds": early, "late_seconds": late, "ratio": late / early}
  out["epoch_at_late"] = states[settings.late]["rows"]["epoch"]
  return out


def measure_bytes(corpus_path: str, hosts: int) -> dict:
  read = {"bytes": 0}
  original = sources._decoded_lines

  def counting(*args, **kwargs):
    for where, offset, line in original(*args, **kwargs):
      read["bytes"] += len(line.encode("utf-8")) + 1
      yield where, offset, line

  sources._decoded_lines = counting
  try:
    for _ in sources.local_positioned(corpus_path):
      pass
    whole = read["bytes"]
    per_host = []
    for index in range(hosts):
      read["bytes"] = 0
      for _ in sources.local_positioned(corpus_path, shard_index=index, num_shards=hosts):
        pass
      per_host.append(read["bytes"])
  finally:
    sources._decoded_lines = original
  return {"hosts": hosts, "whole_bytes": whole, "per_host_bytes": per_host,
          "fractions": [b / whole for b in per_host]}


def measure_paper_shapes(corpus_path: str, vocabulary: str, settings: Settings) -> list[dict]:
  entries = []
  for arch, task in (("causal_decoder", "local_full_lm"),
                     ("encoder_decoder", "local_span_corruption")):
    config = data.DatasetConfig(task=task, batch_size=settings.paper_rows, length=626,
                                source=source_lib.LocalCorpus(corpus_path),
                                vocabulary=vocabulary)
    start = time.perf_counter()
    batch = next(data.batches(config, arch))
    seconds = time.perf_counter() - start
    tokens = sum(batch[k].size for k in ("encoder_input_tokens", "decoder_target_tokens")
                 if k in batch)
    model = models.build_model(arch, "paper")
    flops = models.training_flops_per_token(model)
    consumed = V4_CHIPS_PER_HOST * V4_PEAK * MFU / flops
    entries.append({"arch": arch, "task": task, "pipeline_tokens_per_second": tokens / seconds,
                    "host_consumes_tokens_per_second": consumed,
                    "ratio": tokens / seconds / consumed,
                    "flops_per_token": flops})
  return entries


def run(options: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
  settings = SMOKE if getattr(options, "smoke", False) else FULL
  with tempfile.TemporaryDirectory(prefix="bench_resume_") as directory:
    texts = list(corpus.documents(settings.documents))
    corpus_path = corpus.write_jsonl(texts, os.path.join(directory, "corpus.jsonl"))
    vocabulary = corpus.train_vocabulary(texts[:400], os.path.join(directory, "spm"), 2000)
    source = source_lib.LocalCorpus(corpus_path)
    tasks.resolve("local_span_corruption", source=source, vocabulary=vocabulary,
                  with_seqio=False)
    config = data.DatasetConfig(task="local_span_corruption", batch_size=settings.rows,
                                length=settings.length, source=source, vocabulary=vocabulary)
    resume = measure_resume(config, settings)
    log(f"resume at {settings.late} vs {settings.early}: state "
        f"{resume['state']['ratio']:.2f}x, replay {resume['replay']['ratio']:.1f}x")
    shares = measure_bytes(corpus_path, settings.hosts)
    log(f"bytes per host ({settings.hosts} hosts): "
        + ", ".join(f"{f:.3f}" for f in shares["fractions"]))
    paper = measure_paper_shapes(corpus_path, vocabulary, settings)
    for e in paper:
      log(f"{e['arch']} at 626: pipeline {e['pipeline_tokens_per_second']:,.0f} tok/s vs "
          f"{e['host_consumes_tokens_per_second']:,.0f} consumed per v4 host: "
          f"{e['ratio']:.1f}x")
  return {"settings": dataclasses.asdict(settings), "resume": resume, "shares": shares,
          "paper_shapes": paper, "resume_target": RESUME_TARGET, "paper_target": PAPER_TARGET}


def summary(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  s, r = result["settings"], result["resume"]
  met = lambda ok: "met" if ok else "MISSED"
  header = ["measure", "result", "target"]
  rows = [
      [f"resume at batch {s['late']} / at batch {s['early']}, from the saved state",
       f"{r['state']['ratio']:.2f}x ({r['state']['late_seconds']:.3f} s / "
       f"{r['state']['early_seconds']:.3f} s)",
       f"<= {RESUME_TARGET:g}x: {met(r['state']['ratio'] <= RESUME_TARGET)}"],
      [f"the same by replaying the batches", f"{r['replay']['ratio']:.1f}x "
       f"({r['replay']['late_seconds']:.2f} s / {r['replay']['early_seconds']:.3f} s)", "-"],
      [f"bytes decoded per host, {result['shares']['hosts']} hosts / one host",
       ", ".join(f"{f:.3f}" for f in result["shares"]["fractions"]),
       f"about {1 / result['shares']['hosts']:.2f}"],
  ]
  for e in result["paper_shapes"]:
    rows.append([f"{e['arch']} pipeline at 626 / a TPU v4 host's paper-size step at 50% MFU",
                 f"{e['ratio']:.1f}x ({e['pipeline_tokens_per_second']:,.0f} / "
                 f"{e['host_consumes_tokens_per_second']:,.0f} tok/s)",
                 f">= {PAPER_TARGET:g}x: {met(e['ratio'] >= PAPER_TARGET)}"])
  notes = [f"{s['rows']} rows of {s['length']} tokens (ED:MLM); best of {s['repeats']} "
           f"(replay: one run); "
           f"the late position is in epoch {r['epoch_at_late']} of the corpus.",
           "A TPU v4 host has 4 chips of 275 TFLOP/s (bf16); the paper-size model's training "
           "FLOPs per token come from models.training_flops_per_token."]
  return header, rows, notes
