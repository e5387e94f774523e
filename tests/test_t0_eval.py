"""T0-Eval: rank classification, aggregation over prompts and datasets, the `eval t0`
command, and MT-F training of each architecture on a prompted mixture (spec §3, §4.1)."""
import collections
import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from arch_objective import build_model, models
from arch_objective.evaluation import rank_classification
from arch_objective.evaluation.rank_classification import Request

needs_promptsource = pytest.mark.skipif(importlib.util.find_spec("promptsource") is None,
                                        reason="promptsource is not installed")

ARCHS = (models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER)
MTF_DATASETS = ["super_glue/rte", "super_glue/cb", "super_glue/copa"]


@pytest.fixture(scope="session")
def eval_dir(shared_data):
  root = shared_data / "eval"
  for name in ("RTE", "CB", "COPA"):
    if not (root / "super_glue" / name / "val.jsonl").is_file():
      pytest.skip(f"SuperGLUE {name} validation file not found under {root}")
  return root


def _raw(eval_dir, name):
  with open(eval_dir / "super_glue" / name / "val.jsonl") as f:
    return [json.loads(line) for line in f if line.strip()]


_PARAMS = {}
_JITTED = {}


def _model(arch):
  """A tiny float32 model; the CD and ND share one set of random parameters."""
  model = build_model(arch, "tiny", dtype="float32")
  family = "ed" if arch == models.ENCODER_DECODER else "decoder"
  if family not in _PARAMS:
    shapes = models.default_input_shapes(arch, 1, 8, 8, 8)
    _PARAMS[family] = model.get_initial_variables(jax.random.PRNGKey(1), shapes)["params"]
  return model, _PARAMS[family]


class _Jitted:
  """The model as `naive_scores` reads it (name, score_batch), compiled once per arch:
  the eager forward pass costs seconds per new shape on CPU."""

  def __init__(self, model):
    self.name = model.name
    self.score_batch = jax.jit(model.score_batch)


def _jitted(arch):
  if arch not in _JITTED:
    _JITTED[arch] = _Jitted(_model(arch)[0])
  return _JITTED[arch]


def _tokens(rng, n, eos=False):
  body = rng.integers(2, 32000, size=n - 1 if eos else n)
  return (np.append(body, 1) if eos else body).astype(np.int32)


def _requests(arch, seed):
  """Requests of varying prompt, choice and choice-count lengths over two buckets, with
  few distinct shapes (each is one compilation of the one-pass-per-choice reference).

  Decoder-only: rows `prompt ++ choice` of 12 tokens (bucket 16) or 28 (bucket 32).
  ED: prompts of 10 tokens (encoder bucket 16, choices of 2) or 26 (bucket 32, choices of 4).
  """
  rng = np.random.default_rng(seed)
  if arch == models.ENCODER_DECODER:
    specs = [(10, 2, 2)] * 6 + [(26, 4, 3)] * 4
  else:
    specs = [(10, 2, 2), (8, 4, 3), (9, 3, 3), (10, 2, 3), (8, 4, 2),
             (26, 2, 3), (24, 4, 2), (25, 3, 3), (26, 2, 2), (24, 4, 3)]
  order = rng.permutation(len(specs))
  return [Request(_tokens(rng, specs[i][0]),
                  tuple(_tokens(rng, specs[i][1], eos=True) for _ in range(specs[i][2])))
          for i in order]


def _by_hand(arch, params, prompt, choice):
  """The score of one choice from a batch built by hand (features per spec §4.1),
  through `score_batch` (itself checked against a brute-force log-softmax sum in
  test_models)."""
  prompt, choice = np.asarray(prompt, np.int32), np.asarray(choice, np.int32)
  if arch == models.ENCODER_DECODER:
    batch = {"encoder_input_tokens": prompt[None], "decoder_target_tokens": choice[None],
             "decoder_input_tokens": np.concatenate([[0], choice[:-1]])[None].astype(np.int32),
             "decoder_loss_weights": np.ones((1, len(choice)), np.int32)}
  else:
    row = np.concatenate([prompt, choice])
    n = len(row)
    batch = {"decoder_target_tokens": row[None],
             "decoder_input_tokens": np.concatenate([[0], row[:-1]])[None].astype(np.int32),
             "decoder_loss_weights": (np.arange(n) >= len(prompt))[None].astype(np.int32),
             "decoder_causal_attention": (np.arange(n) <= len(prompt))[None].astype(np.int32)}
  return float(_jitted(arch).score_batch(params, batch)[0])


