"""lm-eval's registry and command line with our model: importing the harness keeps lm-eval's
own models, `arch-objective-lm-eval` runs lm-eval's CLI on a model directory, and lm-eval's
`hf` backend scores our encoder-decoder export as our model does."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")      # light: lm_eval.tasks is imported at first use

from arch_objective import build_model, models  # noqa: E402
from arch_objective.data import vocabularies  # noqa: E402
from arch_objective.evaluation import harness, lm_eval_cli  # noqa: E402

import helpers  # noqa: E402
from helpers import (ROOT, TaskManager, requests_of, sentences, write_tasks,  # noqa: E402,F401
                     toy_model as tiny)


@pytest.fixture(scope="module")
def vocab(toy_vocab):
  """The toy vocabulary (conftest's `toy_vocab`): 200 pieces (+100 extra ids)."""
  return toy_vocab

ED = models.ENCODER_DECODER
CONTEXT = "golden river morning. the teacher is"


def run_python(args, env=None, timeout=300) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=str(ROOT), env=env, text=True,
                        capture_output=True, timeout=timeout)


# ----------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_importing_the_harness_keeps_lm_evals_own_models():
  code = textwrap.dedent("""
      import sys
      from arch_objective.evaluation import harness
      from lm_eval.api import registry
      print("hf module imported:", "lm_eval.models.huggingface" in sys.modules)
      hf = registry.get_model("hf")
      ours = registry.get_model("arch_objective")
      harness.register_with_lm_eval()
      print("hf:", f"{hf.__module__}.{hf.__qualname__}")
      print("ours:", ours is harness.ArchObjectiveLM,
            registry.get_model("arch_objective") is ours)
      print("dummy:", registry.get_model("dummy").__name__)
  """)
  done = run_python(["-c", code])
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.splitlines() == [
      "hf module imported: False",                 # lm-eval's models stay lazy
      "hf: lm_eval.models.huggingface.HFLM",
      "ours: True True",
      "dummy: DummyLM"]


# ----------------------------------------------------------------------------------------
# model_args as lm-eval's command line and strings pass them
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ed_dir(vocab, tmp_path_factory):
  """An ED model directory (step 5) of the tiny test model, and its parameters."""
  from arch_objective.convert import model_dir
  model = tiny(ED, vocab)
  params = helpers.random_params(model, 1, draw="fan_in")
  directory = tmp_path_factory.mktemp("models") / "ed"
  model_dir.write_model_dir(str(directory), ED, model.config, params, step=5,
                            vocabulary=vocab.path, vocab_size=vocab.vocab_size)
  return str(directory), params


def test_model_args_of_the_command_line_and_of_strings_read_a_model_dir(ed_dir, vocab):
  from lm_eval._cli.utils import key_val_to_dict       # how `--model_args` is parsed
  directory, _ = ed_dir
  passed = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}  # the CLI defaults
  args = key_val_to_dict(f"model_dir={directory},truncation=paper,batch_tokens=1024,"
                         f"inputs_length=64,dtype=float32")
  assert args["batch_tokens"] == 1024 and args["model_dir"] == directory
  lm = harness.ArchObjectiveLM.create_from_arg_obj(args, passed)
  assert (lm.checkpoint, lm.step, lm.model.name, lm.vocab.path) == (directory, 5, ED,
                                                                     vocab.path)
  assert (lm.truncation, lm.batch_tokens, lm.inputs_length, lm.targets_length) == (
      "paper", 1024, 64, 114)
  lm = harness.ArchObjectiveLM.create_from_arg_string(
      f"checkpoint={directory},model_dir={directory}", passed)
  assert (lm.checkpoint, lm.truncation, lm.inputs_length) == (directory, "modern", 1024)

  with pytest.raises(ValueError, match=r"checkpoint='/elsewhere' and model_dir='.*/ed' "
                                       r"differ; expected one model directory"):
    harness.ArchObjectiveLM.create_from_arg_string(
        f"checkpoint=/elsewhere,model_dir={directory}")
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['model_path'\] for the "
                                       r"arch_objective model; valid: checkpoint \(or "
                                       r"model_dir\)"):
    harness.ArchObjectiveLM.create_from_arg_string(f"model_path={directory}")


# ----------------------------------------------------------------------------------------
# lm-eval's command line, run by ours
# ----------------------------------------------------------------------------------------
def _jsonable(value):
  return json.loads(json.dumps(value, default=lm_eval.utils.handle_non_serializable))


