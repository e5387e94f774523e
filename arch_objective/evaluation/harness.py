"""EAI-Eval: our checkpoints as an lm-evaluation-harness (0.4.x) model.

`ArchObjectiveLM` is registered with the harness as `arch_objective`, so both work:

  lm_eval.simple_evaluate(model=ArchObjectiveLM(model=m, params=p, vocab=v), tasks=[...])
  lm_eval.simple_evaluate(model="arch_objective",
                          model_args="checkpoint=/runs/cd_flm,truncation=paper", tasks=[...])

(the second needs this module imported first; importing it keeps lm-eval's own models,
`hf` and the rest, available). lm-eval's own command line with this model:
`arch-objective-lm-eval` (`python -m arch_objective.evaluation.lm_eval_cli`), which lists
the model_args. `run_harness` runs a task list and writes `harness_results.json` and
`summary.md`; `arch-objective eval harness` and the gin configurable `eval_harness`
(`evaluation/runs.py`) call it.

How each request type reads (spec §4.2):
  loglikelihood          (context, continuation) -> (sum of log p(continuation tokens),
                         every continuation token is the argmax). Context and continuation
                         are tokenised separately, NO EOS on either side; " True" becomes
                         "▁True" through SentencePiece's dummy prefix. Decoder-only: one row
                         `context ++ continuation`, `decoder_causal_attention` on the context
                         plus one position (the ND attends bidirectionally there). ED: the
                         encoder reads the context (an empty one is an all-padding row, as
                         t5x's feature converter makes it) and the decoder the continuation
                         from start token 0; each distinct context is encoded once.
  loglikelihood_rolling  the text's total log-likelihood. Decoder-only: the harness's rolling
                         windows (`lm_eval.utils.get_rolling_token_windows`, context_len 1):
                         windows of `row_length` predictions, each conditioned on the
                         `row_length` tokens before its last one, the shifted-in 0 taking
                         the place of a BOS token. ED: the paper's encoder-decoders have no
                         unconditional reading, so the text is cut into disjoint windows of
                         `targets_length` tokens, each scored as decoder targets with an
                         empty (all-padding) encoder input: a window never sees the text
                         before it.
  generate_until         greedy decoding (`model.predict_batch`, KV cache) for at most
                         `max_gen_toks` tokens, stopped at EOS, the output cut before the
                         first `until` string. Decoder-only prompts are `[0, p_0 .. p_n-1]`
                         with `decoder_causal_attention` on those n + 1 positions.

Truncation (`truncation=`, see `truncate`):
  paper   seqio's trimming, as the paper's t5x bridge: the context keeps its FIRST
          `inputs_length` (512) tokens, the continuation its first `targets_length` (114).
  modern  the context keeps its LAST tokens: decoder-only rows hold `max_length` (1280)
          tokens, context and continuation together; the ED encoder holds `inputs_length`
          (1024) tokens and the decoder `targets_length` (256). The continuation is cut
          (at its end) only when it alone exceeds the budget.

The paper's EAI-Eval (spec §4.2) is `EAI_EVAL_TASKS` (31 lm-eval 0.4 task names; `eai_eval`
expands to them) and `summarize` averages their `acc` (webqs and triviaqa report the same
quantity, "an accepted answer is the greedy continuation", as `exact_match`).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
from typing import Optional, Sequence

import jax
import numpy as np

from arch_objective import architectures, models, paths
from arch_objective.errors import MissingDependency, UserError
from arch_objective.evaluation import scoring

try:
  from lm_eval.api import model as _lm_model
  from lm_eval.api import registry as _lm_registry
  _LM_BASE = _lm_model.LM
except ImportError:  # the `eval` extra is not installed: the rest of this module still works
  _lm_model = _lm_registry = None
  _LM_BASE = object

log = logging.getLogger(__name__)

MODEL_NAME = "arch_objective"
TRUNCATIONS = ("paper", "modern")
# (inputs_length, targets_length, decoder-only row length) of each truncation mode
DEFAULT_LENGTHS = {"paper": (512, 114, 512 + 114), "modern": (1024, 256, 1024 + 256)}
DEFAULT_BATCH_TOKENS = 16384
DEFAULT_MAX_GEN_TOKS = 256

# The paper's 32 EAI-Eval tasks minus mc_taco (em/f1), spec §4.2, as lm-eval 0.4 names.
PAPER_TASK_NAMES = {
    "anli_r1": "anli_r1", "anli_r2": "anli_r2", "anli_r3": "anli_r3",
    "arc_challenge": "arc_challenge", "arc_easy": "arc_easy", "boolq": "boolq", "cb": "cb",
    "copa": "copa", "headqa_en": "headqa_en", "hellaswag": "hellaswag",
    "lambada": "lambada_openai", "logiqa": "logiqa", "mathqa": "mathqa", "mrpc": "mrpc",
    "multirc": "multirc", "openbookqa": "openbookqa", "piqa": "piqa", "prost": "prost",
    "pubmedqa": "pubmedqa", "qnli": "qnli", "qqp": "qqp", "race": "race", "rte": "rte",
    "sciq": "sciq", "sst": "sst2", "triviaqa": "triviaqa", "webqs": "webqs", "wic": "wic",
    "winogrande": "winogrande", "wnli": "wnli", "wsc": "wsc",
}
EAI_EVAL_TASKS = tuple(PAPER_TASK_NAMES.values())
EAI_EVAL = "eai_eval"
# The metric that carries the paper's `acc` where lm-eval 0.4 names it otherwise.
EAI_METRICS = {"webqs": "exact_match", "triviaqa": "exact_match"}
RESULTS_FILE, SUMMARY_FILE = "harness_results.json", "summary.md"
HARNESS_TASKS_DIR = str(pathlib.Path(__file__).resolve().parent / "harness_tasks")


# ----------------------------------------------------------------------------------------
# Truncation and windows
# ----------------------------------------------------------------------------------------
def truncate(context, continuation, truncation: str, *, inputs_length: int,
             targets_length: int, row_length: Optional[int] = None
             ) -> tuple[np.ndarray, np.ndarray]:
  """(context, continuation) token ids cut to the budget of `truncation`.

  paper:  `(context[:inputs_length], continuation[:targets_length])` (seqio trimming).
  modern: with `row_length` (decoder-only: one row holds both) the continuation keeps its
          first `row_length` tokens and the context its last `row_length - len(cont)`;
          without it (ED) `(context[-inputs_length:], continuation[:targets_length])`.

  E.g. `truncate(range(6), range(3), "modern", inputs_length=4, targets_length=2,
  row_length=5)` is `([4, 5], [0, 1, 2])`; with "paper", `([0, 1, 2, 3], [0, 1])`.
  """
  context = np.asarray(context, np.int32).reshape(-1)
  continuation = np.asarray(continuation, np.int32).reshape(-1)
  _check_truncation(truncation)
  if truncation == "paper":
    return context[:inputs_length], continuation[:targets_length]
  if row_length is None:
    return context[max(len(context) - inputs_length, 0):], continuation[:targets_length]
  continuation = continuation[:row_length]
  room = row_length - len(continuation)
  return context[max(len(context) - room, 0):], continuation


def _check_truncation(truncation):
  if truncation not in TRUNCATIONS:
    raise UserError(f"unknown truncation {truncation!r}; expected one of "
                    f"{', '.join(TRUNCATIONS)} (paper: the first 512 context tokens, as the "
                    f"paper's t5x bridge; modern: the last tokens that fit).")


def rolling_windows(tokens, row_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """(context, continuation) pairs that predict every token of `tokens` exactly once.

  The harness's windows (`get_rolling_token_windows(tokens, prefix, row_length, 1)` made
  disjoint), as its Hugging Face model reads them: the first predicts `tokens[:row_length]`
  from nothing (our shifted-in 0 is the prefix token); each later one predicts up to
  `row_length` tokens given the tokens before them, so that the row's inputs hold
  `row_length` text tokens (the row itself is one longer). Tokens 0..9, row_length 4:
  `([], [0 1 2 3])`, `([3], [4 5 6 7])`, `([5 6 7], [8 9])`.
  """
  from lm_eval import utils as lm_utils
  tokens = [int(t) for t in tokens]
  windows = []
  for pair in lm_utils.get_rolling_token_windows(tokens, -1, row_length, 1):
    context, continuation = lm_utils.make_disjoint_window(pair)
    context = [t for t in context if t != -1]
    windows.append((np.asarray(context, np.int32), np.asarray(continuation, np.int32)))
  return windows


def cut_at_stop(text: str, until: Sequence[str]) -> str:
  """`text` up to (not including) the earliest occurrence of any stop string."""
  end = len(text)
  for stop in until:
    if stop:
      found = text.find(stop)
      if found != -1:
        end = min(end, found)
  return text[:end]


# ----------------------------------------------------------------------------------------
# Batched scoring (summed log-likelihood and the greedy flag per pair) and generation
# ----------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 3))
def _greedy(model, params, batch, steps):
  return model.predict_batch(params, batch, max_decode_steps=steps)    # [b, steps]


def score_pairs(model: models.BaseModel, params, pairs, max_tokens: int = DEFAULT_BATCH_TOKENS
                ) -> list[tuple[float, bool]]:
  """(log-likelihood, is_greedy) of each (context ids, continuation ids), no EOS added.

  `scoring.Scorer` (packed rows) with at most `max_tokens` tokens per batch; the
  model's layout groups the pairs into requests (`share_prompts`: decoder-only, one per
  pair; ED, one per distinct context, whose choices are its pairs' continuations). An
  empty continuation scores (0.0, True).
  """
  pairs = [(np.asarray(c, np.int32).reshape(-1), np.asarray(t, np.int32).reshape(-1))
           for c, t in pairs]
  out: list = [(0.0, True)] * len(pairs)
  todo = [i for i, (_, t) in enumerate(pairs) if len(t)]
  members = model.layout.share_prompts(pairs, todo)
  requests = [scoring.Request(pairs[m[0]][0], tuple(pairs[i][1] for i in m)) for m in members]
  scorer = scoring.Scorer(model, params, max_tokens=max_tokens)
  for m, result in zip(members, scorer.score(requests, greedy=True)):
    for i, total, is_greedy in zip(m, result.scores, result.greedy):
      out[i] = (float(total), bool(is_greedy))
  return out


def generate_tokens(model: models.BaseModel, params, prompts, steps: int,
                    max_tokens: int = DEFAULT_BATCH_TOKENS) -> list[np.ndarray]:
  """Greedy continuations `[steps]` (0 after EOS) of each prompt's token ids.

  The decoding loop runs a power-of-two number of steps (at least 16) and is cut to
  `steps`, so that tasks with nearby `max_gen_toks` share one compiled program.
  """
  prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  wanted, steps = steps, scoring.bucket(steps)
  layout = model.layout
  out: list = [None] * len(prompts)
  by_bucket: dict[int, list[int]] = {}
  for i, p in enumerate(prompts):
    by_bucket.setdefault(scoring.bucket(layout.prompt_positions(len(p))), []).append(i)
  for length, group in sorted(by_bucket.items()):
    rows = scoring.batch_rows(max_tokens, length + steps)
    for start in range(0, len(group), rows):
      chunk = group[start:start + rows]
      batch = layout.generation_batch([prompts[i] for i in chunk],
                                      min(rows, scoring.pow2(len(chunk))), length)
      generated = np.asarray(jax.device_get(_greedy(model, params, batch, steps)))
      for r, i in enumerate(chunk):
        out[i] = generated[r, :wanted]
  return out


# ----------------------------------------------------------------------------------------
# The harness model
# ----------------------------------------------------------------------------------------
_HARNESS_KWARGS = ("batch_size", "max_batch_size", "device")   # passed by simple_evaluate
DTYPES = ("float32", "bfloat16", "float16")
_MODEL_ARGS = ("checkpoint", "model_dir", "arch", "vocabulary", "truncation", "batch_tokens",
               "inputs_length", "targets_length", "max_length", "dtype",
               "allow_other_vocabulary", "paradigm")


class ModelArgsError(UserError):
  """A bad option (model_args) of the `arch_objective` model, found before anything
  loads; its message is one line naming the option."""


def _flag(value, name: str) -> bool:
  """A yes/no model arg as lm-eval passes it (`True`/`False`, or a bool)."""
  if isinstance(value, bool):
    return value
  if str(value).strip().lower() in ("true", "1", "yes"):
    return True
  if str(value).strip().lower() in ("false", "0", "no"):
    return False
  raise ModelArgsError(f"{name} must be True or False, found {value!r}; pass e.g. "
                       f"{name}=True.")


def check_model_args(model_args: dict, *, objects: bool = False) -> Optional[str]:
  """Check the options of the `arch_objective` model (model_args, as lm-eval passes them:
  strings and numbers) before anything loads, reading at most a checkpoint's metadata:
  ModelArgsError, one line naming the first bad option. Returns the checkpoint path
  (`checkpoint` or `model_dir`), None without one; `objects`: a model and parameters are
  given as objects instead of a checkpoint."""
  given = {k: v for k, v in model_args.items() if v is not None}
  unknown = sorted(set(given) - set(_MODEL_ARGS) - set(_HARNESS_KWARGS))
  if unknown:
    raise ModelArgsError(f"unknown option(s) {unknown} for the {MODEL_NAME} model; valid: "
                         f"checkpoint (or model_dir), arch, vocabulary, truncation, "
                         f"batch_tokens, inputs_length, targets_length, max_length, dtype, "
                         f"allow_other_vocabulary, paradigm.")
  try:
    _check_truncation(given.get("truncation", "modern"))
  except ValueError as e:
    raise ModelArgsError(str(e)) from None
  if "allow_other_vocabulary" in given:
    _flag(given["allow_other_vocabulary"], "allow_other_vocabulary")
  if given.get("paradigm"):
    from arch_objective.objectives import ul2
    try:
      ul2.check_paradigm(given["paradigm"])
    except ValueError as e:
      raise ModelArgsError(str(e)) from None
  for name, example in (("batch_tokens", DEFAULT_BATCH_TOKENS), ("inputs_length", 1024),
                        ("targets_length", 256), ("max_length", 1280)):
    if name in given:
      try:
        _positive_int(given[name], name)
      except ValueError as e:
        raise ModelArgsError(f"{str(e).rstrip('.')}; pass e.g. {name}={example}.") from None
  checkpoint, key = given.get("checkpoint"), "checkpoint"
  if "model_dir" in given:
    if checkpoint is not None and str(checkpoint) != str(given["model_dir"]):
      raise ModelArgsError(f"checkpoint={checkpoint!r} and model_dir={given['model_dir']!r} "
                           f"differ; expected one model directory (model_dir is another name "
                           f"for checkpoint).")
    checkpoint, key = given["model_dir"], "model_dir"
  if checkpoint is None:
    if not objects:
      raise ModelArgsError("give checkpoint=PATH, or model and params (and vocab); found "
                           "neither a checkpoint nor both objects (lm-eval: --model_args "
                           "checkpoint=MODEL_DIR, or model_dir=MODEL_DIR).")
    return None
  if objects:
    raise UserError("give either checkpoint or (model, params, vocab), found both.")
  checkpoint = os.fspath(checkpoint) if isinstance(checkpoint, os.PathLike) else str(checkpoint)
  _check_checkpoint_args(key, checkpoint, given.get("arch"), given.get("dtype", "float32"),
                         given.get("vocabulary"))
  return checkpoint


def _check_checkpoint_args(key: str, checkpoint: str, arch, dtype, vocabulary):
  """ModelArgsError for a checkpoint, arch, dtype or vocabulary that cannot be read, found
  from the checkpoint's metadata alone (no parameters are read)."""
  from arch_objective.training import checkpoints
  if arch is not None:
    try:
      architectures.check(arch)
    except ValueError as e:
      raise ModelArgsError(str(e)) from None
  if dtype not in DTYPES:
    raise ModelArgsError(f"dtype must be one of {', '.join(DTYPES)}, found {dtype!r}; pass "
                         f"e.g. dtype=float32.")
  for name, path, expected in ((key, checkpoint, "a model directory (`arch-objective train` "
                                "or `convert`) or <dir>/checkpoints/<step>"),
                               ("vocabulary", vocabulary, "a SentencePiece .model file")):
    if path is None:
      continue
    try:
      missing = paths.scheme(path) is None and not paths.exists(path)
    except ValueError as e:                   # a scheme we do not read
      raise ModelArgsError(f"{name}={path!r}: {e}") from None
    if missing:
      raise ModelArgsError(f"{name}={path!r} does not exist; expected {expected}.")
  try:
    checkpoints.open_model_dir(checkpoint, arch=arch, dtype=dtype, reference=True,
                               read_params=False)
  except ValueError as e:                     # CheckpointError, or meta that does not fit
    raise ModelArgsError(f"{key}: {e}" if key != "checkpoint" else str(e)) from None


