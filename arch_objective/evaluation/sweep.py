"""Every checkpoint of a run evaluated, as t5x's `RestoreCheckpointConfig(mode='all')`.

  arch-objective eval t0|harness --checkpoint MODEL_DIR --steps all|N,M,...|every:K
  arch-objective eval t0|harness --checkpoint MODEL_DIR --watch [--steps ...]
                                 [--poll SECONDS] [--time_limit SECONDS]

(gin files and every option of a single evaluation are accepted as well: `--gin_file`
may bind CHECKPOINT_PATH instead of `--checkpoint`). `sweep` is the function behind them.

Each selected step is evaluated by the single-checkpoint run (`runs.eval_t0`,
`runs.eval_harness`, or the gin run) on `MODEL_DIR/checkpoints/<step>`, its results in
`OUT/<step>/` where OUT is `MODEL_DIR/<kind>` (`eval_t0`, `eval_harness`): the folders a
single evaluation writes. With `--out DIR`, OUT is DIR (`DIR/<step>/`, and the files
below in DIR), so a run in a bucket one cannot write is evaluated elsewhere. A step whose
results file exists (`results.json`, `harness_results.json`) is read back, not scored
again: a sweep or watcher that is stopped and started again scores only what is missing
(delete `OUT/<step>/` to score a step again).

`--steps`:
  all        every complete checkpoint (the default; `--watch` alone means all)
  N,M,...    those steps; without `--watch` each must be a complete checkpoint
  every:K    the steps divisible by K, plus the run's last step (TRAIN_STEPS) when it is
             saved, so the end of training is on the curve; where the run records no
             TRAIN_STEPS, the multiples of K only

`--watch` polls `MODEL_DIR/checkpoints` every `--poll` seconds (the path may not exist
yet: the watcher may start before training) and evaluates each selected complete step
once. It stops, exit status 0, once the run's last step is evaluated: TRAIN_STEPS of the
run's operative config (`MODEL_DIR/config.gin`, or the `config-<step>.gin` of its latest
resume with another config), read again at every poll until found; with `N,M,...` once
those steps are evaluated. It also stops after `--time_limit` seconds without a new
checkpoint (a UserError if no checkpoint ever appeared). A run that records no
TRAIN_STEPS (trained from Python, or converted) is watched until `--time_limit`, or, with
none given, until the watcher is stopped (Ctrl-C, SIGTERM). A step that training deletes
(`keep_checkpoints`) before it could be evaluated is logged and skipped. One watcher per
OUT: two would score the same steps.

What a sweep writes in OUT, after every step a watcher evaluates:
  tensorboard/   scalars at each checkpoint's step (percent): `<kind>/average` and
                 `<kind>/<dataset>` (T0-Eval medians) or `<kind>/<task>` (EAI-Eval `acc`).
                 `tensorboard --logdir MODEL_DIR` shows them beside training's
                 `MODEL_DIR/tensorboard/` (loss, validation/loss) on one step axis. A step
                 already in the event files is not written again (a restarted watcher
                 adds no second point); its own event file, never training's, which
                 TensorBoard would stop reading once a newer file appears.
  curve.json     `{"kind", "model_dir", "x": "tokens_seen"|"step", "points": [{"step",
                 "tokens_seen", "tokens", "average", "scores": {name: percent}}],
                 "paper": [table rows]}`, one point per step evaluated in OUT
  curve.md       the same as tables (the command prints it)
  curve.png      the average against tokens seen (against the step where unknown)

Tokens seen by a checkpoint (`training.train.tokens_seen`): the batches its run consumed
(its data position, `checkpoints/<step>/data`) x the identity's rows per batch x tokens
per row (`Architecture.row_tokens`), plus, for an adapted or finetuned run, the tokens of
the checkpoint it restored, which training records in the lineage entry
(`tokens_seen`). Fallbacks, marked `"tokens": "estimated"`: a lineage entry written
before that field is read from the restored checkpoint itself where it still exists,
else counted as its step x this run's tokens per step; a checkpoint without a data
position counts its steps since the restored step. Without an identity (a converted
checkpoint) the tokens are unknown (`"tokens": "unknown"`) and the curve uses steps.

The paper's table by budget: for T0-Eval with `paper` (`--paper`), and for EAI-Eval
whenever the run is one of the paper's, the averages at the checkpoints nearest 42B,
84B and 168B tokens (for an MT-F run of a paper pretraining run: those plus the 13.1B
tokens of MT-F) beside the paper's numbers for that run (`PAPER_BY_BUDGET`, spec §6).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import time
from typing import Callable, Iterable, Optional, Sequence

from arch_objective import architectures, paths
from arch_objective.errors import UserError
from arch_objective.evaluation import runs
from arch_objective.evaluation.kinds import EVAL_HARNESS, EVAL_T0
from arch_objective.training import checkpoints

_logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
CURVE_JSON, CURVE_MD, CURVE_PNG = "curve.json", "curve.md", "curve.png"
TITLES = {EVAL_T0: "T0-Eval", EVAL_HARNESS: "EAI-Eval"}
# What a run directory holds once training has started (`train.train`).
_RUN_MARKERS = ("checkpoints", "config.gin", "run.lock", "metrics.jsonl", "tensorboard")

# The paper's token budgets: 32,768, 65,536 and 131,072 steps of 2,048 rows x 626 tokens
# (spec §2.7), and MT-F's 10,000 steps of 1,024 rows x 1,280 tokens (spec §3.1).
PAPER_STEP_TOKENS = 2048 * 626
BUDGETS = {"42B": 32768 * PAPER_STEP_TOKENS, "84B": 65536 * PAPER_STEP_TOKENS,
           "168B": 131072 * PAPER_STEP_TOKENS}
MTF_TOKENS = 10000 * 1024 * 1280

# The paper's averages (percent, spec §6) by (kind, stage, pretraining run, budget):
# "pretrain" after pretraining alone (Table 3; Table 6 at 84B, EAI-Eval only), "mtf" after
# MT-F of the run pretrained for that budget (Tables 7 and 8). A missing key: not reported.
PAPER_BY_BUDGET = {
    (EVAL_T0, "pretrain", "CD:FLM", "168B"): 42.4,
    (EVAL_T0, "pretrain", "ND:PLM", "168B"): 41.8,
    (EVAL_T0, "pretrain", "ED:PLM", "168B"): 41.7,
    (EVAL_HARNESS, "pretrain", "CD:FLM", "168B"): 44.2,
    (EVAL_HARNESS, "pretrain", "ND:PLM", "168B"): 43.5,
    (EVAL_HARNESS, "pretrain", "ED:PLM", "168B"): 39.9,
    (EVAL_HARNESS, "pretrain", "CD:FLM", "84B"): 42.4,
    (EVAL_HARNESS, "pretrain", "ND:PLM", "84B"): 42.2,
    (EVAL_HARNESS, "pretrain", "ED:PLM", "84B"): 39.6,
    (EVAL_HARNESS, "pretrain", "CD:MLM", "84B"): 37.8,
    (EVAL_HARNESS, "pretrain", "ND:MLM", "84B"): 37.7,
    (EVAL_HARNESS, "pretrain", "ED:MLM", "84B"): 34.6,
    **{(EVAL_T0, "mtf", cell, "168B"): value for cell, value in (
        ("CD:FLM", 51.4), ("ND:PLM", 54.0), ("ED:PLM", 45.8), ("CD:MLM", 50.3),
        ("ND:MLM", 55.2), ("ED:MLM", 60.6))},
    **{(EVAL_T0, "mtf", cell, "84B"): value for cell, value in (
        ("CD:FLM", 49.9), ("ND:PLM", 50.0), ("ED:PLM", 46.5), ("CD:MLM", 48.2),
        ("ND:MLM", 52.6), ("ED:MLM", 56.5))},
    **{(EVAL_T0, "mtf", cell, "42B"): value for cell, value in (
        ("CD:MLM", 45.8), ("ND:MLM", 48.9), ("ED:MLM", 53.7))},
    **{(EVAL_HARNESS, "mtf", cell, "168B"): value for cell, value in (
        ("CD:FLM", 50.4), ("ND:PLM", 48.9), ("ED:PLM", 44.2), ("CD:MLM", 47.1),
        ("ND:MLM", 51.0), ("ED:MLM", 51.3))},
    **{(EVAL_HARNESS, "mtf", cell, "84B"): value for cell, value in (
        ("CD:FLM", 49.0), ("ND:PLM", 46.3), ("ED:PLM", 43.2), ("CD:MLM", 45.8),
        ("ND:MLM", 49.0), ("ED:MLM", 49.0))},
    **{(EVAL_HARNESS, "mtf", cell, "42B"): value for cell, value in (
        ("CD:MLM", 43.3), ("ND:MLM", 45.9), ("ED:MLM", 45.4))},
}


@dataclasses.dataclass
class SweepResult:
  """What `sweep` did: `points` (one per step evaluated in `out_dir`, ascending, as in
  curve.json), the steps `scored` now, `read_back` (results already there) and `skipped`
  (deleted before they could be evaluated), the `paper` table rows, the files written and
  the markdown the command prints."""
  kind: str
  model_dir: str
  out_dir: str
  points: list[dict]
  scored: list[int]
  read_back: list[int]
  skipped: list[int]
  paper: list[dict]
  files: list[str]
  markdown: str


# ----------------------------------------------------------------------------------------
# --steps
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Selection:
  """The steps `--steps` selects: all (`every` and `listed` None), the multiples of
  `every` (and the last step), or the `listed` ones."""
  text: str
  every: Optional[int] = None
  listed: Optional[tuple[int, ...]] = None

  def wants(self, step: int, last_step: Optional[int]) -> bool:
    if self.listed is not None:
      return step in self.listed
    if self.every is not None:
      return step % self.every == 0 or step == last_step
    return True


def parse_steps(text: Optional[str]) -> Selection:
  """`--steps`: None or 'all', 'N,M,...' (positive steps) or 'every:K' (K >= 1)."""
  if text is None or text.strip() == "all":
    return Selection("all")
  value = text.strip()
  expected = ("--steps must be all, N,M,... (checkpoint steps, positive integers) or "
              "every:K (K a positive integer)")
  if value.startswith("every:"):
    k = value[len("every:"):].strip()
    if not k.isdigit() or int(k) < 1:
      raise UserError(f"{expected}; found {text!r} (K must be >= 1).")
    return Selection(value, every=int(k))
  parts = [p.strip() for p in value.split(",")]
  if not all(p.isdigit() and int(p) >= 1 for p in parts):
    bad = next(p for p in parts if not (p.isdigit() and int(p) >= 1))
    raise UserError(f"{expected}; found {text!r} ({bad!r} is not a step).")
  return Selection(value, listed=tuple(sorted({int(p) for p in parts})))


# ----------------------------------------------------------------------------------------
# The run: where it is, what it records
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Run:
  model_dir: str
  checkpoints_dir: str
  out_dir: str           # OUT: OUT/<step>/ per step, and the sweep's own files


def _locate(kind: str, checkpoint, out_dir: Optional[str], watch: bool) -> _Run:
  """The run a sweep reads (`--checkpoint`: MODEL_DIR or MODEL_DIR/checkpoints) and OUT."""
  if not checkpoint:
    raise UserError(f"{kind}: --steps/--watch need the run: give --checkpoint MODEL_DIR "
                    f"(or bind CHECKPOINT_PATH in the gin run), found none.")
  path = checkpoints.checkpoint_path(str(checkpoint), "--checkpoint")
  if paths.basename(path).isdigit():
    raise UserError(f"{kind}: --steps/--watch evaluate the checkpoints of a run: --checkpoint "
                    f"must be its model directory, found the step directory {path}; give "
                    f"{paths.dirname(paths.dirname(path))}.")
  model_dir = paths.dirname(path) if paths.basename(path) == "checkpoints" else path
  ckpt_dir = paths.join(model_dir, "checkpoints")
  if paths.exists(model_dir) and not paths.isdir(model_dir):
    raise UserError(f"{kind}: --checkpoint {model_dir} is a file, not a run's model "
                    f"directory (one holding checkpoints/).")
  if not paths.isdir(ckpt_dir) and checkpoints.complete_steps(model_dir):
    ckpt_dir = model_dir       # a folder of step directories itself
  if paths.isdir(model_dir) and ckpt_dir != model_dir:
    entries = paths.listdir(model_dir)
    if entries and not any(m in entries for m in _RUN_MARKERS):
      raise UserError(f"{kind}: --checkpoint {model_dir} holds no run (none of "
                      f"{', '.join(_RUN_MARKERS)}); give the MODEL_DIR training writes.")
  elif not paths.exists(model_dir) and not watch:
    raise UserError(f"{kind}: --checkpoint {model_dir}: no such run directory (--watch "
                    f"waits for a run that has not started).")
  out = paths.normalize(out_dir, "--out") if out_dir else paths.join(model_dir, kind)
  return _Run(model_dir, ckpt_dir, out)


_TRAIN_STEPS = re.compile(r"^\s*(?:TRAIN_STEPS|train\.train_steps)\s*=\s*(\d+)\s*$",
                          re.MULTILINE)
_LATER_CONFIG = re.compile(r"^config-(\d+)\.gin$")


def recorded_train_steps(model_dir: str) -> Optional[int]:
  """The run's last step: TRAIN_STEPS of its operative config (`config.gin`, or the
  `config-<start step>.gin` its latest resume with another config wrote), None where it
  records none."""
  if not paths.isdir(model_dir):
    return None
  later = sorted((int(m.group(1)), name) for name in paths.listdir(model_dir)
                 for m in [_LATER_CONFIG.match(name)] if m)
  for name in [n for _, n in reversed(later)] + ["config.gin"]:
    path = paths.join(model_dir, name)
    if paths.exists(path):
      found = _TRAIN_STEPS.findall(paths.read_text(path))
      if found:
        return int(found[0])
  return None


# ----------------------------------------------------------------------------------------
# Tokens seen
# ----------------------------------------------------------------------------------------
def checkpoint_tokens(step_dir: str, meta: Optional[dict] = None, depth: int = 0
                      ) -> tuple[Optional[int], str]:
  """(tokens seen, how) of the checkpoint at `step_dir` (`.../checkpoints/<step>`): how is
  'recorded' (`train.tokens_seen` of its meta and data position), 'estimated' (a
  fallback of the module docstring) or 'unknown' (no identity: tokens None)."""
  from arch_objective.training import train
  if meta is None:
    meta, _ = checkpoints.load_meta(step_dir)
  batches = train.data_batches(step_dir)
  tokens = train.tokens_seen(meta, batches)
  if tokens is not None:
    return tokens, "recorded"
  per_step = train.tokens_per_step(meta)
  if per_step is None:
    return None, "unknown"
  lineage = meta.get("lineage") or []
  exact = batches is not None
  if batches is None:
    step = int(paths.basename(step_dir))
    start = int(lineage[-1].get("step") or 0) if lineage else 0
    batches = step - start if step > start else step
  before = 0
  if lineage:
    before, restored_exact = _restored_tokens(lineage[-1], per_step, depth)
    if before is None:
      return None, "unknown"
    exact = exact and restored_exact
  return batches * per_step + before, "recorded" if exact else "estimated"


def _restored_tokens(entry: dict, per_step: int, depth: int) -> tuple[Optional[int], bool]:
  """Tokens of a restored checkpoint (a lineage entry): as recorded; else read from that
  checkpoint if it still exists; else its step x `per_step` (estimated)."""
  if entry.get("tokens_seen") is not None:
    return int(entry["tokens_seen"]), True
  source = entry.get("checkpoint")
  if source and depth < 8:
    try:
      step_dir, _ = checkpoints.step_directory(source)
      tokens, how = checkpoint_tokens(step_dir, depth=depth + 1)
      if tokens is not None:
        return tokens, how == "recorded"
    except (UserError, OSError, ValueError):
      pass                     # gone or unreadable: estimated below
  if entry.get("step") is None:
    return None, False
  return int(entry["step"]) * per_step, False


def _tokens_text(tokens: Optional[int]) -> str:
  if tokens is None:
    return "?"
  return f"{tokens / 1e9:.1f}B" if tokens >= 1e9 else f"{tokens:,}"


# ----------------------------------------------------------------------------------------
# Scores of a results file
# ----------------------------------------------------------------------------------------
def results_file(kind: str) -> str:
  """The file of OUT/<step>/ whose presence means the step is evaluated."""
  if kind == EVAL_T0:
    from arch_objective.evaluation import t0_eval
    return t0_eval.RESULTS_FILE
  from arch_objective.evaluation import harness
  return harness.RESULTS_FILE


def scores(kind: str, results: dict) -> tuple[float, dict[str, float]]:
  """(average, {dataset or task: score}) of one step's results, in percent: T0-Eval's
  average and per-dataset medians, or EAI-Eval's mean `acc` and per-task `acc`."""
  if kind == EVAL_T0:
    return (float(results["average"]),
            {name: float(r["median"]) for name, r in results["datasets"].items()})
  from arch_objective.evaluation import harness
  summary = harness.summarize(results)
  return 100 * summary["mean"], {task: 100 * v for task, v in summary["acc"].items()}


