"""`arch-objective infer` (evaluation/infer.py): greedy predictions are `predict_batch`'s
and log-probabilities the model's, for the CD, the ND and the ED; sampling does not
depend on the batch; a stopped run resumes into the file an uninterrupted run writes; two
hosts merged equal one; the gin run file; every refusal is one line naming the row or
option."""
import functools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from arch_objective.errors import MissingFile, UserError

from helpers import ROOT, one_line, requires, run_cli, sentences

CD, ND, ED = "causal_decoder", "non_causal_decoder", "encoder_decoder"
STEP = 3
STEPS = 6      # tokens decoded per prediction: short, so every test stays fast


# -- fixtures: two-layer random models over the toy vocabulary ----------------------------

@pytest.fixture(scope="module")
def dirs(tmp_path_factory, toy_vocab):
  """Model directories of the CD and ED (random two-layer models over the toy vocabulary,
  step 3; two layers, so that the ND's prefix changes what it generates) and the ND that
  `convert switch-arch` makes of the CD."""
  import helpers
  from arch_objective import build_model
  from arch_objective.convert import model_dir
  from arch_objective.data import vocabularies
  root = tmp_path_factory.mktemp("infer_models")
  out = {}
  for arch in (CD, ED):
    model = build_model(arch, "tiny", dtype="float32", logits_via_embedding=False,
                        vocab_size=vocabularies.padded_vocab_size(toy_vocab.vocab_size))
    params = helpers.random_params(model, seed=7, draw="fan_in")
    model_dir.write_model_dir(str(root / arch), arch, model.config, params, step=STEP,
                              vocabulary=toy_vocab.path, vocab_size=toy_vocab.vocab_size)
    out[arch] = str(root / arch)
  model_dir.switch_arch(out[CD], ND, str(root / ND))
  out[ND] = str(root / ND)
  return out


def _sentences(n, seed=1):
  return sentences(n, seed=seed)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
  """Seven prompts, two of them long enough for a second length bucket (> 16 tokens)."""
  path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
  texts = _sentences(5) + [" ".join(_sentences(4, seed=2)), " ".join(_sentences(3, seed=3))]
  with open(path, "w") as f:
    for i, text in enumerate(texts):
      f.write(json.dumps({"inputs": text, **({"targets": f"t{i}"} if i % 2 else {})}) + "\n")
  return str(path)


def _infer(checkpoint, out, **kw):
  from arch_objective.evaluation import infer
  kw.setdefault("max_decode_steps", STEPS)
  kw.setdefault("compilation_cache_dir", "")
  return infer.infer(checkpoint=checkpoint, out_dir=str(out), **kw)


