"""Training throughput: tokens/s and model-FLOPs utilisation of a full training step.

A step is what `training.train` runs: forward, backward and the t5x Adafactor update
(`trainer.train_step`, jitted with the state donated), float32 on this machine's CPU.
Measured in one run, on synthetic batches of random token ids (every position a real,
weighted token; the step costs the same for any ids):

  matmul peak     the best FLOP/s of a `jnp.dot` of two n x n float32 matrices (and of
                  `torch.matmul`, when torch is installed), measured before and after the
                  steps; the best of all of them is the machine's peak;
  CD, ND, ED      our step at `size` (default `small`) on `rows` x `length` tokens
                  (ED: `rows` x (`inputs_length` + `targets_length`));
  ED (optax)      our ED step with `optimizers.adafactor(implementation="optax")`, the
                  optax chain that our default fused Adafactor replaces (same results):
                  the step before and after, timed in the same rounds;
  HF ED           `transformers.T5ForConditionalGeneration` (PyTorch, eager, float32) of
                  the same config (`convert.hf_t5.t5_config`: gated-GELU, tied embeddings),
                  same batch, with `transformers.optimization.Adafactor(lr=1e-3,
                  scale_parameter=True, relative_step=False, warmup_init=False)`: forward,
                  backward, step. Timed with torch at every thread count of `hf_threads`
                  (all cores, and one: OpenMP's spinning threads collapse when other
                  processes hold the cores); the faster is the baseline;
  breakdown       our ED forward alone and forward + backward
                  (`loss_fn` and its `value_and_grad`, jitted apart), timed in the same
                  rounds: with the full step they split our step into forward, backward
                  and optimizer, beside the same three times inside HF's steps;
  scaling         our CD step at every size x length of `scaling_sizes` x
                  `scaling_lengths`.

Our ED step, its parts, the reference step and HF's steps alternate, one of each per round
(`comparison_steps` rounds), so that a change of the machine's load hits all of them.
Each is warmed up by one untimed step (our first step compiles). `tokens/s = tokens
per step / median step time`: other jobs may share the cores, and the median of the
rounds resists a disturbed step either way (the best step is recorded too).
`MFU = tokens/s x training_flops_per_token / matmul peak`, with
`models.training_flops_per_token` (6 FLOPs per parameter-token of every matmul plus
attention scores; embedding lookups free), the same count for HF's model.
`ratio = ours / HF` tokens/s; the target is `ratio >= TARGET_RATIO` (aim `AIM_RATIO`);
`reference_ratio` is the same for the reference step, `speedup_vs_reference` ours / it.
`--smoke` measures tiny models on a few tokens, one timed step each.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arch_objective import architectures, models, testing
from arch_objective.training import optimizers, trainer

# Hugging Face reads only local files here; never ask the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_RATIO = 1.0
AIM_RATIO = 1.25
ARCHS = (models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to measure: the model size and batch of the CD/ND/ED steps, how many steps,
  the matmul used for the peak, and the sizes and lengths of the scaling rows."""
  size: str = "small"
  rows: int = 8
  length: int = 128            # decoder-only tokens per row
  inputs_length: int = 64      # ED encoder tokens per row
  targets_length: int = 64     # ED decoder tokens per row
  vocab_size: int = 32128      # T5's (padded) vocabulary
  steps: int = 3               # timed steps (rounds) per system
  comparison_steps: int = 5    # interleaved rounds of the ED vs HF comparison
  hf_threads: tuple[int, ...] = ()   # () = (all usable cores, 1)
  matmul_size: int = 2048
  matmul_repeats: int = 8
  scaling_sizes: tuple[str, ...] = ("tiny", "small")
  scaling_lengths: tuple[int, ...] = (64, 128)
  breakdown: bool = True       # also time our ED forward and forward+backward alone
  reference_step: bool = True  # also time our ED step with the optax reference Adafactor
  seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", rows=2, length=32, inputs_length=16, targets_length=16,
                 vocab_size=256, steps=1, comparison_steps=1, matmul_size=256,
                 matmul_repeats=2, scaling_sizes=("tiny",), scaling_lengths=(16, 32))