# ----------------------------------------------------------------------------------------
# TensorBoard
# ----------------------------------------------------------------------------------------
class _Scalars:
  """The sweep's TensorBoard event file in `logdir` (opened at the first write), writing
  each (tag, step) once: those already in the folder's event files are skipped."""

  def __init__(self, logdir: str):
    self.logdir, self.writer, self.files = logdir, None, []
    self.available = _tensorboard_available()
    self.written = self._already_written() if self.available else set()

  def _already_written(self) -> set[tuple[str, int]]:
    if not paths.isdir(self.logdir):
      return set()
    from tensorboard.backend.event_processing.event_file_loader import (
        LegacyEventFileLoader)
    seen = set()
    for name in sorted(paths.listdir(self.logdir)):
      if "tfevents" not in name:
        continue
      try:
        for event in LegacyEventFileLoader(paths.join(self.logdir, name)).Load():
          seen.update((value.tag, int(event.step)) for value in event.summary.value)
      except Exception as e:  # a file cut short by a killed writer: what it holds counts
        _logger.warning(f"TensorBoard file {name} in {self.logdir} reads only in part "
                        f"({type(e).__name__}: {e}).")
    return seen

  def write(self, step: int, values: dict[str, float]) -> int:
    """Write `values` ({tag: value}) at `step`, except those already there; returns how
    many were written."""
    new = {tag: v for tag, v in values.items() if (tag, step) not in self.written}
    if not new or not self.available:
      return 0
    from tensorboard.compat.proto import event_pb2, summary_pb2
    if self.writer is None:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      paths.makedirs(self.logdir)
      before = set(paths.listdir(self.logdir))
      self.writer = EventFileWriter(self.logdir)
      self.files += [paths.join(self.logdir, name)
                     for name in sorted(set(paths.listdir(self.logdir)) - before)]
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)
                                         for tag, v in sorted(new.items())])
    self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                          summary=summary))
    self.writer.flush()
    self.written.update((tag, step) for tag in new)
    return len(new)

  def close(self):
    if self.writer is not None:
      self.writer.close()
      self.writer = None


