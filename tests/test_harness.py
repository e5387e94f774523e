"""The lm-evaluation-harness model: scores against independent forward passes, truncation,
rolling windows, generation, the EAI-Eval task list, and runs of local YAML tasks offline."""
import functools
import json
import pathlib
import re

import jax
import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")      # light: lm_eval.tasks is imported at first use

from arch_objective import models  # noqa: E402
from arch_objective.evaluation import harness  # noqa: E402
from arch_objective.evaluation.rank_classification import Request, naive_scores  # noqa: E402

import helpers  # noqa: E402

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
ARCHS = (CD, ND, ED)
TASKS_DIR = pathlib.Path(lm_eval.__file__).resolve().parent / "tasks"

from helpers import (TaskManager, requests_of, sentences, write_tasks,  # noqa: E402,F401
                     toy_model as tiny)


@pytest.fixture(scope="module")
def vocab(toy_vocab):
  """The toy vocabulary (conftest's `toy_vocab`): 200 pieces (+100 extra ids)."""
  return toy_vocab


@functools.lru_cache(maxsize=None)
def compiled(model):
  return Compiled(model)


class Compiled:
  """The model for `naive_scores`, one jitted `compute_logits` per row shape (eagerly a
  forward pass takes seconds); `score_batch` is the sum of the weighted targets' log
  probabilities, in numpy."""

  def __init__(self, model):
    self.name, self.compute_logits = model.name, jax.jit(model.compute_logits)

  def score_batch(self, params, batch):
    logits = np.asarray(self.compute_logits(params, batch), np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    targets = np.asarray(batch["decoder_target_tokens"])
    token_ll = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return (token_ll * np.asarray(batch["decoder_loss_weights"])).sum(-1)


def naive(model, params, prompt, choice) -> float:
  """`naive_scores` of one (prompt, choice): a full forward pass over the unpadded row."""
  request = Request(np.asarray(prompt, np.int32), (np.asarray(choice, np.int32),))
  return float(naive_scores(compiled(model), params, [request])[0][0])


@pytest.fixture(scope="module")
def params(vocab):
  """Tiny float32 parameters: decoder-only (shared by CD and ND) and ED."""
  dec = helpers.random_params(tiny(CD, vocab), 0, draw="fan_in")
  return {CD: dec, ND: dec, ED: helpers.random_params(tiny(ED, vocab), 1, draw="fan_in")}


def make_lm(arch, vocab, params, **options):
  return harness.ArchObjectiveLM(model=tiny(arch, vocab), params=params[arch], vocab=vocab,
                                 **options)


# ----------------------------------------------------------------------------------------
# Scores equal independent full forward passes
# ----------------------------------------------------------------------------------------
CONTEXT = "golden river morning. the teacher is"   # with a continuation: one 16-bucket
PAIRS = [(CONTEXT, " brave sailor"), (CONTEXT, " clever doctor"), ("", " brave sailor")]


@pytest.mark.parametrize("arch", ARCHS)
def test_loglikelihood_equals_naive_forward_passes(arch, vocab, params):
  lm = make_lm(arch, vocab, params, batch_tokens=256)
  got = lm.loglikelihood(requests_of("loglikelihood", PAIRS))
  model = lm.model
  for (context, continuation), (logprob, is_greedy) in zip(PAIRS, got):
    prompt = np.asarray(vocab.encode(context), np.int32)
    choice = np.asarray(vocab.encode(continuation), np.int32)
    assert len(choice) == 2 and vocab.eos_id not in choice
    if arch == ED and not len(prompt):
      prompt = np.zeros((1,), np.int32)      # an empty context is an all-padding encoder row
    assert isinstance(logprob, float) and isinstance(is_greedy, bool)
    np.testing.assert_allclose(logprob, naive(model, params[arch], prompt, choice),
                               rtol=0, atol=1e-4)

  # is_greedy against the argmax of an independent forward pass, on one pair
  prompt = np.asarray(vocab.encode(CONTEXT), np.int32)
  choice = np.asarray(vocab.encode(PAIRS[0][1]), np.int32)
  ones = np.ones((1, len(choice)), np.int32)     # (the features and dtypes naive used)
  if arch == ED:
    batch = {"encoder_input_tokens": prompt[None], "decoder_target_tokens": choice[None],
             "decoder_input_tokens": np.asarray([[0, choice[0]]], np.int32),
             "decoder_loss_weights": ones}
    logits = compiled(model).compute_logits(params[arch], batch)[0]
  else:
    targets = np.concatenate([prompt, choice])[None].astype(np.int32)
    n = targets.shape[1]
    batch = {"decoder_target_tokens": targets,
             "decoder_input_tokens": np.concatenate([[[0]], targets[:, :-1]], 1).astype(np.int32),
             "decoder_loss_weights": np.concatenate([0 * targets[:, :len(prompt)], ones], 1),
             "decoder_causal_attention": (np.arange(n) <= len(prompt))[None].astype(np.int32)}
    logits = compiled(model).compute_logits(params[arch], batch)[0, len(prompt):]
  assert got[0][1] == bool(np.all(np.argmax(np.asarray(logits), -1) == choice))


def test_empty_continuation_scores_zero_and_greedy(vocab, params):
  lm = make_lm(CD, vocab, params)
  assert lm.loglikelihood(requests_of("loglikelihood", [("a dog", "")])) == [(0.0, True)]


# ----------------------------------------------------------------------------------------
# Truncation and rolling windows
# ----------------------------------------------------------------------------------------
def test_paper_truncation_keeps_the_first_tokens():
  context, continuation = np.arange(600) + 10, np.arange(130) + 1000
  ctx, cont = harness.truncate(context, continuation, "paper", inputs_length=512,
                               targets_length=114)
  np.testing.assert_array_equal(ctx, np.arange(512) + 10)
  np.testing.assert_array_equal(cont, np.arange(114) + 1000)
  # short ones are kept whole
  ctx, cont = harness.truncate([5, 6, 7], [8, 9], "paper", inputs_length=512,
                               targets_length=114)
  np.testing.assert_array_equal(ctx, [5, 6, 7])
  np.testing.assert_array_equal(cont, [8, 9])


def test_modern_truncation_keeps_the_end_of_the_context():
  # decoder-only: one row budget for both; the continuation stays whole
  ctx, cont = harness.truncate(range(10), [20, 21, 22], "modern", inputs_length=4,
                               targets_length=2, row_length=8)
  np.testing.assert_array_equal(ctx, [5, 6, 7, 8, 9])
  np.testing.assert_array_equal(cont, [20, 21, 22])
  # a continuation longer than the row keeps its start and leaves no context
  ctx, cont = harness.truncate([1, 2], range(10), "modern", inputs_length=4,
                               targets_length=2, row_length=8)
  assert ctx.tolist() == [] and cont.tolist() == list(range(8))
  # ED: separate encoder and decoder budgets
  ctx, cont = harness.truncate(range(10), [20, 21, 22], "modern", inputs_length=4,
                               targets_length=2)
  np.testing.assert_array_equal(ctx, [6, 7, 8, 9])
  np.testing.assert_array_equal(cont, [20, 21])


def test_truncation_mode_of_the_model(vocab, params):
  long_context = " ".join(sentences()[:80])
  ids = np.asarray(vocab.encode(long_context), np.int32)
  assert len(ids) > 600
  for arch in (CD, ED):
    paper = make_lm(arch, vocab, params, truncation="paper")
    ctx, _ = paper._truncate(ids, [5])
    np.testing.assert_array_equal(ctx, ids[:512])
    modern = make_lm(arch, vocab, params, truncation="modern", max_length=300,
                     inputs_length=200)
    ctx, _ = modern._truncate(ids, [5, 6])
    np.testing.assert_array_equal(ctx, ids[-298:] if arch == CD else ids[-200:])


def test_unknown_truncation_is_rejected(vocab, params):
  with pytest.raises(ValueError, match="truncation 'left'.*paper, modern"):
    make_lm(CD, vocab, params, truncation="left")
  with pytest.raises(ValueError, match="truncation"):
    harness.truncate([1], [2], "middle", inputs_length=4, targets_length=4)


def test_rolling_windows_predict_every_token_once():
  windows = harness.rolling_windows(range(10), 4)
  assert [(c.tolist(), t.tolist()) for c, t in windows] == [
      ([], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]
  tokens = np.arange(3, 40)
  windows = harness.rolling_windows(tokens, 8)
  np.testing.assert_array_equal(np.concatenate([t for _, t in windows]), tokens)
  for c, t in windows[1:]:
    assert len(c) + len(t) == 9                    # 8 inputs after the shifted-in 0
    start = int(t[0] - 3)
    np.testing.assert_array_equal(c, tokens[start - len(c):start])


@pytest.mark.parametrize("arch", ARCHS)
def test_loglikelihood_rolling_sums_its_windows(arch, vocab, params):
  # windows of 13 (decoder-only rows of 13 and 14 tokens) or 2 (ED) tokens: row shapes
  # the tests above compiled already
  lm = make_lm(arch, vocab, params, max_length=13, targets_length=2)
  text = ("golden river morning. the teacher is brave and the sailor is clever. the farmer "
          "gathers a heavy kettle")
  tokens = np.asarray(vocab.encode(text), np.int32)
  assert 27 <= len(tokens) <= 39 and len(tokens) % 2 == 0   # 3 windows of 13, 2s
  got = lm.loglikelihood_rolling(requests_of("loglikelihood_rolling", [(text,)]))
  if arch == ED:
    windows = [(np.zeros((1,), np.int32), tokens[s:s + 2]) for s in range(0, len(tokens), 2)]
  else:
    windows = harness.rolling_windows(tokens, 13)
  assert len(windows) > 2
  expected = sum(naive(lm.model, params[arch], c, t) for c, t in windows)
  np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_generate_until_is_greedy_and_stops_at_until_and_max_gen_toks(arch, vocab, params):
  lm = make_lm(arch, vocab, params)
  contexts = ["the farmer", "ancient village winter sailor"]
  prompts = [np.asarray(vocab.encode(c), np.int32) for c in contexts]
  assert max(len(p) for p in prompts) + 8 <= 16      # the scoring below: one 16-bucket
  tokens = harness.generate_tokens(lm.model, params[arch], prompts, 8)
  tokens = [t[:list(t).index(vocab.eos_id)] if vocab.eos_id in t else t for t in tokens]
  # each token is the argmax of a full forward pass over the prompt and the tokens before
  # it (no KV cache); changing the last token breaks that
  changed = tokens[1].copy()
  changed[-1] = 3 if changed[-1] != 3 else 4
  flags = [g for _, g in lm.loglikelihood_tokens(list(zip(prompts, tokens))
                                                 + [(prompts[1], changed)])]
  assert flags == [True, True, False]

  texts = [vocab.decode(t) for t in tokens]
  got = lm.generate_until(requests_of("generate_until", [
      (c, {"until": [], "max_gen_toks": 8}) for c in contexts]))
  assert got == texts
  # until: the output ends before the first stop string
  long = max(range(len(texts)), key=lambda i: len(texts[i]))
  text = texts[long]
  assert len(text) >= 4, f"the tiny model's greedy output is too short: {text!r}"
  stop = text[len(text) // 2:len(text) // 2 + 2]
  got = lm.generate_until(requests_of("generate_until", [
      (c, {"until": ["\n\n", stop], "max_gen_toks": 8}) for c in contexts]))
  assert got[long] == text[:text.find(stop)] and stop not in got[long]
  assert harness.cut_at_stop("abc. def. ghi", [".", "zz"]) == "abc"
  if arch == CD:   # max_gen_toks: the first tokens only (one more compile: CD only)
    got = lm.generate_until(requests_of("generate_until", [
        (c, {"until": [], "max_gen_toks": 3}) for c in contexts]))
    assert got == [vocab.decode(t[:3]) for t in tokens]


def test_generate_until_rejects_sampling(vocab, params):
  lm = make_lm(CD, vocab, params)
  with pytest.raises(ValueError, match="do_sample=True"):
    lm.generate_until(requests_of("generate_until", [("a", {"do_sample": True})]))
  with pytest.raises(ValueError, match="max_gen_toks must be a positive integer, found 0"):
    lm.generate_until(requests_of("generate_until", [("a", {"max_gen_toks": 0})]))


# ----------------------------------------------------------------------------------------
# The harness end to end, offline
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_simple_evaluate_on_a_local_multiple_choice_task(arch, vocab, params, offline):
  tasks_dir = write_tasks(offline / "tasks")
  lm = make_lm(arch, vocab, params, truncation="paper")
  results = lm_eval.simple_evaluate(   # 2 documents: the row shapes of the scores above
      model=lm, tasks=["toy_mc"], num_fewshot=0, bootstrap_iters=0, limit=2,
      task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False))
  acc = results["results"]["toy_mc"]["acc,none"]
  assert 0.0 <= acc <= 1.0
  assert results["results"]["toy_mc"]["sample_len"] == 2
  summary = harness.summarize(results)
  assert summary["acc"] == {"toy_mc": acc} and summary["mean"] == acc
  assert "| toy_mc | acc,none |" in summary["markdown"]


@pytest.mark.slow
def test_run_harness_from_a_checkpoint_writes_results(vocab, params, offline):
  from arch_objective.convert import model_dir
  tasks_dir = write_tasks(offline / "tasks")
  model = tiny(ND, vocab)
  model_dir.write_model_dir(str(offline / "nd"), ND, model.config, params[ND], step=7,
                            vocabulary=vocab.path, vocab_size=vocab.vocab_size)
  out = offline / "out"
  results = harness.run_harness(str(offline / "nd"), ["toy_mc,toy_rolling", "toy_generate"],
                                include_path=str(tasks_dir), truncation="paper", limit=2,
                                out_dir=str(out), bootstrap_iters=0)
  saved = json.loads((out / "harness_results.json").read_text())
  assert set(saved["results"]) == {"toy_mc", "toy_rolling", "toy_generate"}
  assert 0.0 <= saved["results"]["toy_mc"]["acc,none"] <= 1.0
  assert np.isfinite(saved["results"]["toy_rolling"]["word_perplexity,none"])
  assert saved["results"]["toy_generate"]["exact_match,none"] in (0.0, 0.5, 1.0)
  assert saved["arch_objective"]["step"] == 7 and saved["arch_objective"]["arch"] == ND
  assert saved["arch_objective"]["truncation"] == "paper"
  assert results["results"]["toy_mc"] == saved["results"]["toy_mc"]
  summary = (out / "summary.md").read_text()
  assert "| toy_mc |" in summary and "No accuracy reported for: toy_rolling, toy_generate" \
      in summary

  # the registered name with a model_args string reads the same checkpoint
  via_name = lm_eval.simple_evaluate(
      model=harness.MODEL_NAME, model_args=f"checkpoint={offline / 'nd'},truncation=paper,"
                                           f"batch_tokens=1024",
      tasks=["toy_mc"], limit=2, bootstrap_iters=0,
      task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False))
  assert via_name["results"]["toy_mc"]["acc,none"] == saved["results"]["toy_mc"]["acc,none"]

  # the command: options only, then the same run from runs/eval_harness.gin
  from arch_objective import cli
  options = ["--tasks", "toy_mc", "--include_path", str(tasks_dir), "--limit", "2",
             "--truncation", "paper", "--batch_tokens", "1024", "--bootstrap_iters", "0"]
  assert cli.main(["eval", "harness", "--checkpoint", str(offline / "nd"), *options,
                   "--out", str(offline / "cli")]) == 0
  by_flags = json.loads((offline / "cli" / "harness_results.json").read_text())
  assert (offline / "cli" / "summary.md").is_file()
  assert by_flags["arch_objective"]["dtype"] == "float32"
  assert cli.main(["eval", "harness", "--gin_file", "runs/eval_harness.gin",
                   f"--gin.CHECKPOINT_PATH='{offline / 'nd'}'", "--gin.TASKS=['toy_mc']",
                   f"--gin.INCLUDE_PATH='{tasks_dir}'", "--gin.LIMIT=2",
                   "--gin.TRUNCATION='paper'", "--gin.BATCH_TOKENS=1024",
                   "--gin.BOOTSTRAP_ITERS=0", "--out", str(offline / "gin")]) == 0
  by_gin = json.loads((offline / "gin" / "harness_results.json").read_text())
  assert by_gin["results"] == by_flags["results"]
  assert by_gin["arch_objective"] == by_flags["arch_objective"]
  assert "eval_harness.truncation = %TRUNCATION" in (offline / "gin" / "config.gin").read_text()
  # the default output folder: next to the checkpoint
  assert cli.main(["eval", "harness", "--checkpoint", str(offline / "nd"), *options]) == 0
  assert (offline / "nd" / "eval_harness" / "7" / "harness_results.json").is_file()
  assert cli.main(["eval", "harness", "--checkpoint", str(offline / "nd"), "--tasks",
                   "no_such_task", "--include_path", str(tasks_dir),
                   "--out", str(offline / "cli2")]) == 2


def test_an_encoder_decoder_checkpoint_cannot_be_read_as_a_decoder(vocab, params, tmp_path):
  from arch_objective.convert import model_dir
  model = tiny(ED, vocab)
  model_dir.write_model_dir(str(tmp_path / "ed"), ED, model.config, params[ED],
                            vocabulary=vocab.path)
  with pytest.raises(ValueError, match="holds a encoder_decoder model.*causal_decoder"):
    harness.ArchObjectiveLM(checkpoint=str(tmp_path / "ed"), arch=CD)
  with pytest.raises(ValueError, match="arch 'causal_decoder' does not match the given "
                                       "encoder_decoder"):
    harness.ArchObjectiveLM(model=model, params=params[ED], vocab=vocab, arch=CD)


def test_bad_options_are_rejected(vocab, params):
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['temperature'\]"):
    make_lm(CD, vocab, params, temperature=0.5)
  with pytest.raises(ValueError, match="batch_tokens must be a positive integer, found 0"):
    make_lm(CD, vocab, params, batch_tokens=0)
  with pytest.raises(ValueError, match="give checkpoint=PATH, or model and params"):
    harness.ArchObjectiveLM(vocab=vocab)
  with pytest.raises(ValueError, match="no vocabulary"):
    harness.ArchObjectiveLM(model=tiny(CD, vocab), params=params[CD])
  with pytest.raises(ValueError, match="tasks is empty"):
    harness.expand_tasks([" , "])


# ----------------------------------------------------------------------------------------
# The paper's task list
# ----------------------------------------------------------------------------------------
def installed_task_names() -> set:
  """Every `task:` name declared in the installed lm_eval's task YAML files."""
  pattern = re.compile(r"""^task:\s*["']?([^"'\s#]+)["']?\s*$""", re.MULTILINE)
  names = set()
  for path in TASKS_DIR.rglob("*.yaml"):
    names.update(pattern.findall(path.read_text(errors="replace")))
  return names


def test_eai_eval_tasks_are_the_papers_31_installed_tasks():
  tasks = harness.EAI_EVAL_TASKS
  assert len(tasks) == 31 and len(set(tasks)) == 31
  assert not any("mc_taco" in t for t in tasks)
  installed = installed_task_names()
  assert not [t for t in tasks if t not in installed]
  paper = ("anli_r1 anli_r2 anli_r3 arc_challenge arc_easy boolq cb copa headqa_en hellaswag "
           "lambada logiqa mathqa mrpc multirc openbookqa piqa prost pubmedqa qnli qqp race "
           "rte sciq sst triviaqa webqs wic winogrande wnli wsc").split()
  assert list(harness.PAPER_TASK_NAMES) == paper
  assert harness.PAPER_TASK_NAMES["lambada"] == "lambada_openai"
  assert harness.PAPER_TASK_NAMES["sst"] == "sst2"
  # lm-eval 0.4's `rte` is GLUE's RTE (the paper's), SuperGLUE's is `sglue_rte`
  rte = (TASKS_DIR / "glue" / "rte" / "default.yaml").read_text()
  assert re.search(r"^task: rte$", rte, re.MULTILINE) and "nyu-mll/glue" in rte
  assert harness.expand_tasks(["eai_eval", "boolq,toy"]) == list(tasks) + ["toy"]


def test_the_eai_eval_group_file_lists_the_same_tasks():
  import yaml
  group = yaml.safe_load(pathlib.Path(harness.HARNESS_TASKS_DIR, "eai_eval.yaml").read_text())
  assert group["group"] == harness.EAI_EVAL and tuple(group["task"]) == harness.EAI_EVAL_TASKS
  manager = TaskManager(include_path=harness.HARNESS_TASKS_DIR, include_defaults=False)
  assert harness.EAI_EVAL in manager.all_groups


def test_summarize_takes_acc_never_acc_norm():
  results = {"results": {
      "arc_easy": {"acc,none": 0.5, "acc_norm,none": 0.9, "acc_stderr,none": 0.1},
      "webqs": {"exact_match,none": 0.25},
      "triviaqa": {"exact_match,remove_whitespace": 0.0},
      "lambada_openai": {"perplexity,none": 12.0, "acc,none": 0.75},
      "wikitext": {"word_perplexity,none": 30.0}},
      "group_subtasks": {"arc_easy": [], "webqs": []}}
  summary = harness.summarize(results)
  assert summary["acc"] == {"arc_easy": 0.5, "webqs": 0.25, "triviaqa": 0.0,
                            "lambada_openai": 0.75}
  assert summary["mean"] == pytest.approx(0.375)
  assert summary["missing"] == ["wikitext"]
  assert "| **mean (4 tasks)** | | **37.5** |" in summary["markdown"]
