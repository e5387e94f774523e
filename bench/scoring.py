"""Zero-shot scoring speed: T0-Eval rank classification, ours against two baselines.

One fixed local suite, generated here (seeded): `prompts` T0-style prompts over the
embedded English-like corpus of `bench.corpus` (natural-language inference with three
choices, yes/no questions, fill-the-blank with four one-word choices, next-sentence
with two to four sentence choices), tokenised with a SentencePiece vocabulary trained
on that corpus. One encoder-decoder (`size`, float32, random initialisation: scores,
not accuracy, are compared) scored three ways, each measured in this run:

  ours      `RankScorer.score` (`scoring.Scorer`'s packed rows: prompts packed into
            encoder rows and encoded once, the cross-attention keys and values projected
            once per prompt, each encoder row's choices packed into decoder rows,
            jitted), timed from text: tokenisation included;
  fine      `scoring_baselines.FineScorer` (each prompt a row of its own length bucket,
            choices decoded by their own length bucket, not packed): `fine` records
            ours / fine examples/s and both first passes, measured in the same rounds;
  per row   `FineScorer` with the cross-attention keys and values projected once per
            choice row (`cross_kv_per_prompt=False`, the reference): `cross_kv` records
            fine / per row examples/s, measured in the same rounds;
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
`prompt ids + [EOS]` and `choice ids + [EOS]`. The benchmark checks the ids
(`tokens_identical`) and the scores, ours against naive's within `NAIVE_TOLERANCE` and
against lm-eval's within `LM_EVAL_TOLERANCE` (both relative: `|difference| / max(1,
|score|)`; the largest absolute difference is recorded too), and stops if they differ:
speeds of different computations are not compared. Each scorer runs once untimed (ours
compiles its batch shapes, the naive scorer its ops per shape, lm-eval at the first
thread count); that first pass of ours also records the positions its batches compute
(`padding`). Then ours, per row and lm-eval alternate for `rounds` rounds; the median pass
counts, the best is recorded too. `examples/s` = prompts / seconds; `ratio = ours /
lm-eval` examples/s, target `>= TARGET_RATIO`. `--smoke` scores 8 prompts with the tiny
model, one round, and times the naive scorer's first pass.
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
from arch_objective.evaluation import rank_classification, scoring
from bench import corpus, scoring_baselines
from bench.training import load_average, usable_cpus

# Hugging Face reads only local files here; never ask the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_RATIO = 3.0
NAIVE_TOLERANCE = 1e-6     # relative: same model and framework, other batch shapes
LM_EVAL_TOLERANCE = 1e-5   # relative: the exported model in PyTorch
EOS_TEXT = "</s>"


@dataclasses.dataclass(frozen=True)
class Settings:
  """The suite (`prompts`, their passages), the model size, the rounds, and how much of
  the suite the naive scorer scores."""
  size: str = "small"
  prompts: int = 64
  naive_prompts: int = 2
  naive_warm: bool = True       # one untimed naive pass first (JAX compiles ops per shape)
  rounds: int = 3
  vocabulary_pieces: int = 2000
  vocabulary_documents: int = 400
  hf_threads: tuple[int, ...] = ()   # () = (all usable cores, 1)
  passage_sentences: int = 4    # a prompt's passage: 1 to this many corpus sentences
  seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", prompts=8, naive_prompts=1, naive_warm=False, rounds=1,
                 vocabulary_pieces=400, vocabulary_documents=60, passage_sentences=1)


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


TEMPLATES = ("yes_no", "nli", "fill_blank", "next_sentence")
_TEMPLATE_TEXT = (
    "Question: Does this imply that \"{}\"? Yes, no, or maybe? "
    "Is the word \"{}\" in the passage? Answer yes or no. "
    "Which word fills the blank ___: {}, {}, {} or {}? "
    "What comes next? Choose the best continuation.")


def _sentences(documents) -> list[str]:
  return [s.strip() + "." for d in documents for s in d.replace("\n", " ").split(".")
          if len(s.split()) >= 4]


def make_suite(num_prompts: int, seed: int = 0, passage_sentences: int = 4
               ) -> list[Example]:
  """`num_prompts` examples cycling through `TEMPLATES`, 2-4 choices each, over
  passages of 1 to `passage_sentences` corpus sentences."""
  rng = np.random.default_rng([seed, 7])
  sentences = _sentences(corpus.documents(max(40, num_prompts), seed + 1))
  pick = lambda: sentences[int(rng.integers(len(sentences)))]
  passage = lambda: " ".join(pick() for _ in range(int(rng.integers(1, passage_sentences + 1))))
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


def agreement(ours: Sequence[np.ndarray], other: Sequence[np.ndarray], tolerance: float
              ) -> dict:
  """How far `other`'s scores are from ours: the largest absolute difference, and the
  largest relative one (`|difference| / max(1, |score|)`), which must stay within
  `tolerance` (float32 sums of a few hundred nats differ in their last bits)."""
  diffs = [np.abs(x - y) for x, y in zip(ours, other)]
  relative = [d / np.maximum(1.0, np.abs(y)) for d, y in zip(diffs, other)]
  max_rel = float(max(np.max(r) for r in relative))
  return {"max_abs_diff": float(max(np.max(d) for d in diffs)), "max_rel_diff": max_rel,
          "tolerance": tolerance, "agree": max_rel <= tolerance}


def _rate(prompts: int, pairs: int, seconds: Sequence[float], first: Optional[float]
          ) -> dict:
  """Rates of the median pass (the best pass's beside them)."""
  median, best = statistics.median(seconds), min(seconds)
  return {"prompts": prompts, "pairs": pairs, "seconds": list(seconds),
          "median_seconds": median, "best_seconds": best, "first_seconds": first,
          "examples_per_second": prompts / median, "pairs_per_second": pairs / median,
          "examples_per_second_best": prompts / best}


def score_counting_padding(
    scorer: rank_classification.RankScorer | scoring_baselines.FineScorer,
    requests: Sequence[rank_classification.Request]) -> tuple[list[np.ndarray], dict]:
  """`scorer.score(requests)` and the positions it computed (`scorer.computed`, padding
  included) beside the requests' own tokens. Used once, outside the timed passes, to
  explain the speed."""
  scores = scorer.score(requests)
  c = scorer.computed
  return scores, {
      "batches": c["batches"],
      "encoder_tokens": c["encoder_positions"],
      "decoder_tokens": c["decoder_positions"],
      "cross_attention_key_tokens": c["cross_attention_key_positions"],
      "prompt_tokens": sum(len(r.prompt) for r in requests),
      "choice_tokens": sum(len(c) for r in requests for c in r.choices),
      "prompt_tokens_once_per_choice": sum(len(r.prompt) * len(r.choices) for r in requests),
  }


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
  suite = make_suite(s.prompts, s.seed, s.passage_sentences)
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

    # The first pass compiling its programs one after another, then (the one that counts)
    # on the scorer's pool of threads; every compiled program is dropped before each.
    jax.clear_caches()
    scoring.clear_programs()
    serial = rank_classification.RankScorer(model, params)
    serial.scorer.compile_workers = 1
    serial_first = _timed(lambda: serial.score(requests))[1]
    log(f"  ours      first pass {serial_first:6.1f} s compiling one program at a time")
    jax.clear_caches()
    scoring.clear_programs()
    scorer = rank_classification.RankScorer(model, params)
    ours_pass = lambda: scorer.score(to_requests(vocab, suite))
    (ours_scores, padded), ours_first = _timed(lambda: score_counting_padding(scorer,
                                                                             requests))
    compiling = {"workers": scorer.scorer.compile_workers,
                 "programs": scorer.computed["programs_compiled"],
                 "first_seconds_one_worker": serial_first,
                 "first_pass_speedup": serial_first / ours_first}
    log(f"  ours      first pass {ours_first:6.1f} s (compiles its {compiling['programs']} "
        f"programs on {compiling['workers']} threads: {compiling['first_pass_speedup']:.2f}x)")
    fine = scoring_baselines.FineScorer(model, params)
    fine_pass = lambda: fine.score(to_requests(vocab, suite))
    (fine_scores, fine_padded), fine_first = _timed(lambda: score_counting_padding(
        fine, requests))
    fine_programs = fine.computed["programs_compiled"]
    log(f"  fine      first pass {fine_first:6.1f} s (length buckets; compiles "
        f"{fine_programs} programs)")
    fine_checks = agreement(ours_scores, fine_scores, NAIVE_TOLERANCE)
    if not fine_checks["agree"]:
      raise ValueError(f"scoring benchmark: packed and fine shapes differ by "
                       f"{fine_checks['max_rel_diff']:g} relative (> {NAIVE_TOLERANCE:g}).")
    per_row = scoring_baselines.FineScorer(model, params, cross_kv_per_prompt=False)
    per_row_pass = lambda: per_row.score(to_requests(vocab, suite))
    per_row_scores, per_row_first = _timed(lambda: per_row.score(requests))
    log(f"  per row   first pass {per_row_first:6.1f} s (K/V projected per choice row)")
    per_row_checks = agreement(fine_scores, per_row_scores, NAIVE_TOLERANCE)
    if not per_row_checks["agree"]:
      raise ValueError(f"scoring benchmark: K/V projected per prompt and per row differ by "
                       f"{per_row_checks['max_rel_diff']:g} relative (> {NAIVE_TOLERANCE:g}).")

    lm_error: Optional[str] = None
    lm = instances = None
    try:
      import torch
      lm = _hflm(export, batch_size)
      instances = _instances(suite)
    except ImportError as e:     # the eval extra (torch, transformers, lm-eval) is missing
      lm_error = f"{type(e).__name__}: {e}"
    lm_pass = lambda: lm.loglikelihood(instances, disable_tqdm=True)

    lm_checks: dict = {}
    lm_first: dict[int, Optional[float]] = {}
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
      torch.set_num_threads(threads[0])   # one untimed pass: the scores, and a warm-up
      result, first = _timed(lm_pass)
      log(f"  lm-eval   first pass {first:6.1f} s (torch threads {threads[0]})")
      lm_first = {n: first if n == threads[0] else None for n in threads}
      lm_checks = dict(agreement(ours_scores, _group([ll for ll, _ in result], suite),
                                 LM_EVAL_TOLERANCE), tokens_identical=tokens_identical)
      if not lm_checks["agree"]:
        raise ValueError(f"scoring benchmark: ours and lm-eval's scores differ by "
                         f"{lm_checks['max_rel_diff']:g} relative (> {LM_EVAL_TOLERANCE:g}); "
                         f"the export or the requests disagree.")

    ours_seconds: list[float] = []
    fine_seconds: list[float] = []
    per_row_seconds: list[float] = []
    lm_seconds: dict[int, list[float]] = {n: [] for n in lm_first}
    for i in range(s.rounds):
      ours_seconds.append(_timed(ours_pass)[1])
      fine_seconds.append(_timed(fine_pass)[1])
      per_row_seconds.append(_timed(per_row_pass)[1])
      for n in lm_seconds:
        torch.set_num_threads(n)
        lm_seconds[n].append(_timed(lm_pass)[1])
      log(f"  round {i + 1}: ours {ours_seconds[-1]:.2f} s, fine {fine_seconds[-1]:.2f} s, "
          f"per row "
          f"{per_row_seconds[-1]:.2f} s, lm-eval "
          + ", ".join(f"{t[-1]:.2f} s ({n} thread{'s' if n > 1 else ''})"
                      for n, t in lm_seconds.items()))

    subset = requests[:s.naive_prompts]
    naive_pairs = sum(len(r.choices) for r in subset)
    naive_pass = lambda: rank_classification.naive_scores(model, params, subset)
    naive_first = _timed(naive_pass)[1] if s.naive_warm else None
    naive_scores, naive_time = _timed(naive_pass)
    naive_checks = agreement(ours_scores[:s.naive_prompts], naive_scores, NAIVE_TOLERANCE)
    if not naive_checks["agree"]:
      raise ValueError(f"scoring benchmark: RankScorer and naive_scores differ by "
                       f"{naive_checks['max_rel_diff']:g} relative (> {NAIVE_TOLERANCE:g}).")

  ours = dict(_rate(len(suite), pairs, ours_seconds, ours_first), name="ours (RankScorer)")
  log(f"  ours      {ours['examples_per_second']:8.2f} examples/s")
  fine_entry = dict(_rate(len(suite), pairs, fine_seconds, fine_first),
                    name="ours, fine length buckets")
  fine_result = dict(fine_entry, **fine_checks, padding=fine_padded, programs=fine_programs,
                     ratio=ours["examples_per_second"] / fine_entry["examples_per_second"],
                     ratio_best=(ours["examples_per_second_best"]
                                 / fine_entry["examples_per_second_best"]),
                     first_pass_speedup=fine_first / ours_first)
  log(f"  fine      {fine_entry['examples_per_second']:8.2f} examples/s (ours / fine "
      f"{fine_result['ratio']:.2f}x; first pass {fine_result['first_pass_speedup']:.2f}x)")
  per_row_entry = dict(_rate(len(suite), pairs, per_row_seconds, per_row_first),
                       name="fine, K/V per choice row")
  cross_kv = dict(per_row_entry, **per_row_checks,
                  ratio=fine_entry["examples_per_second"] / per_row_entry["examples_per_second"],
                  ratio_best=(fine_entry["examples_per_second_best"]
                              / per_row_entry["examples_per_second_best"]))
  log(f"  per row   {per_row_entry['examples_per_second']:8.2f} examples/s (fine / per row "
      f"{cross_kv['ratio']:.2f}x)")
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
        "ratio_best": ours["examples_per_second_best"] / baseline["examples_per_second_best"],
        "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO,
        "shortfall": max(0.0, 1.0 - ratio / TARGET_RATIO),
        "speedup_needed": max(1.0, TARGET_RATIO / ratio)}
  versions = {}
  if lm_entries:
    import lm_eval
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
      "ours": dict(ours, padding=padded, compiling=compiling),
      "fine": fine_result,
      "cross_kv": cross_kv,
      "lm_eval": dict(lm_checks, entries=lm_entries, error=lm_error, versions=versions),
      "naive": dict(naive, **naive_checks),
      "ratio_vs_naive": ours["examples_per_second"] / naive["examples_per_second"],
      "comparison": comparison,
  }


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
def why_missed(result: Mapping[str, Any]) -> str:
  """A one-line reason from this run's numbers."""
  suite, c, pad = result["suite"], result["comparison"], result["ours"]["padding"]
  why = (f"{suite['pairs'] / suite['prompts']:.1f} choices a prompt bound what encoding each "
         f"prompt once can save on the encoder")
  if pad:
    why += (f"; ours computes {pad['encoder_tokens']:,} encoder positions for "
            f"{pad['prompt_tokens']:,} prompt tokens "
            f"({pad['encoder_tokens'] / pad['prompt_tokens']:.2f}x: prompts packed into rows "
            f"of the longest one's length bucket; lm-eval encodes "
            f"{pad['prompt_tokens_once_per_choice']:,}, each prompt once per choice), "
            f"{pad['decoder_tokens']:,} decoder positions for {pad['choice_tokens']:,} "
            f"choice tokens ({pad['decoder_tokens'] / pad['choice_tokens']:.2f}x: a decoder "
            f"row holds the choices of one encoder row's prompts, so each encoder row leaves "
            f"part of a decoder row empty) and cross-attention keys and values over "
            f"{pad['cross_attention_key_tokens']:,} encoder positions (once per prompt); "
            f"every packed position also attends over its whole row, masked")
  return why + (f"; lm-eval's best was torch at {c['lm_eval_torch_threads']} thread(s); "
                f"load average {result['load_average']['start']} on "
                f"{result['usable_cpus']} CPUs")