# -- rank classification -------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_rank_scorer_matches_one_forward_pass_per_choice(arch):
  model, params = _model(arch)
  requests = _requests(arch, seed=ARCHS.index(arch))
  num_rows = sum(len(r.choices) for r in requests)
  # Decoder rows: 4 of 16 tokens or 2 of 32 per batch. ED: up to 3 prompts (encoder 16)
  # with their 6 choices, or 2 prompts (encoder 32) with 6 choices per batch.
  max_tokens = 160 if arch == models.ENCODER_DECODER else 64
  scorer = rank_classification.RankScorer(model, params, max_tokens=max_tokens)
  reference = rank_classification.naive_scores(_jitted(arch), params, requests)
  scores = scorer.score(requests)
  assert len(scores) == len(requests) and num_rows >= 24
  for r, s, ref in zip(requests, scores, reference):
    assert s.shape == (len(r.choices),)
    np.testing.assert_allclose(s, ref, atol=1e-4, rtol=1e-6)
  # The reference reads the prompt and choice as spec §4.1 says (checked on one request).
  first = requests[0]
  np.testing.assert_allclose(reference[0], [_by_hand(arch, params, first.prompt, c)
                                            for c in first.choices], atol=1e-5, rtol=1e-6)
  # Scores are log-likelihoods: negative, and not all alike.
  assert all((s < 0).all() for s in scores)
  assert len({round(float(x), 3) for s in scores for x in s}) > num_rows // 2
  # Per-token normalisation (one bucket): the naive reference's normalised scores, which
  # are the summed scores divided by the choice's token count (EOS included).
  short = [r for r in requests if len(r.prompt) <= 10]
  normalized = scorer.score(short, normalize=True)
  naive_normalized = rank_classification.naive_scores(_jitted(arch), params, short,
                                                      normalize=True)
  for r, s, ref in zip(short, normalized, naive_normalized):
    np.testing.assert_allclose(s, ref, atol=1e-4, rtol=1e-6)
    summed = reference[next(i for i, q in enumerate(requests) if q is r)]
    np.testing.assert_allclose(s, summed / np.asarray([len(c) for c in r.choices]),
                               atol=1e-4, rtol=1e-6)


def test_truncation_keeps_the_first_tokens():
  arch = models.CAUSAL_DECODER
  model, params = _model(arch)
  prompt = np.asarray([101, 202, 303, 404, 505, 606, 707, 808, 909, 1001], np.int32)
  choices = (np.asarray([11, 12, 13, 14, 15, 16, 17, 18, 19, 1], np.int32),
             np.asarray([21, 22, 23, 24, 25, 26, 27, 1], np.int32))
  scorer = rank_classification.RankScorer(model, params, inputs_length=4, targets_length=8,
                                          max_tokens=64)
  got = scorer.score([Request(prompt, choices)])[0]
  first = rank_classification.naive_scores(
      _jitted(arch), params,
      [Request(np.asarray([101, 202, 303, 404], np.int32),
               (np.asarray([11, 12, 13, 14, 15, 16, 17, 18], np.int32), choices[1]))])[0]
  last = rank_classification.naive_scores(
      _jitted(arch), params,
      [Request(np.asarray([707, 808, 909, 1001], np.int32),
               (np.asarray([13, 14, 15, 16, 17, 18, 19, 1], np.int32), choices[1]))])[0]
  np.testing.assert_allclose(got, first, atol=1e-5, rtol=1e-6)
  assert not np.isclose(got[0], last[0], atol=1e-3)
  assert not np.isclose(got[1], last[1], atol=1e-3)  # the prompt's last 4 tokens differ


def test_empty_choice_is_rejected():
  model, params = _model(models.CAUSAL_DECODER)
  scorer = rank_classification.RankScorer(model, params, max_tokens=64)
  with pytest.raises(ValueError, match="request 1"):
    scorer.score([Request(np.asarray([5, 6], np.int32), (np.asarray([7, 1], np.int32),)),
                  Request(np.asarray([5, 6], np.int32), (np.zeros((0,), np.int32),))])


# -- aggregation ---------------------------------------------------------------------------

