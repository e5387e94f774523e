"""Decoding speed: greedy decoding with the key/value cache against a naive loop, beam
search against greedy decoding, and beam search against Hugging Face's `generate`.

One set of prompts (`prompts` rows of `prompt_length` token ids drawn with a fixed seed
from `[2, vocab_size)`: no padding, no EOS) and, per architecture, one float32 model of
`size` with random weights (numpy draws, no compilation; CD and ND share theirs). Each
jitted program is compiled before it is timed (`compile_seconds`); the rounds alternate
the programs compared, the median round counts and the best is recorded beside it.

  greedy   `model.predict_batch(..., max_decode_steps=new_tokens, eos_id=None)`, jitted
           (the KV cache: the prompt is prefilled or encoded once, then one position
           per step), against the naive loop `naive_greedy`: for every new token a full
           forward pass (`model.compute_logits`) over the prompt and the tokens so far
           (the layout's `reference_batch`, rows rounded up to `NAIVE_BUCKET` positions
           so that a few programs serve every length; the positions beyond the current
           one are masked by causality), jitted per bucket and compiled before timing,
           its argmax read back to the host. Both run `new_tokens` steps (no EOS stop)
           and must give the same tokens (`tokens_identical`; the benchmark stops if
           not). `tokens/s` = prompts * new_tokens / seconds; target: cache / naive >=
           `TARGET_CACHE_RATIO`, for CD, ND and ED.
  beam     `model.beam_search(num_decodes=4, alpha=0.6)` (t5x's rules, the model's EOS;
           random weights almost never choose it, so the search runs all `new_tokens`
           steps) against the greedy program above, in the same rounds: seconds per
           prompt and beam / greedy, a cost expected to stay below the number of beams
           (`BEAM_COST_LIMIT`).
  hf       the ED exported by `convert.hf.export_hf` (float32) as
           `T5ForConditionalGeneration`, `generate(num_beams=4, num_return_sequences=4,
           length_penalty=0.6, early_stopping=False, max_new_tokens=new_tokens)`, against
           ours with `rules="hf"` and alpha 0.6 (the same search): all four sequences of
           every prompt must be equal (`sequences_identical`; the benchmark stops if
           not). torch runs at every thread count of `hf_threads` (all usable cores, and
           one); the faster is the baseline. Target: ours / HF prompts/s >=
           `TARGET_HF_RATIO`.

`--smoke` runs the tiny model on 2 prompts of 8 tokens, 12 new tokens, one round.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arch_objective import models
from arch_objective.convert import hf, param_tree
from arch_objective.features import DECODER_TARGET_TOKENS
from bench.training import load_average, usable_cpus

# Hugging Face reads only local files here; never ask the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_CACHE_RATIO = 3.0   # greedy tokens/s with the KV cache / the naive loop's
BEAM_COST_LIMIT = 4.0      # beam / greedy seconds per prompt stays below the beams
TARGET_HF_RATIO = 1.0      # ours / HF generate prompts/s, beam search under HF's rules
NAIVE_BUCKET = 16          # the naive loop's rows grow in steps of this many positions
ARCHS = (models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The model, the prompts, the search and the rounds."""
  size: str = "small"
  vocab_size: int = 32128
  prompts: int = 8
  prompt_length: int = 32
  new_tokens: int = 64
  num_decodes: int = 4
  alpha: float = 0.6
  rounds: int = 5
  naive_rounds: int = 1
  hf_rounds: int = 3
  hf_threads: tuple[int, ...] = ()   # () = (all usable cores, 1)
  seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", prompts=2, prompt_length=8, new_tokens=12, rounds=1,
                 hf_rounds=1)