def _rows(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _model(checkpoint, arch=None):
  from arch_objective.evaluation import loading
  model, params, _, _ = loading.load_model(checkpoint, arch)
  return model, params


@functools.lru_cache(maxsize=None)
def _jitted(model):
  import jax

  def greedy(params, batch):
    result = model.predict_batch(params, batch, max_decode_steps=STEPS, return_logits=True)
    return result.tokens, result.logits
  return jax.jit(greedy)


def _greedy(model, params, batch):
  return _jitted(model)(params, batch)


def _reference(model, params, tokens):
  """The greedy continuation of `tokens` by `predict_batch` (a one-prompt batch) and its
  log-probability: `score_batch`'s (up to EOS), or, where the model generated the padding
  id 0 (which a scoring batch cannot hold), the sum over the decoding's own logits."""
  from arch_objective.evaluation import scoring
  length = scoring.bucket(model.layout.prompt_positions(len(tokens)))
  batch = model.layout.generation_batch([tokens], 1, length)
  generated, logits = (np.asarray(x)[0] for x in _greedy(model, params, batch))
  kept = len(_kept(generated))
  if 0 in _kept(generated):
    chosen = np.take_along_axis(logits - _logsumexp(logits), generated[:, None], axis=1)
    return generated, float(chosen[:kept].sum())
  return generated, _score(model, params, tokens, generated)


def _logsumexp(x):
  top = x.max(axis=-1, keepdims=True)
  return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def _kept(generated):
  """The generated tokens up to and including EOS (1)."""
  ends = np.flatnonzero(generated == 1)
  return generated[:ends[0] + 1] if len(ends) else generated


def _score(model, params, tokens, generated):
  """`score_batch` of the generated tokens up to EOS after the prompt: the reference
  batch, zero-padded to 128 positions (one compiled program)."""
  import jax
  reference = model.layout.reference_batch(np.asarray(tokens, np.int32), _kept(generated))
  padded = {k: np.pad(v, ((0, 0), (0, 128 - v.shape[1]))) for k, v in reference.items()}
  if model not in _SCORERS:
    _SCORERS[model] = jax.jit(model.score_batch)
  return float(_SCORERS[model](params, padded)[0])


_SCORERS = {}


# -- greedy, sample and beam for the three architectures ----------------------------------

@pytest.mark.parametrize("arch", [CD, ND, ED])
def test_greedy_predictions_are_predict_batchs_with_the_models_log_probability(
    arch, dirs, prompts, toy_vocab, tmp_path):
  run = _infer(dirs[arch], tmp_path, prompts=prompts, batch_size=2, chunk_size=3)
  rows = _rows(tmp_path / "predictions.jsonl")
  sources = [json.loads(line) for line in pathlib.Path(prompts).read_text().splitlines()]
  assert [r["index"] for r in rows] == list(range(7))
  assert [r["inputs"] for r in rows] == [s["inputs"] for s in sources]
  assert [r.get("targets") for r in rows] == [s.get("targets") for s in sources]
  model, params = _model(dirs[arch])
  assert model.name == arch
  for row, source in zip(rows, sources):
    tokens = np.asarray(toy_vocab.encode(source["inputs"]), np.int32)
    generated, log_prob = _reference(model, params, tokens)
    assert row["prediction"] == toy_vocab.decode(generated)
    assert row["log_prob"] == pytest.approx(log_prob, rel=1e-4, abs=1e-4)
    assert row["prompt_length"] == len(tokens)
    ends = np.flatnonzero(generated == 1)
    assert row["prediction_length"] == (ends[0] + 1 if len(ends) else STEPS)
  lengths = [r["prompt_length"] for r in rows]
  assert min(lengths) < 15 and max(lengths) > 16                     # two length buckets
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["examples"] == summary["decodes"] == 7 == run.results["examples"]
  assert summary["prompt_length"]["max"] == max(r["prompt_length"] for r in rows)
  assert summary["settings"]["decode"] == "greedy" and summary["step"] == STEP
  assert "| 7 | 7 |" in run.markdown


def test_the_nd_of_switch_arch_predicts_as_the_cd_read_as_nd(dirs, prompts, tmp_path):
  _infer(dirs[ND], tmp_path / "switched", prompts=prompts, max_examples=3)
  _infer(dirs[CD], tmp_path / "read_as", prompts=prompts, max_examples=3, arch=ND)
  _infer(dirs[CD], tmp_path / "cd", prompts=prompts, max_examples=3)
  switched = _rows(tmp_path / "switched" / "predictions.jsonl")
  assert switched == _rows(tmp_path / "read_as" / "predictions.jsonl")
  assert [r["log_prob"] for r in switched] != [
      r["log_prob"] for r in _rows(tmp_path / "cd" / "predictions.jsonl")]


@pytest.mark.parametrize("arch", [CD, ED])
def test_beams_come_best_first_with_their_log_probabilities_and_scores(
    arch, dirs, prompts, toy_vocab, tmp_path):
  _infer(dirs[arch], tmp_path, prompts=prompts, decode="beam", num_decodes=3, alpha=0.6,
         max_examples=3)
  rows = _rows(tmp_path / "predictions.jsonl")
  assert len(rows) == 3
  for row in rows:
    assert len(row["predictions"]) == len(row["log_probs"]) == len(row["scores"]) == 3
    assert row["scores"] == sorted(row["scores"], reverse=True)
    for lp, score, length in zip(row["log_probs"], row["scores"], row["prediction_lengths"]):
      assert 1 <= length <= STEPS and lp < 0
      assert score == pytest.approx(lp / ((5 + length) / 6) ** 0.6, rel=1e-4)
  assert json.loads((tmp_path / "settings.json").read_text())["alpha"] == 0.6


def test_hugging_faces_beam_rules_score_by_their_length_penalty(dirs, prompts, tmp_path):
  """`beam_rules="hf"`: scores are log p / L ** alpha (a negative alpha allowed, as HF's
  length_penalty), the setting recorded."""
  _infer(dirs[ED], tmp_path, prompts=prompts, decode="beam", num_decodes=2, alpha=-0.5,
         beam_rules="hf", max_examples=2)
  for row in _rows(tmp_path / "predictions.jsonl"):
    assert row["scores"] == sorted(row["scores"], reverse=True)
    for lp, score, length in zip(row["log_probs"], row["scores"], row["prediction_lengths"]):
      assert score == pytest.approx(lp / length ** -0.5, rel=1e-4)
  assert json.loads((tmp_path / "settings.json").read_text())["beam_rules"] == "hf"


@pytest.mark.slow
@pytest.mark.parametrize("arch", [ND, ED])
def test_sampling_is_the_same_whatever_the_batch_size_and_the_seed_changes_it(
    arch, dirs, prompts, tmp_path):
  options = dict(prompts=prompts, decode="sample", num_decodes=2, topk=20, seed=5)
  _infer(dirs[arch], tmp_path / "b1", batch_size=1, chunk_size=2, **options)
  _infer(dirs[arch], tmp_path / "b4", batch_size=4, chunk_size=7, **options)
  one, four = (_rows(tmp_path / d / "predictions.jsonl") for d in ("b1", "b4"))
  assert [r["predictions"] for r in one] == [r["predictions"] for r in four]
  for a, b in zip(one, four):
    assert a["log_probs"] == pytest.approx(b["log_probs"], rel=1e-4, abs=1e-4)
    assert a["log_probs"] == sorted(a["log_probs"], reverse=True)
  _infer(dirs[arch], tmp_path / "seed6", batch_size=4, **dict(options, seed=6))
  other = _rows(tmp_path / "seed6" / "predictions.jsonl")
  assert [r["predictions"] for r in other] != [r["predictions"] for r in four]


def test_a_sampled_log_probability_is_the_models_at_temperature_one(dirs, toy_vocab):
  from arch_objective.evaluation import infer
  model, params = _model(dirs[CD])
  options = infer.decoding_options("sample", num_decodes=2, temperature=0.7, topp=0.9,
                                   max_decode_steps=STEPS)
  examples = [infer.Example(i, np.asarray(toy_vocab.encode(text), np.int32), {}, "")
              for i, text in enumerate(_sentences(2))]
  for example, decodes in zip(examples, infer.Decoder(model, params, options, 2)(examples)):
    assert len(decodes) == 2 and decodes[0][1] >= decodes[1][1]
    for tokens, log_prob, score in decodes:
      assert score is None
      if 0 not in _kept(tokens):
        assert log_prob == pytest.approx(_score(model, params, example.tokens, tokens),
                                         rel=1e-4, abs=1e-4)


# -- resume and several hosts ---------------------------------------------------------------

class _Stop(Exception):
  pass


def _stop_after(chunks):
  seen = []

  def log(message):
    if "examples in" in message:
      seen.append(message)
      if len(seen) == chunks:
        raise _Stop(message)
  return log


def test_a_stopped_run_resumes_into_the_file_of_an_uninterrupted_one(dirs, prompts,
                                                                      tmp_path):
  whole = tmp_path / "whole"
  _infer(dirs[ED], whole, prompts=prompts, chunk_size=2)
  expected = (whole / "predictions.jsonl").read_text()

  stopped = tmp_path / "stopped"
  with pytest.raises(_Stop):
    _infer(dirs[ED], stopped, prompts=prompts, chunk_size=2, log=_stop_after(2))
  assert len(_rows(stopped / "predictions.jsonl")) == 4
  assert not (stopped / "summary.json").exists()
  with open(stopped / "predictions.jsonl", "a") as f:      # a write cut short
    f.write('{"index": 4, "inputs": "Bor')
  messages = []
  run = _infer(dirs[ED], stopped, prompts=prompts, chunk_size=3, log=messages.append)
  assert (stopped / "predictions.jsonl").read_text() == expected
  assert any("4 of 7 examples already in" in m for m in messages)
  assert run.results["decoded_now"] == 3 and run.results["examples"] == 7

  # max_examples stops a run too; the same command without it goes on.
  limited = tmp_path / "limited"
  _infer(dirs[ED], limited, prompts=prompts, max_examples=3, chunk_size=2)
  assert len(_rows(limited / "predictions.jsonl")) == 3
  _infer(dirs[ED], limited, prompts=prompts, chunk_size=2)
  assert (limited / "predictions.jsonl").read_text() == expected
  run = _infer(dirs[ED], limited, prompts=prompts)           # done: nothing to decode
  assert run.results["decoded_now"] == 0 and run.results["examples"] == 7
  with pytest.raises(UserError, match=r"holds more rows \(4 or more\) than this run's inputs "
                                      r"give this host \(3\); give the --max_examples"):
    _infer(dirs[ED], limited, prompts=prompts, max_examples=3)


@pytest.mark.parametrize("change, named", [
    (dict(decode="sample"), "--decode"),
    (dict(max_decode_steps=STEPS + 1), "--max_decode_steps"),
    (dict(paradigm="[NLG]"), "--paradigm"),
    (dict(arch=ND), "--arch"),
])
def test_a_resume_with_other_settings_is_refused_naming_the_setting(change, named, dirs,
                                                                    prompts, tmp_path):
  with pytest.raises(_Stop):
    _infer(dirs[CD], tmp_path, prompts=prompts, chunk_size=2, log=_stop_after(1))
  with pytest.raises(UserError) as e:
    _infer(dirs[CD], tmp_path, prompts=prompts, chunk_size=2, **change)
  message = str(e.value)
  assert named in message and "settings.json" in message and "\n" not in message


def test_a_resume_with_other_prompts_is_refused(dirs, prompts, tmp_path):
  with pytest.raises(_Stop):
    _infer(dirs[CD], tmp_path / "out", prompts=prompts, chunk_size=2, log=_stop_after(1))
  edited = tmp_path / "edited.jsonl"
  edited.write_text(pathlib.Path(prompts).read_text().replace("a", "b", 1))
  with pytest.raises(UserError, match="--prompts"):
    _infer(dirs[CD], tmp_path / "out", prompts=str(edited), chunk_size=2)


def _command(argv):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
             ARCH_OBJECTIVE_COMPILATION_CACHE_DIR="")
  return subprocess.Popen([sys.executable, "-m", "arch_objective.cli", *argv], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_hosts_merged_equal_one_byte_for_byte(dirs, prompts, tmp_path, capsys):
  options = ["--checkpoint", dirs[ND], "--prompts", prompts, "--max_decode_steps",
             str(STEPS), "--chunk_size", "2", "--batch_size", "2", "--decode", "beam",
             "--num_decodes", "2"]
  hosts = [_command(["infer", *options, "--out", str(tmp_path / "two"), "--process_index",
                     str(i), "--process_count", "2"]) for i in range(2)]
  for host in hosts:
    _, err = host.communicate(timeout=600)
    assert host.returncode == 0, err[-3000:]
  two = tmp_path / "two"
  assert len(_rows(two / "predictions-00000-of-00002.jsonl")) == 4
  assert [r["index"] for r in _rows(two / "predictions-00001-of-00002.jsonl")] == [1, 3, 5]
  rc, out, err = run_cli(capsys, ["infer", "--merge", "--out", str(two)])
  assert rc == 0, err
  assert json.loads(out)["examples"] == 7
  rc, _, err = run_cli(capsys, ["infer", *options, "--out", str(tmp_path / "one"),
                                "--process_index", "0", "--process_count", "1",
                                "--compilation_cache_dir", ""])
  assert rc == 0, err
  assert (two / "predictions.jsonl").read_bytes() == \
      (tmp_path / "one" / "predictions.jsonl").read_bytes()
  merged = json.loads((two / "summary.json").read_text())
  assert merged["examples"] == 7 and merged["decodes"] == 14


def test_merge_names_a_host_that_is_missing_or_not_finished(dirs, prompts, tmp_path):
  from arch_objective.evaluation import infer
  _infer(dirs[CD], tmp_path, prompts=prompts, process_index=0, process_count=2)
  with pytest.raises(MissingFile, match="host 1 of 2 wrote no .*predictions-00001-of-00002"):
    infer.merge(str(tmp_path))
  with pytest.raises(_Stop):
    _infer(dirs[CD], tmp_path, prompts=prompts, process_index=1, process_count=2,
           chunk_size=1, log=_stop_after(1))
  with pytest.raises(UserError, match="predictions-00001-of-00002.jsonl is incomplete: host "
                                      "1 has not finished"):
    infer.merge(str(tmp_path))
  _infer(dirs[CD], tmp_path, prompts=prompts, process_index=1, process_count=2)
  assert infer.merge(str(tmp_path))["examples"] == 7
  _infer(dirs[CD], tmp_path / "one", prompts=prompts)
  assert (tmp_path / "predictions.jsonl").read_text() == \
      (tmp_path / "one" / "predictions.jsonl").read_text()
  with pytest.raises(UserError, match="give --out DIR"):
    infer.merge(None)
  with pytest.raises(MissingFile, match="holds no settings.json"):
    infer.merge(str(tmp_path / "nowhere"))


# -- the other inputs: a task, T0's (here the world's) held-out datasets, a paradigm --------

def test_a_tasks_examples_are_decoded_from_their_token_ids(dirs, toy_vocab, tmp_path,
                                                          clean_registry):
  import tasks
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"text": " ".join(_sentences(3, seed=s))}) + "\n"
                            for s in range(300)))
  tasks.register_local_corpus("mini", str(corpus), vocabulary=toy_vocab.path, length=48,
                              with_seqio=False)
  _infer(dirs[CD], tmp_path / "out", task="mini_prefix_lm_decoder", max_examples=3)
  rows = _rows(tmp_path / "out" / "predictions.jsonl")
  spec = clean_registry.get("mini_prefix_lm_decoder")
  examples = [e for _, e in zip(range(3), spec.task_examples("validation", seed=0))]
  model, params = _model(dirs[CD])
  assert [r["index"] for r in rows] == [0, 1, 2]
  for row, example in zip(rows, examples):
    assert row["inputs"] == toy_vocab.decode(example["inputs"])
    assert row["targets"] == toy_vocab.decode(example["targets"])
    generated, _ = _reference(model, params, np.asarray(example["inputs"]))
    assert row["prediction"] == toy_vocab.decode(generated)
  settings = json.loads((tmp_path / "out" / "settings.json").read_text())
  assert settings["task"] == "mini_prefix_lm_decoder" and settings["split"] == "validation"