def _tensorboard_available() -> bool:
  import importlib.util
  if importlib.util.find_spec("tensorboard") is None:
    _logger.warning("tensorboard is not installed: no TensorBoard scalars for the sweep "
                    "(curve.json and curve.md hold the same numbers).")
    return False
  return True


def tensorboard_values(kind: str, average: float, per_name: dict[str, float]
                       ) -> dict[str, float]:
  """{tag: percent} of one step: `<kind>/average` and `<kind>/<dataset or task>`."""
  return {f"{kind}/average": average, **{f"{kind}/{n}": v for n, v in per_name.items()}}


# ----------------------------------------------------------------------------------------
# The paper's table by budget
# ----------------------------------------------------------------------------------------
def _objective_short(task: Optional[str]) -> Optional[str]:
  """FLM, PLM, MLM or UL2 of a pretraining task name (`c4_full_lm`, `local_prefix_lm`,
  ...), None for any other task (the T0 mixture)."""
  from arch_objective.data import registry
  from arch_objective.objectives import pipeline
  if not task:
    return None
  kinds = {**{k: v[0] for k, v in registry.TASK_KINDS.items()},
           "prefix_lm": pipeline.PREFIX_LM}
  for suffix in sorted(kinds, key=len, reverse=True):
    if task == suffix or task.endswith("_" + suffix):
      return pipeline.SHORT_NAMES[kinds[suffix]]
  return None