# ---------------------------------------------------------------------------
# Model, parameters, prompts
# ---------------------------------------------------------------------------
def random_params(model: models.BaseModel, seed: int) -> dict:
  """Parameters of `model`'s shapes drawn with numpy (no compilation), scaled like its
  initialisers: norm scales near 1, embeddings N(0, 1), kernels N(0, 1 / fan-in)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in param_tree.model_shapes(model).items():
    if name.endswith("/scale"):
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith("/embedding"):
      value = rng.standard_normal(shape)
    elif name.endswith("/rel_embedding"):
      value = rng.uniform(-0.5, 0.5, shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(shape[0])
    out[name] = value.astype(np.float32)
  return param_tree.unflatten(out)


def make_prompts(s: Settings) -> np.ndarray:
  """`[prompts, prompt_length]` int32 token ids in `[2, vocab_size)` (no padding, no EOS)."""
  rng = np.random.default_rng([s.seed, 11])
  return rng.integers(2, s.vocab_size, (s.prompts, s.prompt_length)).astype(np.int32)


def generation_batch(model: models.BaseModel, prompts: np.ndarray) -> dict[str, np.ndarray]:
  """`predict_batch`'s and `beam_search`'s batch of `prompts [b, p]`."""
  layout = model.layout
  return layout.generation_batch(list(prompts), len(prompts),
                                 layout.prompt_positions(prompts.shape[1]))


def until_eos(row: Sequence[int], eos_id: int) -> list[int]:
  """A generated row up to its EOS (included), or without its padding zeros."""
  row = [int(t) for t in row]
  return row[:row.index(eos_id) + 1] if eos_id in row else [t for t in row if t]


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  value = jax.block_until_ready(fn())
  return value, time.perf_counter() - start


def _compiled(fn: Callable, *args) -> tuple[Callable, float]:
  """`jax.jit(fn)` lowered and compiled for `args`, and the seconds that took."""
  start = time.perf_counter()
  program = jax.jit(fn).lower(*args).compile()
  return program, time.perf_counter() - start


def rate(prompts: int, new_tokens: int, seconds: Sequence[float],
         compile_seconds: Optional[float]) -> dict:
  """Rates of the median round (the best round's beside them)."""
  median, best = statistics.median(seconds), min(seconds)
  return {"prompts": prompts, "new_tokens": new_tokens, "seconds": list(seconds),
          "median_seconds": median, "best_seconds": best, "compile_seconds": compile_seconds,
          "tokens_per_second": prompts * new_tokens / median,
          "tokens_per_second_best": prompts * new_tokens / best,
          "prompts_per_second": prompts / median, "seconds_per_prompt": median / prompts}


# ---------------------------------------------------------------------------
# The naive loop
# ---------------------------------------------------------------------------
class NaiveGreedy:
  """Greedy decoding without a cache: for every new token one full forward pass
  (`model.compute_logits`) over each prompt and the tokens chosen so far, as the
  layout's `reference_batch` lays them out; rows are rounded up to `NAIVE_BUCKET`
  continuation positions (holding token 2, masked by causality), one jitted program per
  bucket, all compiled in `__init__`. Only the argmax at the current position comes
  back to the host."""

  def __init__(self, model: models.BaseModel, params: Any, prompts: np.ndarray,
               new_tokens: int, bucket: int = NAIVE_BUCKET):
    self.model, self.params, self.prompts = model, params, prompts
    self.new_tokens = new_tokens
    self.lengths = sorted({min(new_tokens, -(-(t + 1) // bucket) * bucket)
                           for t in range(new_tokens)})

    def pick(params, batch, index):
      logits = model.compute_logits(params, batch)                       # [b, l, v]
      return jnp.argmax(logits[:, index], axis=-1).astype(jnp.int32)     # [b]

    self.programs, self.compile_seconds = {}, 0.0
    for length in self.lengths:
      batch, _ = self.batch(np.zeros((len(prompts), 0), np.int32), length)
      self.programs[length], seconds = _compiled(pick, params, batch, np.int32(0))
      self.compile_seconds += seconds

  def batch(self, generated: np.ndarray, length: int) -> tuple[dict[str, np.ndarray], int]:
    """The rows of the prompts continued by `generated [b, t]` and token 2 up to
    `length` continuation positions, and the index of the logits of token `t`."""
    b, t = generated.shape
    fill = np.full((b, length - t), 2, np.int32)
    rows = [self.model.layout.reference_batch(p, np.concatenate([g, f]))
            for p, g, f in zip(self.prompts, generated, fill)]
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    return batch, batch[DECODER_TARGET_TOKENS].shape[1] - length + t

  def __call__(self) -> np.ndarray:
    """`[b, new_tokens]` greedy tokens."""
    generated = np.zeros((len(self.prompts), 0), np.int32)
    for t in range(self.new_tokens):
      length = next(n for n in self.lengths if n > t)
      batch, index = self.batch(generated, length)
      token = np.asarray(self.programs[length](self.params, batch, np.int32(index)))
      generated = np.concatenate([generated, token[:, None]], axis=1)
    return generated


# ---------------------------------------------------------------------------
# Per architecture: greedy with the cache, the naive loop, beam search
# ---------------------------------------------------------------------------
def measure_architecture(arch: str, s: Settings, prompts: np.ndarray,
                         log: Callable[[str], None]) -> tuple[dict, tuple]:
  """The greedy and beam measurements of one architecture, and `(model, params)`."""
  model = models.build_model(arch, s.size, dtype="float32", vocab_size=s.vocab_size)
  params = jax.device_put(random_params(model, s.seed))
  batch = generation_batch(model, prompts)
  greedy_fn = lambda p, b: model.predict_batch(p, b, max_decode_steps=s.new_tokens,
                                               eos_id=None)
  beam_fn = lambda p, b: model.beam_search(p, b, num_decodes=s.num_decodes, alpha=s.alpha,
                                           max_decode_steps=s.new_tokens)
  greedy, greedy_compile = _compiled(greedy_fn, params, batch)
  beam, beam_compile = _compiled(beam_fn, params, batch)
  naive = NaiveGreedy(model, params, prompts, s.new_tokens)
  log(f"{arch}: compiled greedy {greedy_compile:.1f} s, beam {beam_compile:.1f} s, naive "
      f"{naive.compile_seconds:.1f} s ({len(naive.programs)} programs)")

  cache_tokens = np.asarray(greedy(params, batch))
  naive_seconds, naive_tokens = [], None
  for _ in range(s.naive_rounds):
    naive_tokens, seconds = _timed(naive)
    naive_seconds.append(seconds)
  identical = bool(np.array_equal(cache_tokens, naive_tokens))
  if not identical:
    rows = [r for r in range(len(prompts)) if not np.array_equal(cache_tokens[r],
                                                                   naive_tokens[r])]
    raise ValueError(f"decoding benchmark: {arch} greedy decoding with the cache and the "
                     f"naive loop chose other tokens (rows {rows}); their speeds would not "
                     f"be comparable.")
  log(f"  naive     {naive_seconds[-1]:.2f} s, tokens identical")

  greedy_seconds, beam_seconds = [], []
  beam_result = None
  for i in range(s.rounds):
    greedy_seconds.append(_timed(lambda: greedy(params, batch))[1])
    beam_result, seconds = _timed(lambda: beam(params, batch))
    beam_seconds.append(seconds)
    log(f"  round {i + 1}: greedy {greedy_seconds[-1]:.3f} s, beam {beam_seconds[-1]:.3f} s")
  beam_tokens = np.asarray(beam_result.tokens)
  finished = int(np.sum(np.any(beam_tokens == model.eos_id, axis=-1)))

  cache_rate = rate(len(prompts), s.new_tokens, greedy_seconds, greedy_compile)
  naive_rate = dict(rate(len(prompts), s.new_tokens, naive_seconds, naive.compile_seconds),
                    programs=len(naive.programs), row_lengths=naive.lengths)
  beam_rate = dict(rate(len(prompts), s.new_tokens, beam_seconds, beam_compile),
                   num_decodes=s.num_decodes, alpha=s.alpha, rules="t5x",
                   beams_ended_in_eos=finished)
  cache_ratio = cache_rate["tokens_per_second"] / naive_rate["tokens_per_second"]
  beam_ratio = beam_rate["seconds_per_prompt"] / cache_rate["seconds_per_prompt"]
  log(f"  greedy {cache_rate['tokens_per_second']:.1f} tokens/s with the cache, "
      f"{naive_rate['tokens_per_second']:.1f} naive ({cache_ratio:.2f}x); beam / greedy "
      f"{beam_ratio:.2f}x")
  result = {
      "arch": arch, "params": models.count_params(model),
      "greedy": {"cache": cache_rate, "naive": naive_rate, "tokens_identical": identical,
                 "ratio": cache_ratio,
                 "ratio_best": (cache_rate["tokens_per_second_best"]
                                / naive_rate["tokens_per_second_best"]),
                 "target_ratio": TARGET_CACHE_RATIO,
                 "meets_target": cache_ratio >= TARGET_CACHE_RATIO},
      "beam": {"beam": beam_rate, "greedy": cache_rate, "ratio": beam_ratio,
               "ratio_best": beam_rate["best_seconds"] / cache_rate["best_seconds"],
               "limit": BEAM_COST_LIMIT, "below_limit": beam_ratio < BEAM_COST_LIMIT},
  }
  return result, (model, params)


# ---------------------------------------------------------------------------
# Beam search against Hugging Face's generate
# ---------------------------------------------------------------------------
def hf_generate(theirs, prompts: np.ndarray, s: Settings) -> np.ndarray:
  """`generate`'s beams `[b, k, steps]` (the decoder start token dropped)."""
  import torch
  with torch.no_grad():
    out = theirs.generate(torch.as_tensor(prompts, dtype=torch.long),
                          attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                          num_beams=s.num_decodes, num_return_sequences=s.num_decodes,
                          length_penalty=s.alpha, early_stopping=False, do_sample=False,
                          max_new_tokens=s.new_tokens)
  return out.numpy()[:, 1:].reshape(len(prompts), s.num_decodes, -1)


def measure_hf(model: models.BaseModel, params: Any, s: Settings, prompts: np.ndarray,
               log: Callable[[str], None]) -> dict:
  """Ours (`rules="hf"`) against `generate` on the export of the same parameters."""
  try:
    import torch
    import transformers
  except ImportError as e:     # the eval extra (torch, transformers) is missing
    return {"error": f"{type(e).__name__}: {e}", "entries": [], "comparison": None}
  threads = s.hf_threads or tuple(sorted({usable_cpus(), 1}, reverse=True))
  batch = generation_batch(model, prompts)
  ours_fn = lambda p, b: model.beam_search(p, b, num_decodes=s.num_decodes, alpha=s.alpha,
                                           max_decode_steps=s.new_tokens, rules="hf")
  ours, ours_compile = _compiled(ours_fn, params, batch)
  with tempfile.TemporaryDirectory(prefix="bench_decoding_") as directory:
    export = hf.export_hf(jax.device_get(params), model.config, model.name,
                          os.path.join(directory, "export"), dtype="float32",
                          meta={"vocab_size": s.vocab_size})
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(
        export, torch_dtype=torch.float32).eval()
  torch.set_num_threads(threads[0])
  theirs_tokens, hf_first = _timed(lambda: hf_generate(theirs, prompts, s))
  ours_tokens = np.asarray(ours(params, batch).tokens)
  eos = model.eos_id
  differ = [r for r in range(len(prompts))
            if [until_eos(t, eos) for t in ours_tokens[r]]
            != [until_eos(t, eos) for t in theirs_tokens[r]]]
  if differ:
    raise ValueError(f"decoding benchmark: beam search under HF's rules and HF's generate "
                     f"returned other sequences (prompts {differ}); the export or the rules "
                     f"disagree.")
  log(f"hf: compiled ours {ours_compile:.1f} s; generate first pass {hf_first:.2f} s "
      f"(torch threads {threads[0]}); all {s.num_decodes} sequences of every prompt equal")

  ours_seconds: list[float] = []
  hf_seconds: dict[int, list[float]] = {n: [] for n in threads}
  for i in range(s.hf_rounds):
    ours_seconds.append(_timed(lambda: ours(params, batch))[1])
    for n in threads:
      torch.set_num_threads(n)
      hf_seconds[n].append(_timed(lambda: hf_generate(theirs, prompts, s))[1])
    log(f"  round {i + 1}: ours {ours_seconds[-1]:.3f} s, HF "
        + ", ".join(f"{t[-1]:.3f} s ({n} thread{'s' if n > 1 else ''})"
                    for n, t in hf_seconds.items()))
  ours_rate = dict(rate(len(prompts), s.new_tokens, ours_seconds, ours_compile),
                   name="ours (rules=hf)")
  entries = [dict(rate(len(prompts), s.new_tokens, seconds, None), torch_threads=n,
                  first_seconds=hf_first if n == threads[0] else None,
                  name=f"HF generate ({n} thread{'s' if n > 1 else ''})")
             for n, seconds in hf_seconds.items()]
  baseline = max(entries, key=lambda e: e["prompts_per_second"])
  ratio = ours_rate["prompts_per_second"] / baseline["prompts_per_second"]
  log(f"  ours {ours_rate['prompts_per_second']:.2f} prompts/s, HF "
      f"{baseline['prompts_per_second']:.2f} ({baseline['name']}): {ratio:.2f}x")
  return {
      "error": None, "ours": ours_rate, "entries": entries, "hf_threads": list(threads),
      "sequences_identical": True, "sequences_compared": len(prompts) * s.num_decodes,
      "beams_ended_in_eos": int(np.sum(np.any(ours_tokens == eos, axis=-1))),
      "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
      "comparison": {
          "baseline": baseline["name"], "ratio": ratio,
          "ratio_best": baseline["best_seconds"] / ours_rate["best_seconds"],
          "target_ratio": TARGET_HF_RATIO, "meets_target": ratio >= TARGET_HF_RATIO,
          "shortfall": max(0.0, 1.0 - ratio / TARGET_HF_RATIO)},
  }


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
def run(options: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
  """The three comparisons (`FULL`, or `SMOKE` with `options.smoke`) as one JSON-ready
  dict; stops with a ValueError if the tokens or sequences compared differ."""
  s = SMOKE if getattr(options, "smoke", False) else FULL
  load_start = load_average()
  prompts = make_prompts(s)
  log(f"{s.prompts} prompts of {s.prompt_length} tokens, {s.new_tokens} new tokens; model "
      f"{s.size}, float32, vocabulary {s.vocab_size}; load average {load_start}")
  architectures, built = {}, {}
  for arch in ARCHS:
    architectures[arch], built[arch] = measure_architecture(arch, s, prompts, log)
  hf_result = measure_hf(*built[models.ENCODER_DECODER], s, prompts, log)
  return {
      "settings": dataclasses.asdict(s),
      "targets": {"cache_ratio": TARGET_CACHE_RATIO, "beam_cost_limit": BEAM_COST_LIMIT,
                  "hf_ratio": TARGET_HF_RATIO},
      "naive_bucket": NAIVE_BUCKET,
      "load_average": {"start": load_start, "end": load_average()},
      "usable_cpus": usable_cpus(),
      "model": {"size": s.size, "dtype": "float32", "vocab_size": s.vocab_size,
                "weights": "random (numpy draws)"},
      "architectures": architectures,
      "hf": hf_result,
  }


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
def summary(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  header = ["comparison", "arch", "ours", "baseline", "ratio (best)", "equal", "target"]
  rows = []
  for arch, a in result["architectures"].items():
    g = a["greedy"]
    rows.append([
        "greedy tokens/s: KV cache / naive", arch,
        f"{g['cache']['tokens_per_second']:.1f}", f"{g['naive']['tokens_per_second']:.1f}",
        f"{g['ratio']:.2f}x ({g['ratio_best']:.2f}x)",
        "same tokens" if g["tokens_identical"] else "DIFFER",
        f">= {g['target_ratio']:g}x: " + ("met" if g["meets_target"] else "MISSED")])
  for arch, a in result["architectures"].items():
    b = a["beam"]
    rows.append([
        f"s/prompt: beam (k={b['beam']['num_decodes']}) / greedy", arch,
        f"{b['beam']['seconds_per_prompt']:.4f}", f"{b['greedy']['seconds_per_prompt']:.4f}",
        f"{b['ratio']:.2f}x ({b['ratio_best']:.2f}x)", "-",
        f"< {b['limit']:g}x: " + ("yes" if b["below_limit"] else "NO")])
  h = result["hf"]
  c = h.get("comparison")
  if c:
    for e in h["entries"]:
      ratio = h["ours"]["prompts_per_second"] / e["prompts_per_second"]
      ratio_best = e["best_seconds"] / h["ours"]["best_seconds"]
      target = ""
      if e["name"] == c["baseline"]:
        target = f">= {c['target_ratio']:g}x: " + (
            "met" if c["meets_target"] else f"MISSED by {c['shortfall']:.0%}")
      rows.append([f"prompts/s: beam (rules=hf) / {e['name']}", models.ENCODER_DECODER,
                   f"{h['ours']['prompts_per_second']:.2f}", f"{e['prompts_per_second']:.2f}",
                   f"{ratio:.2f}x ({ratio_best:.2f}x)",
                   f"same {h['sequences_compared']} sequences", target])
  s = result["settings"]
  load = result["load_average"]
  notes = [
      f"{s['prompts']} prompts of {s['prompt_length']} random token ids, {s['new_tokens']} "
      f"new tokens; {result['model']['size']} models, float32, random weights, vocabulary "
      f"{s['vocab_size']}; "
      + ", ".join(f"{arch} {a['params'] / 1e6:.1f}M parameters"
                  for arch, a in result["architectures"].items()) + ".",
      f"Greedy runs all {s['new_tokens']} steps (eos_id=None); the naive loop is one full "
      f"forward pass per new token over rows rounded up to {result['naive_bucket']} new "
      f"positions, argmax read back each step. Beam search: k={s['num_decodes']}, alpha "
      f"{s['alpha']:g}, t5x's rules, the model's EOS.",
      f"Median of {s['rounds']} alternated rounds (greedy, beam), {s['naive_rounds']} naive, "
      f"{s['hf_rounds']} for ours against HF; every program compiled before timing.",
      "Compile seconds (untimed) greedy / beam / naive: " + "; ".join(
          f"{arch} {a['greedy']['cache']['compile_seconds']:.1f} / "
          f"{a['beam']['beam']['compile_seconds']:.1f} / "
          f"{a['greedy']['naive']['compile_seconds']:.1f} ({a['greedy']['naive']['programs']} "
          f"programs)" for arch, a in result["architectures"].items()) + ".",
      f"Load average {load['start']} at the start, {load['end']} at the end, on "
      f"{result['usable_cpus']} usable CPUs.",
  ]
  if c is None:
    notes.append(f"HF generate not measured: {h['error']}; install the eval extra.")
  else:
    notes.append(f"HF: T5ForConditionalGeneration.generate(num_beams={s['num_decodes']}, "
                 f"length_penalty={s['alpha']:g}, early_stopping=False) on the export "
                 f"(torch {h['versions']['torch']}, transformers "
                 f"{h['versions']['transformers']}, threads {h['hf_threads']}, the faster "
                 f"is the baseline); ours: beam_search(rules='hf', alpha={s['alpha']:g}). "
                 f"All {h['sequences_compared']} sequences equal.")
  return header, rows, notes