class _FakeScorer:
  """Picks a choice per request by a rule `pick(call, request index in the call, number of
  choices)`; records the calls (one per dataset, its prompts' requests in prompt order)."""

  def __init__(self, pick):
    self.pick, self.calls = pick, []

  def score(self, requests, normalize=False):
    call = len(self.calls)
    self.calls.append((len(requests), [len(r.choices) for r in requests], normalize))
    out = []
    for i, r in enumerate(requests):
      s = np.zeros(len(r.choices))
      s[self.pick(call, i, len(r.choices))] = 1.0
      out.append(s)
    return out


def _encode(text):
  """Any deterministic tokenisation will do: the fake scorer ignores the tokens."""
  return [2 + (ord(c) % 50) for c in text[:6]]


@needs_promptsource
def test_accuracy_per_prompt_median_over_prompts_mean_over_datasets(eval_dir):
  from arch_objective.evaluation import t0_eval
  from arch_objective.prompts import t0
  rte_raw, cb_raw = _raw(eval_dir, "RTE"), _raw(eval_dir, "CB")
  assert collections.Counter(r["label"] for r in rte_raw) == {"entailment": 146,
                                                              "not_entailment": 131}
  assert collections.Counter(r["label"] for r in cb_raw) == {"entailment": 23,
                                                             "contradiction": 28, "neutral": 5}
  # One score call per dataset (RTE's 10 prompts x 277 examples, then CB's 15 x 56), each
  # prompt's requests together in prompt order: prompt k picks choice k mod #choices for
  # every example. Every RTE template lists the
  # answers in label order (entailment first: 'True', 'Yes', ...), and so does every CB
  # template (entailment, contradiction, neutral), so the accuracy of a prompt is the
  # share of examples with the label of the picked choice: the even RTE prompts
  # (GPT_3_style first) always pick choice 0 and score the share of entailments.
  fake = _FakeScorer(lambda call, i, n: (i // 277) % 2 if n == 2 else (i // 56) % 3)
  suite = (t0.T0_EVAL_BY_NAME["super_glue/rte"], t0.T0_EVAL_BY_NAME["super_glue/cb"])
  logs = []
  results = t0_eval.evaluate_suite(fake, _encode, suite=suite, data_dir=str(eval_dir),
                                   log=logs.append)
  rte_values = [100 * 146 / 277, 100 * 131 / 277] * 5
  cb_values = [100 * 23 / 56, 100 * 28 / 56, 100 * 5 / 56] * 5
  rte = results["datasets"]["super_glue/rte"]
  cb = results["datasets"]["super_glue/cb"]
  assert list(rte["prompts"]) == list(suite[0].prompts)
  assert list(cb["prompts"]) == list(suite[1].prompts)
  assert rte["prompts"]["GPT_3_style"] == pytest.approx(52.7076, abs=1e-3)
  np.testing.assert_allclose(list(rte["prompts"].values()), rte_values)
  np.testing.assert_allclose(list(cb["prompts"].values()), cb_values)
  # Ten prompts: the mean of the two middle values; fifteen: the middle one.
  assert rte["median"] == pytest.approx(float(np.median(rte_values))) == pytest.approx(50.0)
  assert cb["median"] == pytest.approx(float(np.median(cb_values)))
  assert cb["median"] == pytest.approx(100 * 23 / 56)
  assert results["average"] == pytest.approx(float(np.mean([50.0, 100 * 23 / 56])))
  assert results["random_average"] == pytest.approx(float(np.mean([50.0, 100 / 3])))
  assert (rte["random"], rte["examples"], rte["skipped"]) == (50.0, 277, {})
  assert cb["random"] == pytest.approx(100 / 3) and cb["examples"] == 56 and cb["skipped"] == {}
  assert results["normalize"] is False and results["max_examples"] is None
  # One call per dataset with every example under every prompt, its choices all scored.
  assert [c[0] for c in fake.calls] == [277 * 10, 56 * 15]
  assert set(fake.calls[0][1]) == {2} and set(fake.calls[1][1]) == {3}
  assert all(c[2] is False for c in fake.calls)
  assert len(logs) == 2 and "super_glue/rte" in logs[0] and "super_glue/cb" in logs[1]


@needs_promptsource
def test_max_examples_takes_the_first_examples(eval_dir):
  from arch_objective.evaluation import t0_eval
  from arch_objective.prompts import t0
  raw = _raw(eval_dir, "CB")[:8]
  hf = {"entailment": 0, "contradiction": 1, "neutral": 2}
  spec = t0.T0_EVAL_BY_NAME["super_glue/cb"]
  spec = type(spec)(spec.name, spec.dataset, spec.subset, spec.prompts[:2], spec.random)
  fake = _FakeScorer(lambda call, i, n: 1)
  results = t0_eval.evaluate_suite(fake, _encode, suite=(spec,), data_dir=str(eval_dir),
                                   max_examples=8, normalize=True, log=lambda m: None)
  cb = results["datasets"]["super_glue/cb"]
  share = 100 * sum(hf[r["label"]] == 1 for r in raw) / 8
  assert cb["examples"] == 8 and results["max_examples"] == 8
  assert list(cb["prompts"].values()) == pytest.approx([share, share])
  assert share == 100 * 4 / 8  # rows 0, 3, 4 and 5 of the CB file are contradictions
  assert fake.calls == [(16, [3] * 16, True)] and results["normalize"] is True


def test_unknown_dataset_names_the_valid_ones():
  from arch_objective.evaluation import t0_eval
  from arch_objective.prompts import t0
  assert t0_eval.select(None) == t0.T0_EVAL
  assert [d.name for d in t0_eval.select(["anli/r3", "super_glue/rte"])] == [
      "anli/r3", "super_glue/rte"]
  with pytest.raises(ValueError, match="super_glue/rtee") as e:
    t0_eval.select(["super_glue/rtee"])
  assert "super_glue/rte" in str(e.value).split("valid:")[1]


def _data_dir_with(tmp_path, eval_dir, cb_text=None):
  """A data directory with the real RTE file and, if given, this text as the CB file."""
  root = tmp_path / "data"
  (root / "super_glue" / "RTE").mkdir(parents=True)
  (root / "super_glue" / "RTE" / "val.jsonl").write_text(
      (eval_dir / "super_glue" / "RTE" / "val.jsonl").read_text())
  if cb_text is not None:
    (root / "super_glue" / "CB").mkdir(parents=True)
    (root / "super_glue" / "CB" / "val.jsonl").write_text(cb_text)
  return root


@needs_promptsource
def test_every_dataset_is_read_and_checked_before_anything_is_scored(tmp_path, eval_dir):
  from arch_objective.evaluation import t0_eval
  from arch_objective.prompts import t0
  suite = (t0.T0_EVAL_BY_NAME["super_glue/rte"], t0.T0_EVAL_BY_NAME["super_glue/cb"])
  # The second dataset's file is missing.
  root = _data_dir_with(tmp_path / "missing", eval_dir)
  fake = _FakeScorer(lambda call, i, n: 0)
  with pytest.raises(FileNotFoundError) as e:
    t0_eval.evaluate_suite(fake, _encode, suite=suite, data_dir=str(root), log=lambda m: None)
  assert str(e.value).startswith("T0-Eval dataset super_glue/cb validation: "
                                 f"no file in {root}; expected {root}/super_glue/CB/val.jsonl")
  assert fake.calls == []
  # The second dataset's file has a bad line.
  good = (eval_dir / "super_glue" / "CB" / "val.jsonl").read_text().splitlines()
  root = _data_dir_with(tmp_path / "bad", eval_dir, "\n".join(good[:3] + ["{oops"]) + "\n")
  cb_path = root / "super_glue" / "CB" / "val.jsonl"
  with pytest.raises(ValueError) as e:
    t0_eval.evaluate_suite(fake, _encode, suite=suite, data_dir=str(root), log=lambda m: None)
  assert str(e.value) == (f"T0-Eval dataset super_glue/cb ({cb_path}): {cb_path}, line 4: "
                          f"not valid JSON (Expecting property name enclosed in double "
                          f"quotes).")
  assert fake.calls == []
  # An example the templates cannot read (a row without the premise).
  rows = [json.loads(line) for line in good[:2]]
  del rows[1]["premise"]
  root = _data_dir_with(tmp_path / "field", eval_dir,
                        "".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(ValueError, match="example 1: missing field 'premise'") as e:
    t0_eval.evaluate_suite(fake, _encode, suite=suite, data_dir=str(root), log=lambda m: None)
  assert str(e.value).startswith(f"T0-Eval dataset super_glue/cb ({root}/super_glue/CB/"
                                 f"val.jsonl): ")
  assert fake.calls == []


class _StopAt(_FakeScorer):
  """Picks choice 0, and raises `error` at score call `at` (one call per dataset)."""

  def __init__(self, at, error):
    super().__init__(lambda call, i, n: 0)
    self.at, self.error = at, error

  def score(self, requests, normalize=False):
    if len(self.calls) == self.at:
      raise self.error
    return super().score(requests, normalize)


@needs_promptsource
@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("device lost")],
                         ids=["interrupt", "exception"])
def test_a_stopped_run_leaves_the_datasets_it_scored(tmp_path, eval_dir, error):
  from arch_objective.evaluation import t0_eval
  from arch_objective.prompts import t0
  suite = (t0.T0_EVAL_BY_NAME["super_glue/rte"], t0.T0_EVAL_BY_NAME["super_glue/cb"],
           t0.T0_EVAL_BY_NAME["super_glue/copa"])
  out = tmp_path / "out"
  out.mkdir()
  (out / "results.json").write_text('{"from": "an earlier run"}')
  logs = []
  # Score call 1 is CB's (call 0 scored RTE).
  with pytest.raises(type(error)):
    t0_eval.evaluate_suite(_StopAt(1, error), _encode, suite=suite, data_dir=str(eval_dir),
                           log=logs.append, partial_dir=str(out),
                           metadata={"checkpoint": "ckpt", "step": 7})
  partial = json.loads((out / "results.partial.json").read_text())
  assert partial["partial"] is True
  assert partial["completed"] == ["super_glue/rte"]
  assert partial["remaining"] == ["super_glue/cb", "super_glue/copa"]
  assert partial["error"] == ("KeyboardInterrupt" if isinstance(error, KeyboardInterrupt)
                              else "RuntimeError: device lost")
  assert (partial["checkpoint"], partial["step"], partial["max_examples"]) == ("ckpt", 7, None)
  assert "average" not in partial
  rte = partial["datasets"]["super_glue/rte"]
  # Choice 0 is the entailment answer of every RTE template: 146 of 277.
  assert rte["prompts"] == {p: pytest.approx(100 * 146 / 277) for p in suite[0].prompts}
  assert rte["examples"] == 277 and rte["random"] == 50.0
  assert (out / "results.json").read_text() == '{"from": "an earlier run"}'
  assert logs[-1] == (f"stopped after 1 of 3 datasets ({type(error).__name__}); their "
                      f"results are in {out}/results.partial.json")


@needs_promptsource
def test_partial_results_follow_each_dataset_and_go_when_the_run_completes(tmp_path,
                                                                          eval_dir):
  from arch_objective.evaluation import t0_eval
  from arch_objective.prompts import t0
  suite = (t0.T0_EVAL_BY_NAME["super_glue/rte"], t0.T0_EVAL_BY_NAME["super_glue/cb"])
  out = tmp_path / "out"
  results = t0_eval.evaluate_suite(_FakeScorer(lambda call, i, n: 0), _encode, suite=suite,
                                   data_dir=str(eval_dir), max_examples=8,
                                   log=lambda m: None, partial_dir=str(out))
  partial = json.loads((out / "results.partial.json").read_text())
  assert partial["completed"] == ["super_glue/rte", "super_glue/cb"]
  assert partial["remaining"] == [] and "error" not in partial
  assert partial["datasets"] == results["datasets"] and partial["max_examples"] == 8
  files = t0_eval.write(results, str(out))
  assert files == (f"{out}/results.json", f"{out}/results.md")
  assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]
  assert json.loads((out / "results.json").read_text()) == results
  assert "partial" not in results