class ArchObjectiveLM(_LM_BASE):
  """An lm-evaluation-harness model over one of our models (see the module docstring).

  From a checkpoint (model_args `checkpoint=...,arch=...,vocabulary=...,truncation=...,
  batch_tokens=...`; `model_dir` is another name for `checkpoint`): `arch` may read a
  causal decoder checkpoint as non-causal or back; `vocabulary` defaults to the one the
  checkpoint records. From objects:
  `ArchObjectiveLM(model=model, params=params, vocab=vocab)`. Options: `truncation`
  (paper|modern), `inputs_length`, `targets_length`, `max_length` (decoder-only row,
  modern mode; defaults in DEFAULT_LENGTHS), `batch_tokens` (tokens per forward batch),
  `dtype` (activations of a checkpoint's model). `batch_size`, `max_batch_size` and
  `device`, which `simple_evaluate` passes, are accepted and ignored: batches are sized
  by `batch_tokens`, and JAX places them on its default device.
  """

  def __init__(self, checkpoint: Optional[str] = None, arch: Optional[str] = None,
               vocabulary: Optional[str] = None, truncation: str = "modern",
               batch_tokens: int = DEFAULT_BATCH_TOKENS, inputs_length: Optional[int] = None,
               targets_length: Optional[int] = None, max_length: Optional[int] = None,
               dtype: str = "float32", *, model_dir: Optional[str] = None,
               allow_other_vocabulary=False, paradigm: Optional[str] = None,
               model: Optional[models.BaseModel] = None, params=None, vocab=None,
               **harness_kwargs):
    if _lm_model is None:
      raise MissingDependency("ArchObjectiveLM needs lm-evaluation-harness: pip install "
                              "'lm-eval==0.4.13' (the `eval` extra of arch-objective).")
    super().__init__()
    checkpoint = check_model_args(
        dict(checkpoint=checkpoint, model_dir=model_dir, arch=arch, vocabulary=vocabulary,
             truncation=truncation, batch_tokens=batch_tokens, inputs_length=inputs_length,
             targets_length=targets_length, max_length=max_length, dtype=dtype,
             allow_other_vocabulary=allow_other_vocabulary, paradigm=paradigm,
             **harness_kwargs), objects=model is not None or params is not None)
    if checkpoint is None and (model is None or params is None):
      raise ModelArgsError("give checkpoint=PATH, or both model and params (and vocab); found "
                           f"{'params' if model is None else 'model'} alone.")
    self.meta, self.step, self.checkpoint = {}, None, checkpoint
    self.vocabulary_record = None
    if checkpoint is not None:
      from arch_objective.evaluation import loading
      if vocab is None:    # a path (lm-eval's model_args): checked against the checkpoint's
        vocab, self.vocabulary_record = _checked_vocabulary(
            str(checkpoint), arch, vocabulary,
            _flag(allow_other_vocabulary, "allow_other_vocabulary"),
            "allow_other_vocabulary=True (in --model_args)", option="vocabulary=")
      model, params, self.meta, self.step = loading.load_model(str(checkpoint), arch, dtype)
    else:
      if arch is not None and arch != model.name:
        raise UserError(f"arch {arch!r} does not match the given {model.name} model; "
                        f"build the model as {arch} (only the causal and non-causal "
                        f"decoders share parameters).")
      vocab = vocab if vocab is not None else vocabulary
    if vocab is None:
      raise ModelArgsError("no vocabulary: pass vocabulary=PATH (a SentencePiece .model); "
                           "the checkpoint does not record one.")
    if isinstance(vocab, (str, os.PathLike)):
      from arch_objective.data import vocabularies
      vocab = vocabularies.SentencePieceVocabulary(os.fspath(vocab))
    self.model, self.params, self.vocab = model, params, vocab
    from arch_objective.objectives import ul2
    self.paradigm = paradigm or None      # UL2's mode switching: a token before each prompt
    self.prompt_prefix = np.asarray(ul2.paradigm_prefix(
        self.paradigm, vocab.vocab_size, getattr(vocab, "extra_ids", 0)), np.int32)
    self.architecture = architectures.get(model.name)
    self.dtype = str(model.config.dtype)
    self.truncation = truncation
    defaults = DEFAULT_LENGTHS[truncation]
    self.inputs_length = int(inputs_length or defaults[0])
    self.targets_length = int(targets_length or defaults[1])
    self.row_length = int(max_length or (self.inputs_length + self.targets_length
                                          if inputs_length or targets_length else defaults[2]))
    self.batch_tokens = _positive_int(batch_tokens, "batch_tokens")
    for name in ("inputs_length", "targets_length", "row_length"):
      _positive_int(getattr(self, name), "max_length" if name == "row_length" else name)

  # -- tokens --------------------------------------------------------------------------
  def _encode_all(self, texts: Sequence[str], prompts: bool = False) -> list[np.ndarray]:
    """Token ids of `texts`; `prompts` (contexts, generation prompts) start with the
    paradigm token when one is set."""
    unique = list(dict.fromkeys(texts))
    ids = dict(zip(unique, self.vocab.encode_batch(unique)))
    if prompts and len(self.prompt_prefix):
      return [np.concatenate([self.prompt_prefix, np.asarray(ids[t], np.int32)]) for t in texts]
    return [np.asarray(ids[t], np.int32) for t in texts]

  def _truncate(self, context, continuation):
    row = None if self.truncation == "paper" else self.model.layout.row_budget(self.row_length)
    return truncate(context, continuation, self.truncation, inputs_length=self.inputs_length,
                    targets_length=self.targets_length, row_length=row)

  def loglikelihood_tokens(self, pairs) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of (context ids, continuation ids) pairs, truncated."""
    return score_pairs(self.model, self.params, [self._truncate(c, t) for c, t in pairs],
                       self.batch_tokens)

  # -- the harness's three request types -------------------------------------------------
  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    contexts = self._encode_all([_arg(r, 0) for r in requests], prompts=True)
    continuations = self._encode_all([_arg(r, 1) for r in requests])
    results = self.loglikelihood_tokens(list(zip(contexts, continuations)))
    for r, result in zip(requests, results):
      self.cache_hook.add_partial("loglikelihood", r.args, result)
    log.info("scored %d loglikelihood requests", len(requests))
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    texts = self._encode_all([_arg(r, 0) for r in requests])
    pairs, owner = [], []
    for k, tokens in enumerate(texts):
      windows = self.model.layout.rolling_windows(
          tokens, row_length=self.row_length, targets_length=self.targets_length,
          windows=rolling_windows)
      pairs += windows
      owner += [k] * len(windows)
    scores = score_pairs(self.model, self.params, pairs, self.batch_tokens)
    totals = [0.0] * len(requests)
    for k, (total, _) in zip(owner, scores):
      totals[k] += total
    for r, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    prompts = self._encode_all([_arg(r, 0) for r in requests], prompts=True)
    options = [_generation_options(_arg(r, 1), i) for i, r in enumerate(requests)]
    outputs: list = [None] * len(requests)
    by_steps: dict[int, list[int]] = {}
    for i, (_, steps) in enumerate(options):
      by_steps.setdefault(steps, []).append(i)
    for steps, group in sorted(by_steps.items()):
      if self.truncation == "paper":
        cut = [p[:self.inputs_length] for p in (prompts[i] for i in group)]
      else:
        room = self.model.layout.prompt_budget(inputs_length=self.inputs_length,
                                               row_length=self.row_length, steps=steps)
        cut = [p[max(len(p) - room, 0):] for p in (prompts[i] for i in group)]
      generated = generate_tokens(self.model, self.params, cut, steps, self.batch_tokens)
      for i, tokens in zip(group, generated):
        outputs[i] = cut_at_stop(self.vocab.decode(tokens), options[i][0])
    for r, text in zip(requests, outputs):
      self.cache_hook.add_partial("generate_until", r.args, text)
    return outputs

  def get_model_info(self) -> dict:
    return {"arch_objective": {"checkpoint": self.checkpoint, "arch": self.model.name,
                               "step": self.step, "trained_as": self.meta.get("arch"),
                               "truncation": self.truncation, "dtype": self.dtype,
                               "inputs_length": self.inputs_length,
                               "targets_length": self.targets_length,
                               "max_length": self.model.layout.row_budget(self.row_length),
                               "vocabulary": self.vocabulary_record,
                               "paradigm": self.paradigm}}


def register_with_lm_eval() -> None:
  """Register `ArchObjectiveLM` with lm-eval as `arch_objective`, beside lm-eval's own
  models (`hf`, `vllm`, ...). Importing this module does it; calling it again is harmless.

  lm-eval 0.4 lists its own models (lazily: no model module is imported) only when its
  registry is still empty at the first `get_model`, so `lm_eval.models` is imported before
  ours is added: otherwise `get_model("hf")` would find only `arch_objective`.
  """
  if _lm_registry is None:
    raise MissingDependency(f"the {MODEL_NAME} model needs lm-evaluation-harness: pip install "
                            f"'lm-eval==0.4.13' (the `eval` extra of arch-objective).")
  import lm_eval.models  # noqa: F401  (registers lm-eval's own model names)
  _lm_registry.register_model(MODEL_NAME)(ArchObjectiveLM)


if _lm_registry is not None:
  register_with_lm_eval()


def _arg(request, k):
  args = request.args if hasattr(request, "args") else tuple(request)
  return args[k]


def _positive_int(value, name) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)) or \
      not str(value).isdigit() or int(value) < 1:
    raise UserError(f"{name} must be a positive integer, found {value!r}.")
  return int(value)


def _generation_options(kwargs, index) -> tuple[list[str], int]:
  """(stop strings, max new tokens) of one generate_until request's gen_kwargs."""
  kwargs = dict(kwargs or {})
  if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
    raise UserError(f"generate_until request {index}: do_sample={kwargs.get('do_sample')}, "
                    f"temperature={kwargs.get('temperature')}; expected greedy decoding "
                    f"(do_sample false, temperature 0), the only mode of the "
                    f"{MODEL_NAME} model.")
  until = kwargs.get("until") or []
  until = [until] if isinstance(until, str) else list(until)
  if not all(isinstance(u, str) for u in until):
    raise UserError(f"generate_until request {index}: 'until' must be a string or a list "
                    f"of strings, found {kwargs.get('until')!r}.")
  steps = kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
  return until, _positive_int(steps, "max_gen_toks")