def usable_cpus() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def load_average() -> list[float]:
  """The 1, 5 and 15 minute load averages (other jobs share this machine's cores)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


# ---------------------------------------------------------------------------
# Peak
# ---------------------------------------------------------------------------
def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
  fn()                                                   # warm-up (compiles)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def matmul_peak(n: int, repeats: int, dtype=jnp.float32) -> dict:
  """FLOP/s of the best of `repeats` n x n x n products: `jnp.dot` and, if installed,
  `torch.matmul` at all usable threads."""
  flops = 2.0 * n ** 3
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), dtype) for i in (0, 1))
  dot = jax.jit(jnp.dot)
  seconds = _best_seconds(lambda: dot(a, b).block_until_ready(), repeats)
  out = {"n": n, "dtype": jnp.dtype(dtype).name,
         "jax": {"seconds": seconds, "flops_per_second": flops / seconds}}
  try:
    import torch
  except ImportError:
    return out
  torch.set_num_threads(usable_cpus())
  x, y = torch.randn(n, n), torch.randn(n, n)
  seconds = _best_seconds(lambda: torch.matmul(x, y), repeats)
  out["torch"] = {"seconds": seconds, "flops_per_second": flops / seconds,
                  "threads": usable_cpus()}
  return out


def best_peak(*peaks: Mapping[str, Any]) -> float:
  return max(p[k]["flops_per_second"] for p in peaks for k in ("jax", "torch") if k in p)


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------
def synthetic_batch(arch: str, rows: int, length: int, inputs_length: int,
                    targets_length: int, vocab_size: int, seed: int = 0
                    ) -> dict[str, np.ndarray]:
  """A full batch of random ids in `[2, vocab_size)`, every target weighted. The ND's
  prefix (`decoder_causal_attention`) is the first half of each row."""
  return testing.synthetic_batch(arch, rows, length, vocab_size=vocab_size, seed=seed,
                                 inputs_length=inputs_length, targets_length=targets_length)


@dataclasses.dataclass
class Runner:
  """One system's step: `warm()` (untimed, returns its seconds) then `step()`s;
  `last_parts()` the forward/backward/optimizer seconds of the last step, if known."""
  name: str
  system: str
  describe: dict
  warm: Callable[[], float]
  step: Callable[[], float]
  last_loss: Callable[[], float]
  last_parts: Callable[[], Optional[dict]] = lambda: None


def our_runner(arch: str, size: str, rows: int, length: int, inputs_length: int,
               targets_length: int, vocab_size: int, seed: int = 0,
               implementation: str = "fused") -> Runner:
  """Our jitted `trainer.train_step` (float32, t5x Adafactor of `implementation`, rsqrt
  schedule)."""
  model = models.build_model(arch, size, dtype="float32", vocab_size=vocab_size)
  schedule = optimizers.rsqrt_decay()
  optimizer = optimizers.adafactor(schedule, implementation=implementation)
  state = trainer.init_state(model, optimizer, models.default_input_shapes(arch, 1, 8, 8, 8),
                             jax.random.PRNGKey(seed))
  step_fn = jax.jit(lambda state, batch, rng: trainer.train_step(
      model, optimizer, schedule, 1, state, batch, rng), donate_argnums=(0,))
  batch = jax.device_put(synthetic_batch(arch, rows, length, inputs_length, targets_length,
                                         vocab_size, seed))
  rng = jax.random.PRNGKey(seed + 1)
  box = {"state": state, "loss": float("nan")}

  def step() -> float:
    start = time.perf_counter()
    box["state"], metrics = jax.block_until_ready(step_fn(box["state"], batch, rng))
    seconds = time.perf_counter() - start
    box["loss"] = float(metrics["loss"])
    return seconds

  has_encoder = architectures.get(arch).has_encoder
  tokens_per_row = inputs_length + targets_length if has_encoder else length
  describe = dict(
      arch=arch, size=size, rows=rows, tokens_per_row=tokens_per_row,
      lengths=({"inputs": inputs_length, "targets": targets_length} if has_encoder
               else {"length": length}),
      tokens_per_step=rows * tokens_per_row, params=models.count_params(model),
      flops_per_token=models.training_flops_per_token(model, length, inputs_length,
                                                      targets_length),
      vocab_size=vocab_size, dtype="float32", adafactor=implementation)
  name = architectures.get(arch).short + ("" if implementation == "fused" else f" ({implementation})")
  return Runner(name, "ours", describe, step, step, lambda: box["loss"])


def our_part_runners(ours: Runner, seed: int = 0) -> list[Runner]:
  """Our forward alone and forward + backward (`jax.value_and_grad` of `loss_fn`) on
  the batch of `ours`: with its full step they split the step into forward, backward
  and optimizer."""
  d = ours.describe
  arch = d["arch"]
  model = models.build_model(arch, d["size"], dtype="float32", vocab_size=d["vocab_size"])
  params = model.get_initial_variables(jax.random.PRNGKey(seed),
                                       models.default_input_shapes(arch, 1, 8, 8, 8))["params"]
  lengths = d["lengths"]
  batch = jax.device_put(synthetic_batch(arch, d["rows"], lengths.get("length", 0),
                                         lengths.get("inputs", 0), lengths.get("targets", 0),
                                         d["vocab_size"], seed))
  forward = jax.jit(lambda p, b: model.loss_fn(p, b, None)[0])
  backward = jax.jit(lambda p, b: jax.value_and_grad(
      lambda q: model.loss_fn(q, b, None)[0])(p))

  def timer(fn) -> Callable[[], float]:
    def timed() -> float:
      start = time.perf_counter()
      jax.block_until_ready(fn(params, batch))
      return time.perf_counter() - start
    return timed

  out = []
  for name, fn in (("forward", forward), ("forward+backward", backward)):
    timed = timer(fn)
    out.append(Runner(f"{ours.name} {name}", "ours", dict(d), timed, timed,
                      lambda: float("nan")))
  return out


def hf_model(model: models.BaseModel, seed: int = 0):
  """`(T5ForConditionalGeneration, Adafactor)` of our ED config (float32, train mode)."""
  import torch
  import transformers
  from arch_objective.convert import hf_t5
  torch.manual_seed(seed)
  t5 = transformers.T5ForConditionalGeneration(hf_t5.t5_config(model.config))
  t5.train()
  optimizer = transformers.optimization.Adafactor(
      t5.parameters(), lr=1e-3, scale_parameter=True, relative_step=False, warmup_init=False)
  return t5, optimizer


def hf_runners(ours: Runner, threads: Sequence[int], seed: int = 0) -> list[Runner]:
  """HF's ED step on the batch of `ours`, one runner per torch thread count; each step
  also records its forward, backward and optimizer seconds."""
  import torch
  d = ours.describe
  model = models.build_model(models.ENCODER_DECODER, d["size"], dtype="float32",
                             vocab_size=d["vocab_size"])
  t5, optimizer = hf_model(model, seed)
  batch = synthetic_batch(models.ENCODER_DECODER, d["rows"], 0, d["lengths"]["inputs"],
                          d["lengths"]["targets"], d["vocab_size"], seed)
  inputs = torch.from_numpy(batch["encoder_input_tokens"]).long()
  labels = torch.from_numpy(batch["decoder_target_tokens"]).long()
  mask = torch.ones_like(inputs)
  box = {"loss": float("nan")}

  def step_at(n: int) -> Callable[[], float]:
    def step() -> float:
      torch.set_num_threads(n)
      start = time.perf_counter()
      loss = t5(input_ids=inputs, attention_mask=mask, labels=labels).loss
      forward = time.perf_counter()
      loss.backward()
      backward = time.perf_counter()
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)
      end = time.perf_counter()
      box["loss"] = float(loss.detach())
      box["parts"] = {"forward": forward - start, "backward": backward - forward,
                      "optimizer": end - backward}
      return end - start
    return step

  params = sum(p.numel() for p in t5.parameters())
  out = []
  for n in threads:
    describe = dict(d, params=int(params), torch_threads=n)
    step = step_at(n)
    out.append(Runner(f"ED HF ({n} thread{'s' if n > 1 else ''})", "hf", describe, step,
                      step, lambda: box["loss"], lambda: dict(box["parts"])))
  return out


def measure(runners: Sequence[Runner], steps: int, log: Callable[[str], None]) -> list[dict]:
  """Warm every runner, then `steps` rounds of one step each (interleaved)."""
  warm = []
  for r in runners:
    warm.append(r.warm())
    log(f"  {r.name:22s} first step {warm[-1]:7.2f} s")
  times: list[list[float]] = [[] for _ in runners]
  parts: list[list[Optional[dict]]] = [[] for _ in runners]
  for _ in range(steps):
    for r, t, p in zip(runners, times, parts):
      t.append(r.step())
      p.append(r.last_parts())
  out = []
  for r, w, t, p in zip(runners, warm, times, parts):
    best, median = min(t), statistics.median(t)
    tokens = r.describe["tokens_per_step"]
    entry = dict(r.describe, name=r.name, system=r.system, step_seconds=t,
                 median_step_seconds=median, best_step_seconds=best, first_step_seconds=w,
                 tokens_per_second=tokens / median, tokens_per_second_best=tokens / best,
                 model_flops_per_second=tokens * r.describe["flops_per_token"] / median,
                 loss=r.last_loss())
    if p[0] is not None:   # the parts of the middle step (the lower one of an even count)
      middle = sorted(range(len(t)), key=t.__getitem__)[(len(t) - 1) // 2]
      entry["median_step_parts"] = p[middle]
    log(f"  {r.name:22s} {entry['tokens_per_second']:9,.0f} tok/s  "
        f"(median {median:.3f} s, best {best:.3f} s)")
    out.append(entry)
  return out


def _add_mfu(entries: Sequence[dict], peak: float) -> None:
  for e in entries:
    e["mfu"] = e["model_flops_per_second"] / peak


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
def compare(ours: Mapping[str, Any], hf_entries: Sequence[Mapping[str, Any]],
            reference: Optional[Mapping[str, Any]] = None) -> dict:
  """Ours / HF's fastest thread count (median steps) against the target; the ratio of
  best steps beside it; with the reference step, its ratio and ours / it."""
  baseline = max(hf_entries, key=lambda e: e["tokens_per_second"])
  ratio = ours["tokens_per_second"] / baseline["tokens_per_second"]
  extra = {}
  if reference is not None:
    extra = {"reference": reference["name"],
             "reference_ratio": reference["tokens_per_second"] / baseline["tokens_per_second"],
             "speedup_vs_reference": ours["tokens_per_second"] / reference["tokens_per_second"]}
  return {**extra, "ours": ours["name"], "baseline": baseline["name"],
          "ours_tokens_per_second": ours["tokens_per_second"],
          "hf_tokens_per_second": baseline["tokens_per_second"],
          "hf_torch_threads": baseline["torch_threads"], "ratio": ratio,
          "ratio_best": ours["tokens_per_second_best"] / baseline["tokens_per_second_best"],
          "target_ratio": TARGET_RATIO, "aim_ratio": AIM_RATIO,
          "meets_target": ratio >= TARGET_RATIO, "meets_aim": ratio >= AIM_RATIO,
          "shortfall": max(0.0, 1.0 - ratio / TARGET_RATIO),
          "speedup_needed": max(1.0, TARGET_RATIO / ratio)}


def run(options: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
  s = SMOKE if getattr(options, "smoke", False) else FULL
  threads = s.hf_threads or tuple(sorted({usable_cpus(), 1}, reverse=True))
  load_start = load_average()
  log(f"load average {load_start} on {usable_cpus()} usable CPUs")
  peak_start = matmul_peak(s.matmul_size, s.matmul_repeats)
  common = dict(rows=s.rows, length=s.length, inputs_length=s.inputs_length,
                targets_length=s.targets_length, vocab_size=s.vocab_size, seed=s.seed)

  entries: list[dict] = []
  for arch in ARCHS[:2]:
    entries += measure([our_runner(arch, s.size, **common)], s.steps, log)
  ed = our_runner(models.ENCODER_DECODER, s.size, **common)
  hf_error: Optional[str] = None
  try:
    hf = hf_runners(ed, threads, s.seed)
  except ImportError as e:   # the eval extra (torch, transformers) is not installed
    hf, hf_error = [], f"{type(e).__name__}: {e}"
  parts = our_part_runners(ed, s.seed) if s.breakdown and hf else []
  references = ([our_runner(models.ENCODER_DECODER, s.size, **common, implementation="optax")]
                if s.reference_step and hf else [])
  measured = measure([ed] + parts + references + hf, s.comparison_steps, log)
  entries.append(measured[0])
  part_entries = measured[1:1 + len(parts)]
  reference_entries = measured[1 + len(parts):1 + len(parts) + len(references)]
  hf_entries = measured[1 + len(parts) + len(references):]

  scaling = []
  for size in s.scaling_sizes:
    for length in s.scaling_lengths:
      same = [e for e in entries if e["arch"] == models.CAUSAL_DECODER and e["size"] == size
              and e["lengths"] == {"length": length}]
      if same:
        scaling.append(dict(same[0]))
        continue
      runner = our_runner(models.CAUSAL_DECODER, size, **dict(common, length=length))
      runner.name = f"CD {size} L={length}"
      scaling += measure([runner], s.steps, log)

  peak_end = matmul_peak(s.matmul_size, s.matmul_repeats)
  peak = best_peak(peak_start, peak_end)
  for group in (entries, reference_entries, hf_entries, scaling):
    _add_mfu(group, peak)
  reference = reference_entries[0] if reference_entries else None
  comparison = compare(entries[-1], hf_entries, reference) if hf_entries else None
  versions = {}
  if hf_entries:
    import torch
    import transformers
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
  return {
      "target_ratio": TARGET_RATIO, "aim_ratio": AIM_RATIO,
      "settings": dataclasses.asdict(s), "hf_threads": list(threads),
      "load_average": {"start": load_start, "end": load_average()},
      "usable_cpus": usable_cpus(),
      "matmul_peak": {"start": peak_start, "end": peak_end, "flops_per_second": peak},
      "entries": entries, "reference": reference,
      "hf": {"entries": hf_entries, "error": hf_error, "versions": versions},
      "comparison": comparison,
      "breakdown": breakdown(entries[-1], part_entries, hf_entries, comparison, reference),
      "scaling": scaling,
  }


def breakdown(ours: Mapping[str, Any], part_entries: Sequence[Mapping[str, Any]],
              hf_entries: Sequence[Mapping[str, Any]], comparison: Optional[Mapping[str, Any]],
              reference: Optional[Mapping[str, Any]] = None) -> Optional[dict]:
  """Median seconds of forward, backward and optimizer per step, ours (forward; forward
  + backward minus forward; full step minus forward + backward) and the baseline HF's
  (timed inside its median step); with the reference step, its optimizer the same way.
  None without the part timings."""
  if not part_entries or comparison is None:
    return None
  forward, both = (e["median_step_seconds"] for e in part_entries)
  baseline = next(e for e in hf_entries if e["name"] == comparison["baseline"])
  out = {"ours": {"forward": forward, "backward": both - forward,
                  "optimizer": ours["median_step_seconds"] - both},
         "hf": baseline["median_step_parts"], "hf_name": baseline["name"],
         "ours_part_step_seconds": {e["name"]: e["step_seconds"] for e in part_entries}}
  if reference is not None:
    out["reference_optimizer"] = reference["median_step_seconds"] - both
  return out


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
def _shape(e: Mapping[str, Any]) -> str:
  lengths = e["lengths"]
  if "length" in lengths:
    return f"{e['rows']} x {lengths['length']}"
  return f"{e['rows']} x ({lengths['inputs']}+{lengths['targets']})"


def _parts(parts: Mapping[str, float]) -> str:
  return " / ".join(f"{parts[k]:.3f}" for k in ("forward", "backward", "optimizer"))


def why_missed(result: Mapping[str, Any]) -> str:
  """A one-line reason from this run's numbers."""
  c = result["comparison"]
  ours = result["entries"][-1]
  hf = next(e for e in result["hf"]["entries"] if e["name"] == c["baseline"])
  why = (f"our ED step runs at {ours['model_flops_per_second'] / 1e9:.1f} GFLOP/s (MFU "
         f"{ours['mfu']:.0%}), HF's at {hf['model_flops_per_second'] / 1e9:.1f} GFLOP/s "
         f"(MFU {hf['mfu']:.0%}, torch at {c['hf_torch_threads']} thread(s)) on the same "
         f"FLOPs, so even a step at the matmul peak would be {1 / hf['mfu']:.2f}x HF's")
  more = [e for e in result["hf"]["entries"] if e["torch_threads"] > hf["torch_threads"]]
  if more:
    slower = min(more, key=lambda e: e["torch_threads"])
    why += (f"; torch at {slower['torch_threads']} threads took "
            f"{slower['median_step_seconds'] / hf['median_step_seconds']:.1f}x as long a "
            f"step as at {hf['torch_threads']}, a sign that other jobs held cores our "
            f"multi-threaded step needed too")
  b = result.get("breakdown")
  if b:
    gaps = {k: b["ours"][k] - b["hf"][k] for k in b["ours"]}
    worst = max(gaps, key=gaps.get)
    why += (f"; forward / backward / optimizer s per step: ours {_parts(b['ours'])}, HF "
            f"{_parts(b['hf'])}: the {worst} loses most ({gaps[worst]:+.3f} s)")
  return why + (f"; load average {result['load_average']['start']} on "
                f"{result['usable_cpus']} CPUs")


