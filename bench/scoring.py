"""Zero-shot scoring speed: T0-Eval rank classification, ours against two baselines.

One fixed local suite, generated here (seeded): `prompts` T0-style prompts over the
embedded English-like corpus of `bench.corpus` (natural-language inference with three
choices, yes/no questions, fill-the-blank with four one-word choices, next-sentence
with two to four sentence choices), tokenised with a SentencePiece vocabulary trained
on that corpus. One encoder-decoder (`size`, float32, random initialisation: scores,
not accuracy, are compared) scored three ways, each measured in this run:

  ours      `RankScorer.score` (each prompt encoded once, its choices decoded together,
            length buckets, jitted), timed from text: tokenisation included;
  lm-eval   lm-evaluation-harness's HF backend (`HFLM(backend="seq2seq")`) on
            `convert.hf.export_hf` of the same parameters, with a `T5Tokenizer` of the
            same SentencePiece model, `loglikelihood` over one request per (prompt,
            choice), `lm_eval_batch_size` requests a batch; timed with torch at every
            thread count of `hf_threads` (all cores, and one), the faster is the
            baseline;
  naive     `rank_classification.naive_scores` (one un-batched forward per prompt-choice
            pair) on the first `naive_prompts` prompts, from token ids.

Both sides see the same token ids: lm-eval's seq2seq backend appends EOS to the
context, and the continuation is `" choice</s>"`, so our requests are
`prompt ids + [EOS]` and `choice ids + [EOS]`; the benchmark checks the ids
(`tokens_identical`) and the scores (ours vs naive within `NAIVE_TOLERANCE`, ours vs
lm-eval within `LM_EVAL_TOLERANCE`) and fails if they differ: speeds of different
computations are not compared. Each scorer runs once untimed (ours compiles its
buckets, the naive scorer compiles its ops per shape), then ours and lm-eval alternate
for `rounds` rounds; the best round counts. `examples/s` = prompts / seconds;
`ratio = ours / lm-eval` examples/s, target `>= TARGET_RATIO`.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from arch_objective import models
from arch_objective.convert import hf
from arch_objective.data import vocabularies
from arch_objective.evaluation import rank_classification
from bench import corpus
from bench.training import load_average, usable_cpus

# Hugging Face reads only local files here; never ask the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_RATIO = 3.0
NAIVE_TOLERANCE = 1e-4
LM_EVAL_TOLERANCE = 1e-3
EOS_TEXT = "</s>"


@dataclasses.dataclass(frozen=True)
class Settings:
  size: str = "small"
  prompts: int = 64
  naive_prompts: int = 8
  naive_warm: bool = True       # one untimed naive pass first (JAX compiles ops per shape)
  rounds: int = 3
  vocabulary_pieces: int = 2000
  vocabulary_documents: int = 400
  hf_threads: tuple[int, ...] = ()   # () = (all usable cores, 1)
  seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", prompts=8, naive_prompts=1, naive_warm=False, rounds=1,
                 vocabulary_pieces=400, vocabulary_documents=60)


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Example:
  """One T0-style example: a prompt and its answer choices (each with its leading
  space, as lm-eval expects the word boundary in the continuation)."""
  template: str
  prompt: str
  choices: tuple[str, ...]


TEMPLATES = ("nli", "yes_no", "fill_blank", "next_sentence")
_TEMPLATE_TEXT = (
    "Question: Does this imply that \"{}\"? Yes, no, or maybe? "
    "Is the word \"{}\" in the passage? Answer yes or no. "
    "Which word fills the blank ___: {}, {}, {} or {}? "
    "What comes next? Choose the best continuation.")


def _sentences(documents) -> list[str]:
  return [s.strip() + "." for d in documents for s in d.replace("\n", " ").split(".")
          if len(s.split()) >= 4]


def make_suite(num_prompts: int, seed: int = 0) -> list[Example]:
  """`num_prompts` examples cycling through `TEMPLATES`, 2-4 choices each."""
  rng = np.random.default_rng([seed, 7])
  sentences = _sentences(corpus.documents(max(40, num_prompts), seed + 1))
  pick = lambda: sentences[int(rng.integers(len(sentences)))]
  passage = lambda: " ".join(pick() for _ in range(int(rng.integers(1, 5))))
  out = []
  for i in range(num_prompts):
    template = TEMPLATES[i % len(TEMPLATES)]
    if template == "nli":
      out.append(Example(template, f"{passage()}\nQuestion: Does this imply that "
                                   f"\"{pick()}\"? Yes, no, or maybe?",
                         (" Yes", " No", " Maybe")))
    elif template == "yes_no":
      text = passage()
      word = str(rng.choice(text.rstrip(".").split()))
      out.append(Example(template, f"{text}\nQuestion: Is the word \"{word}\" in the "
                                   f"passage? Answer yes or no.", (" yes", " no")))
    elif template == "fill_blank":
      words = pick().rstrip(".").split()
      options = [words[-1]] + [str(w) for w in rng.choice(
          pick().rstrip(".").split(), 3, replace=True)]
      out.append(Example(template, f"{passage()} {' '.join(words[:-1])} ___.\nWhich word "
                                   f"fills the blank: {', '.join(options[:3])} or "
                                   f"{options[3]}?", tuple(f" {w}" for w in options)))
    else:
      n = int(rng.integers(2, 5))
      out.append(Example(template, f"{passage()}\nWhat comes next?",
                         tuple(f" {pick()}" for _ in range(n))))
  return out


def to_requests(vocab: vocabularies.SentencePieceVocabulary, suite: Sequence[Example]
                ) -> list[rank_classification.Request]:
  """Our requests, as lm-eval's seq2seq backend tokenises them (EOS after both)."""
  prompts = vocab.encode_batch([e.prompt for e in suite])
  choices = vocab.encode_batch([c for e in suite for c in e.choices])
  eos = [vocabularies.EOS_ID]
  out, k = [], 0
  for e, p in zip(suite, prompts):
    n = len(e.choices)
    out.append(rank_classification.Request(
        np.asarray(p + eos, np.int32),
        tuple(np.asarray(c + eos, np.int32) for c in choices[k:k + n])))
    k += n
  return out