@needs_promptsource
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_max_examples_must_be_positive(eval_dir, value):
  from arch_objective.evaluation import t0_eval
  from arch_objective.prompts import t0
  fake = _FakeScorer(lambda call, i, n: 0)
  with pytest.raises(ValueError) as e:
    t0_eval.evaluate_suite(fake, _encode, suite=(t0.T0_EVAL_BY_NAME["super_glue/cb"],),
                           data_dir=str(eval_dir), max_examples=value, log=lambda m: None)
  assert str(e.value) == (f"max_examples must be a positive number of examples (or None "
                          f"for all of them), found {value!r}.")
  assert fake.calls == []


def test_eval_t0_max_examples_zero_or_negative_names_the_option(tmp_path, capsys):
  from arch_objective import cli
  # Checked before the checkpoint is read: the path need not exist.
  checkpoint = str(tmp_path / "no_model")
  for args, value in ((["--checkpoint", checkpoint, "--max_examples", "0"], 0),
                      (["--checkpoint", checkpoint, "--max_examples", "-2"], -2),
                      (["--gin_file", "runs/eval_t0.gin",
                        f"--gin.CHECKPOINT_PATH='{checkpoint}'", "--gin.MAX_EXAMPLES=0"], 0),
                      (["--gin_file", "runs/eval_t0.gin", "--checkpoint", checkpoint,
                        "--max_examples", "-1"], -1)):
    assert cli.main(["eval", "t0", *args, "--out", str(tmp_path / "out")]) == 2, args
    err = capsys.readouterr().err
    # (gin adds a line naming the configurable after the message)
    assert err.startswith(
        f"arch-objective eval t0: eval_t0: --max_examples (gin: MAX_EXAMPLES, or "
        f"eval_t0.max_examples) must be a positive number of examples per dataset, found "
        f"{value}; leave it unset (None) for every example."), args
  assert not (tmp_path / "out").exists()