def test_a_mixture_needs_max_examples_and_the_world_mixture_is_known(dirs, tmp_path,
                                                                      clean_registry):
  with pytest.raises(UserError, match="world_mtf is a mixture.*--max_examples"):
    _infer(dirs[ED], tmp_path, task="world_mtf")
  _infer(dirs[ED], tmp_path, task="world_mtf", max_examples=2, inputs_length=4096)
  rows = _rows(tmp_path / "predictions.jsonl")
  assert len(rows) == 2 and all(r["inputs"] and r["targets"] for r in rows)


@pytest.fixture(scope="module")
def world_suite(tmp_path_factory):
  from arch_objective.data import world
  from arch_objective.training import example_data
  directory = tmp_path_factory.mktemp("world") / "t0_eval"
  example_data.write_world_suite(str(directory), world.make_world(seed=0), examples=3)
  return str(directory)


def test_held_out_datasets_give_a_row_per_example_and_template(dirs, world_suite,
                                                               tmp_path):
  from arch_objective.training import example_data
  _infer(dirs[ED], tmp_path, datasets=["world_nli", "world_coreference"],
         data_dir=world_suite, max_examples=2, inputs_length=4096)
  rows = _rows(tmp_path / "predictions.jsonl")
  suite = {f.name: f for f in example_data.read_world_suite(world_suite)}
  expected = [(d, p.name, i) for d in ("world_nli", "world_coreference")
              for p in suite[d].prompts for i in range(2)]
  assert [(r["dataset"], r["template"], r["example"]) for r in rows] == expected
  assert [r["index"] for r in rows] == list(range(len(expected)))
  first = suite["world_nli"].prompts[0].render(suite["world_nli"].examples[0])
  assert (rows[0]["inputs"], rows[0]["targets"]) == (first.inputs, first.targets)
  _infer(dirs[ED], tmp_path / "all", datasets=["all"], data_dir=world_suite, max_examples=1,
         inputs_length=4096)
  assert {r["dataset"] for r in _rows(tmp_path / "all" / "predictions.jsonl")} == set(suite)