# ----------------------------------------------------------------------------------------
# Running tasks and summarising
# ----------------------------------------------------------------------------------------
def expand_tasks(tasks: Sequence[str]) -> list[str]:
  """Task names, comma lists split and `eai_eval` expanded, duplicates dropped."""
  names = []
  for item in tasks:
    for name in str(item).split(","):
      name = name.strip()
      if name:
        names += list(EAI_EVAL_TASKS) if name == EAI_EVAL else [name]
  if not names:
    raise UserError(f"tasks is empty; expected lm-eval task names or {EAI_EVAL!r}.")
  return list(dict.fromkeys(names))


def task_manager(tasks: Sequence[str], include_path: Optional[str] = None):
  """A TaskManager that knows `tasks`: only `include_path` when it holds them all (fast),
  else the harness's own tasks too. Raises ValueError naming tasks found nowhere."""
  from lm_eval.tasks import TaskManager
  if include_path is not None and not os.path.isdir(include_path):
    raise UserError(f"include_path {include_path!r} is not a directory of task YAML files.")
  manager = None
  if include_path is not None:
    manager = TaskManager(include_path=include_path, include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):
      manager = None
  if manager is None:
    manager = TaskManager(include_path=include_path, include_defaults=True)
  unknown = [t for t in tasks if t not in manager.all_tasks]
  broken = _unparsable_yaml(include_path) if unknown and include_path else []
  if broken:
    raise UserError(f"unknown task(s) {unknown}: {len(broken)} task YAML file(s) of "
                    f"include_path {include_path} do not parse, and lm-eval skips them: "
                    f"{'; '.join(broken)}.")
  if unknown:
    raise UserError(f"unknown task(s) {unknown}: not in lm-eval's tasks"
                    f"{' nor in ' + include_path if include_path else ''}. Expected lm-eval "
                    f"0.4 task names (e.g. {', '.join(EAI_EVAL_TASKS[:4])}) or {EAI_EVAL!r}.")
  return manager


