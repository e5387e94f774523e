"""GPU check: bf16 MFU of the training step of CD, ND and ED at ~1B parameters, and
rank-classification scoring speed. Standalone and TensorFlow-free:

  python bench/gpu.py [--out DIR] [--smoke] [--allow-cpu] [--rows N] [--length L] [--steps N]

imports only jax, flax, optax, numpy and this package's TF-free modules (models,
training.trainer, training.optimizers, evaluation.rank_classification): no
TensorFlow, seqio, gin, sentencepiece or data registry, so it runs where a GPU
machine has jax and nothing else (`python -m bench.gpu` works too where the `bench`
package's own imports are installed). Without a GPU it prints why and exits with
status 0 having measured nothing; `--allow-cpu` runs it on the CPU anyway (a dry run
of the code path; with `--smoke`, tiny models).

Measured, in one run:

  matmul peak   best FLOP/s of an n x n x n bfloat16 `jnp.dot` (n = 8192 on a GPU);
  training      our jitted `trainer.train_step` (t5x Adafactor, state donated) with
                bfloat16 activations and float32 parameters, at `rows` x `length` tokens
                (ED: `rows` x (length/2 + length/2)), for
                  CD, ND  emb 2048, 16 heads x 128, MLP 5120, 20 layers (1.03B params)
                  ED      the same layers, 8 + 8 (0.97B params)
                tokens/s over `steps` steps after two warm-up steps (the first compiles);
                MFU = tokens/s x `training_flops_per_token` / peak, against the chip's
                dense bf16 peak (H100 SXM and H200: 989 TFLOP/s) and against the
                measured matmul peak; target MFU >= `TARGET_MFU` (against the chip's);
  scoring       `RankScorer` examples/s of the ED on `prompts` requests of random token
                ids (prompts of 129-256 tokens, 2-4 choices of 2-16 tokens: one bucket
                each, so two or three programs compile), after one compiling call.

Writes `DIR/results.json` and `DIR/summary.md` as `python -m bench` does (default
`bench/results/gpu`). Keeps to a few tens of GB (XLA_PYTHON_CLIENT_PREALLOCATE=false;
the peak is recorded) and a few minutes on an H100.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # record real use

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if __package__ in (None, ""):   # run as a file: import the package from the repository
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from arch_objective import architectures, models, testing  # noqa: E402
from arch_objective.evaluation import rank_classification  # noqa: E402
from arch_objective.training import optimizers, trainer  # noqa: E402

TARGET_MFU = 0.40
DEFAULT_OUT = os.path.join(_HERE, "results", "gpu")
# Dense bfloat16 tensor-core peaks (FLOP/s) by device kind, from NVIDIA's data sheets.
SPEC_PEAKS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
              ("H200", 989e12), ("H800", 989e12), ("A100", 312e12))
ARCHS = (models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER)
# ~1B parameters: emb 2048, 16 x 128 heads, MLP 5120 (the `xl` width).
WIDTH_1B = dict(emb_dim=2048, num_heads=16, head_dim=128, mlp_dim=5120)
LAYERS_1B = {models.CAUSAL_DECODER: dict(num_decoder_layers=20),
             models.NON_CAUSAL_DECODER: dict(num_decoder_layers=20),
             models.ENCODER_DECODER: dict(num_encoder_layers=8, num_decoder_layers=8)}


@dataclasses.dataclass(frozen=True)
class Settings:
  size: str = "xl"            # the preset the 1B overrides apply to
  billion: bool = True        # apply WIDTH_1B / LAYERS_1B
  rows: int = 8
  length: int = 1024          # decoder-only tokens per row; ED: length/2 + length/2
  vocab_size: int = 32128
  dtype: str = "bfloat16"
  steps: int = 10
  matmul_size: int = 8192
  matmul_repeats: int = 10
  prompts: int = 512
  prompt_lengths: tuple[int, int] = (129, 256)   # one encoder bucket (256)
  choice_lengths: tuple[int, int] = (2, 16)      # with EOS; one decoder bucket (16)
  max_tokens: int = 65536     # RankScorer tokens per batch
  seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", billion=False, rows=2, length=32, vocab_size=256, steps=1,
                 matmul_size=256, matmul_repeats=2, prompts=8, prompt_lengths=(9, 16),
                 choice_lengths=(2, 8), max_tokens=4096)


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------
def gpu_devices() -> tuple[list, Optional[str]]:
  """(GPU devices, None) or ([], why there are none)."""
  try:
    devices = jax.devices("gpu")
  except RuntimeError as e:
    return [], str(e).splitlines()[0]
  return (devices, None) if devices else ([], "jax.devices('gpu') is empty")


def spec_peak(device_kind: str) -> Optional[float]:
  for name, peak in SPEC_PEAKS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def machine(device) -> dict:
  import flax
  import jaxlib
  import optax
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  stats = _memory_stats(device)
  return {
      "platform": platform.platform(), "machine": platform.machine(), "cpu_model": cpu,
      "cpu_count": os.cpu_count(),
      "usable_cpus": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count()),
      "python": platform.python_version(),
      "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                   "numpy": np.__version__, "flax": flax.__version__,
                   "optax": optax.__version__},
      "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
      "jax_device_kind": device.device_kind,
      "device_memory_bytes": stats.get("bytes_limit"),
  }


def _memory_stats(device) -> dict:
  try:
    return dict(device.memory_stats() or {})
  except Exception:   # noqa: BLE001 - CPU devices have no memory statistics
    return {}


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------
def matmul_peak(n: int, repeats: int, dtype: str) -> dict:
  """Best FLOP/s over `repeats` batches of 5 back-to-back n x n x n products."""
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), dtype) for i in (0, 1))
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    outs = [dot(a, b) for _ in range(5)]
    jax.block_until_ready(outs)
    best = min(best, (time.perf_counter() - start) / 5)
  return {"n": n, "dtype": dtype, "seconds": best, "flops_per_second": 2.0 * n ** 3 / best}


def build(arch: str, s: Settings) -> models.BaseModel:
  overrides = dict(WIDTH_1B, **LAYERS_1B[arch]) if s.billion else {}
  return models.build_model(arch, s.size, dtype=s.dtype, vocab_size=s.vocab_size,
                            **overrides)


def batch_for(arch: str, rows: int, length: int, vocab_size: int, seed: int
              ) -> dict[str, np.ndarray]:
  """Random ids, every target weighted; ND prefix = first half; ED length/2 + length/2."""
  return testing.synthetic_batch(arch, rows, length, vocab_size=vocab_size, seed=seed)


def train_throughput(arch: str, s: Settings, device, log: Callable[[str], None]) -> dict:
  """Tokens/s of `s.steps` jitted train steps after two warm-up steps."""
  model = build(arch, s)
  schedule = optimizers.rsqrt_decay()
  optimizer = optimizers.adafactor(schedule)
  start = time.perf_counter()
  init = jax.jit(lambda rng: trainer.init_state(
      model, optimizer, models.default_input_shapes(arch, 1, 8, 8, 8), rng))
  state = jax.block_until_ready(init(jax.random.PRNGKey(s.seed)))
  init_seconds = time.perf_counter() - start
  step = jax.jit(lambda state, batch, rng: trainer.train_step(
      model, optimizer, schedule, 1, state, batch, rng), donate_argnums=(0,))
  batch = jax.device_put(batch_for(arch, s.rows, s.length, s.vocab_size, s.seed))
  rng = jax.random.PRNGKey(s.seed + 1)
  start = time.perf_counter()
  state, metrics = jax.block_until_ready(step(state, batch, rng))
  first = time.perf_counter() - start
  state, metrics = jax.block_until_ready(step(state, batch, rng))
  start = time.perf_counter()
  for _ in range(s.steps):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / s.steps
  loss = float(metrics["loss"])
  del state, metrics
  tokens = s.rows * s.length
  inputs_length = s.length - s.length // 2
  flops = models.training_flops_per_token(model, s.length, inputs_length, s.length // 2)
  entry = {
      "arch": arch, "name": architectures.get(arch).short, "params": models.count_params(model),
      "config": {k: getattr(model.config, k) for k in (
          "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
          "num_decoder_layers", "vocab_size", "dtype")},
      "rows": s.rows, "tokens_per_row": s.length, "tokens_per_step": tokens,
      "lengths": ({"inputs": inputs_length, "targets": s.length // 2}
                  if architectures.get(arch).has_encoder else {"length": s.length}),
      "flops_per_token": flops, "init_seconds": init_seconds, "first_step_seconds": first,
      "steps": s.steps, "seconds_per_step": seconds, "tokens_per_second": tokens / seconds,
      "model_flops_per_second": tokens * flops / seconds, "loss": loss,
      "peak_memory_bytes": _memory_stats(device).get("peak_bytes_in_use"),
  }
  log(f"  {entry['name']}: {_count(entry['params'])} params, {seconds * 1e3:.1f} ms/step, "
      f"{entry['tokens_per_second']:,.0f} tok/s, {_flops(entry['model_flops_per_second'])} "
      f"(compile+first {first:.0f} s)")
  return entry


def scoring_suite(s: Settings) -> list[rank_classification.Request]:
  """`s.prompts` requests of random ids: prompts of `s.prompt_lengths` tokens, 2-4
  choices of `s.choice_lengths` tokens ending in EOS (bounds inclusive)."""
  rng = np.random.default_rng([s.seed, 3])
  ids = lambda k: rng.integers(3, s.vocab_size, k).astype(np.int32)
  (p0, p1), (c0, c1) = s.prompt_lengths, s.choice_lengths
  return [rank_classification.Request(
      ids(int(rng.integers(p0, p1 + 1))),
      tuple(np.append(ids(int(rng.integers(c0 - 1, c1))), 1).astype(np.int32)
            for _ in range(int(rng.integers(2, 5)))))
          for _ in range(s.prompts)]


def scoring_throughput(s: Settings, log: Callable[[str], None]) -> dict:
  model = build(models.ENCODER_DECODER, s)
  params = jax.jit(lambda rng: model.get_initial_variables(
      rng, models.default_input_shapes(models.ENCODER_DECODER, 1, 8, 8, 8))["params"])(
          jax.random.PRNGKey(s.seed))
  requests = scoring_suite(s)
  scorer = rank_classification.RankScorer(model, params, max_tokens=s.max_tokens)
  start = time.perf_counter()
  scores = scorer.score(requests)
  first = time.perf_counter() - start
  start = time.perf_counter()
  scorer.score(requests)
  seconds = time.perf_counter() - start
  pairs = sum(len(r.choices) for r in requests)
  entry = {"arch": models.ENCODER_DECODER, "params": models.count_params(model),
           "dtype": s.dtype, "prompts": len(requests), "pairs": pairs,
           "max_tokens": s.max_tokens, "first_seconds": first, "seconds": seconds,
           "examples_per_second": len(requests) / seconds, "pairs_per_second": pairs / seconds,
           "finite": bool(all(np.isfinite(x).all() for x in scores))}
  log(f"  scoring: {entry['examples_per_second']:,.1f} examples/s "
      f"({pairs} choices; first call {first:.0f} s)")
  return entry


def training(s: Settings, archs: Sequence[str], device, log: Callable[[str], None] = print,
             on_update: Optional[Callable[[dict], None]] = None) -> dict:
  """The matmul peak and every architecture's step; an architecture that fails (e.g.
  out of memory) is recorded with its error and the others still run. `on_update(result)`
  is called after each architecture with the result so far (to write partial results)."""
  peak = matmul_peak(s.matmul_size, s.matmul_repeats, s.dtype)
  log(f"matmul peak {_flops(peak['flops_per_second'])} ({peak['n']}^3 {s.dtype})")
  spec = spec_peak(device.device_kind)
  entries: list[dict] = []
  result = {"target_mfu": TARGET_MFU, "settings": dataclasses.asdict(s),
            "device_kind": device.device_kind, "spec_peak_flops_per_second": spec,
            "mfu_against": "spec peak" if spec is not None else "measured matmul peak",
            "matmul_peak": peak, "entries": entries}
  for arch in archs:
    if on_update is not None and entries:
      on_update(result)
    try:
      e = train_throughput(arch, s, device, log)
    except Exception as error:  # noqa: BLE001 - keep the other architectures' numbers
      log(f"  {architectures.get(arch).short}: FAILED: {type(error).__name__}: {error}"[:2000])
      entries.append({"arch": arch, "name": architectures.get(arch).short,
                      "error": f"{type(error).__name__}: {str(error)[:2000]}"})
      continue
    e["mfu_vs_measured_peak"] = e["model_flops_per_second"] / peak["flops_per_second"]
    e["mfu_vs_spec_peak"] = None if spec is None else e["model_flops_per_second"] / spec
    e["mfu"] = e["mfu_vs_spec_peak"] if spec is not None else e["mfu_vs_measured_peak"]
    e["meets_target"] = e["mfu"] >= TARGET_MFU
    e["shortfall"] = max(0.0, 1.0 - e["mfu"] / TARGET_MFU)
    entries.append(e)
  return result


# ---------------------------------------------------------------------------
# Results, as `python -m bench` writes them
# ---------------------------------------------------------------------------
DESCRIPTIONS = {
    "gpu_training": (f"bf16 training step (forward, backward, Adafactor) of CD, ND and ED at "
                     f"~1B parameters: tokens/s and MFU (target >= {TARGET_MFU:.0%} of the "
                     f"chip's dense bf16 peak)."),
    "gpu_scoring": "RankScorer examples/s of the ~1B ED (bf16) on random-id requests.",
}


def _flops(x: float) -> str:
  return f"{x / 1e12:.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s"


def _count(n: int) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def training_summary(r: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  header = ["step", "params", "rows x tokens", "ms/step", "tok/s", "model FLOP/s",
            "MFU vs spec", "MFU vs measured", "peak memory", f"target >= {TARGET_MFU:.0%}"]
  rows = []
  for e in r["entries"]:
    if "error" in e:
      rows.append([e["name"], "-", "-", "-", "-", "-", "-", "-", "-",
                   f"FAILED: {e['error'][:120]}"])
      continue
    spec = "-" if e["mfu_vs_spec_peak"] is None else f"{e['mfu_vs_spec_peak']:.1%}"
    memory = ("-" if e["peak_memory_bytes"] is None
              else f"{e['peak_memory_bytes'] / 2 ** 30:.1f} GiB")
    target = "met" if e["meets_target"] else f"MISSED by {e['shortfall']:.0%}"
    rows.append([e["name"], _count(e["params"]), f"{e['rows']} x {e['tokens_per_row']}",
                 f"{e['seconds_per_step'] * 1e3:.1f}", f"{e['tokens_per_second']:,.0f}",
                 _flops(e["model_flops_per_second"]), spec,
                 f"{e['mfu_vs_measured_peak']:.1%}", memory, target])
  peak = r["matmul_peak"]
  spec = r["spec_peak_flops_per_second"]
  notes = [f"Device {r['device_kind']}; measured {peak['n']}^3 {peak['dtype']} matmul peak "
           f"{_flops(peak['flops_per_second'])}; spec peak "
           + ("unknown for this device" if spec is None else f"{spec / 1e12:.0f} TFLOP/s")
           + f"; MFU target against the {r['mfu_against']}.",
           "MFU = tokens/s x models.training_flops_per_token / peak; bfloat16 activations, "
           "float32 parameters, t5x Adafactor; peak memory is the process's high-water mark "
           "so far."]
  for e in r["entries"]:
    if "error" not in e and not e["meets_target"]:
      notes.append(
          f"{e['name']}: MFU {e['mfu']:.1%} misses {TARGET_MFU:.0%} by {e['shortfall']:.0%}: "
          f"the step reaches {e['mfu_vs_measured_peak']:.0%} of the measured matmul peak, "
          f"which is itself {peak['flops_per_second'] / spec:.0%} of the spec; the rest is "
          f"the step's non-matmul work (attention materialises [b, h, l, l] scores, float32 "
          f"logits and one-hot loss over the vocabulary, Adafactor's elementwise update)"
          if spec is not None else
          f"{e['name']}: MFU {e['mfu']:.1%} of the measured matmul peak misses "
          f"{TARGET_MFU:.0%} by {e['shortfall']:.0%} (no spec peak for this device)")
  return header, rows, notes


def scoring_summary(r: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  header = ["scorer", "params", "prompts (pairs)", "examples/s", "pairs/s", "s", "first call s"]
  rows = [["RankScorer (ED)", _count(r["params"]), f"{r['prompts']} ({r['pairs']})",
           f"{r['examples_per_second']:,.1f}", f"{r['pairs_per_second']:,.1f}",
           f"{r['seconds']:.2f}", f"{r['first_seconds']:.1f}"]]
  return header, rows, [f"{r['dtype']} activations; {r['max_tokens']} tokens a batch; "
                        f"all scores finite: {r['finite']}."]


SUMMARIES = {"gpu_training": training_summary, "gpu_scoring": scoring_summary}


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(results: Mapping[str, Any]) -> str:
  m = results["machine"]
  versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
  out = [f"# Benchmarks ({results['mode']})", "",
         f"Run {results['created']}, `{results['command']}`, {results['seconds']:.0f} s.", "",
         f"Machine: {m['platform']}; {m['cpu_model']}; {m['usable_cpus']} of {m['cpu_count']} "
         f"CPUs usable; Python {m['python']}; {versions}; JAX backend {m['jax_backend']}, "
         f"devices {', '.join(m['jax_devices'])} ({m['jax_device_kind']}).", ""]
  for name, result in results["benchmarks"].items():
    header, rows, notes = SUMMARIES[name](result)
    out += [f"## {name}", "", DESCRIPTIONS[name], "", _markdown_table(header, rows), ""]
    out += [f"- {note}" for note in notes] + [""]
  return "\n".join(out)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python bench/gpu.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=DEFAULT_OUT,
                      help="folder for results.json and summary.md (default bench/results/gpu)")
  parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps")
  parser.add_argument("--allow-cpu", action="store_true",
                      help="run on the CPU when there is no GPU (a dry run of the code path)")
  parser.add_argument("--rows", type=int, default=None, help="rows a training step")
  parser.add_argument("--length", type=int, default=None, help="tokens a row")
  parser.add_argument("--steps", type=int, default=None, help="timed training steps")
  parser.add_argument("--archs", nargs="+", choices=sorted(models.SHORT_NAMES.values()),
                      default=None, metavar="ARCH", help="only these of CD, ND, ED")
  parser.add_argument("--no-scoring", action="store_true", help="skip the scoring check")
  return parser.parse_args(argv)


def _write(results: Mapping[str, Any], out: str) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
    f.write(markdown(results))


def main(argv: Optional[Sequence[str]] = None) -> int:
  options = parse_args(argv)
  devices, why = gpu_devices()
  if not devices and not options.allow_cpu:
    print(f"bench/gpu.py: no GPU ({why}); nothing measured. Run it on a machine with an "
          f"NVIDIA GPU and jax[cuda12], or pass --allow-cpu for a dry run on the CPU.",
          file=sys.stderr)
    return 0
  device = devices[0] if devices else jax.devices("cpu")[0]
  s = SMOKE if options.smoke else FULL
  s = dataclasses.replace(s, **{k: getattr(options, k) for k in ("rows", "length", "steps")
                                if getattr(options, k) is not None})
  by_short = {v: k for k, v in models.SHORT_NAMES.items()}
  archs = [by_short[a] for a in options.archs] if options.archs else list(ARCHS)
  log = lambda line: print(line, flush=True)
  start = time.perf_counter()
  argv_list = list(sys.argv[1:] if argv is None else argv)
  results: dict[str, Any] = {
      "mode": "smoke" if options.smoke else "full",
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join(["python bench/gpu.py"] + argv_list),
      "machine": machine(device), "benchmarks": {}, "seconds": 0.0,
  }
  with jax.default_device(device):
    def partial(result: dict) -> None:
      results["benchmarks"]["gpu_training"] = result
      results["seconds"] = time.perf_counter() - start
      _write(results, options.out)
    results["benchmarks"]["gpu_training"] = training(s, archs, device, log, partial)
    results["seconds"] = time.perf_counter() - start
    _write(results, options.out)              # kept if the scoring check fails
    if not options.no_scoring:
      results["benchmarks"]["gpu_scoring"] = scoring_throughput(s, log)
  results["seconds"] = time.perf_counter() - start
  _write(results, options.out)
  print(f"wrote {os.path.join(options.out, 'results.json')} and summary.md "
        f"({results['seconds']:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
