"""What a newcomer trips over, said in one line: an unreachable bucket told apart from a
missing directory, every missing T0-Eval file named once, a local folder that would
shadow a Hugging Face dataset, lm-eval offline, and the NC-A launch that fits a v4-64."""
import json
import pathlib
import re

import pytest

from arch_objective import paths
from arch_objective.training import checkpoints

from helpers import ROOT, run_cli


# ----------------------------------------------------------------------------------------
# gs://: cannot reach vs does not exist
# ----------------------------------------------------------------------------------------
class HttpError(Exception):
  """What gcsfs raises for a refused request (gcsfs.retry.HttpError)."""


class _Storage:
  """An `epath.Path` stand-in for gs:// paths: every question raises `error`, or
  answers that nothing exists."""

  def __init__(self, error=None):
    self.error = error

  def __call__(self, path):
    storage = self

    class Remote:
      def exists(self):
        return storage.answer()

      def is_dir(self):
        return storage.answer()

    return Remote()

  def answer(self):
    if self.error is not None:
      raise self.error
    return False


@pytest.fixture
def bucket(monkeypatch):
  storage = _Storage()
  local = paths.as_path
  monkeypatch.setattr(paths, "as_path",
                      lambda p: storage(p) if paths.is_remote(p) else local(p))
  return storage


DENIED = ("Anonymous caller does not have storage.objects.list access to the Google Cloud "
          "Storage bucket. Permission 'storage.objects.list' denied on resource (or it may "
          "not exist)., 401")


@pytest.mark.parametrize("error", [HttpError(DENIED), PermissionError(DENIED),
                                   ValueError(f"GCS request failed: {DENIED}")])
def test_an_unreachable_bucket_is_not_reported_missing(bucket, error):
  bucket.error = error
  with pytest.raises(paths.Unreachable) as e:
    checkpoints.open_model_dir("gs://bucket/runs/cd", read_params=False)
  message = str(e.value)
  assert message.startswith("cannot reach gs://bucket/runs/cd")
  assert type(error).__name__ in message and "storage.objects.list" in message
  assert "credentials" in message and "no such directory" not in message
  assert "\n" not in message
  with pytest.raises(paths.Unreachable):
    checkpoints.step_directory("gs://bucket/runs/cd/checkpoints/4")


def test_a_missing_remote_directory_says_the_storage_answered(bucket):
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"no such directory 'gs://bucket/runs/cd' \(the storage "
                           r"answered: it does not exist\)"):
    checkpoints.open_model_dir("gs://bucket/runs/cd", read_params=False)


def test_the_command_line_says_cannot_reach_in_one_line(bucket, capsys):
  bucket.error = HttpError(DENIED)
  rc, _, err = run_cli(capsys, ["plan", "--model_dir", "gs://bucket/runs/cd"])
  assert rc == 2 and "Traceback" not in err
  (line,) = err.strip().splitlines()
  assert line.startswith("arch-objective plan: cannot reach gs://bucket/runs/cd")


def test_local_paths_keep_their_errors(tmp_path):
  assert not paths.isdir(str(tmp_path / "nothing"))
  with pytest.raises(checkpoints.CheckpointError, match="no such directory"):
    checkpoints.step_directory(str(tmp_path / "nothing"))


# ----------------------------------------------------------------------------------------
# T0-Eval: every missing dataset named once, one line
# ----------------------------------------------------------------------------------------
def test_missing_t0_eval_files_name_each_dataset_once_in_one_line(tmp_path):
  from arch_objective.evaluation import t0_eval
  names = ["super_glue/rte", "anli/r1", "hellaswag"]
  with pytest.raises(FileNotFoundError) as e:
    t0_eval.evaluate_suite(None, None, suite=t0_eval.select(names), data_dir=str(tmp_path),
                           max_examples=2)
  message = str(e.value)
  assert "\n" not in message and message.startswith("T0-Eval: 3 datasets cannot be read.")
  for name in names:
    assert message.count(f"{name} validation: no file") == 1, message
  assert message.count("T0-Eval") == 1


# ----------------------------------------------------------------------------------------
# A local folder named like a Hugging Face dataset
# ----------------------------------------------------------------------------------------
def test_a_local_folder_does_not_shadow_a_hugging_face_dataset(tmp_path, monkeypatch):
  from arch_objective.errors import UserError
  from arch_objective.prompts import datasets as datasets_lib
  pytest.importorskip("datasets")
  (tmp_path / "super_glue").mkdir()
  monkeypatch.chdir(tmp_path)

  def load_dataset(*args, **kwargs):
    raise AssertionError("the local folder must not reach datasets.load_dataset")

  import datasets
  monkeypatch.setattr(datasets, "load_dataset", load_dataset)
  with pytest.raises(UserError) as e:
    datasets_lib.load_examples("super_glue", "rte", "validation")
  message = str(e.value)
  assert str(tmp_path / "super_glue") in message and "'super_glue'" in message
  assert "--data_dir" in message and "BuilderConfig" not in message