def _unparsable_yaml(folder: str) -> list[str]:
  """'<file>: line L, column C: <problem>' of each task YAML file under `folder` that
  does not parse (lm-eval's task index skips those without a word). Tags such as
  `!function` are accepted unread."""
  import yaml

  class _Loader(yaml.SafeLoader):
    pass

  _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
  broken = []
  for path in sorted(pathlib.Path(folder).glob("**/*.yaml")):
    try:
      with open(path, "rb") as f:
        yaml.load(f, Loader=_Loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as e:
      mark = getattr(e, "problem_mark", None)
      where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
      problem = getattr(e, "problem", None) or str(e).splitlines()[0]
      broken.append(f"{path}: {where}{problem}")
    except OSError as e:
      broken.append(f"{path}: {e.strerror or e}")
  return broken


def run_harness(checkpoint, tasks: Sequence[str], *, include_path: Optional[str] = None,
                arch: Optional[str] = None, vocabulary: Optional[str] = None,
                truncation: str = "modern", limit=None, out_dir: str,
                batch_tokens: int = DEFAULT_BATCH_TOKENS, dtype: str = "float32",
                bootstrap_iters: int = 100000, allow_other_vocabulary: bool = False,
                allow_option: str = "allow_other_vocabulary=True",
                paradigm: Optional[str] = None) -> dict:
  """Zero-shot `tasks` on a checkpoint path (or an `ArchObjectiveLM` already built).

  Writes `out_dir/harness_results.json` (the harness's results, JSON-serialisable entries
  only; `arch_objective.vocabulary` records the vocabulary used: path, sha256) and
  `out_dir/summary.md` (see `summarize`), local or remote; returns the results.
  `dtype` is the activation dtype of a checkpoint's model. A `vocabulary` other than
  the one the checkpoint was trained with is refused unless `allow_other_vocabulary`
  (`loading.check_vocabulary`; `allow_option` is how the message says to allow it).
  """
  import lm_eval
  from arch_objective.evaluation import loading
  names = expand_tasks(tasks)
  manager = task_manager(names, include_path)          # unknown tasks fail before loading
  out_dir = paths.normalize(out_dir, "output directory")
  if isinstance(checkpoint, ArchObjectiveLM):
    lm = checkpoint
    path = getattr(lm.vocab, "path", None)
    used = loading.vocabulary_record(path) if path else None
  else:
    vocab, used = _checked_vocabulary(str(checkpoint), arch, vocabulary,
                                      allow_other_vocabulary, allow_option)
    lm = ArchObjectiveLM(checkpoint=checkpoint, arch=arch, vocabulary=vocabulary,
                         truncation=truncation, batch_tokens=batch_tokens, dtype=dtype,
                         vocab=vocab, paradigm=paradigm)
  results = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=0, limit=limit,
                                    task_manager=manager, log_samples=False,
                                    bootstrap_iters=bootstrap_iters)
  results = _jsonable(results)
  results["arch_objective"] = {"checkpoint": None if isinstance(checkpoint, ArchObjectiveLM)
                               else str(checkpoint), "tasks": names, "limit": limit,
                               **lm.get_model_info()["arch_objective"], "vocabulary": used}
  paths.makedirs(out_dir)
  paths.write_text(paths.join(out_dir, RESULTS_FILE), json.dumps(results, indent=2))
  paths.write_text(paths.join(out_dir, SUMMARY_FILE), summarize(results)["markdown"])
  return results