def paper_run(meta: dict) -> Optional[tuple[str, str]]:
  """(stage, cell) of the paper run a checkpoint's meta is, e.g. ('pretrain', 'CD:FLM')
  or ('mtf', 'ND:MLM') (MT-F of an ND:MLM checkpoint); None for any other run (an
  adaptation, UL2, a task the paper did not train)."""
  lineage = meta.get("lineage") or []
  objective = _objective_short(meta.get("task"))
  if objective is not None and not lineage:
    stage, arch, objective = "pretrain", meta.get("arch"), objective
  elif objective is None and len(lineage) == 1:
    stage, arch, objective = "mtf", lineage[0].get("arch"), _objective_short(
        lineage[0].get("task"))
  else:
    return None
  spec = architectures.find(arch)
  if spec is None or objective not in ("FLM", "PLM", "MLM"):
    return None
  return stage, f"{spec.short}:{objective}"


def paper_table(kind: str, points: Sequence[dict], run: Optional[tuple[str, str]]
                ) -> list[dict]:
  """Rows `{"budget", "target_tokens", "step", "tokens_seen", "average", "paper",
  "at_budget"}`: for each of the paper's budgets, the point nearest its tokens
  (pretraining budget, plus MT-F's 13.1B tokens for an MT-F run), whether it is within
  10% of them, and the paper's average for `run` (None where the paper reports none)."""
  stage, cell = run if run else ("pretrain", None)
  known = [p for p in points if p.get("tokens_seen") is not None]
  rows = []
  for budget, tokens in BUDGETS.items():
    target = tokens + (MTF_TOKENS if stage == "mtf" else 0)
    near = min(known, key=lambda p: (abs(p["tokens_seen"] - target), p["step"]),
               default=None)
    rows.append({"budget": budget + (" + MT-F 13.1B" if stage == "mtf" else ""),
                 "target_tokens": target, "step": near and near["step"],
                 "tokens_seen": near and near["tokens_seen"],
                 "average": near and near["average"],
                 "paper": PAPER_BY_BUDGET.get((kind, stage, cell, budget)),
                 "at_budget": bool(near) and abs(near["tokens_seen"] - target) <= 0.1 * target})
  return rows