# -- MT-F training, and `arch-objective eval t0` on its checkpoint ---------------------------

@pytest.fixture(scope="module")
def mtf_trainer(tmp_path_factory, eval_dir, t5_vocab_path):
  """Trains a tiny model of an architecture for 12 MT-F steps on RTE + CB + COPA (their
  validation files as train splits), once per architecture and module."""
  from arch_objective.training import data, optimizers, sources, train
  root = tmp_path_factory.mktemp("mtf")
  mapping = root / "mapping.json"
  mapping.write_text(json.dumps({
      f"super_glue/{n.lower()}": {"train": str(eval_dir / "super_glue" / n / "val.jsonl")}
      for n in ("RTE", "CB", "COPA")}))
  runs = {}

  def run(arch):
    if arch not in runs:
      dataset = data.DatasetConfig(
          task="mtf", source=sources.PromptedDatasets(MTF_DATASETS, mapping=str(mapping)),
          vocabulary=t5_vocab_path, inputs_length=128, targets_length=32, batch_size=4)
      model = build_model(arch, "tiny", dtype="float32", dropout_rate=0.1)
      runs[arch] = train.train(model_dir=str(root / arch), model=model, dataset=dataset,
                               train_steps=MTF_STEPS, save_every=1000, log_every=1000,
                               progress=False,
                               learning_rate_schedule=optimizers.constant(1e-2))
    return runs[arch]
  return run


