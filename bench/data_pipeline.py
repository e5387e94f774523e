"""Data speed: does the host-side pipeline outrun a training step of the small model?

For each of the paper's six (architecture, objective) pairs at length 626, on this machine:

  pipeline        text documents -> SentencePiece -> objective -> feature conversion and
                  packing -> batches, exactly the path training reads
                  (`tasks.resolve("local_<objective>", ...)`, `TaskSpec.rows`, `batch_rows`);
  objective only  pre-tokenised documents -> rows -> batches (the pipeline less reading
                  and tokenisation);
  step            a jitted `trainer.train_step` of the `small` model (float32, t5x
                  Adafactor with the rsqrt schedule) on a batch of that pipeline.

Throughputs count model tokens: rows x (length of `encoder_input_tokens` + length of
`decoder_target_tokens`), padding included, since that is what a step consumes: 626 per
row for the decoders and for ED span corruption (512 + 114), 1252 for ED prefix LM
(626 + 626). `ratio = pipeline tokens/s / step tokens/s`; the target is
`ratio >= TARGET_RATIO`, so the pipeline is never what a training run waits for. The
pipeline runs on one core in Python; the step uses every core XLA gets.

The corpus is the embedded English-like one of `bench.corpus` with a 2000-piece
vocabulary trained on it, unless `--corpus` (text or JSONL files) and/or `--vocabulary`
(a SentencePiece model) name real ones; the model's vocabulary is the vocabulary's size
plus 100 extra ids, padded to a multiple of 128. `--smoke` times the tiny model instead,
on 16 rows and one step.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

import tasks
from arch_objective import models
from arch_objective.data import registry, sources, vocabularies
from arch_objective.objectives import feature_converters, pipeline
from arch_objective.training import optimizers, trainer
from arch_objective.training.sources import LocalCorpus
from bench import corpus

TARGET_RATIO = 2.0
MODEL_FEATURES = ("encoder_input_tokens", "decoder_target_tokens")  # the tokens a step reads


@dataclasses.dataclass(frozen=True)
class Settings:
  """How much to measure. `pipeline_rows` rows per pair are timed through the pipeline;
  the synthetic corpus holds enough text for them (ED prefix LM reads 1252 a row)."""
  size: str = "small"
  batch_rows: int = 4
  pipeline_rows: int = 256
  steps: int = 3
  length: int = pipeline.PAPER_LENGTH
  corpus_documents: int = 1500
  vocabulary_documents: int = 400
  vocabulary_pieces: int = 2000
  seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", pipeline_rows=16, steps=1, corpus_documents=120,
                 vocabulary_documents=120)


def model_tokens(batch: Mapping[str, np.ndarray]) -> int:
  """Tokens a step consumes from `batch`: rows x the lengths of `MODEL_FEATURES`."""
  return int(sum(batch[k].size for k in MODEL_FEATURES if k in batch))


def time_batches(make_rows: Callable[[], Iterable[Mapping[str, np.ndarray]]], batch_rows: int,
                 max_rows: int, what: str) -> dict:
  """Throughput of building up to `max_rows // batch_rows` batches from `make_rows()`
  (the iterator's set-up included)."""
  start = time.perf_counter()
  batches = feature_converters.batch_rows(make_rows(), batch_rows)
  tokens = count = 0
  for batch in itertools.islice(batches, max(1, max_rows // batch_rows)):
    tokens += model_tokens(batch)
    count += 1
  seconds = time.perf_counter() - start
  if count == 0:
    raise ValueError(f"{what}: the corpus gave no batch of {batch_rows} rows; pass a larger "
                     f"--corpus.")
  return dict(tokens_per_second=tokens / seconds, tokens=tokens, rows=count * batch_rows,
              batches=count, seconds=seconds)


def pretokenize(spec: registry.TaskSpec, max_tokens: int) -> tuple[list[np.ndarray], dict]:
  """Tokenised training documents holding at least `max_tokens` tokens (or all of them),
  and the throughput of reading and tokenising them (raw tokens/s)."""
  start = time.perf_counter()
  documents, tokens = [], 0
  for document in spec.documents("train"):
    documents.append(document)
    tokens += len(document)
    if tokens >= max_tokens:
      break
  seconds = time.perf_counter() - start
  return documents, dict(tokens_per_second=tokens / seconds, tokens=tokens,
                         documents=len(documents), seconds=seconds)


def step_throughput(arch: str, batch: Mapping[str, np.ndarray], vocab_size: int,
                    settings: Settings) -> dict:
  """Model tokens/s of the jitted train step of `settings.size` on `batch` (compiled and
  run once first, untimed)."""
  model = models.build_model(arch, settings.size, dtype="float32", vocab_size=vocab_size)
  schedule = optimizers.rsqrt_decay()
  optimizer = optimizers.adafactor(schedule)
  # The parameters do not depend on the lengths (relative positions), so they are made
  # from length-8 inputs: the same op-by-op initialisation serves every pair.
  state = trainer.init_state(model, optimizer, models.default_input_shapes(arch, 1, 8, 8, 8),
                             jax.random.PRNGKey(settings.seed))
  step = jax.jit(lambda state, batch, rng: trainer.train_step(
      model, optimizer, schedule, 1, state, batch, rng))
  batch = jax.device_put(dict(batch))
  rng = jax.random.PRNGKey(settings.seed + 1)

  start = time.perf_counter()
  state, metrics = jax.block_until_ready(step(state, batch, rng))
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(settings.steps):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  tokens = settings.steps * model_tokens(batch)
  return dict(tokens_per_second=tokens / seconds, tokens=tokens, steps=settings.steps,
              batch_rows=len(batch["decoder_target_tokens"]), seconds=seconds,
              seconds_per_step=seconds / settings.steps, first_step_seconds=compile_seconds,
              model_size=settings.size, params=models.count_params(model),
              model_vocab_size=vocab_size, loss=float(metrics["loss"]))


def measure_pair(arch: str, objective: str, data: dict, documents: list[np.ndarray],
                 settings: Settings) -> dict:
  """Pipeline, objective-only and step throughput of one (architecture, objective)."""
  spec = tasks.resolve(f"local_{objective}",
                       source=LocalCorpus(data["corpus"], field=data["field"]),
                       vocabulary=data["vocabulary"], length=settings.length, arch=arch,
                       with_seqio=False)
  vocab = spec.vocab()
  name = spec.objective(arch).name
  rows = settings.pipeline_rows
  full = time_batches(lambda: spec.rows("train", arch=arch, seed=settings.seed),
                      settings.batch_rows, rows, f"{name} pipeline")
  objective_only = time_batches(
      lambda: spec.objective(arch).rows(iter(documents), seed=settings.seed,
                                        sentinel_start=vocab.vocab_size - 1,
                                        num_extra_ids=vocab.extra_ids),
      settings.batch_rows, rows, f"{name} objective")
  batch = next(feature_converters.batch_rows(spec.rows("train", arch=arch, seed=settings.seed),
                                             settings.batch_rows))
  step = step_throughput(arch, batch, data["model_vocab_size"], settings)
  ratio = full["tokens_per_second"] / step["tokens_per_second"]
  return {
      "arch": arch, "objective": objective, "name": name, "task": spec.name,
      "tokens_per_row": model_tokens(batch) // settings.batch_rows,
      "feature_lengths": {k: int(v.shape[1]) for k, v in batch.items() if k in MODEL_FEATURES},
      "pipeline": full, "objective_only": objective_only, "step": step,
      "ratio": ratio,
      "objective_only_ratio": objective_only["tokens_per_second"] / step["tokens_per_second"],
      "meets_target": ratio >= TARGET_RATIO,
      "shortfall": max(0.0, 1.0 - ratio / TARGET_RATIO),
      "speedup_needed": max(1.0, TARGET_RATIO / ratio),
  }


def prepare_data(options: argparse.Namespace, settings: Settings, directory: str) -> dict:
  """The corpus and vocabulary to read: the options' files, or embedded ones in
  `directory`."""
  field = getattr(options, "field", "text")
  corpus_path = getattr(options, "corpus", None)
  vocabulary_path = getattr(options, "vocabulary", None)
  if corpus_path:
    description = " ".join(corpus_path)
    sample: Callable[[], Iterable[str]] = lambda: itertools.islice(
        sources.local_documents(corpus_path, field=field), settings.vocabulary_documents)
  else:
    corpus_path = corpus.write_jsonl(
        corpus.documents(settings.corpus_documents, settings.seed),
        os.path.join(directory, "corpus.jsonl"))
    field = "text"
    description = (f"embedded English-like corpus (bench.corpus, {settings.corpus_documents} "
                   f"documents, seed {settings.seed})")
    sample = lambda: corpus.documents(settings.vocabulary_documents, settings.seed)
  if vocabulary_path:
    vocabulary_description = vocabulary_path
  else:
    vocabulary_path = corpus.train_vocabulary(sample(), os.path.join(directory, "spiece"),
                                              settings.vocabulary_pieces)
    vocabulary_description = (f"SentencePiece unigram, {settings.vocabulary_pieces} pieces, "
                              f"trained on {settings.vocabulary_documents} corpus documents")
  vocab = registry.load_vocabulary(vocabulary_path, vocabularies.DEFAULT_EXTRA_IDS)
  return {"corpus": corpus_path, "field": field, "vocabulary": vocabulary_path,
          "corpus_description": description, "vocabulary_description": vocabulary_description,
          "vocab_size": vocab.vocab_size,
          "model_vocab_size": vocabularies.padded_vocab_size(vocab.vocab_size)}


def run(options: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
  """The benchmark's result: settings, data and one entry per paper pair."""
  settings = SMOKE if getattr(options, "smoke", False) else FULL
  with tempfile.TemporaryDirectory(prefix="bench_data_") as directory:
    data = prepare_data(options, settings, directory)
    spec = tasks.resolve("local_full_lm",
                         source=LocalCorpus(data["corpus"], field=data["field"]),
                         vocabulary=data["vocabulary"], length=settings.length,
                         with_seqio=False)
    longest_row = 2 * settings.length
    documents, tokenize = pretokenize(spec, int(1.25 * settings.pipeline_rows * longest_row))
    log(f"data: {data['corpus_description']}; vocabulary {data['vocabulary_description']} "
        f"({data['vocab_size']} ids, model {data['model_vocab_size']}); tokenisation "
        f"{tokenize['tokens_per_second']:,.0f} tokens/s")
    entries = []
    for arch, objective in pipeline.PAPER_RUNS:
      entry = measure_pair(arch, objective, data, documents, settings)
      entries.append(entry)
      log(f"{entry['name']:8s} pipeline {entry['pipeline']['tokens_per_second']:>11,.0f} tok/s  "
          f"step ({settings.size}) {entry['step']['tokens_per_second']:>9,.0f} tok/s  "
          f"ratio {entry['ratio']:,.1f}x")
  public = {k: v for k, v in data.items() if k not in ("corpus", "vocabulary")}
  if getattr(options, "corpus", None):
    public["corpus"] = data["corpus"]
  if getattr(options, "vocabulary", None):
    public["vocabulary"] = data["vocabulary"]
  return {"target_ratio": TARGET_RATIO, "settings": dataclasses.asdict(settings),
          "data": public, "tokenize": tokenize, "entries": entries}


def _target(entry: Mapping[str, Any]) -> str:
  if entry["meets_target"]:
    return "met"
  return (f"MISSED by {entry['shortfall']:.0%} (the pipeline needs "
          f"{entry['speedup_needed']:.2f}x its speed)")


def summary(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  """Header, rows and notes of the summary table."""
  settings, data = result["settings"], result["data"]
  header = ["pair", "tokens/row", "pipeline tok/s", "objective-only tok/s",
            f"step tok/s ({settings['size']})", "ratio", f"target >= {TARGET_RATIO:g}x"]
  rows = [[e["name"], str(e["tokens_per_row"]), f"{e['pipeline']['tokens_per_second']:,.0f}",
           f"{e['objective_only']['tokens_per_second']:,.0f}",
           f"{e['step']['tokens_per_second']:,.0f}", f"{e['ratio']:,.1f}x", _target(e)]
          for e in result["entries"]]
  notes = [
      f"Corpus: {data['corpus_description']}; vocabulary: {data['vocabulary_description']} "
      f"({data['vocab_size']} ids with extra ids; model vocabulary {data['model_vocab_size']}).",
      f"Length {settings['length']}; {settings['pipeline_rows']} rows timed through the "
      f"pipeline per pair; step: {settings['size']} model, float32, batches of "
      f"{settings['batch_rows']} rows, {settings['steps']} timed step(s) after one "
      f"compiling step. Tokenisation alone: {result['tokenize']['tokens_per_second']:,.0f} "
      f"tokens/s.",
      "Tokens are rows x (encoder_input_tokens + decoder_target_tokens lengths), padding "
      "included; ratio = pipeline tok/s / step tok/s.",
  ]
  return header, rows, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("data_pipeline")
  group.add_argument("--corpus", nargs="+", default=None,
                     help="text or JSONL files (globs allowed) instead of the embedded corpus")
  group.add_argument("--field", default="text", help="the text field of JSONL files")
  group.add_argument("--vocabulary", default=None,
                     help="a SentencePiece model instead of one trained on the corpus")
