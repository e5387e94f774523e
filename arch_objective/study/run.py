"""The laptop-scale study: the paper's whole pipeline on one CPU, on an embedded world.

`run_study(preset, out_dir)`:
  1. builds the synthetic world (`data/world/`): a pretraining corpus, MT-F training
     task families and held-out task families; trains a SentencePiece vocabulary on the
     corpus;
  2. pretrains the six (architecture, objective) pairs of the paper with the same token
     budget each (same steps, rows and tokens per row; ED prefix-LM rows hold two
     examples, so its batch is halved);
  3. evaluates each zero-shot on the first `eval_examples` of each held-out family's
     `validation` split (the world's 300, lengthened when a preset scores more;
     `study_world`) by rank classification, median over prompts, mean over families:
     T0-Eval's code;
  4. multitask-finetunes each on the training families (constant learning rate, dropout
     0.1, the step counter continuing), and evaluates again; before and after MT-F, each
     model is also scored on MT-F's own classification families (paraphrase, topic,
     sentiment; their `validation` split, the same rank classification): whether MT-F
     taught the tasks it trains on (`eval/<model>[_mtf]_held_in.json`);
  5. optionally runs NC-A (CD:FLM continued as ND:MLM, then MT-F as ND), and with
     `StudyConfig.ul2` (`--ul2`) ED:UL2 and ND:UL2 beside the six (UL2's mixture of
     denoisers, `objectives/ul2.py`), with their contrasts against MLM, PLM and CD:FLM;
  6. with `ceiling_steps`, finetunes the pretrained ED:MLM on each held-out family's
     `test` split (its first `ceiling_examples`, 0: as many as the validation split) at
     `ceiling_learning_rate` (0: the MT-F rate) and scores it on the family's
     `validation` split: what a model of this size reaches when it is taught the family
     (a diagnostic, never compared);
  7. writes `results.json`, `results.md` (the paper-style table with bootstrap 95%
     intervals; the paper's contrasts as paired differences with paired bootstrap 95%
     intervals; per family the random floor, the majority-class baseline, the
     ceiling, every model's score and whether it answers one class only; the same for
     the held-in classification families before and after MT-F),
     `zero_shot.png`, `contrasts.png`, `loss_curves.png`; every run's TensorBoard files
     stay in its directory under `runs/`.
Every stage is skipped when its output exists, so an interrupted study resumes.
The presets are gin files, `gin/experiments/study/{smoke,quick,medium,full}.gin`;
`bindings` (`StudyConfig.NAME = VALUE`) override them. The configuration a study ran
with is kept in `config.json`; resuming with other values warns and names them (the
stages already done keep the values they ran with).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence

from arch_objective import models
from arch_objective.errors import UserError, integer_at_least
from arch_objective.objectives import pipeline

PRESETS = ("smoke", "quick", "medium", "full")


@dataclasses.dataclass
class StudyConfig:
  """One preset (bound by gin from `gin/experiments/study/<preset>.gin`)."""
  corpus_bytes: int = 2_000_000
  vocab_size: int = 2000
  emb_dim: int = 128
  num_heads: int = 4
  head_dim: int = 32
  mlp_dim: int = 256
  num_layers: int = 2
  length: int = 128
  batch_size: int = 16
  pretrain_steps: int = 300
  pretrain_learning_rate: float = 0.01
  mtf_steps: int = 150
  mtf_learning_rate: float = 0.001
  mtf_dropout: float = 0.1
  mtf_inputs_length: int = 96
  mtf_targets_length: int = 32
  eval_examples: int = 200
  bootstrap: int = 200
  nc_a: bool = True
  nc_a_steps: int = 100
  ul2: bool = False
  ceiling_steps: int = 0
  ceiling_examples: int = 0
  ceiling_learning_rate: float = 0.0
  contrast_resamples: int = 1000
  seed: int = 0

  def model_overrides(self, vocab_size: int) -> dict:
    return dict(emb_dim=self.emb_dim, num_heads=self.num_heads, head_dim=self.head_dim,
                mlp_dim=self.mlp_dim, num_encoder_layers=self.num_layers,
                num_decoder_layers=self.num_layers, vocab_size=vocab_size, dtype="float32")


def load_preset(preset: str, bindings: Sequence[str] = ()) -> StudyConfig:
  """The StudyConfig of `gin/experiments/study/<preset>.gin` with `bindings`
  (`StudyConfig.NAME = VALUE`) applied after it."""
  from arch_objective.training import gin_utils
  if preset not in PRESETS:
    raise UserError(f"unknown study preset {preset!r}; valid presets: {', '.join(PRESETS)}.")
  configurable = register_gin()
  gin_utils.parse([f"experiments/study/{preset}.gin"], list(bindings))
  return configurable()


def record_config(config: StudyConfig, out_dir: str) -> list[str]:
  """Write `config` to `out_dir/config.json`; returns, when a study ran there before with
  other values, one `NAME: OLD -> NEW` line per field that changed (nothing is lost:
  the earlier stages' outputs stay, and the file then holds the new values)."""
  path = os.path.join(out_dir, "config.json")
  new = dataclasses.asdict(config)
  changed = []
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    # A field added since that study ran had its default there.
    defaults = dataclasses.asdict(StudyConfig())
    changed = [f"{k}: {old.get(k, defaults[k])!r} -> {v!r}" for k, v in new.items()
               if old.get(k, defaults[k]) != v]
  with open(path + ".tmp", "w") as f:
    json.dump(new, f, indent=2)
  os.replace(path + ".tmp", path)
  return changed


def register_gin():
  """Make `StudyConfig` bindable from gin (idempotent); returns the configurable."""
  import gin
  from arch_objective.training import gin_utils
  gin_utils.register({"StudyConfig": StudyConfig})
  return gin.get_configurable("StudyConfig")


class _Stages:
  """Progress over the study's stages with an ETA from the ones done so far."""

  def __init__(self, total: int, log: Callable[[str], None]):
    self.total, self.done, self.log = total, 0, log
    self.t0, self.timed, self.timed_seconds = time.time(), 0, 0.0

  def run(self, name: str, marker: str, fn: Callable[[], Any]):
    self.done += 1
    if os.path.exists(marker):
      self.log(f"[{self.done}/{self.total}] {name}: done before, skipped")
      return
    start = time.time()
    fn()
    self.timed += 1
    self.timed_seconds += time.time() - start
    left = (self.total - self.done) * self.timed_seconds / self.timed
    self.log(f"[{self.done}/{self.total}] {name}: {time.time() - start:.0f}s "
             f"(elapsed {time.time() - self.t0:.0f}s, ETA {left:.0f}s)")


@dataclasses.dataclass(frozen=True)
class _Setup:
  """What every stage of one study reads: its preset, folders, world and vocabulary."""
  config: StudyConfig
  runs: str                 # out_dir/runs: one model directory per run
  evals: str                # out_dir/eval: one T0-Eval results file per scored run
  world: Any                # data.world.World
  vocab_path: str
  encode: Callable[[str], list]
  model_vocab: int          # the vocabulary size, padded for the embedding
  suite: tuple              # the held-out families (validation split)
  held_in: tuple = ()       # MT-F's classification families (validation split)


def _pretrain(setup: _Setup, arch: str, objective: str, model_dir: str, steps: int,
              restore: Optional[str] = None):
  """Pretrain (or, with `restore`, continue) `arch` on `objective` over the corpus."""
  from arch_objective.training import data, optimizers, train
  config = setup.config
  task = {pipeline.FULL_LM: "study_full_lm", pipeline.PREFIX_LM: "study_prefix_lm",
          pipeline.SPAN_CORRUPTION: "study_span_corruption", pipeline.UL2: "study_ul2"}[objective]
  # Rows that hold two examples (ED prefix LM) halve the batch: the same tokens per step.
  rows = int(config.batch_size // pipeline.TABLE[objective, arch].examples_per_row)
  model = models.build_model(arch, "tiny", **config.model_overrides(setup.model_vocab))
  train.train(model_dir=model_dir, model=model, train_steps=steps, progress=False,
              dataset=data.DatasetConfig(task=task, batch_size=rows, length=config.length,
                                         vocabulary=setup.vocab_path, seed=config.seed),
              learning_rate_schedule=optimizers.constant(config.pretrain_learning_rate),
              save_every=steps, log_every=max(steps // 20, 1), seed=config.seed,
              restore_checkpoint=restore)


def _finetune(setup: _Setup, arch: str, model_dir: str, source: str, steps: int,
              task: str = "study_mtf", new_steps: Optional[int] = None,
              learning_rate: Optional[float] = None):
  """Continue `source` on a prompted mixture (constant rate, dropout): MT-F by default,
  at `learning_rate` (None or 0: the MT-F rate)."""
  from arch_objective.training import data, optimizers, train
  config = setup.config
  model = models.build_model(arch, "tiny", dropout_rate=config.mtf_dropout,
                             **config.model_overrides(setup.model_vocab))
  train.train(model_dir=model_dir, model=model, train_steps=steps, progress=False,
              dataset=data.DatasetConfig(task=task, batch_size=config.batch_size,
                                         vocabulary=setup.vocab_path, seed=config.seed,
                                         inputs_length=config.mtf_inputs_length,
                                         targets_length=config.mtf_targets_length),
              learning_rate_schedule=optimizers.constant(learning_rate or
                                                         config.mtf_learning_rate),
              restore_checkpoint=source, save_every=steps,
              log_every=max((new_steps or config.mtf_steps) // 20, 1), seed=config.seed)


def _teach_family(setup: _Setup, family: str, model_dir: str, source: str, steps: int):
  """The ED:MLM checkpoint finetuned on the family's `test` examples under its prompts."""
  from arch_objective.data import registry
  from arch_objective.prompts import mixture
  from arch_objective.data import world as world_lib
  from arch_objective.data.world import prompts as world_prompts
  config, world = setup.config, setup.world
  prompts = world_prompts.HELDOUT_PROMPTS[family]
  count = config.ceiling_examples or world.config.heldout_examples
  if count > world.config.heldout_examples:
    # The same world with a longer test split (example i of a split does not depend on
    # the split's size); the validation examples every model is scored on stay the
    # study's own.
    world = world_lib.make_world(seed=config.seed, heldout_examples=count)
  taught = tuple(
      mixture.PromptedTask(f"{family}/{prompt.name}", prompt,
                           lambda split, f=family, w=world: w.examples(f, "test")[:count],
                           len(prompts))
      for prompt in prompts)
  registry.register(mixture.PromptedMixture(
      f"study_ceiling_{family}", taught, setup.vocab_path,
      inputs_length=config.mtf_inputs_length, targets_length=config.mtf_targets_length))
  _finetune(setup, models.ENCODER_DECODER, model_dir, source, steps,
            task=f"study_ceiling_{family}", new_steps=config.ceiling_steps,
            learning_rate=config.ceiling_learning_rate)


def _evaluate(setup: _Setup, model_dir: str, out_path: str, suite: Optional[list] = None):
  """T0-Eval of the newest checkpoint of `model_dir` on `suite` (default: all families)."""
  from arch_objective.evaluation import loading, rank_classification, t0_eval
  config = setup.config
  model, params, meta, step = loading.load_model(model_dir)
  # Packed rows (the scorer's default): the same answers as one padded shape for every
  # batch, with half the positions computed (3.5x faster on the medium preset's models).
  scorer = rank_classification.RankScorer(model, params,
                                          inputs_length=config.mtf_inputs_length * 2,
                                          targets_length=config.mtf_targets_length)
  results = t0_eval.evaluate_suite(scorer, setup.encode, suite=list(suite or setup.suite),
                                   max_examples=config.eval_examples,
                                   bootstrap=config.bootstrap, seed=config.seed,
                                   log=lambda m: None)
  results.update(step=step, arch=model.name, lineage=meta.get("lineage", []))
  with open(out_path, "w") as f:
    json.dump(results, f, indent=2)


def _score_held_in(stages: _Stages, setup: _Setup, name: str, model_dir: str):
  """The stage that scores `model_dir` on MT-F's own classification families (held-in,
  their validation split): whether MT-F taught the tasks it trains on."""
  path = os.path.join(setup.evals, f"{name}_held_in.json")
  label = name[:-len("_mtf")] + " + MT-F" if name.endswith("_mtf") else name
  stages.run(f"held-in tasks {label}", path,
             lambda: _evaluate(setup, model_dir, path, suite=list(setup.held_in)))


def study_world(config: StudyConfig):
  """The world of a study: seeded by `config.seed`, its held-out splits as long as
  `config.eval_examples` when that is more than the world's default 300 (example i of a
  split does not depend on the split's size, so a longer split keeps the first ones)."""
  from arch_objective.data import world as world_lib
  return world_lib.make_world(seed=config.seed, heldout_examples=max(
      config.eval_examples, world_lib.WorldConfig().heldout_examples))


def _write_corpus(world, corpus: str, target_bytes: int):
  from arch_objective.data import world as world_lib
  world_lib.write_corpus(corpus + ".tmp", world, target_bytes=target_bytes)
  os.replace(corpus + ".tmp", corpus)


def run_study(preset: str, out_dir: str, *, nc_a: Optional[bool] = None,
              ul2: Optional[bool] = None, bindings: Sequence[str] = (),
              log: Optional[Callable[[str], None]] = None) -> dict:
  """Run (or resume) the study; returns the results dict also written to results.json.
  `bindings` override the preset (`StudyConfig.NAME = VALUE`). Progress lines go to `log`
  (default: this module's logger at INFO)."""
  log = log or logging.getLogger(__name__).info
  from arch_objective.data import registry, vocabularies
  from arch_objective.prompts import mixture
  import tasks

  config = load_preset(preset, bindings)
  if nc_a is not None:
    config.nc_a = nc_a
  if ul2 is not None:
    config.ul2 = ul2
  for field in ("ceiling_steps", "ceiling_examples"):
    value = getattr(config, field)
    if not integer_at_least(value, 0):
      raise UserError(f"StudyConfig.{field} must be an integer >= 0, found {value!r}.")
  rate = config.ceiling_learning_rate
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0:
    raise UserError(f"StudyConfig.ceiling_learning_rate must be a number >= 0 (0: the MT-F "
                    f"rate), found {rate!r}.")
  out_dir = os.path.abspath(out_dir)
  os.makedirs(os.path.join(out_dir, "world"), exist_ok=True)
  changed = record_config(config, out_dir)
  if changed:
    logging.getLogger(__name__).warning(
        "%s ran before with another configuration; stages already done keep theirs: %s",
        out_dir, "; ".join(changed))
  runs = os.path.join(out_dir, "runs")
  evals = os.path.join(out_dir, "eval")
  os.makedirs(evals, exist_ok=True)

  world = study_world(config)
  corpus = os.path.join(out_dir, "world", "corpus.jsonl")
  vocab_path = os.path.join(out_dir, "world", "spm.model")
  pairs = [(a, o) for a, o in pipeline.PAPER_RUNS] + (list(UL2_RUNS) if config.ul2 else [])
  names = {p: cell for p, (cell, _) in zip(pipeline.PAPER_RUNS + UL2_RUNS,
                                            PAPER_CELLS + UL2_CELLS)}
  total = 2 + 6 * len(pairs) + (4 if config.nc_a else 0)
  total += 2 * len(world.heldout_suite()) if config.ceiling_steps else 0
  stages = _Stages(total, log)

  stages.run("world corpus", corpus, lambda: _write_corpus(world, corpus, config.corpus_bytes))
  stages.run("SentencePiece vocabulary", vocab_path, lambda: _train_vocab(corpus, vocab_path,
                                                                         config.vocab_size))
  vocab = vocabularies.SentencePieceVocabulary(vocab_path)
  tasks.register_local_corpus("study", corpus, vocabulary=vocab_path, length=config.length)
  registry.register(mixture.PromptedMixture(
      "study_mtf", tuple(world.training_tasks()), vocab_path,
      inputs_length=config.mtf_inputs_length, targets_length=config.mtf_targets_length))
  setup = _Setup(config, runs, evals, world, vocab_path, vocab.encode,
                 vocabularies.padded_vocab_size(vocab.vocab_size), tuple(world.heldout_suite()),
                 tuple(world.classification_suite()))

  for arch, objective in pairs:
    name = names[(arch, objective)]
    pre_dir = os.path.join(runs, name)
    stages.run(f"pretrain {name}", _done(pre_dir, config.pretrain_steps),
               lambda: _pretrain(setup, arch, objective, pre_dir, config.pretrain_steps))
    stages.run(f"zero-shot {name}", os.path.join(evals, f"{name}.json"),
               lambda: _evaluate(setup, pre_dir, os.path.join(evals, f"{name}.json")))
    _score_held_in(stages, setup, name, pre_dir)
  for arch, objective in pairs:
    name = names[(arch, objective)]
    pre_dir, mtf_dir = os.path.join(runs, name), os.path.join(runs, f"{name}_mtf")
    total_steps = config.pretrain_steps + config.mtf_steps
    stages.run(f"MT-F {name}", _done(mtf_dir, total_steps),
               lambda: _finetune(setup, arch, mtf_dir, pre_dir, total_steps))
    stages.run(f"zero-shot {name} + MT-F", os.path.join(evals, f"{name}_mtf.json"),
               lambda: _evaluate(setup, mtf_dir, os.path.join(evals, f"{name}_mtf.json")))
    _score_held_in(stages, setup, f"{name}_mtf", mtf_dir)
  if config.nc_a:
    nca_dir = os.path.join(runs, "nc_a")
    nca_steps = config.pretrain_steps + config.nc_a_steps
    stages.run("NC-A (CD:FLM -> ND:MLM)", _done(nca_dir, nca_steps),
               lambda: _pretrain(setup, models.NON_CAUSAL_DECODER, pipeline.SPAN_CORRUPTION,
                                 nca_dir, nca_steps, restore=os.path.join(runs, names[pairs[0]])))
    nca_mtf = os.path.join(runs, "nc_a_mtf")
    stages.run("MT-F of NC-A", _done(nca_mtf, nca_steps + config.mtf_steps),
               lambda: _finetune(setup, models.NON_CAUSAL_DECODER, nca_mtf, nca_dir,
                                 nca_steps + config.mtf_steps))
    stages.run("zero-shot NC-A + MT-F", os.path.join(evals, "nc_a_mtf.json"),
               lambda: _evaluate(setup, nca_mtf, os.path.join(evals, "nc_a_mtf.json")))
    _score_held_in(stages, setup, "nc_a_mtf", nca_mtf)

  if config.ceiling_steps:
    ed_mlm = os.path.join(runs, names[(models.ENCODER_DECODER, pipeline.SPAN_CORRUPTION)])
    for family in setup.suite:
      ceiling_dir = os.path.join(runs, f"ceiling_{family.name}")
      steps = config.pretrain_steps + config.ceiling_steps
      stages.run(f"ceiling {family.name}", _done(ceiling_dir, steps),
                 lambda: _teach_family(setup, family.name, ceiling_dir, ed_mlm, steps))
      stages.run(f"zero-shot ceiling {family.name}",
                 os.path.join(evals, f"ceiling_{family.name}.json"),
                 lambda: _evaluate(setup, ceiling_dir,
                                   os.path.join(evals, f"ceiling_{family.name}.json"),
                                   suite=[family]))

  results = _collect(out_dir, pairs, names, config, list(setup.suite), preset,
                     list(setup.held_in))
  from arch_objective.study import report
  report.write_all(results, out_dir)
  log(f"wrote {os.path.join(out_dir, 'results.json')}, results.md, zero_shot.png, "
      f"loss_curves.png")
  return results




def _train_vocab(corpus: str, path: str, size: int):
  from arch_objective.data import sources, vocabularies
  prefix = path[:-len(".model")]
  vocabularies.train_sentencepiece(sources.jsonl_documents(corpus), prefix, size)


def _done(model_dir: str, steps: int) -> str:
  """The marker of a finished run: its final checkpoint directory."""
  return os.path.join(model_dir, "checkpoints", str(steps))


def _read(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _loss_curve(model_dir: str) -> list[list[float]]:
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  return [[r["step"], r["loss_per_token"]] for r in rows if "split" not in r]


def _collect(out_dir, pairs, names, config, suite, preset, held_in=()) -> dict:
  evals, runs = os.path.join(out_dir, "eval"), os.path.join(out_dir, "runs")
  cells = {}
  for arch, objective in pairs:
    name = names[(arch, objective)]
    cells[name] = {
        "label": pipeline.Objective(objective, arch).name,
        "arch": arch, "objective": objective,
        "zero_shot": _summary(_read(os.path.join(evals, f"{name}.json"))),
        "after_mtf": _summary(_read(os.path.join(evals, f"{name}_mtf.json"))),
        "pretrain_loss": _loss_curve(os.path.join(runs, name)),
        "mtf_loss": _loss_curve(os.path.join(runs, f"{name}_mtf")),
    }
  if config.nc_a and os.path.exists(os.path.join(evals, "nc_a_mtf.json")):
    cells["nc_a"] = {"label": NC_A_CELL[1], "arch": models.NON_CAUSAL_DECODER,
                     "objective": "nc_a", "zero_shot": None,
                     "after_mtf": _summary(_read(os.path.join(evals, "nc_a_mtf.json"))),
                     "pretrain_loss": _loss_curve(os.path.join(runs, "nc_a")),
                     "mtf_loss": _loss_curve(os.path.join(runs, "nc_a_mtf"))}
  held_in_results = {(name, stage): _read(os.path.join(evals, f"{name}{suffix}_held_in.json"))
                     for name in cells for stage, suffix in (("zero_shot", ""),
                                                              ("after_mtf", "_mtf"))}
  for name, cell in cells.items():
    cell["held_in"] = {stage: _summary(held_in_results[name, stage])
                       for stage in ("zero_shot", "after_mtf")}
  random = float(sum(100.0 * s.random for s in suite) / len(suite))
  per_example = {(name, stage): _read(os.path.join(evals, f"{name}{suffix}.json"))
                 for name in cells for stage, suffix in (("zero_shot", ""),
                                                          ("after_mtf", "_mtf"))}
  return {"preset": preset, "config": dataclasses.asdict(config), "cells": cells,
          "random_baseline": random,
          "heldout_families": [s.name for s in suite],
          "contrasts": _contrasts(cells, per_example, config),
          "families": _families(suite, cells, per_example,
                                {s.name: _read(os.path.join(evals, f"ceiling_{s.name}.json"))
                                 for s in suite}, config),
          # MT-F's own classification families, scored like the held-out ones.
          "held_in": _families(held_in, cells, held_in_results, {}, config)}


# The study's models as (cell, label): the cell names its run and evaluation files
# (`runs/cd_flm`, `eval/cd_flm_mtf.json`), the label its rows in tables.
PAPER_CELLS = tuple((pipeline.Objective(objective, arch).name.replace(":", "_").lower(),
                     pipeline.Objective(objective, arch).name)
                    for arch, objective in pipeline.PAPER_RUNS)
NC_A_CELL = ("nc_a", "CD:FLM + ND:MLM (NC-A)")
CELLS = PAPER_CELLS + (NC_A_CELL,)
# Beyond the paper (`StudyConfig.ul2`): UL2's mixture of denoisers on the ED and the ND.
UL2_RUNS = ((models.ENCODER_DECODER, pipeline.UL2), (models.NON_CAUSAL_DECODER, pipeline.UL2))
UL2_CELLS = tuple((pipeline.Objective(objective, arch).name.replace(":", "_").lower(),
                   pipeline.Objective(objective, arch).name) for arch, objective in UL2_RUNS)

# The paper's questions as paired contrasts: (label, question, (cell, stage), (cell, stage)).
CONTRASTS = (
    ("CD:FLM - ED:MLM, after pretraining",
     "Without finetuning, does the causal decoder with full LM generalise best (paper §4.1)?",
     ("cd_flm", "zero_shot"), ("ed_mlm", "zero_shot")),
    ("CD:FLM - ED:MLM, after MT-F",
     "After multitask finetuning, does the MLM-trained encoder-decoder win (paper §4.2)?",
     ("cd_flm", "after_mtf"), ("ed_mlm", "after_mtf")),
    ("ND:MLM - ED:MLM, after MT-F",
     "After MT-F, the non-causal decoder against the encoder-decoder (paper §4.2).",
     ("nd_mlm", "after_mtf"), ("ed_mlm", "after_mtf")),
    ("NC-A - ND:MLM, after MT-F",
     "Does adapting CD:FLM to ND:MLM (NC-A) match training ND:MLM from scratch (§5)?",
     ("nc_a", "after_mtf"), ("nd_mlm", "after_mtf")),
) + tuple(
    (f"MT-F gain, {label}", f"How much does MT-F add to {label}?",
     (name, "after_mtf"), (name, "zero_shot"))
    for name, label in PAPER_CELLS + UL2_CELLS) + tuple(
    # UL2 against the paper's objectives on the same architecture: MLM, and the LM
    # objective that architecture trained with (prefix LM for both).
    (f"{arch}:UL2 - {arch}:{other}, {when}",
     f"Does UL2's mixture beat {other} on the {arch} ({when})?",
     (f"{arch.lower()}_ul2", stage), (f"{arch.lower()}_{other.lower()}", stage))
    for arch in ("ED", "ND") for other in ("MLM", "PLM")
    for stage, when in (("zero_shot", "after pretraining"), ("after_mtf", "after MT-F"))) + tuple(
    # and against full LM, which only the causal decoder trained with
    (f"ND:UL2 - CD:FLM, {when}", f"Does the decoder-only UL2 beat full LM ({when})?",
     ("nd_ul2", stage), ("cd_flm", stage))
    for stage, when in (("zero_shot", "after pretraining"), ("after_mtf", "after MT-F")))


def _correctness(results: Optional[dict]) -> Optional[dict]:
  return ((results or {}).get("per_example") or {}).get("correct")


def _contrasts(cells: dict, per_example: dict, config: StudyConfig) -> list[dict]:
  """Each of CONTRASTS whose two evaluations exist, as a paired difference."""
  from arch_objective.evaluation import contrasts
  out = []
  for label, question, a, b in CONTRASTS:
    if a[0] not in cells or b[0] not in cells:
      continue
    table_a, table_b = (_correctness(per_example.get(k)) for k in (a, b))
    if table_a is None or table_b is None:
      continue
    result = contrasts.paired_difference(table_a, table_b,
                                         resamples=config.contrast_resamples,
                                         seed=config.seed, names=(label, label))
    stage = {"zero_shot": "after pretraining", "after_mtf": "after MT-F"}
    out.append({"label": label, "question": question,
                "a": f"{cells[a[0]]['label']} ({stage[a[1]]})",
                "b": f"{cells[b[0]]['label']} ({stage[b[1]]})", **result})
  return out


def _families(suite, cells: dict, per_example: dict, ceilings: dict,
              config: StudyConfig) -> dict:
  """Per held-out family: its random floor, the majority-class baseline (always the most
  frequent gold answer), the ceiling (when run), and per model and stage the score
  (median over prompts), averaged over prompts the share of the most frequent answer
  under that prompt (1.0: under every prompt it gives one answer whatever the input),
  and Cohen's kappa of its answers against the gold ones (median over prompts, with a
  bootstrap 95% interval: whether its answers carry information about the gold answer
  at all, which a score at the majority baseline does not say)."""
  import numpy as np

  from arch_objective.evaluation import agreement
  out = {}
  for family in suite:
    entry = {"random": 100.0 * family.random, "majority": None, "ceiling": None,
             "models": {}}
    for (name, stage), results in per_example.items():
      examples = (results or {}).get("per_example") or {}
      if family.name not in (examples.get("gold") or {}):
        continue
      labels = [g for g in examples["gold"][family.name] if g is not None]
      if labels and entry["majority"] is None:
        counts = np.bincount(labels, minlength=family.num_choices)
        entry["majority"] = 100.0 * float(counts.max()) / len(labels)
      shares = []
      for prompt in examples["predicted"][family.name].values():
        answers = [p for p in prompt if p is not None]
        if answers:
          shares.append(float(np.bincount(answers).max()) / len(answers))
      share = float(np.mean(shares)) if shares else None
      kappa = agreement.family_kappa(examples["predicted"][family.name],
                                     examples["gold"][family.name], family.num_choices,
                                     resamples=config.bootstrap, seed=config.seed)
      entry["models"].setdefault(cells[name]["label"], {})[stage] = {
          "score": results["datasets"][family.name]["median"], "top_answer_share": share,
          "kappa": kappa["kappa"], "kappa_ci": kappa["ci"]}
    ceiling = ceilings.get(family.name)
    if ceiling is not None:
      entry["ceiling"] = ceiling["datasets"][family.name]["median"]
    out[family.name] = entry
  return out


def _summary(results: Optional[dict]) -> Optional[dict]:
  if results is None:
    return None
  return {"average": results["average"], "ci": results.get("average_ci"),
          "per_family": {k: v["median"] for k, v in results["datasets"].items()},
          "step": results.get("step")}
