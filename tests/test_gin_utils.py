"""`training/gin_utils.py`: gin files and bindings parsed with strict checks (every
shipped file parses; models and data sources compose from the macros users set; unknown
bindings, macros and files are errors), t5x's names and feature lengths, the search
paths, and `register` (the one door for configurables) with the read-back of a parsed
config (`bound`, `bound_values`, `option_bindings`) that `eval --gin_file` builds on."""
import gin
import pytest

from arch_objective.training import gin_utils, sources

from helpers import ROOT

GIN_FILES = sorted(str(p.relative_to(ROOT / "gin")) for p in (ROOT / "gin").rglob("*.gin"))


# ---------------------------------------------------------------------------
# Parsing the shipped files
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_every_gin_file_parses(gin_file):
  # Run files use the task macro that an objectives/ file sets, and required macros.
  import re
  text = "\n".join(gin_utils._texts([gin_utils._locate(gin_file)]))
  from arch_objective import study
  from arch_objective.evaluation import runs  # noqa: F401 (registers eval_t0, eval_harness)
  study.register_gin()
  extra = [f"{name}=1" for name in re.findall(r"^(\w+) = %gin.REQUIRED", text, re.M)]
  if "%MIXTURE_OR_TASK_NAME" in text and "MIXTURE_OR_TASK_NAME =" not in text:
    extra.append("MIXTURE_OR_TASK_NAME='c4_full_lm'")
  gin_utils.parse([gin_file], extra)
  import gin
  text = (ROOT / "gin" / gin_file).read_text()
  bound = [l.split("=")[0].strip() for l in text.splitlines() if "=" in l and not l.startswith("#")]
  assert bound, gin_file
  assert all(gin.query_parameter(b) is not None for b in bound if "." in b)


@pytest.mark.parametrize("arch", ["causal_decoder", "non_causal_decoder", "encoder_decoder"])
def test_gin_composes_a_model_per_architecture(arch):
  import gin
  gin_utils.parse([f"models/{arch}.gin", "sizes/tiny.gin", "runs/pretrain.gin"],
                  ["MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=1", "MIXTURE_OR_TASK_NAME='c4_full_lm'"])
  model = gin.get_configurable("build_model")()
  assert model.name == arch and model.config.emb_dim == 64 and model.config.dtype == "bfloat16"


def test_run_files_bind_the_source_from_the_macros_users_set():
  """CORPUS, TFDS_DATA_DIR and C4_VERSION name the corpus of pretraining and evaluation
  (`@corpus_source()`); PROMPT_DATASETS, DATA_DIR and MAPPING the MT-F mixture's."""
  import gin
  model = ["models/causal_decoder.gin", "sizes/tiny.gin"]
  runs = {"runs/pretrain.gin": ["MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=1"],
          "runs/evaluate.gin": ["MODEL_DIR='/tmp/unused'"]}

  def dataset(files, bindings):
    gin_utils.parse(files, bindings)
    return gin.get_configurable("DatasetConfig")()

  for run, required in runs.items():
    files = model + ["objectives/full_lm.gin", run]
    assert dataset(files, required).source == sources.C4()
    assert dataset(files, required + ["TFDS_DATA_DIR='/tmp/tfds'", "C4_VERSION='2.2.0'"]
                   ).source == sources.C4("2.2.0", "/tmp/tfds")
    local = dataset(files, required + ["CORPUS=['a.jsonl', 'b/*.txt']",
                                       "MIXTURE_OR_TASK_NAME='local_full_lm'"])
    assert local.task == "local_full_lm"
    assert local.source == sources.LocalCorpus(["a.jsonl", "b/*.txt"], "text", "line")
  files = model + ["runs/finetune_t0.gin"]
  required = ["MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=1", "INITIAL_CHECKPOINT_PATH='/tmp/c'"]
  t0 = dataset(files, required)
  assert t0.task == "t0_train" and t0.prompted and t0.source == sources.PromptedDatasets()
  mix = dataset(files, required + ["MIXTURE_OR_TASK_NAME='rte'", "DATA_DIR='/d'",
                                   "PROMPT_DATASETS=['super_glue/rte']", "MAPPING='/m.json'"])
  assert mix.prompted and mix.source == sources.PromptedDatasets(["super_glue/rte"], "/d",
                                                                 "/m.json")