def _checked_vocabulary(checkpoint: str, arch: Optional[str], vocabulary: Optional[str],
                        allow_other: bool, allow_option: str, option: str = "--vocabulary"):
  """(vocabulary, its record) an evaluation of `checkpoint` tokenises with: `vocabulary`
  or else the checkpoint's, checked against the one it was trained with
  (`loading.check_vocabulary`); (None, None) when neither names one."""
  from arch_objective.data import vocabularies
  from arch_objective.evaluation import loading
  from arch_objective.training import checkpoints
  meta, _ = checkpoints.load_meta(checkpoint)
  path = vocabulary or checkpoints.recorded_vocabulary(meta, checkpoint)
  if not path:
    return None, None
  vocab = vocabularies.SentencePieceVocabulary(os.fspath(path))
  model, _, _, _ = checkpoints.open_model_dir(checkpoint, arch=arch, read_params=False)
  rows = model.config.vocab_size
  used = loading.check_vocabulary(
      meta, vocab.path, checkpoint, allow_other=allow_other,
      option=option if vocabulary else "the vocabulary", allow_option=allow_option,
      embedding_rows=rows, vocab_size=vocab.vocab_size)
  return vocab, used


_DROP = object()


def _jsonable(value):
  """`value` with every entry JSON cannot hold dropped (numpy scalars become numbers)."""
  if isinstance(value, dict):
    items = ((str(k), _jsonable(v)) for k, v in value.items())
    return {k: v for k, v in items if v is not _DROP}
  if isinstance(value, (list, tuple)):
    return [v for v in (_jsonable(v) for v in value) if v is not _DROP]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if value is None or isinstance(value, (str, int, float, bool)):
    return value
  return _DROP