def test_a_paradigm_token_starts_every_prompt(dirs, prompts, toy_vocab, tmp_path):
  from arch_objective.objectives import ul2
  _infer(dirs[ED], tmp_path, prompts=prompts, paradigm="[S2S]", max_examples=2)
  rows = _rows(tmp_path / "predictions.jsonl")
  model, params = _model(dirs[ED])
  prefix = ul2.paradigm_prefix("[S2S]", toy_vocab.vocab_size, toy_vocab.extra_ids)
  for row in rows:
    tokens = np.asarray(list(prefix) + toy_vocab.encode(row["inputs"]), np.int32)
    assert row["prompt_length"] == len(tokens)
    assert row["prediction"] == toy_vocab.decode(_reference(model, params, tokens)[0])
  assert json.loads((tmp_path / "settings.json").read_text())["paradigm"] == "[S2S]"


# -- the command line and the gin run file --------------------------------------------------

def test_the_gin_run_binds_every_parameter_from_its_macro():
  from arch_objective.evaluation import infer, runs
  text = (ROOT / "gin" / "runs" / "infer.gin").read_text()
  for param in runs.parameters("infer"):
    macro = infer.MACROS.get(param, param.upper())
    assert f"infer.{param} = %{macro}\n" in text, param
    assert f"\n{macro} = " in text and macro in text.split("import")[0], param