def test_without_the_folder_the_hub_dataset_is_asked_for(tmp_path, monkeypatch):
  from arch_objective.prompts import datasets as datasets_lib
  datasets = pytest.importorskip("datasets")
  monkeypatch.chdir(tmp_path)
  asked = []

  def load_dataset(name, subset, split):
    asked.append((name, subset, split))
    return [{"premise": "p", "hypothesis": "h", "label": 0, "idx": 0}]

  monkeypatch.setattr(datasets, "load_dataset", load_dataset)
  assert datasets_lib.load_examples("super_glue", "rte", "validation")[0]["label"] == 0
  assert asked == [("super_glue", "rte", "validation")]


# ----------------------------------------------------------------------------------------
# arch-objective-lm-eval offline, and where it writes
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  from arch_objective import models
  from arch_objective.convert import model_dir as model_dir_lib
  from arch_objective.data import vocabularies
  from helpers import one_layer_model, random_params, sentences
  root = tmp_path_factory.mktemp("lm_eval")
  vocabulary = vocabularies.train_sentencepiece(sentences(), str(root / "spm"), 200)
  vocab = vocabularies.SentencePieceVocabulary(vocabulary)
  model = one_layer_model(models.ENCODER_DECODER, vocabularies.padded_vocab_size(
      vocab.vocab_size))
  directory = root / "ed"
  model_dir_lib.write_model_dir(str(directory), models.ENCODER_DECODER, model.config,
                                random_params(model, 0), step=2, vocabulary=vocabulary,
                                vocab_size=vocab.vocab_size)
  return str(directory)


@pytest.mark.slow
def test_lm_eval_offline_is_one_line_naming_the_dataset(offline, model_dir, capsys):
  pytest.importorskip("lm_eval")
  from arch_objective.evaluation import lm_eval_cli
  rc = lm_eval_cli.main(["--model", "arch_objective", "--model_args",
                         f"model_dir={model_dir}", "--tasks", "copa", "--limit", "1",
                         "--output_path", str(offline / "out")])
  err = capsys.readouterr().err
  assert rc == 2 and "Traceback" not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith("arch-objective-lm-eval: error: dataset ")
  assert re.search(r"dataset '[^']*super_glue' of the tasks", line), line
  assert "needs the Hub" in line and "HF_DATASETS_OFFLINE" in line
  assert "--include_path" in line and "dataset_path: json" in line


@pytest.mark.slow
def test_lm_eval_results_go_to_the_folder_named_after_the_model(offline, model_dir, capsys):
  pytest.importorskip("lm_eval")
  from arch_objective.evaluation import lm_eval_cli
  from lm_eval.utils import sanitize_model_name
  from helpers import write_tasks
  tasks = write_tasks(offline / "tasks")
  out = offline / "out"
  rc = lm_eval_cli.main(["--model", "arch_objective", "--model_args",
                         f"model_dir={model_dir},batch_tokens=1024", "--tasks", "toy_mc",
                         "--include_path", str(tasks), "--limit", "2",
                         "--output_path", str(out)])
  assert rc == 0, capsys.readouterr().err[-3000:]
  (folder,) = [p for p in out.iterdir() if p.is_dir()]
  assert folder.name == sanitize_model_name(model_dir)
  assert len(list(folder.glob("results_*.json"))) == 1


def test_lm_eval_keeps_its_own_model_names():
  pytest.importorskip("lm_eval")
  from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
  from arch_objective.evaluation import lm_eval_cli
  with lm_eval_cli._model_named_by_its_checkpoint():
    get = GeneralConfigTracker._get_model_name
    assert get("pretrained=gpt2,dtype=float32") == "gpt2"
    assert get("checkpoint=/runs/ed,truncation=paper") == "/runs/ed"
    assert get({"model_dir": "/runs/nd"}) == "/runs/nd"
    assert get("truncation=paper") is None
  assert GeneralConfigTracker._get_model_name("checkpoint=/runs/ed") is None


# ----------------------------------------------------------------------------------------
# NC-A on a v4-64: the README's launch has the bindings that fit
# ----------------------------------------------------------------------------------------
PLAN = ["plan", "--gin_file=experiments/paper/nc_a.gin", "--mesh", "data=8,model=4",
        "--device", "tpu_v4"]


def test_nc_a_fits_a_v4_64_with_the_readmes_bindings_only(capsys):
  rc, out, _ = run_cli(capsys, PLAN + ["--gin.NUM_MICROBATCHES=32"])
  report = json.loads(out)
  assert rc == 0 and report["fits"] and not report["problems"]
  assert report["memory_per_device_gib"]["total"] < 32
  rc, out, _ = run_cli(capsys, PLAN)
  assert rc == 1 and not json.loads(out)["fits"]
  readme = (pathlib.Path(ROOT) / "tpu_scripts" / "README.md").read_text()
  supervise = readme[readme.index("tpu_scripts/supervise.sh --create_arg"):]
  supervise = supervise[:supervise.index("```")]
  adapt = readme[readme.index("tpu_scripts/adapt.sh --gin_file experiments/paper/nc_a.gin"):]
  adapt = adapt[:adapt.index("```")]
  for example in (supervise, adapt):
    assert "--gin MESH_MODEL=4 --gin NUM_MICROBATCHES=32" in example, example
  assert ("arch-objective plan --gin_file experiments/paper/nc_a.gin --mesh data=8,model=4 "
          "\\\n    --device tpu_v4 --gin.NUM_MICROBATCHES=32") in readme
