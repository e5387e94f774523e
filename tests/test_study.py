"""`arch-objective study --preset smoke`: every artifact, and resuming skips finished stages."""
import json

import pytest

from arch_objective import study


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("study")
  lines = []
  results = study.run_study("smoke", str(out), log=lines.append)
  return out, results, lines


def test_smoke_study_writes_every_artifact(smoke_dir):
  out, results, lines = smoke_dir
  written = json.loads((out / "results.json").read_text())
  assert written == json.loads(json.dumps(results))
  cells = written["cells"]
  assert sorted(c["label"] for c in cells.values()) == sorted(
      ["CD:FLM", "CD:MLM", "ND:PLM", "ND:MLM", "ED:PLM", "ED:MLM"])
  for cell in cells.values():
    for stage in ("zero_shot", "after_mtf"):
      summary = cell[stage]
      assert 0.0 <= summary["average"] <= 100.0
      low, high = summary["ci"]
      assert low <= summary["average"] <= high
      assert set(summary["per_family"]) == set(written["heldout_families"])
    assert cell["pretrain_loss"] and cell["mtf_loss"]
    # MT-F continues the pretraining step counter.
    assert cell["after_mtf"]["step"] > cell["zero_shot"]["step"]
  assert len(written["heldout_families"]) >= 4
  assert 0 < written["random_baseline"] < 100
  table = (out / "results.md").read_text()
  assert all(label in table for label in ("CD:FLM", "ED:MLM", "random"))
  for png in ("zero_shot.png", "loss_curves.png"):
    data = (out / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  assert any("ETA" in line for line in lines)
  assert (out / "runs" / "cd_flm" / "tensorboard").is_dir()


def test_a_finished_study_resumes_without_redoing_stages(smoke_dir):
  out, results, _ = smoke_dir
  lines = []
  again = study.run_study("smoke", str(out), log=lines.append)
  stage_lines = [l for l in lines if l.startswith("[")]
  assert stage_lines and all("done before, skipped" in l for l in stage_lines)
  assert again["cells"] == json.loads(json.dumps(results["cells"]))


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="unknown study preset 'huge'.*smoke, quick, full"):
    study.load_preset("huge")


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_preset_vocabulary_fits_its_corpus(preset, tmp_path):
  """The world's text has a bounded lexicon: a preset's `vocab_size` must be one that
  SentencePiece can fill from the corpus that preset writes."""
  from arch_objective.data import vocabularies, world as world_lib
  config = study.load_preset(preset)
  corpus = str(tmp_path / "corpus.jsonl")
  world_lib.write_corpus(corpus, world_lib.make_world(seed=config.seed),
                         target_bytes=config.corpus_bytes)
  path = str(tmp_path / "spm.model")
  study._train_vocab(corpus, path, config.vocab_size)
  assert vocabularies.SentencePieceVocabulary(path).vocab_size >= config.vocab_size