def summarize(results: dict) -> dict:
  """Per-task accuracy and their mean from `simple_evaluate` results.

  Returns `{"acc": {task: value in [0, 1]}, "metric": {task: metric key}, "mean": m,
  "missing": [tasks without the metric], "markdown": table}`. The metric is `acc`
  (never acc_norm), or `EAI_METRICS[task]` where lm-eval 0.4 reports the paper's
  accuracy under another name.
  """
  per_task = results.get("results", {}) if isinstance(results, dict) else {}
  subtasks = (results.get("group_subtasks") or {}) if isinstance(results, dict) else {}
  groups = {name for name, children in subtasks.items() if children}
  acc, metric, missing = {}, {}, []
  for task, values in per_task.items():
    if task in groups:
      continue
    wanted = EAI_METRICS.get(task, "acc")
    key = next((k for k in sorted(values) if k == wanted or k.startswith(wanted + ",")), None)
    if key is None or not isinstance(values[key], (int, float)):
      missing.append(task)
      continue
    acc[task], metric[task] = float(values[key]), key
  mean = float(np.mean(list(acc.values()))) if acc else float("nan")
  lines = ["## EAI-Eval (lm-evaluation-harness, zero-shot)", "", "| task | metric | accuracy |",
           "|---|---|---|"]
  lines += [f"| {t} | {metric[t]} | {100 * v:.1f} |" for t, v in acc.items()]
  lines.append(f"| **mean ({len(acc)} tasks)** | | **{100 * mean:.1f}** |")
  if missing:
    lines += ["", f"No accuracy reported for: {', '.join(missing)}."]
  return {"acc": acc, "metric": metric, "mean": mean, "missing": missing,
          "markdown": "\n".join(lines) + "\n"}