MTF_STEPS = 12


@needs_promptsource
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_mtf_lowers_the_loss(arch, mtf_trainer, clean_registry):
  result = mtf_trainer(arch)
  losses = [h["loss_per_token"] for h in result.history]
  assert len(losses) == MTF_STEPS and all(np.isfinite(losses))
  # Loss on the targets only (answer + EOS, at most 32 tokens a row), never whole rows.
  tokens = [h["num_tokens"] for h in result.history]
  assert all(0 < t <= 4 * 32 for t in tokens), tokens
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
  assert result.last_checkpoint == MTF_STEPS


@needs_promptsource
@pytest.mark.slow
def test_eval_t0_command_end_to_end(tmp_path, mtf_trainer, clean_registry, eval_dir,
                                    small_batches, capsys):
  from arch_objective import cli
  model_dir = mtf_trainer(models.CAUSAL_DECODER).model_dir
  out = tmp_path / "out"
  # Prompts cut to their first 24 tokens and choices to 8 keep every row in one bucket.
  short = ["--inputs_length", "24", "--targets_length", "8"]
  rc = cli.main(["eval", "t0", "--checkpoint", model_dir, "--data_dir", str(eval_dir),
                 "--datasets", "super_glue/rte", "super_glue/cb", "--max_examples", "8",
                 "--out", str(out)] + short)
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  results = json.loads((out / "results.json").read_text())
  assert list(results["datasets"]) == ["super_glue/rte", "super_glue/cb"]
  for name, prompts, random in (("super_glue/rte", 10, 50.0), ("super_glue/cb", 15, 100 / 3)):
    r = results["datasets"][name]
    assert set(r) == {"prompts", "median", "examples", "random", "skipped"}
    assert len(r["prompts"]) == prompts and r["skipped"] == {}
    assert r["examples"] == 8 and r["random"] == pytest.approx(random)
    # With 8 examples every accuracy is a multiple of 12.5.
    for accuracy in r["prompts"].values():
      assert 0 <= accuracy <= 100 and accuracy / 12.5 == pytest.approx(round(accuracy / 12.5))
    assert r["median"] == pytest.approx(float(np.median(list(r["prompts"].values()))))
  assert results["average"] == pytest.approx(
      float(np.mean([r["median"] for r in results["datasets"].values()])))
  assert results["random_average"] == pytest.approx((50 + 100 / 3) / 2)
  assert results["arch"] == "causal_decoder" and results["trained_as"] == "causal_decoder"
  assert results["step"] == MTF_STEPS and results["max_examples"] == 8
  assert results["normalize"] is False
  md = (out / "results.md").read_text()
  rows = [line for line in md.splitlines() if line.startswith("| super_glue/")]
  assert len(rows) == 2
  assert rows[0].startswith("| super_glue/rte | 10 |")
  assert rows[1].startswith("| super_glue/cb | 15 |")
  assert "| **average** |" in md
  assert "| super_glue/rte | 10 |" in captured.out  # the table is printed too

  # The same parameters read as a non-causal decoder.
  out_nd = tmp_path / "out_nd"
  rc = cli.main(["eval", "t0", "--checkpoint", model_dir, "--arch", "non_causal_decoder",
                 "--data_dir", str(eval_dir), "--datasets", "super_glue/rte",
                 "--max_examples", "4", "--normalize", "--out", str(out_nd)] + short)
  assert rc == 0, capsys.readouterr().err
  nd = json.loads((out_nd / "results.json").read_text())
  assert nd["arch"] == "non_causal_decoder" and nd["trained_as"] == "causal_decoder"
  assert list(nd["datasets"]) == ["super_glue/rte"] and nd["normalize"] is True
  assert nd["datasets"]["super_glue/rte"]["examples"] == 4

  # An encoder-decoder cannot read decoder parameters.
  capsys.readouterr()
  rc = cli.main(["eval", "t0", "--checkpoint", model_dir, "--arch", "encoder_decoder",
                 "--data_dir", str(eval_dir), "--datasets", "super_glue/rte",
                 "--out", str(tmp_path / "out_ed")])
  err = capsys.readouterr().err
  assert rc == 2
  assert "causal_decoder" in err and "encoder_decoder" in err
  assert not (tmp_path / "out_ed" / "results.json").exists()

  # An unknown dataset.
  rc = cli.main(["eval", "t0", "--checkpoint", model_dir, "--data_dir", str(eval_dir),
                 "--datasets", "super_glue/rtee", "--out", str(tmp_path / "out_bad")])
  err = capsys.readouterr().err
  assert rc == 2 and "super_glue/rtee" in err
  for name in ("super_glue/rte", "super_glue/cb", "anli/r1", "hellaswag",
               "winogrande/winogrande_xl", "story_cloze/2016"):
    assert name in err