# ---------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------
def _hflm(export_dir: str, batch_size: int):
  """lm-eval's HF backend on the export, with a T5Tokenizer of the same vocabulary."""
  import transformers
  from lm_eval.models.huggingface import HFLM
  tokenizer = transformers.T5Tokenizer.from_pretrained(export_dir, extra_ids=100)
  return HFLM(pretrained=export_dir, backend="seq2seq", tokenizer=tokenizer,
              batch_size=batch_size, device="cpu", dtype="float32")


def _instances(suite: Sequence[Example]) -> list:
  from lm_eval.api.instance import Instance
  return [Instance(request_type="loglikelihood", doc={"prompt": i}, idx=j,
                   arguments=(e.prompt, c + EOS_TEXT))
          for i, e in enumerate(suite) for j, c in enumerate(e.choices)]


def _group(flat: Sequence[float], suite: Sequence[Example]) -> list[np.ndarray]:
  out, k = [], 0
  for e in suite:
    out.append(np.asarray(flat[k:k + len(e.choices)], np.float64))
    k += len(e.choices)
  return out


def _max_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
  return float(max(np.max(np.abs(x - y)) for x, y in zip(a, b)))


def _rate(prompts: int, pairs: int, seconds: Sequence[float], first: Optional[float]
          ) -> dict:
  best = min(seconds)
  return {"prompts": prompts, "pairs": pairs, "seconds": list(seconds),
          "best_seconds": best, "median_seconds": statistics.median(seconds),
          "first_seconds": first, "examples_per_second": prompts / best,
          "pairs_per_second": pairs / best,
          "examples_per_second_median": prompts / statistics.median(seconds)}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