@pytest.mark.slow
def test_the_cli_wrapper_runs_lm_evals_cli_with_our_model(ed_dir, vocab, offline):
  directory, params = ed_dir
  tasks_dir = write_tasks(offline / "tasks")
  out = offline / "out"
  cache = offline / "jax-cache"
  env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
         "HF_DATASETS_CACHE": str(offline / "hf_cache_cli"),
         "ARCH_OBJECTIVE_COMPILATION_CACHE_DIR": str(cache)}
  done = run_python(["-m", "arch_objective.evaluation.lm_eval_cli", "--model",
                     harness.MODEL_NAME, "--model_args",
                     f"model_dir={directory},truncation=paper,batch_tokens=1024",
                     "--tasks", "toy_mc,toy_rolling", "--include_path", str(tasks_dir),
                     "--limit", "4", "--output_path", str(out)], env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  # The persistent compilation cache is on, as in `arch-objective eval`: its programs
  # are kept for the next run.
  assert f"compilation cache: {cache}" in done.stderr
  assert cache.is_dir() and any(cache.iterdir())
  assert "|toy_mc" in done.stdout and "|toy_rolling" in done.stdout   # lm-eval's table
  written = sorted(out.rglob("results_*.json"))
  assert len(written) == 1, written
  by_cli = json.loads(written[0].read_text())
  assert by_cli["config"]["model"] == harness.MODEL_NAME
  assert by_cli["config"]["model_args"]["model_dir"] == directory
  assert by_cli["config"]["arch_objective"]["step"] == 5
  assert by_cli["n-samples"]["toy_mc"] == {"original": 8, "effective": 4}

  lm = harness.ArchObjectiveLM(model=tiny(ED, vocab), params=params, vocab=vocab,
                               truncation="paper", batch_tokens=1024)
  in_process = lm_eval.simple_evaluate(
      model=lm, tasks=["toy_mc", "toy_rolling"], limit=4,
      task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False))
  expected = _jsonable(in_process["results"])
  assert set(by_cli["results"]) == set(expected) == {"toy_mc", "toy_rolling"}
  assert by_cli["results"] == expected
  assert 0.0 <= expected["toy_mc"]["acc,none"] <= 1.0
  assert np.isfinite(expected["toy_rolling"]["word_perplexity,none"])


@pytest.mark.slow
def test_the_cli_wrapper_returns_lm_evals_exit_status_for_bad_options():
  done = run_python(["-m", "arch_objective.evaluation.lm_eval_cli", "--model",
                     harness.MODEL_NAME, "--limit", "some"])
  assert done.returncode == 2
  assert "argument --limit/-L: invalid float value: 'some'" in done.stderr


PROG = lm_eval_cli.PROG


