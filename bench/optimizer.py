"""Optimizer update: seconds of one Adafactor update of the ED model's parameters.

Each round times one update of each of (`rounds` rounds, interleaved, so that a change
of the machine's load hits all of them):

  fused           our default `optimizers.adafactor` (t5x's defaults, rsqrt schedule):
                  jitted `tx.update` + `optax.apply_updates`, parameters and optimiser
                  state donated, on the ED `size` parameter tree (float32);
  optax           the same with `implementation="optax"`: `optax.adafactor`'s chain, the
                  reference;
  HF Adafactor    `transformers.optimization.Adafactor(lr=1e-3, scale_parameter=True,
                  relative_step=False, warmup_init=False).step()` on the parameters of
                  `T5ForConditionalGeneration` of the same config (the same number of
                  parameters; what the training benchmark's HF step updates), at every
                  torch thread count of `hf_threads` (all usable cores, and one); the
                  faster is the baseline.

Gradients are fixed random normals x 1e-3 (an update's cost does not depend on their
values). Every system is warmed up by one untimed update (ours compiles). Medians of the
rounds; the ratios are quotients of medians measured in the same run:
`speedup_vs_reference = optax / fused` and `ratio = HF / fused` (the target: ours at least
as fast as transformers', `ratio >= TARGET_RATIO`). Both of ours run the same updates
from the same parameters, so their parameters must still agree at the end
(`max_abs_diff`).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arch_objective import models
from arch_objective.training import optimizers
from bench.training import hf_model, load_average, usable_cpus

TARGET_RATIO = 1.0
AGREEMENT_TOLERANCE = 1e-5
IMPLEMENTATIONS = ("fused", "optax")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The model whose parameters are updated, and how many interleaved rounds."""
  size: str = "small"
  vocab_size: int = 32128
  rounds: int = 9
  hf_threads: tuple[int, ...] = ()   # () = (all usable cores, 1)
  seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", vocab_size=256, rounds=2)


@dataclasses.dataclass
class Updater:
  """One system's update: `step()` runs one and returns its seconds."""
  name: str
  system: str
  step: Callable[[], float]
  describe: dict


def random_gradients(params, seed: int):
  """Normal(0, 1e-3) float32 gradients shaped like `params`."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda p: (rng.standard_normal(p.shape) * 1e-3).astype(np.float32), params)


def our_updater(implementation: str, params, grads) -> tuple[Updater, Callable[[], Any]]:
  """A jitted donated update of `implementation`; also a function returning its current
  parameters."""
  tx = optimizers.adafactor(optimizers.rsqrt_decay(), implementation=implementation)

  def update(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  fn = jax.jit(update, donate_argnums=(0, 1))
  box = {"params": jax.tree_util.tree_map(jnp.copy, params)}   # donated: not `params`
  box["state"] = tx.init(box["params"])

  def step() -> float:
    start = time.perf_counter()
    box["params"], box["state"] = jax.block_until_ready(fn(box["params"], box["state"], grads))
    return time.perf_counter() - start

  count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  return (Updater(implementation, "ours", step,
                  {"implementation": implementation, "params": count,
                   "leaves": len(jax.tree_util.tree_leaves(params))}),
          lambda: box["params"])


def hf_updaters(model: models.BaseModel, threads: Sequence[int], seed: int) -> list[Updater]:
  """transformers' Adafactor on the HF T5 of `model`'s config, one updater per torch
  thread count (one optimizer and one set of gradients shared by all)."""
  import torch
  t5, optimizer = hf_model(model, seed)
  generator = torch.Generator().manual_seed(seed)
  params = [p for p in t5.parameters() if p.requires_grad]
  for p in params:
    p.grad = torch.randn(p.shape, generator=generator) * 1e-3
  count = int(sum(p.numel() for p in params))

  def step_at(n: int) -> Callable[[], float]:
    def step() -> float:
      torch.set_num_threads(n)
      start = time.perf_counter()
      optimizer.step()
      return time.perf_counter() - start
    return step

  return [Updater(f"HF Adafactor ({n} thread{'s' if n > 1 else ''})", "hf", step_at(n),
                  {"params": count, "leaves": len(params), "torch_threads": n})
          for n in threads]


def measure(updaters: Sequence[Updater], rounds: int, log: Callable[[str], None]
            ) -> list[dict]:
  """Warm each updater, then `rounds` rounds of one update each (interleaved)."""
  first = [u.step() for u in updaters]
  times: list[list[float]] = [[] for _ in updaters]
  for _ in range(rounds):
    for u, t in zip(updaters, times):
      t.append(u.step())
  out = []
  for u, w, t in zip(updaters, first, times):
    entry = dict(u.describe, name=u.name, system=u.system, seconds=t,
                 median_seconds=statistics.median(t), best_seconds=min(t),
                 first_seconds=w)
    log(f"  {u.name:26s} median {entry['median_seconds']:.3f} s, best "
        f"{entry['best_seconds']:.3f} s (first {w:.2f} s)")
    out.append(entry)
  return out


def compare(entries: Sequence[Mapping[str, Any]]) -> dict:
  """The fused update against the reference and against HF's fastest thread count."""
  by_name = {e["name"]: e for e in entries}
  fused, reference = by_name["fused"], by_name["optax"]
  out = {"speedup_vs_reference": reference["median_seconds"] / fused["median_seconds"],
         "speedup_vs_reference_best": reference["best_seconds"] / fused["best_seconds"],
         "target_ratio": TARGET_RATIO}
  hf = [e for e in entries if e["system"] == "hf"]
  if hf:
    baseline = min(hf, key=lambda e: e["median_seconds"])
    ratio = baseline["median_seconds"] / fused["median_seconds"]
    out.update(baseline=baseline["name"], hf_torch_threads=baseline["torch_threads"],
               ratio=ratio, ratio_best=baseline["best_seconds"] / fused["best_seconds"],
               reference_ratio=baseline["median_seconds"] / reference["median_seconds"],
               meets_target=ratio >= TARGET_RATIO)
  return out