def test_unknown_gin_bindings_and_macros_are_errors():
  with pytest.raises(ValueError, match="gin macro TRAIN_STEPS is required"):
    gin_utils.parse(["runs/pretrain.gin", "objectives/full_lm.gin"], ["MODEL_DIR='/tmp/x'"])
  with pytest.raises(ValueError, match="doesn't have a parameter named 'foo'"):
    gin_utils.parse(["runs/pretrain.gin"], ["train.foo = 1"])
  with pytest.raises(ValueError, match="unknown gin macro 'BATCH_SIZ'.*BATCH_SIZE"):
    gin_utils.parse(["runs/pretrain.gin"], ["BATCH_SIZ = 4"])
  with pytest.raises(ValueError, match="gin file 'runs/nope.gin' not found"):
    gin_utils.parse(["runs/nope.gin"], [])


# ---------------------------------------------------------------------------
# t5x's names and feature lengths, and where files are found
# ---------------------------------------------------------------------------
def test_t5x_bindings_are_renamed_checked_and_their_lengths_returned():
  out, lengths = gin_utils.translate_t5x_bindings(
      ["RANDOM_SEED=3", "USE_CACHED_TASKS=False", "BATCH_SIZE = 8",
       "TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 114}", "train.log_every=5"])
  assert out == ["SEED=3", "BATCH_SIZE = 8", "train.log_every=5"]
  assert lengths == {"inputs": 512, "targets": 114}
  assert gin_utils.translate_t5x_bindings(["LENGTH=64"]) == (["LENGTH=64"], None)
  with pytest.raises(ValueError, match="there is no seqio cache to read"):
    gin_utils.translate_t5x_bindings(["USE_CACHED_TASKS=True"])
  with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS must be a dict of positive"):
    gin_utils.translate_t5x_bindings(["TASK_FEATURE_LENGTHS={'inputs': 0}"])
  with pytest.raises(ValueError, match="expected a Python literal, found 'lengths'"):
    gin_utils.translate_t5x_bindings(["TASK_FEATURE_LENGTHS=lengths"])


@pytest.mark.parametrize("uses,task,lengths,expected", [
    ("%LENGTH", "c4_span_corruption", {"inputs": 512, "targets": 114}, ["LENGTH=626"]),
    ("%LENGTH", "c4_full_lm", {"targets": 1024}, ["LENGTH=1024"]),
    ("%LENGTH", "c4_prefix_lm", {"inputs": 400, "targets": 399}, ["LENGTH=400"]),
    ("%INPUTS_LENGTH, %TARGETS_LENGTH", "rte", {"inputs": 256, "targets": 32},
     ["INPUTS_LENGTH=256", "TARGETS_LENGTH=32"]),
], ids=["span_corruption", "full_lm", "prefix_lm", "prompted"])
def test_feature_lengths_become_the_length_macros_of_the_run(tmp_path, uses, task, lengths,
                                                             expected):
  run = tmp_path / "run.gin"
  run.write_text(f"lengths = [{uses}]\n")      # read for the macros it uses, not parsed
  gin.clear_config()
  try:
    gin.parse_config([f"MIXTURE_OR_TASK_NAME = {task!r}"])
    assert gin_utils.lengths_bindings(lengths, [str(run)]) == expected
  finally:
    gin.clear_config()