# ----------------------------------------------------------------------------------------
# curve.json, curve.md, curve.png
# ----------------------------------------------------------------------------------------
def curve_markdown(kind: str, model_dir: str, points: Sequence[dict], paper: Sequence[dict],
                   run: Optional[tuple[str, str]], show_paper: bool) -> str:
  title = TITLES[kind]
  names = sorted({n for p in points for n in p["scores"]})
  lines = [f"## {title} of every checkpoint: {model_dir}", "",
           "| step | tokens seen | average | " + " | ".join(names) + " |",
           "|---|---|---|" + "---|" * len(names)]
  for p in points:
    cells = [f"{p['scores'][n]:.1f}" if n in p["scores"] else "" for n in names]
    mark = "~" if p["tokens"] == "estimated" else ""
    lines.append(f"| {p['step']} | {mark}{_tokens_text(p['tokens_seen'])} | "
                 f"**{p['average']:.1f}** | " + " | ".join(cells) + " |")
  if any(p["tokens"] == "estimated" for p in points):
    lines += ["", "~: tokens estimated (see `evaluation/sweep.py`)."]
  if show_paper:
    who = f"{run[1]} ({'after MT-F' if run[0] == 'mtf' else 'pretraining'})" if run else None
    lines += ["", f"The paper's {title} averages by token budget"
              + (f", {who}:" if who else " (this run is none of the paper's runs: no "
                 "numbers to compare):"), "",
              "| budget | nearest step | its tokens | average | paper |", "|---|---|---|---|---|"]
    for row in paper:
      ours = "" if row["average"] is None else f"{row['average']:.1f}"
      theirs = "-" if row["paper"] is None else f"{row['paper']:.1f}"
      step = "" if row["step"] is None else row["step"]
      far = "" if row["at_budget"] or row["step"] is None else "*"
      lines.append(f"| {row['budget']} | {step} | {_tokens_text(row['tokens_seen'])}{far} | "
                   f"{ours} | {theirs} |")
    if any(not row["at_budget"] and row["step"] is not None for row in paper):
      lines += ["", "*: more than 10% away from the budget's tokens."]
  return "\n".join(lines) + "\n"