def test_the_command_and_the_gin_run_write_the_same_predictions(dirs, prompts, tmp_path,
                                                                 capsys):
  common = ["--max_decode_steps", str(STEPS), "--max_examples", "3"]
  rc, out, err = run_cli(capsys, ["infer", "--checkpoint", dirs[CD], "--prompts", prompts,
                                  "--out", str(tmp_path / "flags"), *common])
  assert rc == 0, err
  assert "## infer: greedy" in out and "| 3 | 3 |" in out
  rc, out, err = run_cli(capsys, ["infer", "--gin_file", "runs/infer.gin",
                                  f"--gin.CHECKPOINT_PATH='{dirs[CD]}'",
                                  f"--gin.PROMPTS='{prompts}'", "--gin.MAX_EXAMPLES=3",
                                  f"--gin.MAX_DECODE_STEPS={STEPS}",
                                  f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'gin'}'"])
  assert rc == 0, err
  assert (tmp_path / "gin" / "predictions.jsonl").read_text() == \
      (tmp_path / "flags" / "predictions.jsonl").read_text()
  assert "infer.prompts = %PROMPTS" in (tmp_path / "gin" / "config.gin").read_text()
  # Options override the file's macros; the default folder is next to the checkpoint.
  rc, _, err = run_cli(capsys, ["infer", "--gin_file", "runs/infer.gin", "--checkpoint",
                                dirs[CD], "--prompts", prompts, *common])
  assert rc == 0, err
  default = pathlib.Path(dirs[CD]) / "infer" / str(STEP) / "predictions.jsonl"
  assert default.read_text() == (tmp_path / "flags" / "predictions.jsonl").read_text()


def _bad_file(tmp_path, text, name="bad.jsonl"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("options, expected", [
    ({}, "give exactly one of --task, --prompts, --datasets .* found none"),
    ({"task": "x", "datasets": ["y"]}, "found --task and --datasets"),
    ({"prompts": "P", "decode": "sample", "topp": 1.5},
     r"--topp \(gin: TOPP\) must be a number in \(0, 1\].* found 1.5"),
    ({"prompts": "P", "decode": "sample", "topp": 0.0}, r"--topp .* found 0.0"),
    ({"prompts": "P", "decode": "sample", "temperature": -1.0},
     r"--temperature .* must be a number >= 0 .* found -1.0"),
    ({"prompts": "P", "num_decodes": 2}, "--num_decodes .* 2 needs --decode sample or beam"),
    ({"prompts": "P", "temperature": 0.5}, "--temperature .* applies to --decode sample, "
                                           "not greedy"),
    ({"prompts": "P", "decode": "top"}, "--decode .* must be one of greedy, sample, beam"),
    ({"prompts": "P", "decode": "beam", "beam_rules": "tf"},
     "--beam_rules .* must be one of t5x, hf, found 'tf'"),
    ({"prompts": "P", "decode": "beam", "alpha": -1.0}, "--alpha .* must be a number >= 0"),
    ({"prompts": "P", "beam_rules": "hf"}, "--beam_rules .* applies to --decode beam"),
    ({"prompts": "P", "split": "train"}, "--split .* does not apply to --prompts"),
    ({"prompts": "P", "process_index": 2, "process_count": 2},
     "--process_index .* must be below --process_count 2, found 2"),
])
def test_bad_options_are_refused_in_one_line(options, expected, dirs, prompts, tmp_path):
  options = {k: (prompts if v == "P" else v) for k, v in options.items()}
  with pytest.raises(UserError, match=expected) as e:
    _infer(dirs[CD], tmp_path, **options)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, options, expected", [
    ('{"inputs": "a"}\n\nnot json\n', {}, r"bad.jsonl, line 3: not valid JSON"),
    ('{"inputs": "a"}\n{"text": "b"}\n', {}, r"bad.jsonl, line 2: expected an object with the "
                                           r"prompt in field 'inputs' .*has \['text'\]"),
    ('{"text": "a"}\n', {"inputs_field": "text"}, None),
    ('{"inputs": 3}\n', {}, r"line 1: field 'inputs' must be text, found int"),
    ('{"inputs": "a b c d e f g h i j"}\n', {"inputs_length": 4},
     r"bad.jsonl, line 1 \(example 0\): the prompt is \d+ tokens, more than --inputs_length "
     r"\(gin: INPUTS_LENGTH\) 4"),
])
def test_bad_prompt_files_are_refused_naming_the_line(text, options, expected, dirs,
                                                      tmp_path):
  path = _bad_file(tmp_path, text)
  if expected is None:
    run = _infer(dirs[CD], tmp_path / "out", prompts=path, **options)
    assert run.results["examples"] == 1
    return
  with pytest.raises(UserError, match=expected) as e:
    _infer(dirs[CD], tmp_path / "out", prompts=path, **options)
  assert "\n" not in str(e.value)
  assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_bad_inputs_are_refused_in_one_line_on_the_command_line(dirs, world_suite, tmp_path,
                                                                capsys, clean_registry):
  base = ["infer", "--checkpoint", dirs[CD], "--out", str(tmp_path)]
  rc, _, err = run_cli(capsys, base + ["--task", "no_such_task"])
  assert rc == 2 and "unknown task 'no_such_task'" in one_line(err)
  rc, _, err = run_cli(capsys, base + ["--prompts", str(tmp_path / "missing.jsonl")])
  assert rc == 2 and "--prompts" in one_line(err) and "does not exist" in err
  rc, _, err = run_cli(capsys, base + ["--datasets", "world_nope", "--data_dir", world_suite])
  assert rc == 2 and "['world_nope'] are not in the world suite" in one_line(err)
  rc, _, err = run_cli(capsys, ["infer", "--merge"])
  assert rc == 2 and "give --out DIR" in one_line(err)


def test_the_example_data_holds_prompts_of_the_world(tmp_path):
  from arch_objective.data import world
  from arch_objective.training import example_data
  path = tmp_path / "prompts.jsonl"
  suite = world.make_world(seed=0).heldout_suite()
  assert example_data.write_world_prompts(str(path), suite) == 2 * len(suite)
  rows = _rows(path)
  assert all(set(r) == {"inputs", "targets"} and r["inputs"] and r["targets"] for r in rows)


@pytest.mark.slow
@requires("promptsource")
def test_t0_datasets_give_every_template_of_the_suite(dirs, shared_data, tmp_path):
  from arch_objective.prompts import t0
  _infer(dirs[ED], tmp_path, datasets=["super_glue/rte"], data_dir=str(shared_data / "eval"),
         max_examples=2, inputs_length=8192, max_decode_steps=2)
  rows = _rows(tmp_path / "predictions.jsonl")
  templates = t0.T0_EVAL_BY_NAME["super_glue/rte"].prompts
  assert [(r["template"], r["example"]) for r in rows] == [(p, i) for p in templates
                                                          for i in range(2)]
  assert {r["dataset"] for r in rows} == {"super_glue/rte"}
  assert all(r["targets"] and r["inputs"] for r in rows)