def _agreement(checks: Mapping[str, Any]) -> str:
  return f"{checks['agree']} (max diff {checks['max_abs_diff']:.1e})"


def summary(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
  header = ["scorer", "prompts (pairs)", "examples/s", "pairs/s", "median (best) s",
            "first pass s", "ours / this", "scores agree", f"target >= {TARGET_RATIO:g}x"]
  ours, c = result["ours"], result["comparison"]

  def row(e, ratio="", agree="", target=""):
    return [e["name"], f"{e['prompts']} ({e['pairs']})", f"{e['examples_per_second']:.2f}",
            f"{e['pairs_per_second']:.2f}",
            f"{e['median_seconds']:.3f} ({e['best_seconds']:.3f})",
            "-" if e["first_seconds"] is None else f"{e['first_seconds']:.1f}", ratio, agree,
            target]

  lm = result["lm_eval"]
  rows = [row(ours)]
  fine = result.get("fine")
  if fine:
    rows.append(row(fine, f"{fine['ratio']:.2f}x", _agreement(fine)))
  kv = result.get("cross_kv")
  if kv:
    rows.append(row(kv, "" if fine else f"{kv['ratio']:.2f}x", _agreement(kv)))
  for e in lm["entries"]:
    ratio = ours["examples_per_second"] / e["examples_per_second"]
    target = ""
    if c is not None and e["name"] == c["baseline"]:
      target = ("met" if c["meets_target"] else
                f"MISSED by {c['shortfall']:.0%} (needs {c['speedup_needed']:.2f}x)")
    rows.append(row(e, f"{ratio:.2f}x", _agreement(lm), target))
  naive = result["naive"]
  rows.append(row(naive, f"{result['ratio_vs_naive']:.1f}x", _agreement(naive)))
  s, suite, model = result["settings"], result["suite"], result["model"]
  templates = ", ".join(f"{k} {v}" for k, v in suite["templates"].items())
  notes = [
      f"Suite: {suite['prompts']} T0-style prompts ({templates}), "
      f"{suite['pairs']} choices, prompts of {suite['prompt_tokens']['min']}-"
      f"{suite['prompt_tokens']['max']} tokens; SentencePiece vocabulary of "
      f"{suite['vocab_size']} ids. Model: {model['size']} ED, {model['params'] / 1e6:.1f}M "
      f"parameters, float32, random initialisation.",
      f"Ours is timed from text (tokenisation included), lm-eval's loglikelihood too "
      f"(batch size {result['lm_eval_batch_size']}, torch threads {result['hf_threads']}, "
      f"the faster is the baseline); naive_scores from token ids on the first "
      f"{naive['prompts']} prompt(s). Median of {s['rounds']} interleaved round(s) (best "
      f"beside it); first passes (ours compiles) are untimed and shown apart.",
      f"Scores agree when max |difference| / max(1, |score|) <= {naive['tolerance']:g} "
      f"(naive) and {lm.get('tolerance', LM_EVAL_TOLERANCE):g} (lm-eval, torch against "
      f"XLA); the benchmark stops if they do not.",
      f"Load average {result['load_average']['start']} at the start, "
      f"{result['load_average']['end']} at the end, on {result['usable_cpus']} usable CPUs.",
  ]
  compiling = ours.get("compiling")
  if compiling:
    notes.append(f"Ours' first pass compiles {compiling['programs']} programs on "
                 f"{compiling['workers']} threads: {ours['first_seconds']:.1f} s, against "
                 f"{compiling['first_seconds_one_worker']:.1f} s compiling one at a time in "
                 f"the same run ({compiling['first_pass_speedup']:.2f}x).")
  if fine:
    pad, fpad = ours.get("padding") or {}, fine["padding"]
    notes.append(
        f"Packed rows (ours) against fine length buckets, same rounds: {fine['ratio']:.2f}x "
        f"examples/s (best passes {fine['ratio_best']:.2f}x); first pass "
        f"{ours['first_seconds']:.1f} s against {fine['first_seconds']:.1f} s "
        f"({fine['first_pass_speedup']:.2f}x; {compiling['programs'] if compiling else '?'} "
        f"programs against {fine['programs']}); encoder / decoder positions "
        f"{pad.get('encoder_tokens', 0):,} / {pad.get('decoder_tokens', 0):,} against "
        f"{fpad['encoder_tokens']:,} / {fpad['decoder_tokens']:,}; scores agree within "
        f"{fine['tolerance']:g} relative.")
  if kv:
    notes.append(f"Cross-attention keys and values projected once per prompt (fine) "
                 f"against once per choice row, same rounds: {kv['ratio']:.2f}x examples/s "
                 f"(best passes {kv['ratio_best']:.2f}x); scores agree within "
                 f"{kv['tolerance']:g} relative.")
  if c is None:
    notes.append(f"Scoring target not measured: lm-eval unavailable ({lm['error']}); "
                 f"install the eval extra and accelerate.")
  elif c["meets_target"]:
    notes.append(f"Target ours/lm-eval >= {TARGET_RATIO:g}x met ({c['ratio']:.2f}x, "
                 f"best passes {c['ratio_best']:.2f}x).")
  else:
    notes.append(f"Target ours/lm-eval >= {TARGET_RATIO:g}x MISSED by {c['shortfall']:.0%} "
                 f"({c['ratio']:.2f}x, best passes {c['ratio_best']:.2f}x): "
                 f"{why_missed(result)}.")
  return header, rows, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("scoring")
  group.add_argument("--lm-eval-batch-size", type=int, default=32,
                     help="requests per batch of lm-eval's HF backend (default 32)")