def _plot(kind: str, points: Sequence[dict], by_tokens: bool, model_dir: str) -> bytes:
  """PNG bytes of the average against tokens seen (or the step)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(figure)
  ax = figure.add_subplot(1, 1, 1)
  xs = [p["tokens_seen"] if by_tokens else p["step"] for p in points]
  ax.plot(xs, [p["average"] for p in points], marker="o")
  ax.set_xlabel("tokens seen" if by_tokens else "step (tokens seen unknown)")
  ax.set_ylabel(f"{TITLES[kind]} average (%)")
  ax.set_title(paths.basename(model_dir) or model_dir, fontsize=9)
  ax.grid(True, alpha=0.3)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  return buffer.getvalue()


def write_curve(out_dir: str, kind: str, model_dir: str, points: Sequence[dict],
                paper: Sequence[dict], markdown: str) -> list[str]:
  """curve.json, curve.md and curve.png in `out_dir`; returns their paths."""
  by_tokens = bool(points) and all(p["tokens_seen"] is not None for p in points)
  paths.makedirs(out_dir)
  body = {"kind": kind, "model_dir": model_dir, "x": "tokens_seen" if by_tokens else "step",
          "points": list(points), "paper": list(paper)}
  written = [paths.join(out_dir, CURVE_JSON), paths.join(out_dir, CURVE_MD)]
  paths.write_text(written[0], json.dumps(body, indent=2))
  paths.write_text(written[1], markdown)
  if points:
    written.append(paths.join(out_dir, CURVE_PNG))
    paths.write_bytes(written[2], _plot(kind, points, by_tokens, model_dir))
  return written


# ----------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------
def _settings(kind: str, given: dict, gin_files: Sequence[str], bindings: Sequence[str]
              ) -> dict:
  """The run's settings: the gin files' bound values (with --gin_file), the options
  given on top."""
  if not gin_files:
    if bindings:
      raise UserError(f"--gin.{bindings[0]} needs --gin_file (e.g. --gin_file "
                      f"runs/{kind}.gin); without one, use the options.")
    return dict(given)
  from arch_objective.training import plan
  plan.parse_with_placeholders(gin_files, bindings)
  if runs.configured_run(kind) is None:
    raise UserError(f"the gin files {list(gin_files)} configure no {kind} run (no "
                    f"{kind}.* binding); include 'runs/{kind}.gin' or an experiment that "
                    f"does, e.g. experiments/paper/{kind}.gin.")
  return {**runs.bound_values(kind), **given}


class _Sweep:
  """One sweep's state: the steps handled, the points, the TensorBoard writer."""

  def __init__(self, kind: str, given: dict, gin_files: Sequence[str],
               bindings: Sequence[str], run: _Run, show_paper: bool,
               log: Callable[[str], None]):
    self.kind, self.given, self.gin_files, self.bindings = kind, given, gin_files, bindings
    self.run, self.show_paper, self.log = run, show_paper, log
    self.scored, self.read_back, self.skipped = [], [], []
    self.tokens: dict[int, tuple[Optional[int], str]] = self._previous_tokens()
    self.scores: dict[int, tuple[float, dict]] = {}   # a results file never changes
    self.scalars = _Scalars(paths.join(run.out_dir, TENSORBOARD_DIR))
    self.meta: Optional[dict] = None     # the latest checkpoint's (which paper run)
    self.files: list[str] = []

  def _previous_tokens(self) -> dict[int, tuple[Optional[int], str]]:
    """Tokens of the points of an earlier curve.json (for steps whose checkpoint is
    gone since)."""
    path = paths.join(self.run.out_dir, CURVE_JSON)
    if not paths.exists(path):
      return {}
    try:
      points = json.loads(paths.read_text(path)).get("points", [])
      return {int(p["step"]): (p.get("tokens_seen"), p.get("tokens", "recorded"))
              for p in points if p.get("tokens_seen") is not None}
    except (ValueError, KeyError, TypeError, AttributeError):
      return {}

  def step_out(self, step: int) -> str:
    return paths.join(self.run.out_dir, str(step))

  def handle(self, step: int):
    """Evaluate `step` (or read its results back); a step deleted first is skipped."""
    step_dir = paths.join(self.run.checkpoints_dir, str(step))
    results_path = paths.join(self.step_out(step), results_file(self.kind))
    if paths.exists(results_path):
      self.log(f"step {step}: results already in {results_path}; read back, not scored")
      self.read_back.append(step)
      self._remember_tokens(step, step_dir)
      return
    if step not in checkpoints.complete_steps(self.run.checkpoints_dir):
      self._skip(step)
      return
    self.log(f"step {step}: {TITLES[self.kind]} of {step_dir} -> {self.step_out(step)}")
    self._remember_tokens(step, step_dir)
    settings = {**self.given, "checkpoint": step_dir, "out_dir": self.step_out(step)}
    try:
      if self.gin_files:
        runs.run_from_gin(self.kind, self.gin_files, self.bindings, settings)
      else:
        runs.RUNS[self.kind](**settings)
    except Exception:
      if not paths.isdir(step_dir) or step not in checkpoints.complete_steps(
          self.run.checkpoints_dir):
        self._skip(step)
        return
      raise
    self.scored.append(step)

  def _skip(self, step: int):
    _logger.warning(f"step {step}: its checkpoint in {self.run.checkpoints_dir} was "
                    f"deleted (train.keep_checkpoints) before it could be evaluated; "
                    f"skipped.")
    self.skipped.append(step)

  def _remember_tokens(self, step: int, step_dir: str):
    try:
      meta, _ = checkpoints.load_meta(step_dir)
    except (UserError, OSError):
      return                         # deleted since: an earlier curve's tokens, if any
    self.tokens[step] = checkpoint_tokens(step_dir, meta)
    self.meta = meta

  def points(self) -> list[dict]:
    """One point per step evaluated in OUT (this sweep's and earlier ones), ascending."""
    out, name = self.run.out_dir, results_file(self.kind)
    steps = sorted(int(s) for s in (paths.listdir(out) if paths.isdir(out) else [])
                   if s.isdigit() and paths.exists(paths.join(out, s, name)))
    points = []
    for step in steps:
      if step not in self.scores:
        results = json.loads(paths.read_text(paths.join(out, str(step), name)))
        self.scores[step] = scores(self.kind, results)
      average, per_name = self.scores[step]
      if step not in self.tokens:
        self._remember_tokens(step, paths.join(self.run.checkpoints_dir, str(step)))
      tokens, how = self.tokens.get(step, (None, "unknown"))
      points.append({"step": step, "tokens_seen": tokens, "tokens": how,
                     "average": average, "scores": per_name})
    return points

  def publish(self) -> tuple[list[dict], list[dict], str]:
    """TensorBoard scalars of new points, then curve.json/.md/.png; returns (points,
    paper rows, markdown)."""
    points = self.points()
    for p in points:
      self.scalars.write(p["step"], tensorboard_values(self.kind, p["average"], p["scores"]))
    run = paper_run(self.meta) if self.meta is not None else None
    show = self.show_paper or (self.kind == EVAL_HARNESS and run is not None)
    paper = paper_table(self.kind, points, run)
    markdown = curve_markdown(self.kind, self.run.model_dir, points, paper, run, show)
    self.files = write_curve(self.run.out_dir, self.kind, self.run.model_dir, points,
                             paper if show else [], markdown)
    return points, paper if show else [], markdown