def run(options: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
  s = SMOKE if getattr(options, "smoke", False) else FULL
  threads = s.hf_threads or tuple(sorted({usable_cpus(), 1}, reverse=True))
  load_start = load_average()
  model = models.build_model(models.ENCODER_DECODER, s.size, dtype="float32",
                             vocab_size=s.vocab_size)
  shapes = models.default_input_shapes(models.ENCODER_DECODER, 1, 8, 8, 8)
  params = jax.jit(lambda rng: model.get_initial_variables(rng, shapes)["params"])(
      jax.random.PRNGKey(s.seed))
  grads = jax.device_put(random_gradients(params, s.seed + 1))
  ours, current = zip(*(our_updater(name, params, grads) for name in IMPLEMENTATIONS))
  hf_error: Optional[str] = None
  try:
    hf = hf_updaters(model, threads, s.seed)
  except ImportError as e:   # the eval extra (torch, transformers) is not installed
    hf, hf_error = [], f"{type(e).__name__}: {e}"
  del params
  entries = measure(list(ours) + hf, s.rounds, log)
  fused_params, reference_params = (jax.tree_util.tree_leaves(c()) for c in current)
  max_abs_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(fused_params, reference_params))
  versions = {}
  if hf:
    import torch
    import transformers
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
  return {
      "target_ratio": TARGET_RATIO, "settings": dataclasses.asdict(s),
      "hf_threads": list(threads), "usable_cpus": usable_cpus(),
      "load_average": {"start": load_start, "end": load_average()},
      "entries": entries, "hf": {"error": hf_error, "versions": versions},
      "comparison": compare(entries),
      "agreement": {"updates": 1 + s.rounds, "max_abs_diff": max_abs_diff,
                    "tolerance": AGREEMENT_TOLERANCE,
                    "agree": max_abs_diff <= AGREEMENT_TOLERANCE},
  }


def summary(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  c = result["comparison"]
  header = ["update", "params (leaves)", "median (best) s", "first s", "fused is x faster",
            f"target >= {TARGET_RATIO:g}x"]
  fused = next(e for e in result["entries"] if e["name"] == "fused")
  rows = []
  for e in result["entries"]:
    name = {"fused": "fused (ours)", "optax": "optax (reference)"}.get(e["name"], e["name"])
    target = ""
    if e["name"] == c.get("baseline"):
      target = "met" if c["meets_target"] else (
          f"MISSED (needs {TARGET_RATIO / c['ratio']:.2f}x)")
    speedup = e["median_seconds"] / fused["median_seconds"]
    rows.append([name, f"{e['params'] / 1e6:.1f}M ({e['leaves']})",
                 f"{e['median_seconds']:.3f} ({e['best_seconds']:.3f})",
                 f"{e['first_seconds']:.2f}", "" if e is fused else f"{speedup:.2f}x",
                 target])
  s = result["settings"]
  a = result["agreement"]
  notes = [f"One Adafactor update (t5x's defaults) of the ED {s['size']} parameters, "
           f"float32: ours jitted with parameters and state donated; HF: transformers' "
           f"Adafactor.step() on T5ForConditionalGeneration of the same config, torch "
           f"threads {result['hf_threads']}. Medians of {s['rounds']} interleaved rounds, "
           f"load average {result['load_average']['start']} at the start on "
           f"{result['usable_cpus']} usable CPUs.",
           f"fused vs optax (reference): {c['speedup_vs_reference']:.2f}x faster (best "
           f"updates {c['speedup_vs_reference_best']:.2f}x); parameters after "
           f"{a['updates']} identical updates differ by at most {a['max_abs_diff']:.1e} "
           f"(tolerance {a['tolerance']:g}: {'agree' if a['agree'] else 'DISAGREE'})."]
  if "ratio" in c:
    notes.append(f"HF Adafactor / fused: {c['ratio']:.2f}x (best updates "
                 f"{c['ratio_best']:.2f}x; optax reference: {c['reference_ratio']:.2f}x) "
                 f"against {c['baseline']}; target >= {TARGET_RATIO:g}x "
                 f"{'met' if c['meets_target'] else 'MISSED'}.")
  else:
    notes.append(f"HF Adafactor not measured ({result['hf']['error']}); install the eval "
                 f"extra.")
  return header, rows, notes
