"""Predictions of a checkpoint as JSONL: greedy, sampled or beam search (t5x's infer.py).

  arch-objective infer --checkpoint PATH --prompts FILE [options]
  arch-objective infer --checkpoint PATH --task NAME [--split S] [options]
  arch-objective infer --checkpoint PATH --datasets super_glue/rte ... [--data_dir D]
  arch-objective infer --gin_file runs/infer.gin --gin.CHECKPOINT_PATH="'PATH'" ...
  arch-objective infer --merge --out DIR          join the hosts' files of a run

Inputs, exactly one of:
  task      a registered task or mixture (`tasks.resolve`; `world_mtf` is the local
            overlay's world mixture, `t0_train` reads `data_dir`/`mapping`), its `split`:
            its examples' `inputs` token ids are the prompts (none for a targets-only
            task: unconditional), its `targets` the references. A mixture draws without
            end, so it needs `max_examples`.
  prompts   a JSONL file, one object per line: `inputs_field` the prompt, `targets_field`
            copied when present.
  datasets  T0 held-out datasets (`all`: the whole suite), every promptsource template
            over each example of the validation split; with `data_dir` a world suite of
            `data example` (DIR/t0_eval), its families.

Decoding (`decode`), the same code for every architecture through the model's layout:
  greedy    `model.predict_batch` without a key
  sample    `num_decodes` draws per example (`temperature`, `topk`, `topp`); the key of
            draw j of example i is fold_in(fold_in(PRNGKey(seed), i), j), so a draw does
            not depend on the batch, the host or where a run resumed
  beam      `model.beam_search`: `num_decodes` beams, brevity penalty
            ((5 + L) / 6) ** alpha (t5x's); `beam_rules="hf"`: Hugging Face's search,
            `alpha` its `length_penalty` (`decoding.beam_search`)

Output in `out_dir` (default `<model dir>/infer/<step>/`):

  predictions.jsonl  one row per example, in example order:
      {"index": 0, ["dataset", "template", "example",] "inputs": "...", ["targets": ...,]
       "prediction": "...", "log_prob": -3.2, ["score": -2.9,]
       "prompt_length": 12, "prediction_length": 5}
    with num_decodes > 1, `predictions`, `log_probs`, [`scores`,] `prediction_lengths`:
    lists, best first (beam: by score; samples: by log-probability). A prediction is cut
    at EOS; its log-probability is the model's (temperature 1) summed over the generated
    tokens, EOS included; `prediction_length` counts those tokens, `prompt_length` the
    prompt's (with the paradigm token).
  settings.json      what makes the rows: checkpoint and step, inputs, decoding
  summary.json       examples, decodes, examples/s, prompt and prediction lengths

Rows are appended `chunk_size` examples at a time (whole lines, then flushed), so the same
command run again resumes after the last complete row (a partial last line is dropped),
and the file equals an uninterrupted run's. A resume with other settings is refused,
naming the setting.

Several hosts (`process_count` N > 1): host i takes examples i, i + N, i + 2N, ... and
writes `predictions-<i:05d>-of-<N:05d>.jsonl` and, when done, its summary
`summary-<i:05d>-of-<N:05d>.json`; `merge(out_dir)` joins the files in example order
into predictions.jsonl and summary.json.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from arch_objective import paths
from arch_objective.errors import MissingFile, UserError, integer_at_least
from arch_objective.evaluation.kinds import BEAM_RULES, DECODES, INFER

if TYPE_CHECKING:
  from arch_objective.evaluation import runs

PREDICTIONS = "predictions"
SETTINGS_FILE = "settings.json"
SUMMARY = "summary"
SETTINGS_KIND = "arch_objective infer settings"
ALL = "all"                      # `datasets=['all']`: every dataset of the suite
DEFAULT_BEAMS = 4
# The macro of gin/runs/infer.gin that feeds each parameter whose macro is not its name
# in capitals.
MACROS = {"checkpoint": "CHECKPOINT_PATH", "out_dir": "INFER_OUTPUT_DIR",
          "dtype": "ACTIVATION_DTYPE"}
# The option that changes each recorded setting (`settings.json`), for the refusal.
_SETTING_FLAGS = {"model": "--checkpoint", "step": "--checkpoint (its step)",
                  "vocabulary_sha256": "--vocabulary",
                  "prompts_sha256": "--prompts (its contents)"}


def _progress(message: str):
  logging.getLogger(__name__).info(message)


def _option(param: str) -> str:
  flag = {"out_dir": "--out"}.get(param, f"--{param}")
  return f"{flag} (gin: {MACROS.get(param, param.upper())})"


def host_file(out_dir: str, index: int, count: int, stem: str = PREDICTIONS,
              suffix: str = ".jsonl") -> str:
  """`stem.jsonl` of a one-host run, else `stem-<index:05d>-of-<count:05d>.jsonl`."""
  name = f"{stem}{suffix}" if count == 1 else f"{stem}-{index:05d}-of-{count:05d}{suffix}"
  return paths.join(out_dir, name)


# ----------------------------------------------------------------------------------------
# The inputs
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Example:
  """One example to decode: `row` holds the output row's fields before the predictions
  (index, [dataset, template, example,] inputs, [targets]); `tokens [n]` the prompt the
  model reads (paradigm token included); `where` names the row in errors."""
  index: int
  tokens: np.ndarray
  row: dict
  where: str


@dataclasses.dataclass
class _Inputs:
  """Examples in index order (`total` of them when known beforehand), the settings that
  identify them and how the log names them."""
  examples: Iterable[Example]
  total: Optional[int]
  settings: dict
  what: str


def _check_length(where: str, length: int, inputs_length: int, prefixed: bool):
  if length > inputs_length:
    paradigm = " with the paradigm token" if prefixed else ""
    raise UserError(f"{INFER}: {where}: the prompt is {length} tokens{paradigm}, more than "
                    f"{_option('inputs_length')} {inputs_length}; shorten it or raise "
                    f"--inputs_length (prompts are never truncated).")


def _example(index: int, ids, prefix: Sequence[int], row: dict, where: str,
             inputs_length: int) -> Example:
  tokens = np.asarray(list(prefix) + list(ids), np.int32)
  _check_length(where, len(tokens), inputs_length, bool(prefix))
  return Example(index, tokens, {"index": index, **row}, where)


def _prompts_inputs(path: str, inputs_field: str, targets_field: str, vocab, prefix,
                    inputs_length: int, max_examples: Optional[int]) -> _Inputs:
  """The rows of a JSONL file of prompts (blank lines skipped), checked and tokenised
  before anything is decoded."""
  if not paths.exists(path):
    raise MissingFile(f"{INFER}: --prompts {path} does not exist.")
  text = paths.read_text(path)
  rows, numbers = [], []
  for number, line in enumerate(text.splitlines(), 1):
    if max_examples is not None and len(rows) >= max_examples:
      break
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{INFER}: --prompts {path}, line {number}: not valid JSON "
                      f"({e.msg}).") from None
    if not isinstance(obj, dict) or inputs_field not in obj:
      found = f"the object has {sorted(obj)}" if isinstance(obj, dict) else \
          f"found a {type(obj).__name__}"
      raise UserError(f"{INFER}: --prompts {path}, line {number}: expected an object with "
                      f"the prompt in field {inputs_field!r} (--inputs_field); {found}.")
    if not isinstance(obj[inputs_field], str):
      raise UserError(f"{INFER}: --prompts {path}, line {number}: field {inputs_field!r} "
                      f"must be text, found {type(obj[inputs_field]).__name__}.")
    rows.append(obj)
    numbers.append(number)
  ids = vocab.encode_batch([r[inputs_field] for r in rows])
  examples = []
  for i, (obj, number, tokens) in enumerate(zip(rows, numbers, ids)):
    row = {"inputs": obj[inputs_field]}
    if targets_field in obj:
      row["targets"] = obj[targets_field]
    examples.append(_example(i, tokens, prefix, row, f"--prompts {path}, line {number} "
                             f"(example {i})", inputs_length))
  settings = {"prompts": _absolute(path),
              "prompts_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
              "inputs_field": inputs_field, "targets_field": targets_field}
  return _Inputs(examples, len(examples), settings, f"--prompts {path}")


def _datasets_inputs(datasets: list[str], data_dir, mapping, vocab, prefix,
                     inputs_length: int, max_examples: Optional[int]) -> _Inputs:
  """Every template of every dataset over its first `max_examples` examples, in the
  order dataset, template, example; examples a template yields nothing for are left
  out."""
  from arch_objective.evaluation import t0_eval
  from arch_objective.prompts import datasets as datasets_lib
  from arch_objective.prompts import templates
  from arch_objective.training import example_data
  everything = datasets == [ALL]
  entries = []                              # (name, prompts, examples)
  if example_data.is_world_suite(data_dir):
    suite = example_data.read_world_suite(data_dir)
    known = {f.name: f for f in suite}
    unknown = [] if everything else [d for d in datasets if d not in known]
    if unknown:
      raise UserError(f"{INFER}: --datasets {unknown} are not in the world suite of "
                      f"--data_dir {data_dir}; it holds {', '.join(known)} (or give "
                      f"'{ALL}').")
    for family in (suite if everything else [known[d] for d in datasets]):
      entries.append((family.name, family.prompts, list(family.examples)))
  else:
    mapping_dict = datasets_lib.load_mapping(mapping)
    for spec in t0_eval.select(None if everything else datasets):
      dataset, _, subset = spec.data_key.partition("/")
      examples = datasets_lib.load_examples(dataset, subset or None, spec.split, data_dir,
                                            mapping_dict)
      entries.append((spec.name, templates.load_prompts(spec.dataset, spec.subset,
                                                        spec.prompts), examples))
  rendered = []                               # (row, where)
  for name, prompts, examples in entries:
    for prompt in prompts:
      for i, example in enumerate(examples[:max_examples]):
        out = prompt.render(example)
        if out is not None:
          rendered.append(({"dataset": name, "template": prompt.name, "example": i,
                            "inputs": out.inputs, "targets": out.targets},
                           f"--datasets {name}, template {prompt.name}, example {i}"))
  ids = vocab.encode_batch([row["inputs"] for row, _ in rendered])
  out = [_example(k, tokens, prefix, row, f"{where} (row {k})", inputs_length)
         for k, ((row, where), tokens) in enumerate(zip(rendered, ids))]
  settings = {"datasets": datasets, "data_dir": _absolute(data_dir),
              "mapping": _absolute(mapping), "max_examples": max_examples}
  return _Inputs(out, len(out), settings, f"--datasets {' '.join(datasets)}")


def resolve_task(task, *, vocabulary: str, extra_ids: int, arch: str, data_dir=None,
                 mapping=None, inputs_length: int = 1024):
  """The task (`data.task.Task`) a name stands for, registered first where the name
  says how (`tasks.resolve`; the local overlay's world mixture `world_mtf` over
  `vocabulary`); a task object is returned as is."""
  if not isinstance(task, str):
    return task
  import tasks
  from arch_objective.data import registry
  from arch_objective.data import world as world_lib
  from arch_objective.prompts import mixture
  from arch_objective.training import local, sources
  if task == local.WORLD_MTF and task not in registry.names():
    world = world_lib.make_world(seed=local.WORLD_SEED)
    registry.register(mixture.PromptedMixture(task, tuple(world.training_tasks()),
                                              vocabulary, extra_ids=extra_ids))
  source = (sources.PromptedDatasets(data_dir=data_dir, mapping=mapping)
            if data_dir or mapping else None)
  return tasks.resolve(task, source=source, vocabulary=vocabulary, extra_ids=extra_ids,
                       arch=arch, inputs_length=inputs_length)


def _task_inputs(task, split: str, vocab, prefix, inputs_length: int,
                 max_examples: Optional[int], *, arch: str, data_dir, mapping) -> _Inputs:
  """The examples of a task's split as its data API gives them (token ids of `inputs`
  and `targets`), read lazily: a prompt is checked when it is reached."""
  from arch_objective.data import task as task_lib
  from arch_objective.prompts import mixture
  spec = resolve_task(task, vocabulary=vocab.path, extra_ids=vocab.extra_ids, arch=arch,
                      data_dir=data_dir, mapping=mapping, inputs_length=inputs_length)
  name = spec.name
  task_lib.check(spec, split=split)
  if not hasattr(spec, "task_examples"):
    raise UserError(f"{INFER}: --task {name} gives model rows only, not examples with "
                    f"inputs and targets; give its prompts as --prompts FILE instead.")
  if max_examples is None and isinstance(spec, mixture.PromptedMixture):
    raise UserError(f"{INFER}: --task {name} is a mixture, which draws examples without "
                    f"end; give {_option('max_examples')}.")
  task_vocab = spec.vocab()
  if (task_vocab.model_bytes, task_vocab.extra_ids) != (vocab.model_bytes, vocab.extra_ids):
    raise UserError(f"{INFER}: --task {name} tokenises with {task_vocab.path}, the "
                    f"checkpoint with {vocab.path}; give --vocabulary {task_vocab.path} "
                    f"(and --allow_other_vocabulary) or a task over the checkpoint's.")

  def examples() -> Iterator[Example]:
    for i, features in enumerate(spec.task_examples(split, seed=0)):
      if max_examples is not None and i >= max_examples:
        return
      ids = np.asarray(features.get("inputs", ()), np.int32)
      row = {"inputs": task_vocab.decode(ids)}
      if "targets" in features:
        row["targets"] = task_vocab.decode(features["targets"])
      yield _example(i, ids, prefix, row, f"--task {name} {split} example {i}",
                     inputs_length)

  return _Inputs(examples(), max_examples, {"task": name, "split": split,
                                            "data_dir": _absolute(data_dir),
                                            "mapping": _absolute(mapping)},
                 f"--task {name} ({split})")


def _absolute(path: Optional[str]) -> Optional[str]:
  if not path or paths.is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


# ----------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Decoding:
  """How predictions are made: `method` in DECODES and its options (None where the
  method does not read them)."""
  method: str = "greedy"
  num_decodes: int = 1
  alpha: Optional[float] = None
  beam_rules: Optional[str] = None
  temperature: Optional[float] = None
  topk: Optional[int] = None
  topp: Optional[float] = None
  seed: Optional[int] = None
  max_decode_steps: int = 64

  def settings(self) -> dict:
    """The options that shape the predictions (`decode` and those it reads)."""
    fields = dataclasses.asdict(self)
    return {"decode": fields.pop("method"),
            **{k: v for k, v in fields.items() if v is not None}}


def decoding_options(decode=None, num_decodes=None, alpha=None, temperature=None, topk=None,
                     topp=None, seed=None, max_decode_steps=None,
                     beam_rules=None) -> Decoding:
  """The decoding options checked, with their defaults: one UserError naming the first
  that does not fit."""
  method = "greedy" if decode is None else decode
  if method not in DECODES:
    raise UserError(f"{INFER}: {_option('decode')} must be one of {', '.join(DECODES)}, "
                    f"found {decode!r}.")
  sample, beam = method == "sample", method == "beam"
  for param, value, reader in (("alpha", alpha, beam), ("beam_rules", beam_rules, beam),
                               ("temperature", temperature, sample),
                               ("topk", topk, sample), ("topp", topp, sample),
                               ("seed", seed, sample)):
    if value is not None and not reader:
      which = "beam" if param in ("alpha", "beam_rules") else "sample"
      raise UserError(f"{INFER}: {_option(param)} applies to --decode {which}, not "
                      f"{method}; leave it out or give --decode {which}.")
  if num_decodes is None:
    num_decodes = DEFAULT_BEAMS if beam else 1
  _integer("num_decodes", num_decodes, 1)
  if method == "greedy" and num_decodes > 1:
    raise UserError(f"{INFER}: {_option('num_decodes')} {num_decodes} needs --decode sample "
                    f"or beam; greedy decoding makes one prediction per example.")
  max_decode_steps = 64 if max_decode_steps is None else max_decode_steps
  _integer("max_decode_steps", max_decode_steps, 1)
  if beam:
    alpha = 0.6 if alpha is None else alpha
    beam_rules = "t5x" if beam_rules is None else beam_rules
    if beam_rules not in BEAM_RULES:
      raise UserError(f"{INFER}: {_option('beam_rules')} must be one of "
                      f"{', '.join(BEAM_RULES)}, found {beam_rules!r}.")
    if beam_rules == "t5x":
      _number("alpha", alpha, "a number >= 0", alpha >= 0 if _real(alpha) else False)
    else:                               # Hugging Face's length_penalty may be negative
      _number("alpha", alpha, "a number", _real(alpha))
  if sample:
    temperature = 1.0 if temperature is None else temperature
    topk = 0 if topk is None else topk
    topp = 1.0 if topp is None else topp
    seed = 0 if seed is None else seed
    _number("temperature", temperature, "a number >= 0 (0: greedy)",
            _real(temperature) and temperature >= 0)
    _integer("topk", topk, 0)
    _number("topp", topp, "a number in (0, 1] (1: every token)",
            _real(topp) and 0 < topp <= 1)
    _integer("seed", seed, 0)
  return Decoding(method, int(num_decodes), None if alpha is None else float(alpha),
                  beam_rules,
                  None if temperature is None else float(temperature),
                  None if topk is None else int(topk), None if topp is None else float(topp),
                  None if seed is None else int(seed), int(max_decode_steps))


def _real(value) -> bool:
  return not isinstance(value, bool) and isinstance(value, (int, float, np.floating,
                                                            np.integer))


def _number(param: str, value, expected: str, ok: bool):
  if not ok:
    raise UserError(f"{INFER}: {_option(param)} must be {expected}, found {value!r}.")


def _integer(param: str, value, minimum: int):
  if not integer_at_least(value, minimum):
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise UserError(f"{INFER}: {_option(param)} must be {expected}, found {value!r}.")


@functools.lru_cache(maxsize=None)
def _programs():
  """The jitted decoding programs (one compile per model, batch shape and options)."""
  import jax
  from arch_objective import decoding

  @functools.partial(jax.jit, static_argnames=("model", "steps"))
  def greedy(model, params, batch, steps):
    result = model.predict_batch(params, batch, max_decode_steps=steps, return_logits=True)
    return result.tokens, decoding.sequence_log_probs(result.logits, result.tokens,
                                                      model.eos_id)

  @functools.partial(jax.jit, static_argnames=("model", "steps", "temperature", "topk",
                                               "topp"))
  def sample(model, params, batch, indices, draws, seed, steps, temperature, topk, topp):
    root = jax.random.PRNGKey(seed)
    keys = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(root, i), j))(
        indices, draws)

    def one(row, key):                 # one prompt alone: its draw is its key's only
      row = {name: value[None] for name, value in row.items()}
      result = model.predict_batch(params, row, key, max_decode_steps=steps,
                                   temperature=temperature, topk=topk, topp=topp,
                                   return_logits=True)
      return result.tokens[0], decoding.sequence_log_probs(result.logits, result.tokens,
                                                           model.eos_id)[0]

    return jax.vmap(one)(batch, keys)

  @functools.partial(jax.jit, static_argnames=("model", "steps", "num_decodes", "alpha",
                                               "rules"))
  def beam(model, params, batch, steps, num_decodes, alpha, rules):
    result = model.beam_search(params, batch, num_decodes=num_decodes, alpha=alpha,
                               max_decode_steps=steps, rules=rules)
    return result.tokens, result.log_probs, result.scores

  return greedy, sample, beam


# One decode of one example: tokens [steps] (0 after EOS), log-probability, score (beam).
Decode = tuple[np.ndarray, float, Optional[float]]


class Decoder:
  """Decodes lists of examples: prompts grouped by length bucket (the layout's prompt
  positions, 16, 32, 64, ...) into batches of `batch_size` prompts, every batch padded to
  `batch_size` rows, so an example is decoded in the same program whatever its
  neighbours, host or resume point."""

  def __init__(self, model, params, options: Decoding, batch_size: int):
    self.model, self.params, self.options, self.batch_size = model, params, options, batch_size
    if options.method == "beam" and not hasattr(model, "beam_search"):
      raise UserError(f"{INFER}: --decode beam: the {model.name} model has no beam_search.")

  def __call__(self, examples: Sequence[Example]) -> list[list[Decode]]:
    from arch_objective.evaluation.scoring import shapes
    layout = self.model.layout
    by_bucket: dict[int, list[int]] = {}
    for k, example in enumerate(examples):
      length = shapes.bucket(layout.prompt_positions(len(example.tokens)))
      by_bucket.setdefault(length, []).append(k)
    out: list = [None] * len(examples)
    for length, members in sorted(by_bucket.items()):
      for start in range(0, len(members), self.batch_size):
        group = members[start:start + self.batch_size]
        batch = layout.generation_batch([examples[k].tokens for k in group],
                                        self.batch_size, length)
        decodes = self._run(batch, [examples[k].index for k in group])
        for k, found in zip(group, decodes):
          out[k] = found
    return out

  def _run(self, batch: dict, indices: list[int]) -> list[list[Decode]]:
    import jax
    greedy, sample, beam = _programs()
    o, rows = self.options, len(indices)
    if o.method == "greedy":
      tokens, log_probs = jax.device_get(greedy(self.model, self.params, batch,
                                                o.max_decode_steps))
      return [[(tokens[r], float(log_probs[r]), None)] for r in range(rows)]
    if o.method == "beam":
      tokens, log_probs, scores = jax.device_get(beam(
          self.model, self.params, batch, o.max_decode_steps, o.num_decodes, o.alpha,
          o.beam_rules))
      return [[(tokens[r, j], float(log_probs[r, j]), float(scores[r, j]))
               for j in range(o.num_decodes)] for r in range(rows)]
    k = o.num_decodes                          # [b] prompts -> [b * k] rows, draws j
    repeated = {name: np.repeat(value, k, axis=0) for name, value in batch.items()}
    padded = list(indices) + [0] * (self.batch_size - rows)
    tokens, log_probs = jax.device_get(sample(
        self.model, self.params, repeated, np.repeat(np.asarray(padded, np.int32), k),
        np.tile(np.arange(k, dtype=np.int32), self.batch_size), np.int32(o.seed),
        o.max_decode_steps, o.temperature, o.topk, o.topp))
    out = []
    for r in range(rows):
      draws = [(tokens[r * k + j], float(log_probs[r * k + j]), None) for j in range(k)]
      out.append(sorted(draws, key=lambda d: -d[1]))      # best first; ties keep draw order
    return out


def _generated(tokens: np.ndarray, eos_id: Optional[int]) -> int:
  """Tokens generated up to and including the first EOS (all of them without one)."""
  tokens = np.asarray(tokens)
  if eos_id is not None:
    ends = np.flatnonzero(tokens == eos_id)
    if len(ends):
      return int(ends[0]) + 1
  return int(len(tokens))


def prediction_row(example: Example, decodes: list[Decode], decode_text, eos_id,
                   several: bool) -> dict:
  """The output row of one example (see the module docstring)."""
  row = dict(example.row)
  texts = [decode_text(t) for t, _, _ in decodes]
  log_probs = [round(lp, 6) for _, lp, _ in decodes]
  scores = [None if s is None else round(s, 6) for _, _, s in decodes]
  lengths = [_generated(t, eos_id) for t, _, _ in decodes]
  beam = scores[0] is not None
  if several:
    row.update(predictions=texts, log_probs=log_probs)
    if beam:
      row["scores"] = scores
    row.update(prompt_length=len(example.tokens), prediction_lengths=lengths)
  else:
    row.update(prediction=texts[0], log_prob=log_probs[0])
    if beam:
      row["score"] = scores[0]
    row.update(prompt_length=len(example.tokens), prediction_length=lengths[0])
  return row


# ----------------------------------------------------------------------------------------
# The output files: settings, resume, chunks, summaries
# ----------------------------------------------------------------------------------------
def _check_settings(out_dir: str, settings: dict, predictions: str):
  """Write settings.json, or compare it with the one there: a UserError naming the
  first setting that differs."""
  path = paths.join(out_dir, SETTINGS_FILE)
  if not paths.exists(path):
    if paths.exists(predictions):
      raise UserError(f"{INFER}: {predictions} exists but {path} does not, so how its rows "
                      f"were made is unknown; remove it or give another --out.")
    paths.makedirs(out_dir)
    _write_atomically(path, json.dumps({"kind": SETTINGS_KIND, **settings}, indent=2) + "\n")
    return
  try:
    old = json.loads(paths.read_text(path))
  except json.JSONDecodeError as e:
    raise UserError(f"{INFER}: {path}: not valid JSON ({e.msg}); remove the folder's "
                    f"files or give another --out.") from None
  if not isinstance(old, dict) or old.get("kind") != SETTINGS_KIND:
    raise UserError(f"{INFER}: {path} is not the settings of an infer run; give another "
                    f"--out.")
  for key in sorted((set(old) | set(settings)) - {"kind"}):
    if old.get(key) != settings.get(key):
      flag = _SETTING_FLAGS.get(key, f"--{key}")
      raise UserError(f"{INFER}: --out {out_dir} holds predictions made with {flag} "
                      f"{json.dumps(old.get(key))} ({SETTINGS_FILE}), this run gives "
                      f"{json.dumps(settings.get(key))}; run with the same settings to "
                      f"resume, or give another --out.")


def _write_atomically(path: str, text: str):
  if paths.is_remote(path):
    paths.write_text(path, text)
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def read_rows(path: str, repair: bool = False) -> list[str]:
  """The complete lines (rows, with their newline) of a predictions file; a partial last
  line (a write cut short) is dropped, and cut from the file with `repair`."""
  if not paths.exists(path):
    return []
  text = paths.read_bytes(path).decode("utf-8")
  end = text.rfind("\n") + 1
  if end < len(text) and repair:
    if paths.is_remote(path):
      paths.write_text(path, text[:end])
    else:
      os.truncate(path, len(text[:end].encode("utf-8")))
  return text[:end].splitlines(keepends=True)


def _parse_row(path: str, number: int, line: str) -> dict:
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{INFER}: {path}, line {number}: not valid JSON ({e.msg}); the file was "
                    f"not written by infer, or was edited: give another --out.") from None
  if not isinstance(row, dict) or "prompt_length" not in row:
    raise UserError(f"{INFER}: {path}, line {number}: not a row infer writes (no "
                    f"'prompt_length'); give another --out.")
  return row


def _append(path: str, text: str):
  """Append whole lines, flushed to disk (a remote file is rewritten whole)."""
  if paths.is_remote(path):
    old = paths.read_text(path) if paths.exists(path) else ""
    paths.write_text(path, old + text)
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _lengths(row: dict) -> tuple[int, list[int]]:
  """(prompt length, prediction lengths) of an output row."""
  return row["prompt_length"], row.get("prediction_lengths", [row.get("prediction_length")])


def summarize(row_lengths: Iterable[tuple[int, list[int]]], *, decoded: int, seconds: float,
              settings: dict, run: dict, files: dict) -> dict:
  """summary.json: examples, decodes, examples/s of this run, prompt and prediction
  lengths in tokens (mean, max) over `row_lengths` (each row's `_lengths`), the
  settings."""
  prompt, predicted, examples = [], [], 0
  for p, lengths in row_lengths:
    prompt.append(p)
    predicted += lengths
    examples += 1
  stats = lambda xs: {"mean": round(float(np.mean(xs)), 3) if xs else 0.0,
                      "max": int(max(xs)) if xs else 0}
  return {"examples": examples, "decodes": len(predicted), "decoded_now": decoded,
          "seconds": round(seconds, 3),
          "examples_per_second": round(decoded / seconds, 3) if seconds > 0 else None,
          "prompt_length": stats(prompt), "prediction_length": stats(predicted),
          "files": files, "settings": settings, **run}


def markdown(summary: dict) -> str:
  """The summary as a short markdown table."""
  s, settings = summary, summary["settings"]
  decode = settings["decode"]
  extra = {"beam": f"{settings['num_decodes']} beams, alpha {settings.get('alpha')}, "
                   f"{settings.get('beam_rules')}'s rules",
           "sample": (f"{settings['num_decodes']} per example, temperature "
                      f"{settings.get('temperature')}, top-k {settings.get('topk')}, "
                      f"top-p {settings.get('topp')}, seed {settings.get('seed')}")
           }.get(decode, "")
  rate = s["examples_per_second"]
  lines = [f"## {INFER}: {decode}" + (f" ({extra})" if extra else ""), "",
           "| examples | decodes | examples/s | prompt tokens (mean / max) | "
           "prediction tokens (mean / max) |", "|---|---|---|---|---|",
           f"| {s['examples']} | {s['decodes']} | {'-' if rate is None else rate} | "
           f"{s['prompt_length']['mean']} / {s['prompt_length']['max']} | "
           f"{s['prediction_length']['mean']} / {s['prediction_length']['max']} |", "",
           f"predictions: {s['files']['predictions']}"]
  return "\n".join(lines)


def merge(out_dir: Optional[str]) -> dict:
  """Join the hosts' predictions files of `out_dir` in example order into
  predictions.jsonl, and their summaries into summary.json; returns the summary. A host
  whose file or summary is missing, or whose file lacks rows, is named."""
  if not out_dir:
    raise UserError(f"{INFER} --merge: give --out DIR, the folder the hosts wrote into.")
  path = paths.join(out_dir, SETTINGS_FILE)
  if not paths.exists(path):
    raise MissingFile(f"{INFER} --merge: {out_dir} holds no {SETTINGS_FILE}; it is not the "
                      f"--out of an infer run.")
  settings = json.loads(paths.read_text(path))
  count = int(settings["process_count"])
  lines, summaries = [], []
  for index in range(count):
    rows_file = host_file(out_dir, index, count)
    summary_file = host_file(out_dir, index, count, SUMMARY, ".json")
    if not paths.exists(rows_file):
      raise MissingFile(f"{INFER} --merge: host {index} of {count} wrote no {rows_file}; run "
                        f"it (--process_index {index} --process_count {count}) first.")
    if not paths.exists(summary_file):
      raise UserError(f"{INFER} --merge: {rows_file} is incomplete: host {index} has not "
                      f"finished (no {summary_file}); run it again to resume.")
    summary = json.loads(paths.read_text(summary_file))
    rows = read_rows(rows_file)
    if len(rows) != summary["examples"]:
      raise UserError(f"{INFER} --merge: {rows_file} is incomplete: {len(rows)} rows, its "
                      f"summary {summary_file} counts {summary['examples']}; run host "
                      f"{index} again to resume.")
    lines += rows
    summaries.append(summary)
  parsed = sorted(((json.loads(line), line) for line in lines), key=lambda p: p[0]["index"])
  indices = [row["index"] for row, _ in parsed]
  if indices != list(range(len(indices))):
    raise UserError(f"{INFER} --merge: the hosts' files of {out_dir} do not hold examples "
                    f"0..{len(indices) - 1} once each; were they written by one run?")
  target = paths.join(out_dir, f"{PREDICTIONS}.jsonl")
  _write_atomically(target, "".join(line for _, line in parsed))
  run = {k: v for k, v in summaries[0].items()
         if k not in ("examples", "decodes", "decoded_now", "seconds", "examples_per_second",
                      "prompt_length", "prediction_length", "files", "settings",
                      "process_index")}
  seconds = max((s["seconds"] for s in summaries), default=0.0)
  merged = summarize((_lengths(row) for row, _ in parsed),
                     decoded=sum(s["decoded_now"] for s in summaries), seconds=seconds,
                     settings=summaries[0]["settings"], run=run,
                     files={"predictions": target,
                            "merged_from": [host_file(out_dir, i, count)
                                            for i in range(count)]})
  _write_atomically(paths.join(out_dir, f"{SUMMARY}.json"), json.dumps(merged, indent=2) + "\n")
  return merged


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------
def _chunks(examples: Iterator[Example], size: int) -> Iterator[list[Example]]:
  chunk = []
  for example in examples:
    chunk.append(example)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def infer(*, checkpoint: Optional[str] = None, out_dir: Optional[str] = None,
          task: Any = None, split: Optional[str] = None, prompts: Optional[str] = None,
          inputs_field: Optional[str] = None, targets_field: Optional[str] = None,
          datasets: Optional[Sequence[str]] = None, data_dir: Optional[str] = None,
          mapping: Optional[str] = None, max_examples: Optional[int] = None,
          decode: Optional[str] = None, num_decodes: Optional[int] = None,
          alpha: Optional[float] = None, beam_rules: Optional[str] = None,
          temperature: Optional[float] = None,
          topk: Optional[int] = None, topp: Optional[float] = None,
          seed: Optional[int] = None, max_decode_steps: Optional[int] = None,
          inputs_length: int = 1024, batch_size: int = 8, chunk_size: int = 64,
          arch: Optional[str] = None, vocabulary: Optional[str] = None,
          allow_other_vocabulary: bool = False, paradigm: Optional[str] = None,
          process_index: Optional[int] = None, process_count: Optional[int] = None,
          dtype: str = "float32", compilation_cache_dir: Optional[str] = None,
          log: Callable[[str], None] = _progress,
          config_text: Optional[Callable[[], str]] = None) -> runs.EvalRun:
  """Predictions of `checkpoint` for `task`, `prompts` or `datasets` (exactly one; see
  the module docstring for each, the decoding options and the files written).

  `decode` greedy (default), sample (`num_decodes` draws, default 1; `temperature` 1,
  `topk` 0 = all, `topp` 1 = all, `seed` 0) or beam (`num_decodes` beams, default 4;
  `alpha` 0.6, `beam_rules` "t5x" or "hf"); at most `max_decode_steps` tokens (default 64) per prediction. A prompt
  of more than `inputs_length` tokens is an error naming its row. `batch_size` prompts
  per batch, `chunk_size` examples per chunk written. `max_examples`: the first N
  examples (of each dataset with `datasets`). `arch`, `vocabulary`,
  `allow_other_vocabulary`, `paradigm`, `dtype` and `compilation_cache_dir` are
  `eval_t0`'s. `process_index`/`process_count` (default: JAX's) share the examples
  between hosts. `log` gets a line per chunk written.
  """
  from arch_objective.evaluation import runs
  from arch_objective.objectives import ul2
  from arch_objective.training import checkpoints
  checkpoint = runs._require_checkpoint(checkpoint, INFER)
  given = [name for name, value in (("--task", task), ("--prompts", prompts),
                                     ("--datasets", datasets)) if value]
  if len(given) != 1:
    found = "none" if not given else " and ".join(given)
    raise UserError(f"{INFER}: give exactly one of --task, --prompts, --datasets (gin: TASK, "
                    f"PROMPTS, DATASETS) for the inputs; found {found}.")
  for param, value, owner in (("split", split, task), ("inputs_field", inputs_field, prompts),
                              ("targets_field", targets_field, prompts),
                              ("data_dir", data_dir, task or datasets),
                              ("mapping", mapping, task or datasets)):
    if value is not None and not owner:
      raise UserError(f"{INFER}: {_option(param)} does not apply to {given[0]}; leave it "
                      f"out.")
  options = decoding_options(decode, num_decodes, alpha, temperature, topk, topp, seed,
                             max_decode_steps, beam_rules)
  for param, value in (("inputs_length", inputs_length), ("batch_size", batch_size),
                       ("chunk_size", chunk_size)):
    _integer(param, value, 1)
  if max_examples is not None:
    _integer("max_examples", max_examples, 1)
  option = f"{INFER}: --paradigm (gin: PARADIGM)"
  ul2.check_paradigm(paradigm, option)
  if process_count is None or process_index is None:
    import jax
    process_count = jax.process_count() if process_count is None else process_count
    process_index = jax.process_index() if process_index is None else process_index
  _integer("process_count", process_count, 1)
  _integer("process_index", process_index, 0)
  if process_index >= process_count:
    raise UserError(f"{INFER}: {_option('process_index')} must be below --process_count "
                    f"{process_count}, found {process_index}.")

  model, params, meta, step, vocab, used, prefix = runs.open_for_prompts(
      INFER, checkpoint, arch=arch, dtype=dtype, vocabulary=vocabulary,
      allow_other_vocabulary=allow_other_vocabulary, paradigm=paradigm, option=option)

  if prompts:
    inputs = _prompts_inputs(str(prompts), inputs_field or "inputs",
                             targets_field or "targets", vocab, prefix, inputs_length,
                             max_examples)
  elif datasets:
    inputs = _datasets_inputs(runs._names(datasets, "datasets"), data_dir, mapping, vocab,
                              prefix, inputs_length, max_examples)
  else:
    inputs = _task_inputs(task, split or "validation", vocab, prefix, inputs_length,
                          max_examples, arch=model.name, data_dir=data_dir, mapping=mapping)

  directory, _ = checkpoints.split_checkpoint_path(checkpoint)
  model_dir = (paths.dirname(directory) if paths.basename(directory) == "checkpoints"
               else directory)
  settings = {"model": _absolute(model_dir), "step": step, "arch": model.name,
              "vocabulary_sha256": used["sha256"], **inputs.settings,
              **options.settings(), "paradigm": paradigm, "dtype": dtype,
              "process_count": process_count}
  out_dir = out_dir or runs.default_out_dir(checkpoint, step, INFER)
  rows_file = host_file(out_dir, process_index, process_count)
  summary_file = host_file(out_dir, process_index, process_count, SUMMARY, ".json")
  _check_settings(out_dir, settings, rows_file)
  runs._compilation_cache(compilation_cache_dir, log)

  done = []                    # (prompt length, prediction lengths) of the rows written
  mine = (e for e in inputs.examples if e.index % process_count == process_index)
  for k, line in enumerate(read_rows(rows_file, repair=True)):
    row, example = _parse_row(rows_file, k + 1, line), next(mine, None)
    if example is None:
      raise UserError(f"{INFER}: {rows_file} holds more rows ({k + 1} or more) than this "
                      f"run's inputs give this host ({k}); give the --max_examples it was "
                      f"written with (or more), or another --out.")
    if row.get("index") != example.index or row.get("inputs") != example.row["inputs"]:
      raise UserError(f"{INFER}: {rows_file}, line {k + 1} holds example {row.get('index')} "
                      f"but this run's inputs give example {example.index} "
                      f"({example.where}) there: the inputs changed since it was written; "
                      f"give another --out.")
    done.append(_lengths(row))
  total = inputs.total
  if total is not None:
    total = len(range(process_index, total, process_count))
  log(f"{INFER} of {checkpoint} (step {step}, {model.name}), {inputs.what}, "
      f"{options.method}: {len(done)} of {total if total is not None else '?'} examples "
      f"already in {rows_file}")

  decoder = Decoder(model, params, options, batch_size)
  several, eos_id = options.num_decodes > 1, model.eos_id
  decoded, start = 0, time.perf_counter()
  for chunk in _chunks(mine, chunk_size):
    found = decoder(chunk)
    rows = [prediction_row(e, d, vocab.decode, eos_id, several) for e, d in zip(chunk, found)]
    _append(rows_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    done += [_lengths(r) for r in rows]
    decoded += len(rows)
    log(f"{INFER}: {len(done)} of {total if total is not None else '?'} examples in "
        f"{rows_file}")
  seconds = time.perf_counter() - start

  run = {"checkpoint": checkpoint, "step": step, "arch": model.name,
         "trained_as": meta.get("arch"), "vocabulary": used, "process_index": process_index,
         "process_count": process_count}
  summary = summarize(done, decoded=decoded, seconds=seconds, settings=settings, run=run,
                      files={"predictions": rows_file})
  _write_atomically(summary_file, json.dumps(summary, indent=2) + "\n")
  files = [rows_file, summary_file, paths.join(out_dir, SETTINGS_FILE)]
  files += runs._write_config(out_dir, config_text)
  return runs.EvalRun(summary, files, markdown(summary))