@pytest.mark.parametrize("model_args, line", [
    ("model_path=/runs/ed", f"{PROG}: error: unknown option(s) ['model_path'] for the "
                            f"arch_objective model; valid: checkpoint (or model_dir), arch, "),
    ("batch_tokens=1024", f"{PROG}: error: give checkpoint=PATH, or model and params (and "
                          f"vocab); found neither a checkpoint nor both objects (lm-eval: "
                          f"--model_args checkpoint=MODEL_DIR, or model_dir=MODEL_DIR)."),
    ("model_dir={missing}", f"{PROG}: error: model_dir='{{missing}}' does not exist; "
                            f"expected a model directory"),
    ("model_dir={ed},truncation=sideways", f"{PROG}: error: unknown truncation 'sideways'; "
                                           f"expected one of paper, modern"),
    ("model_dir={ed},max_length=abc", f"{PROG}: error: max_length must be a positive integer, "
                                      f"found 'abc'; pass e.g. max_length=1280."),
    ("model_dir={ed},dtype=float64", f"{PROG}: error: dtype must be one of float32, bfloat16, "
                                     f"float16, found 'float64'"),
], ids=["unknown", "no_model_dir", "missing_model_dir", "truncation", "max_length", "dtype"])
@pytest.mark.slow
def test_a_bad_model_arg_is_one_line_and_status_2(ed_dir, tmp_path, model_args, line):
  """Checked from the command line before lm-eval reads its tasks or anything loads."""
  fill = {"ed": ed_dir[0], "missing": str(tmp_path / "missing")}
  done = run_python(["-m", "arch_objective.evaluation.lm_eval_cli", "--model",
                     harness.MODEL_NAME, "--model_args", model_args.format(**fill),
                     "--tasks", "boolq"], env={"HF_DATASETS_OFFLINE": "1",
                                               "HF_HUB_OFFLINE": "1"})
  assert done.returncode == 2, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(line.format(**fill)), done.stderr[-3000:]
  assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_a_bad_model_arg_of_a_config_file_is_one_line_and_status_2(tmp_path):
  """lm-eval's --config file: the model's own check, when lm-eval builds it."""
  config = tmp_path / "eval.yaml"
  config.write_text("model: arch_objective\nmodel_args:\n  truncation: sideways\n"
                    "tasks:\n  - boolq\n")
  done = run_python(["-m", "arch_objective.evaluation.lm_eval_cli", "--config", str(config)],
                    env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
  assert done.returncode == 2, done.stderr[-3000:]
  errors = [x for x in done.stderr.splitlines() if x.startswith(PROG)]
  assert errors == [f"{PROG}: error: unknown truncation 'sideways'; expected one of paper, "
                    f"modern (paper: the first 512 context tokens, as the paper's t5x bridge; "
                    f"modern: the last tokens that fit)."]
  assert "Traceback" not in done.stderr


def test_model_args_are_checked_before_the_model_loads(ed_dir, tmp_path, monkeypatch):
  from arch_objective.evaluation import loading
  directory, _ = ed_dir
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded"))
  for args, message in [
      (f"model_dir={directory},arch=decoder", r"unknown arch 'decoder'; valid architectures"),
      (f"model_dir={directory},arch=causal_decoder",
       r"^model_dir: checkpoint '.*/ed' holds a encoder_decoder model; it cannot be read as "
       r"causal_decoder"),
      (f"checkpoint={directory},vocabulary={tmp_path}/none.model",
       r"vocabulary='.*/none.model' does not exist; expected a SentencePiece .model file"),
      (f"model_dir={tmp_path}", r"^model_dir: checkpoint '.*': no complete checkpoint in"),
      (f"model_dir={directory},inputs_length=0",
       r"inputs_length must be a positive integer, found 0; pass e.g. inputs_length=1024"),
  ]:
    with pytest.raises(harness.ModelArgsError, match=message):
      harness.ArchObjectiveLM.create_from_arg_string(args)
  assert harness.check_model_args({"model_dir": directory, "max_length": 64}) == directory


# ----------------------------------------------------------------------------------------
# lm-eval's `hf` backend on our Hugging Face export
# ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_hf_backend_with_the_documented_model_args_scores_our_ed_export_as_ours(
    tmp_path, t5_vocab_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from arch_objective.convert import hf
  t5 = vocabularies.SentencePieceVocabulary(t5_vocab_path)
  model = build_model(ED, "tiny", dtype="float32", num_encoder_layers=1, num_decoder_layers=1,
                      vocab_size=vocabularies.padded_vocab_size(t5.vocab_size))
  params = helpers.random_params(model, 5, draw="fan_in")
  export = hf.export_hf(params, model.config, ED, str(tmp_path / "hf"),
                        vocabulary=t5_vocab_path)

  long_context = " ".join(sentences(300))
  assert len(t5.encode(long_context)) > 1024      # past our inputs_length and max_length
  pairs = [(CONTEXT, " brave sailor"), (CONTEXT + " ", "clever doctor"),
           ("", " brave sailor"), ("Question: is a <extra_id_0> green?\nAnswer:", " yes"),
           (long_context, " the end.")]
  text = "golden river morning. the teacher is brave and the sailor is clever."
  ours = harness.ArchObjectiveLM(model=model, params=params, vocab=t5)
  theirs = lm_eval.api.registry.get_model("hf").create_from_arg_string(
      f"pretrained={export},{lm_eval_cli.HF_EXPORT_MODEL_ARGS}",
      {"batch_size": 2, "device": "cpu"})
  assert theirs.backend == "seq2seq"

  got = theirs.loglikelihood(requests_of("loglikelihood", pairs))
  expected = ours.loglikelihood(requests_of("loglikelihood", pairs))
  scores = [e[0] for e in expected]
  np.testing.assert_allclose([g[0] for g in got], scores, rtol=0, atol=1e-4)
  assert [g[1] for g in got] == [e[1] for e in expected]
  got = theirs.loglikelihood_rolling(requests_of("loglikelihood_rolling", [(text,)]))
  rolling = ours.loglikelihood_rolling(requests_of("loglikelihood_rolling", [(text,)]))
  np.testing.assert_allclose(got, rolling, rtol=0, atol=1e-4)

  # lm-eval's defaults differ: EOS after each context, and EOS as the empty context
  default = lm_eval.api.registry.get_model("hf").create_from_arg_string(
      f"pretrained={export},backend=seq2seq,dtype=float32", {"batch_size": 2, "device": "cpu"})
  got = default.loglikelihood(requests_of("loglikelihood", pairs[:3]))
  differences = np.abs(np.asarray([g[0] for g in got]) - scores[:3])
  assert np.all(differences > 1e-4), differences