@pytest.mark.parametrize("uses,task,lengths,message", [
    ("%LENGTH", "c4_span_corruption", {"inputs": 500, "targets": 114},
     "span corruption of 614-token chunks gives inputs 501 and targets 112"),
    ("%LENGTH", "c4_full_lm", {"inputs": 512, "targets": 114}, "has 'targets' only"),
    ("%LENGTH", "c4_prefix_lm", {"inputs": 400, "targets": 100}, r"\(>= inputs - 1\)"),
    ("%LENGTH", "rte", {"targets": 32}, "task 'rte' has no known feature lengths"),
    ("%BATCH_SIZE", "c4_full_lm", {"targets": 32}, "set no sequence length"),
], ids=["span_corruption", "full_lm", "prefix_lm", "unknown task", "no length"])
def test_feature_lengths_a_run_cannot_take_are_refused(tmp_path, uses, task, lengths,
                                                       message):
  run = tmp_path / "run.gin"
  run.write_text(f"lengths = [{uses}]\n")
  gin.clear_config()
  try:
    gin.parse_config([f"MIXTURE_OR_TASK_NAME = {task!r}"])
    with pytest.raises(ValueError, match=message):
      gin_utils.lengths_bindings(lengths, [str(run)])
  finally:
    gin.clear_config()


def test_the_repository_gin_folder_is_searched_first():
  paths = gin_utils.gin_search_paths()
  assert paths[0] == str(ROOT / "gin")
  assert all(p.endswith(("gin", "gin_files")) for p in paths)


def test_extra_search_paths_are_searched_and_must_be_folders(tmp_path, monkeypatch):
  mine = tmp_path / "mine"
  (mine / "runs").mkdir(parents=True)
  (mine / "runs" / "probe.gin").write_text("train.train_steps = 3\n")
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="--gin_search_paths: .*nope' is not a directory"):
    gin_utils.set_extra_search_paths([str(tmp_path / "nope")])
  try:
    gin_utils.set_extra_search_paths(["mine"])
    assert gin_utils._EXTRA_SEARCH_PATHS == [str(mine)]
    gin_utils.parse(["runs/probe.gin"])
    assert gin.query_parameter("train.train_steps") == 3
  finally:
    gin_utils.set_extra_search_paths([])
    gin.clear_config()
  with pytest.raises(ValueError, match="gin file 'runs/probe.gin' not found"):
    gin_utils.parse(["runs/probe.gin"])


# ---------------------------------------------------------------------------
# register, and reading a parsed config back
# ---------------------------------------------------------------------------
def _probe(a=1, b=2, log=None):
  return {"a": a, "b": b, "log": log}


def _other(a=1):
  return a


def test_register_is_idempotent_and_refuses_a_taken_name():
  gin_utils.register({"gin_utils_probe": _probe}, denylist=("log",))
  gin_utils.register({"gin_utils_probe": _probe}, denylist=("log",))   # again: no error
  with pytest.raises(ValueError, match="'gin_utils_probe' is already .*_probe.*_other"):
    gin_utils.register({"gin_utils_probe": _other})
  gin.clear_config()
  with pytest.raises(ValueError):                      # a denied parameter is not bindable
    gin.parse_config(["gin_utils_probe.log = 3"])
  gin.clear_config()


def test_bound_values_and_option_bindings_follow_the_macros():
  gin_utils.register({"gin_utils_probe": _probe}, denylist=("log",))
  gin.clear_config()
  gin.parse_config(["A = 5", "gin_utils_probe.a = %A", "gin_utils_probe.b = 7"])
  try:
    assert gin_utils.bound("gin_utils_probe", "a") == (5, "A")
    assert gin_utils.bound("gin_utils_probe", "b") == (7, None)
    assert gin_utils.bound("gin_utils_probe", "log") == (None, None)
    assert gin_utils.bound_values("gin_utils_probe", ["a", "b"]) == {"a": 5, "b": 7}
    out, feeds = gin_utils.option_bindings("gin_utils_probe", ["a", "b"], {"a": 9, "b": "x"})
    assert out == ["A = 9", "gin_utils_probe.b = 'x'"] and feeds == {"A": "a"}
    gin.parse_config(out)
    assert gin.get_configurable("gin_utils_probe")() == {"a": 9, "b": "x", "log": None}
  finally:
    gin.clear_config()