@pytest.fixture
def small_batches(monkeypatch):
  """The CLI's scorer with 1,024 tokens per batch: the default 16,384 (rows of logits over
  32,128 ids) costs seconds per call on CPU; the scores do not depend on it."""
  original = rank_classification.RankScorer

  class SmallBatches(original):
    def __init__(self, *args, **kwargs):
      kwargs.setdefault("max_tokens", 1024)
      super().__init__(*args, **kwargs)

  monkeypatch.setattr(rank_classification, "RankScorer", SmallBatches)


# -- `eval t0` from gin: runs/eval_t0.gin and the paper's experiment ------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, t5_vocab_path):
  """A model directory holding the tiny causal decoder's random parameters at step 5."""
  from arch_objective.convert import model_dir
  model, params = _model(models.CAUSAL_DECODER)
  root = tmp_path_factory.mktemp("ckpt") / "cd"
  model_dir.write_model_dir(str(root), models.CAUSAL_DECODER, model.config, params, step=5,
                            vocabulary=t5_vocab_path, vocab_size=32100)
  return str(root)


# Prompts cut to 24 tokens and choices to 8 keep every row in one bucket (fast on CPU).
T0_OPTIONS = {"datasets": ["super_glue/rte", "super_glue/cb"], "max_examples": 4,
              "inputs_length": 24, "targets_length": 8}