def run(options: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
  s = SMOKE if getattr(options, "smoke", False) else FULL
  batch_size = int(getattr(options, "lm_eval_batch_size", 32))
  threads = s.hf_threads or tuple(sorted({usable_cpus(), 1}, reverse=True))
  load_start = load_average()
  suite = make_suite(s.prompts, s.seed)
  pairs = sum(len(e.choices) for e in suite)
  with tempfile.TemporaryDirectory(prefix="bench_scoring_") as directory:
    texts = itertools.chain(corpus.documents(s.vocabulary_documents, s.seed),
                            [_TEMPLATE_TEXT] * 20)
    spiece = corpus.train_vocabulary(texts, os.path.join(directory, "spiece"),
                                     s.vocabulary_pieces)
    vocab = vocabularies.SentencePieceVocabulary(spiece, vocabularies.DEFAULT_EXTRA_IDS)
    model = models.build_model(models.ENCODER_DECODER, s.size, dtype="float32",
                               vocab_size=vocabularies.padded_vocab_size(vocab.vocab_size))
    params = model.get_initial_variables(
        jax.random.PRNGKey(s.seed), models.default_input_shapes(models.ENCODER_DECODER, 1, 8,
                                                                8, 8))["params"]
    export = hf.export_hf(params, model.config, models.ENCODER_DECODER,
                          os.path.join(directory, "export"))
    shutil.copy(spiece, os.path.join(export, "spiece.model"))
    requests = to_requests(vocab, suite)
    lengths = [len(r.prompt) for r in requests]
    log(f"suite: {len(suite)} prompts, {pairs} choices, prompt tokens "
        f"{min(lengths)}-{max(lengths)}; model {s.size} ED, vocabulary {vocab.vocab_size} "
        f"(model {model.config.vocab_size}); load average {load_start}")

    scorer = rank_classification.RankScorer(model, params)
    ours_fn = lambda: scorer.score(to_requests(vocab, suite))
    ours_scores, ours_first = _timed(ours_fn)

    lm_error: Optional[str] = None
    lm = instances = None
    try:
      import torch
      lm = _hflm(export, batch_size)
      instances = _instances(suite)
    except ImportError as e:     # the eval extra (torch, transformers, lm-eval) is missing
      lm_error = f"{type(e).__name__}: {e}"

    lm_checks: dict = {}
    lm_first: dict[int, float] = {}
    if lm is not None:
      lm_tokens = [(lm.tok_encode(e.prompt),
                    [lm.tok_encode(c + EOS_TEXT, add_special_tokens=False) for c in e.choices])
                   for e in suite]
      tokens_identical = all(
          p == r.prompt.tolist() and [list(c) for c in cs] == [c.tolist() for c in r.choices]
          for (p, cs), r in zip(lm_tokens, requests))
      if not tokens_identical:
        raise ValueError("scoring benchmark: lm-eval's tokeniser gives other token ids than "
                         "ours; the speeds would not be comparable.")
      for n in threads:
        torch.set_num_threads(n)
        result, lm_first[n] = _timed(lambda: lm.loglikelihood(instances, disable_tqdm=True))
      lm_scores = _group([ll for ll, _ in result], suite)
      lm_diff = _max_diff(ours_scores, lm_scores)
      lm_checks = {"tokens_identical": tokens_identical, "max_abs_diff": lm_diff,
                   "tolerance": LM_EVAL_TOLERANCE, "identical": lm_diff <= LM_EVAL_TOLERANCE}
      if not lm_checks["identical"]:
        raise ValueError(f"scoring benchmark: ours and lm-eval's scores differ by {lm_diff:g} "
                         f"(> {LM_EVAL_TOLERANCE:g}); the export or the requests disagree.")

    ours_seconds: list[float] = []
    lm_seconds: dict[int, list[float]] = {n: [] for n in lm_first}
    for _ in range(s.rounds):
      ours_seconds.append(_timed(ours_fn)[1])
      for n in lm_seconds:
        torch.set_num_threads(n)
        lm_seconds[n].append(_timed(lambda: lm.loglikelihood(instances, disable_tqdm=True))[1])

    subset = requests[:s.naive_prompts]
    naive_pairs = sum(len(r.choices) for r in subset)
    naive_fn = lambda: rank_classification.naive_scores(model, params, subset)
    naive_first = _timed(naive_fn)[1] if s.naive_warm else None
    naive_scores, naive_time = _timed(naive_fn)
    naive_diff = _max_diff(ours_scores[:s.naive_prompts], naive_scores)
    if naive_diff > NAIVE_TOLERANCE:
      raise ValueError(f"scoring benchmark: RankScorer and naive_scores differ by "
                       f"{naive_diff:g} (> {NAIVE_TOLERANCE:g}).")

  ours = dict(_rate(len(suite), pairs, ours_seconds, ours_first), name="ours (RankScorer)")
  log(f"  ours      {ours['examples_per_second']:8.2f} examples/s (first call "
      f"{ours_first:.1f} s, compiles)")
  lm_entries = []
  for n, seconds in lm_seconds.items():
    entry = dict(_rate(len(suite), pairs, seconds, lm_first[n]), torch_threads=n,
                 batch_size=batch_size, name=f"lm-eval HF ({n} thread{'s' if n > 1 else ''})")
    lm_entries.append(entry)
    log(f"  lm-eval   {entry['examples_per_second']:8.2f} examples/s (torch threads {n})")
  naive = dict(_rate(len(subset), naive_pairs, [naive_time], naive_first),
               name="naive (naive_scores)")
  log(f"  naive     {naive['examples_per_second']:8.2f} examples/s on {len(subset)} prompts")

  comparison = None
  if lm_entries:
    baseline = max(lm_entries, key=lambda e: e["examples_per_second"])
    ratio = ours["examples_per_second"] / baseline["examples_per_second"]
    comparison = {
        "baseline": baseline["name"], "ours_examples_per_second": ours["examples_per_second"],
        "lm_eval_examples_per_second": baseline["examples_per_second"],
        "lm_eval_torch_threads": baseline["torch_threads"], "ratio": ratio,
        "ratio_median": ours["examples_per_second_median"]
        / baseline["examples_per_second_median"],
        "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO,
        "shortfall": max(0.0, 1.0 - ratio / TARGET_RATIO),
        "speedup_needed": max(1.0, TARGET_RATIO / ratio)}
  versions = {}
  if lm_entries:
    import lm_eval
    import torch
    import transformers
    versions = {"lm_eval": getattr(lm_eval, "__version__", "?"), "torch": torch.__version__,
                "transformers": transformers.__version__}
  return {
      "target_ratio": TARGET_RATIO, "settings": dataclasses.asdict(s),
      "lm_eval_batch_size": batch_size, "hf_threads": list(threads),
      "load_average": {"start": load_start, "end": load_average()},
      "usable_cpus": usable_cpus(),
      "suite": {"prompts": len(suite), "pairs": pairs,
                "templates": {t: sum(e.template == t for e in suite) for t in TEMPLATES},
                "prompt_tokens": {"min": min(lengths), "max": max(lengths),
                                  "mean": float(np.mean(lengths))},
                "vocab_size": vocab.vocab_size, "model_vocab_size": model.config.vocab_size},
      "model": {"arch": models.ENCODER_DECODER, "size": s.size,
                "params": models.count_params(model), "dtype": "float32"},
      "ours": ours, "lm_eval": {"entries": lm_entries, "error": lm_error,
                                "versions": versions, **lm_checks},
      "naive": dict(naive, max_abs_diff=naive_diff, tolerance=NAIVE_TOLERANCE,
                    identical=naive_diff <= NAIVE_TOLERANCE),
      "ratio_vs_naive": ours["examples_per_second"] / naive["examples_per_second"],
      "comparison": comparison,
  }


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
def why_missed(result: Mapping[str, Any]) -> str:
  """A one-line reason from this run's numbers."""
  suite, c = result["suite"], result["comparison"]
  return (f"{suite['pairs'] / suite['prompts']:.1f} choices a prompt bound what encoding "
          f"each prompt once can save; lm-eval's best was torch at "
          f"{c['lm_eval_torch_threads']} thread(s); load average "
          f"{result['load_average']['start']} on {result['usable_cpus']} CPUs")


def summary(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  header = ["scorer", "prompts (pairs)", "examples/s", "pairs/s", "best / median s",
            "first call s", "ours / this", "scores equal", f"target >= {TARGET_RATIO:g}x"]
  ours, c = result["ours"], result["comparison"]

  def row(e, ratio="", equal="", target=""):
    return [e["name"], f"{e['prompts']} ({e['pairs']})", f"{e['examples_per_second']:.2f}",
            f"{e['pairs_per_second']:.2f}",
            f"{e['best_seconds']:.3f} / {e['median_seconds']:.3f}",
            "-" if e["first_seconds"] is None else f"{e['first_seconds']:.1f}", ratio, equal,
            target]

  lm = result["lm_eval"]
  rows = [row(ours)]
  for e in lm["entries"]:
    ratio = ours["examples_per_second"] / e["examples_per_second"]
    is_baseline = c is not None and e["name"] == c["baseline"]
    target = ""
    if is_baseline:
      target = ("met" if c["meets_target"] else
                f"MISSED by {c['shortfall']:.0%} (needs {c['speedup_needed']:.2f}x)")
    rows.append(row(e, f"{ratio:.2f}x", f"{lm['identical']} (max diff "
                                        f"{lm['max_abs_diff']:.1e})", target))
  naive = result["naive"]
  rows.append(row(naive, f"{result['ratio_vs_naive']:.1f}x",
                  f"{naive['identical']} (max diff {naive['max_abs_diff']:.1e})"))
  s, suite, model = result["settings"], result["suite"], result["model"]
  notes = [
      f"Suite: {suite['prompts']} T0-style prompts ({', '.join(f'{k} {v}' for k, v in suite['templates'].items())}), "
      f"{suite['pairs']} choices, prompts of {suite['prompt_tokens']['min']}-"
      f"{suite['prompt_tokens']['max']} tokens; SentencePiece vocabulary of "
      f"{suite['vocab_size']} ids. Model: {model['size']} ED, {model['params'] / 1e6:.1f}M "
      f"parameters, float32, random initialisation.",
      f"Ours is timed from text (tokenisation included), lm-eval's loglikelihood too "
      f"(batch size {result['lm_eval_batch_size']}, torch threads {result['hf_threads']}, "
      f"the faster is the baseline); naive_scores from token ids on the first "
      f"{naive['prompts']} prompt(s). Best of {s['rounds']} interleaved round(s); first "
      f"calls (compilation) are untimed and shown apart.",
      f"Load average {result['load_average']['start']} at the start, "
      f"{result['load_average']['end']} at the end, on {result['usable_cpus']} usable CPUs.",
  ]
  if c is None:
    notes.append(f"Scoring target not measured: lm-eval unavailable ({lm['error']}); "
                 f"install the eval extra and accelerate.")
  elif c["meets_target"]:
    notes.append(f"Target ours/lm-eval >= {TARGET_RATIO:g}x met ({c['ratio']:.2f}x, "
                 f"median-based {c['ratio_median']:.2f}x).")
  else:
    notes.append(f"Target ours/lm-eval >= {TARGET_RATIO:g}x MISSED by {c['shortfall']:.0%} "
                 f"({c['ratio']:.2f}x, median-based {c['ratio_median']:.2f}x): "
                 f"{why_missed(result)}.")
  return header, rows, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("scoring")
  group.add_argument("--lm-eval-batch-size", type=int, default=32,
                     help="requests per batch of lm-eval's HF backend (default 32)")