def _target(result: Mapping[str, Any]) -> str:
  c = result["comparison"]
  if c is None:
    return "not measured"
  if c["meets_aim"]:
    return f"met, aim {AIM_RATIO:g}x met"
  if c["meets_target"]:
    return f"met; aim {AIM_RATIO:g}x missed by {1 - c['ratio'] / AIM_RATIO:.0%}"
  return f"MISSED by {c['shortfall']:.0%} (needs {c['speedup_needed']:.2f}x)"


def summary(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  header = ["step", "size", "rows x tokens", "params", "tok/s", "median (best) step s",
            "GFLOP/s", "MFU", "ours / HF", f"target >= {TARGET_RATIO:g}x"]
  c = result["comparison"]

  def row(e, ratio="", target=""):
    return [e["name"], e["size"], _shape(e), f"{e['params'] / 1e6:.1f}M",
            f"{e['tokens_per_second']:,.0f}",
            f"{e['median_step_seconds']:.3f} ({e['best_step_seconds']:.3f})",
            f"{e['model_flops_per_second'] / 1e9:.1f}", f"{e['mfu']:.1%}", ratio, target]

  rows = []
  for e in result["entries"]:
    if architectures.get(e["arch"]).has_encoder and c is not None:  # what HF T5 is set against
      rows.append(row(e, f"{c['ratio']:.2f}x", _target(result)))
    else:
      rows.append(row(e))
  if result.get("reference") and c is not None:
    rows.append(row(result["reference"], f"{c['reference_ratio']:.2f}x"))
  rows += [row(e) for e in result["hf"]["entries"]]
  rows += [row(dict(e, name=f"scaling: CD {e['size']} L={e['lengths']['length']}"))
           for e in result["scaling"]]
  peak = result["matmul_peak"]
  parts = [f"{k} {peak[w][k]['flops_per_second'] / 1e9:.1f}"
           for w in ("start", "end") for k in ("jax", "torch") if k in peak[w]]
  s = result["settings"]
  notes = [
      f"Matmul peak {peak['flops_per_second'] / 1e9:.1f} GFLOP/s: best of "
      f"{peak['start']['n']}^3 float32 products, start and end of the run "
      f"({', '.join(parts)} GFLOP/s). MFU = tokens/s x training FLOPs per token / that peak.",
      f"Load average {result['load_average']['start']} at the start, "
      f"{result['load_average']['end']} at the end, on {result['usable_cpus']} usable CPUs: "
      f"other jobs may share the cores, so each step counts by its median over "
      f"{s['steps']} step(s) ({s['comparison_steps']} interleaved rounds for ED vs HF), "
      f"the best step beside it.",
      f"Ours: jitted trainer.train_step, float32, t5x Adafactor (fused; ED (optax): "
      f"optax's chain, the reference), vocabulary "
      f"{s['vocab_size']}. HF: T5ForConditionalGeneration (PyTorch eager, float32) of the "
      f"same config with transformers' Adafactor, torch threads {result['hf_threads']}; "
      f"the faster is the baseline.",
  ]
  b = result.get("breakdown")
  if b:
    reference_optimizer = (f"; the optax reference's optimizer {b['reference_optimizer']:.3f}"
                           if "reference_optimizer" in b else "")
    notes.append(f"Forward / backward / optimizer seconds of the median step: ours "
                 f"{_parts(b['ours'])} (from our forward and forward + backward jitted "
                 f"apart), {b['hf_name']} {_parts(b['hf'])}{reference_optimizer}.")
  if c is not None and "speedup_vs_reference" in c:
    notes.append(f"ED step with the fused Adafactor / with optax's ({c['reference']}, the "
                 f"same rounds): {c['speedup_vs_reference']:.2f}x tokens/s; ours / HF "
                 f"{c['ratio']:.2f}x against {c['reference_ratio']:.2f}x with optax's.")
  if c is None:
    notes.append(f"Training target not measured: HF step unavailable "
                 f"({result['hf']['error']}); install the eval extra.")
  else:
    ratios = f"{c['ratio']:.2f}x; best steps {c['ratio_best']:.2f}x"
    if not c["meets_target"]:
      notes.append(f"Target ours/HF >= {TARGET_RATIO:g}x MISSED by {c['shortfall']:.0%} "
                   f"({ratios}): {why_missed(result)}.")
    elif not c["meets_aim"]:
      notes.append(f"Target ours/HF >= {TARGET_RATIO:g}x met ({ratios}); aim {AIM_RATIO:g}x "
                   f"missed by {1 - c['ratio'] / AIM_RATIO:.0%}: {why_missed(result)}.")
    else:
      notes.append(f"Target ours/HF >= {TARGET_RATIO:g}x and aim {AIM_RATIO:g}x met "
                   f"({ratios}).")
  return header, rows, notes