def sweep(kind: str, given: dict, *, gin_files: Sequence[str] = (),
          bindings: Optional[Sequence[str]] = (), steps: Optional[str] = None,
          watch: bool = False, poll_seconds: float = 60.0,
          time_limit: Optional[float] = None,
          log: Optional[Callable[[str], None]] = None,
          sleep: Callable[[float], None] = time.sleep) -> SweepResult:
  """Evaluate the checkpoints `steps` (`parse_steps`) of the run `given['checkpoint']`
  (or the gin run's CHECKPOINT_PATH) names, with the options `given` ({param: value} of
  `runs.parameters(kind)`), as the module docstring says; with `watch`, also those
  training writes from now on, polling every `poll_seconds` until the last step or
  `time_limit` seconds without a new checkpoint. `log` receives the progress lines
  (default: this module's logger at INFO); `sleep(seconds)` waits between two polls."""
  if kind not in runs.RUNS:
    raise UserError(f"sweep: unknown evaluation {kind!r}; valid: {', '.join(runs.RUNS)}.")
  log = log or _logger.info
  bindings = list(bindings or ())
  selection = parse_steps(steps)
  for name, value in (("--poll", poll_seconds), ("--time_limit", time_limit)):
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
      raise UserError(f"{name} must be a positive number of seconds, found {value!r}.")
  settings = _settings(kind, dict(given), gin_files, bindings)
  run = _locate(kind, settings.get("checkpoint"), settings.get("out_dir"), watch)
  state = _Sweep(kind, {k: v for k, v in given.items() if k not in ("checkpoint", "out_dir")},
                 gin_files, bindings, run, bool(settings.get("paper")), log)
  try:
    if watch:
      _watch(state, selection, poll_seconds, time_limit, sleep)
    else:
      for step in _selected(run, selection):
        state.handle(step)
    points, paper, markdown = state.publish()
  finally:
    state.scalars.close()
  files = state.files + state.scalars.files
  log(f"{len(state.scored)} step(s) scored, {len(state.read_back)} read back, "
      f"{len(state.skipped)} skipped; wrote {', '.join(files)}")
  summary = (f"\nScored now: {_steps_text(state.scored)}; read back: "
             f"{_steps_text(state.read_back)}; skipped (deleted before evaluation): "
             f"{_steps_text(state.skipped)}. Per step: {run.out_dir}/<step>/; TensorBoard: "
             f"{paths.join(run.out_dir, TENSORBOARD_DIR)}.\n")
  return SweepResult(kind, run.model_dir, run.out_dir, points, state.scored, state.read_back,
                     state.skipped, paper, files, markdown + summary)