def _as_flags(options):
  flags = []
  for name, value in options.items():
    flags += [f"--{name}"] + ([str(v) for v in value] if isinstance(value, list) else
                              [str(value)])
  return flags


@needs_promptsource
@pytest.mark.slow
def test_eval_t0_from_gin_writes_the_results_of_the_options(tmp_path, tiny_checkpoint,
                                                             eval_dir, small_batches, capsys):
  from arch_objective import cli
  rc = cli.main(["eval", "t0", "--checkpoint", tiny_checkpoint, "--data_dir", str(eval_dir),
                 *_as_flags(T0_OPTIONS), "--out", str(tmp_path / "flags")])
  assert rc == 0, capsys.readouterr().err
  by_flags = json.loads((tmp_path / "flags" / "results.json").read_text())
  assert list(by_flags["datasets"]) == T0_OPTIONS["datasets"] and by_flags["step"] == 5

  # The same run from the run file's macros, results in EVAL_OUTPUT_DIR.
  macros = [f"--gin.{name.upper()}={value!r}" for name, value in T0_OPTIONS.items()]
  rc = cli.main(["eval", "t0", "--gin_file", "runs/eval_t0.gin",
                 f"--gin.CHECKPOINT_PATH='{tiny_checkpoint}'", f"--gin.DATA_DIR='{eval_dir}'",
                 *macros, f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'gin'}'"])
  assert rc == 0, capsys.readouterr().err
  assert (tmp_path / "gin" / "results.json").read_text() == \
      (tmp_path / "flags" / "results.json").read_text()
  assert (tmp_path / "gin" / "results.md").read_text() == \
      (tmp_path / "flags" / "results.md").read_text()
  operative = (tmp_path / "gin" / "config.gin").read_text()
  assert "eval_t0.checkpoint = %CHECKPOINT_PATH" in operative and "MAX_EXAMPLES = 4" in operative

  # The paper's experiment with options on top: they win over its macros (11 datasets,
  # every example), --checkpoint stands for CHECKPOINT_PATH; the default output folder
  # is next to the checkpoint. (The file scores in bfloat16; float32 here, as above, so
  # that near-ties of the random model's choices resolve the same way.)
  rc = cli.main(["eval", "t0", "--gin_file", "experiments/paper/eval_t0.gin",
                 "--checkpoint", tiny_checkpoint, "--data_dir", str(eval_dir),
                 *_as_flags(T0_OPTIONS), "--gin.ACTIVATION_DTYPE='float32'"])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  out = pathlib.Path(tiny_checkpoint) / "eval_t0" / "5"
  assert json.loads((out / "results.json").read_text()) == by_flags
  assert "The paper's T0-Eval averages" in (out / "results.md").read_text()  # PAPER = True
  operative = (out / "config.gin").read_text()
  assert f"CHECKPOINT_PATH = '{tiny_checkpoint}'" in operative
  assert "DATASETS = ['super_glue/rte', 'super_glue/cb']" in operative
  assert "| super_glue/rte | 10 |" in captured.out


def test_eval_t0_gin_errors_name_what_to_set(tmp_path, tiny_checkpoint, capsys):
  from arch_objective import cli
  cases = [
      (["--gin_file", "experiments/paper/eval_t0.gin"],
       "gin macro CHECKPOINT_PATH is required by the run file: bind it, e.g. "
       "--gin.CHECKPOINT_PATH=... (or give --checkpoint)"),
      (["--gin_file", "experiments/paper/eval_harness.gin", "--checkpoint", tiny_checkpoint],
       "configure no eval_t0 run"),
      (["--gin_file", "runs/eval_t0.gin", "--checkpoint", tiny_checkpoint,
        "--gin.MAX_EXAMPLE=3"], "unknown gin macro 'MAX_EXAMPLE'"),
      (["--checkpoint", tiny_checkpoint, "--gin.MAX_EXAMPLES=3"],
       "--gin.MAX_EXAMPLES=3 needs --gin_file"),
      (["--datasets", "super_glue/rte"], "no checkpoint; give --checkpoint PATH"),
      (["--checkpoint", "s3x://b/run"], "has the scheme 's3x://'"),
  ]
  for args, message in cases:
    assert cli.main(["eval", "t0", *args, "--out", str(tmp_path / "out")]) == 2, args
    assert message in capsys.readouterr().err, args
  assert not (tmp_path / "out").exists()