def _steps_text(steps: Iterable[int]) -> str:
  steps = list(steps)
  return ", ".join(map(str, steps)) if steps else "none"


def _selected(run: _Run, selection: Selection) -> list[int]:
  """The complete steps `selection` picks (a sweep without --watch)."""
  steps = checkpoints.complete_steps(run.checkpoints_dir)
  if not steps:
    raise UserError(f"--checkpoint {run.model_dir}: no complete checkpoint in "
                    f"{run.checkpoints_dir}; --watch waits for them.")
  if selection.listed is not None:
    missing = [s for s in selection.listed if s not in steps]
    if missing:
      raise UserError(f"--steps {selection.text}: the run {run.model_dir} has no checkpoint "
                      f"at step {_steps_text(missing)}; its steps are {_steps_text(steps)}.")
  last_step = recorded_train_steps(run.model_dir)
  chosen = [s for s in steps if selection.wants(s, last_step)]
  if not chosen:
    raise UserError(f"--steps {selection.text} selects none of the steps of "
                    f"{run.model_dir} ({_steps_text(steps)}).")
  return chosen


def _watch(state: _Sweep, selection: Selection, poll_seconds: float,
           time_limit: Optional[float], sleep: Callable[[float], None]):
  """Evaluate each selected step once as it appears; see the module docstring for when
  it stops."""
  run, log = state.run, state.log
  seen: set[int] = set()
  handled: set[int] = set()
  last_new = time.monotonic()
  last_step, warned = None, False
  log(f"watching {run.checkpoints_dir} every {poll_seconds:g} s for steps "
      f"{selection.text}" + (f" (stop after {time_limit:g} s without a new checkpoint)"
                            if time_limit else ""))
  while True:
    if last_step is None:
      last_step = recorded_train_steps(run.model_dir)
      if last_step is not None:
        log(f"the run's last step is {last_step} (TRAIN_STEPS, {run.model_dir}/config.gin)")
        beyond = [s for s in selection.listed or () if s > last_step]
        if beyond:
          raise UserError(f"--steps {selection.text}: step {_steps_text(beyond)} is past "
                          f"the run's last step {last_step} (TRAIN_STEPS of "
                          f"{run.model_dir}/config.gin).")
      elif not warned and seen:
        warned = True
        _logger.warning(f"{run.model_dir} records no TRAIN_STEPS (no config.gin): the "
                        f"watcher stops after --time_limit seconds without a new checkpoint"
                        + ("." if time_limit else "; none is given, so it watches until "
                           "stopped."))
    steps = checkpoints.complete_steps(run.checkpoints_dir)
    if set(steps) - seen:
      seen.update(steps)
      last_new = time.monotonic()
    todo = [s for s in steps if s not in handled and selection.wants(s, last_step)]
    if todo:
      for step in todo:
        state.handle(step)
        handled.add(step)
        state.publish()
      continue
    if _finished(selection, handled, seen, last_step, log):
      return
    idle = time.monotonic() - last_new
    if time_limit is not None and idle >= time_limit:
      if not seen:
        raise UserError(f"--watch: no checkpoint appeared in {run.checkpoints_dir} within "
                        f"--time_limit {time_limit:g} s; is --checkpoint the MODEL_DIR the "
                        f"training job writes?")
      log(f"no new checkpoint in {run.checkpoints_dir} for {idle:.0f} s (--time_limit "
          f"{time_limit:g}): stopping after step {max(seen)}")
      return
    sleep(poll_seconds)


def _finished(selection: Selection, handled: set[int], seen: set[int],
              last_step: Optional[int], log: Callable[[str], None]) -> bool:
  """Whether the watcher is done: the listed steps evaluated, or the last step."""
  if selection.listed is not None and set(selection.listed) <= handled:
    log(f"steps {selection.text} evaluated: done")
    return True
  if last_step is not None and last_step in seen:
    never = [s for s in selection.listed or () if s not in seen]
    if never:
      _logger.warning(f"step(s) {_steps_text(never)} of --steps were never saved (the run "
                      f"reached its last step, {last_step}).")
    log(f"the run's last step, {last_step}, is evaluated: done")
    return True
  return False
