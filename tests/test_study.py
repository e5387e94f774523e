"""`arch-objective study --preset smoke`: every artifact, and resuming skips finished stages."""
import json

import numpy as np
import pytest

from arch_objective.study import run as study


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("study")
  lines = []
  results = study.run_study("smoke", str(out), log=lines.append)
  return out, results, lines


@pytest.mark.slow
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
  for png in ("zero_shot.png", "loss_curves.png", "contrasts.png"):
    data = (out / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  assert any("ETA" in line for line in lines)
  assert (out / "runs" / "cd_flm" / "tensorboard").is_dir()


@pytest.mark.slow
def test_the_papers_contrasts_are_paired_differences_of_the_cells(smoke_dir):
  out, results, _ = smoke_dir
  from arch_objective.evaluation import contrasts
  labels = [c["label"] for c in results["contrasts"]]
  assert labels[:3] == ["CD:FLM - ED:MLM, after pretraining", "CD:FLM - ED:MLM, after MT-F",
                        "ND:MLM - ED:MLM, after MT-F"]
  assert sum(l.startswith("MT-F gain") for l in labels) == 6
  cells = results["cells"]
  by_label = {c["label"]: c for c in results["contrasts"]}
  pair = by_label["CD:FLM - ED:MLM, after MT-F"]
  assert pair["score_a"] == pytest.approx(cells["cd_flm"]["after_mtf"]["average"])
  assert pair["score_b"] == pytest.approx(cells["ed_mlm"]["after_mtf"]["average"])
  assert pair["difference"] == pytest.approx(pair["score_a"] - pair["score_b"])
  # The per-example table the contrasts read scores exactly as T0-Eval's average.
  evaluation = json.loads((out / "eval" / "cd_flm_mtf.json").read_text())
  assert contrasts.suite_score(evaluation["per_example"]["correct"]) == pytest.approx(
      evaluation["average"])
  gain = by_label["MT-F gain, ED:MLM"]
  assert gain["difference"] == pytest.approx(cells["ed_mlm"]["after_mtf"]["average"]
                                             - cells["ed_mlm"]["zero_shot"]["average"])
  for c in results["contrasts"]:
    assert c["ci"][0] <= c["ci"][1] and c["resamples"] == 50
  table = (out / "results.md").read_text()
  assert "paired bootstrap" in table and "MT-F gain, ED:MLM" in table


@pytest.mark.slow
def test_each_family_reports_its_floor_majority_ceiling_and_one_class_answers(smoke_dir):
  out, results, _ = smoke_dir
  families = results["families"]
  assert sorted(families) == sorted(results["heldout_families"])
  for name, entry in families.items():
    evaluation = json.loads((out / "eval" / "ed_mlm_mtf.json").read_text())
    gold = evaluation["per_example"]["gold"][name]
    counts = [gold.count(k) for k in set(gold)]
    assert entry["majority"] == pytest.approx(100.0 * max(counts) / len(gold))
    assert 0 < entry["random"] < 100
    assert entry["ceiling"] is not None and 0.0 <= entry["ceiling"] <= 100.0
    ed_mlm = entry["models"]["ED:MLM"]["after_mtf"]
    assert ed_mlm["score"] == pytest.approx(
        results["cells"]["ed_mlm"]["after_mtf"]["per_family"][name])
    shares = []
    for prompt in evaluation["per_example"]["predicted"][name].values():
      answers = [p for p in prompt if p is not None]
      shares.append(max(answers.count(k) for k in set(answers)) / len(answers))
    assert ed_mlm["top_answer_share"] == pytest.approx(sum(shares) / len(shares))
    # Cohen's kappa from each prompt's confusion matrix, median over prompts.
    kappas = []
    for prompt in evaluation["per_example"]["predicted"][name].values():
      pairs = [(p, g) for p, g in zip(prompt, gold) if p is not None and g is not None]
      k = 1 + max(max(pair) for pair in pairs)
      confusion = np.zeros((k, k))
      for p, g in pairs:
        confusion[p, g] += 1
      confusion /= confusion.sum()
      chance = float(confusion.sum(1) @ confusion.sum(0))
      kappas.append(0.0 if chance == pytest.approx(1.0)
                    else (float(np.trace(confusion)) - chance) / (1.0 - chance))
    assert ed_mlm["kappa"] == pytest.approx(float(np.median(kappas)), abs=1e-12)
    assert ed_mlm["kappa_ci"][0] <= ed_mlm["kappa"] <= ed_mlm["kappa_ci"][1]
  assert (out / "runs" / f"ceiling_{results['heldout_families'][0]}" / "checkpoints").is_dir()
  assert "majority class" in (out / "results.md").read_text()
  assert "Cohen's kappa" in (out / "results.md").read_text()
  # Ceilings are taught at `ceiling_learning_rate` (smoke: 0.005), MT-F at its own rate.
  rates = lambda run: [json.loads(line)["learning_rate"]
                       for line in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()]
  ceiling = rates(f"ceiling_{results['heldout_families'][0]}")
  assert ceiling and ceiling == pytest.approx([0.005] * len(ceiling))
  mtf = rates("ed_mlm_mtf")
  assert mtf and mtf == pytest.approx([0.001] * len(mtf))


@pytest.mark.slow
def test_every_model_is_scored_on_mtf_own_classification_families(smoke_dir):
  """Before and after MT-F, each model is scored on the training families with answer
  choices; the report's numbers are the evaluation files', and the evaluation files'
  answers are those of one full forward pass per choice."""
  import numpy as np
  from arch_objective.data import vocabularies
  from arch_objective.evaluation import loading, rank_classification
  from arch_objective.evaluation.scoring import Request
  from arch_objective.data import world as world_lib
  out, results, _ = smoke_dir
  held_in = results["held_in"]
  assert sorted(held_in) == ["world_paraphrase", "world_sentiment", "world_topic"]
  assert held_in["world_topic"]["random"] == pytest.approx(100.0 / 6)
  assert held_in["world_paraphrase"]["random"] == pytest.approx(50.0)
  evaluation = json.loads((out / "eval" / "ed_mlm_mtf_held_in.json").read_text())
  assert evaluation["step"] == results["cells"]["ed_mlm"]["after_mtf"]["step"]
  for name, entry in held_in.items():
    gold = evaluation["per_example"]["gold"][name]
    assert len(gold) == 12   # the smoke preset's eval_examples
    assert entry["majority"] == pytest.approx(100.0 * max(gold.count(k) for k in set(gold))
                                              / len(gold))
    assert set(entry["models"]) == {"CD:FLM", "CD:MLM", "ND:PLM", "ND:MLM", "ED:PLM", "ED:MLM"}
    for stages in entry["models"].values():
      assert set(stages) == {"zero_shot", "after_mtf"}
      for stage in stages.values():
        assert 0.0 <= stage["score"] <= 100.0 and 0.0 < stage["top_answer_share"] <= 1.0
    assert entry["models"]["ED:MLM"]["after_mtf"]["score"] == pytest.approx(
        evaluation["datasets"][name]["median"])
  cell = results["cells"]["ed_mlm"]["held_in"]
  assert cell["after_mtf"]["average"] == pytest.approx(evaluation["average"])
  assert set(cell["zero_shot"]["per_family"]) == set(held_in)
  # The stored answers under one prompt, recomputed with one forward pass per choice.
  world = world_lib.make_world(seed=0)
  family = next(f for f in world.classification_suite() if f.name == "world_topic")
  prompt = family.prompts[0]
  vocab = vocabularies.SentencePieceVocabulary(str(out / "world" / "spm.model"))
  model, params, _, _ = loading.load_model(str(out / "runs" / "ed_mlm_mtf"))
  config = study.load_preset("smoke")
  requests = []
  for example in family.examples[:12]:
    r = prompt.render(example)
    requests.append(Request(
        np.asarray(vocab.encode(r.inputs), np.int32)[:2 * config.mtf_inputs_length],
        tuple(np.asarray(vocab.encode(c) + [1], np.int32) for c in r.choices)))
  answers = [int(np.argmax(s)) for s in rank_classification.naive_scores(model, params,
                                                                         requests)]
  assert evaluation["per_example"]["predicted"]["world_topic"][prompt.name] == answers
  table = (out / "results.md").read_text()
  assert "MT-F's own classification families" in table and "world_topic" in table


@pytest.mark.slow
def test_a_finished_study_resumes_without_redoing_stages(smoke_dir):
  out, results, _ = smoke_dir
  lines = []
  again = study.run_study("smoke", str(out), log=lines.append)
  stage_lines = [l for l in lines if l.startswith("[")]
  assert stage_lines and all("done before, skipped" in l for l in stage_lines)
  assert again["cells"] == json.loads(json.dumps(results["cells"]))


def test_unknown_preset_is_named():
  with pytest.raises(ValueError,
                     match="unknown study preset 'huge'.*smoke, quick, medium, full"):
    study.load_preset("huge")


@pytest.mark.parametrize("preset", ["quick", "medium", "full"])
@pytest.mark.slow
def test_preset_vocabulary_fits_its_corpus(preset, tmp_path):
  """The world's text has a bounded lexicon: a preset's `vocab_size` must be one that
  SentencePiece can fill from the corpus that preset writes."""
  from arch_objective.data import vocabularies
  from arch_objective.data import world as world_lib
  config = study.load_preset(preset)
  corpus = str(tmp_path / "corpus.jsonl")
  world_lib.write_corpus(corpus, world_lib.make_world(seed=config.seed),
                         target_bytes=config.corpus_bytes)
  path = str(tmp_path / "spm.model")
  study._train_vocab(corpus, path, config.vocab_size)
  vocab = vocabularies.SentencePieceVocabulary(path)
  assert vocab.vocab_size >= config.vocab_size
  # Rank classification sums the answer's log-likelihood over its pieces: an answer word
  # split into three pieces would lose to a one-piece one whatever the model thinks. The
  # corpus's rumour dialogues use yes, no and maybe, so the vocabulary keeps them whole
  # (True / Neither / False, the choices of one NLI prompt of five, stay split).
  assert {w: len(vocab.encode(w)) for w in ("Yes", "Maybe", "No")} == {
      "Yes": 1, "Maybe": 1, "No": 1}
  people = world_lib.make_world(seed=config.seed).entities.people
  names = {n for p in people for n in p.name.split()}   # coreference's answer choices
  assert [n for n in sorted(names) if len(vocab.encode(n)) > 1] == []


def test_the_held_out_splits_grow_to_the_examples_scored_and_keep_the_first_ones():
  """A preset that scores more than the world's 300 held-out examples per family gets a
  longer validation split whose first 300 examples are the default world's."""
  from arch_objective.data import world as world_lib
  default = world_lib.make_world(seed=0)
  assert study.study_world(study.load_preset("quick")).config.heldout_examples == 300
  wide = study.study_world(study.load_preset("smoke", ["StudyConfig.eval_examples = 420"]))
  for family in default.heldout_suite("validation"):
    longer = wide.examples(family.name, "validation")
    assert len(longer) == 420
    assert longer[:300] == default.examples(family.name, "validation")


def test_bindings_override_the_preset_and_bad_ones_are_named():
  config = study.load_preset("medium", ["StudyConfig.mtf_learning_rate = 0.001",
                                        "StudyConfig.ceiling_examples = 2000"])
  assert (config.mtf_learning_rate, config.ceiling_examples) == (0.001, 2000)
  assert config.mtf_steps == study.load_preset("medium").mtf_steps   # the rest is the file's
  assert study.load_preset("medium").mtf_learning_rate == 0.003    # bindings do not stick
  with pytest.raises(ValueError, match="mtf_lr"):
    study.load_preset("medium", ["StudyConfig.mtf_lr = 0.001"])


def test_the_configuration_is_recorded_and_a_changed_one_is_named(tmp_path):
  config = study.load_preset("smoke")
  assert study.record_config(config, str(tmp_path)) == []
  assert json.loads((tmp_path / "config.json").read_text())["mtf_learning_rate"] == (
      config.mtf_learning_rate)
  assert study.record_config(config, str(tmp_path)) == []          # the same: nothing
  changed = study.load_preset("smoke", ["StudyConfig.mtf_learning_rate = 0.5"])
  assert study.record_config(changed, str(tmp_path)) == [
      f"mtf_learning_rate: {config.mtf_learning_rate!r} -> 0.5"]
  assert json.loads((tmp_path / "config.json").read_text())["mtf_learning_rate"] == 0.5
  # A study recorded before a field existed ran with that field's default (0.0): the
  # default is no change, another value (the smoke preset's 0.005) is one.
  recorded = json.loads((tmp_path / "config.json").read_text())
  del recorded["ceiling_learning_rate"]
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  at_default = study.load_preset("smoke", ["StudyConfig.mtf_learning_rate = 0.5",
                                           "StudyConfig.ceiling_learning_rate = 0.0"])
  assert study.record_config(at_default, str(tmp_path)) == []
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  assert study.record_config(changed, str(tmp_path)) == ["ceiling_learning_rate: 0.0 -> 0.005"]


def test_the_study_command_passes_gin_bindings_and_checks_ceiling_fields(tmp_path, monkeypatch):
  from arch_objective import cli
  seen = {}

  def fake(preset, out, *, nc_a=None, ul2=None, bindings=()):
    seen.update(preset=preset, out=out, bindings=list(bindings))
    (tmp_path / "results.md").write_text("table\n")
    return {}
  monkeypatch.setattr(study, "run_study", fake)
  assert cli.main(["study", "--preset", "medium", "--out", str(tmp_path),
                   "--gin.StudyConfig.mtf_learning_rate=0.001"]) == 0
  assert seen == {"preset": "medium", "out": str(tmp_path),
                  "bindings": ["StudyConfig.mtf_learning_rate=0.001"]}
  monkeypatch.undo()
  with pytest.raises(ValueError, match="StudyConfig.ceiling_examples must be an integer >= 0, "
                                       "found -1"):
    study.run_study("smoke", str(tmp_path / "bad"),
                    bindings=["StudyConfig.ceiling_examples = -1"])
  with pytest.raises(ValueError, match="StudyConfig.ceiling_learning_rate must be a number >= 0 "
                                       r"\(0: the MT-F rate\), found -0.1"):
    study.run_study("smoke", str(tmp_path / "bad"),
                    bindings=["StudyConfig.ceiling_learning_rate = -0.1"])
  assert not (tmp_path / "bad" / "config.json").exists()


def test_width_bindings_scale_heads_and_mlp_and_bad_widths_are_named():
  from arch_objective.study import scale
  medium = study.load_preset("medium")      # 192 wide, 4 heads of 48, MLP 384
  assert scale.width_bindings(medium, 96) == [
      "StudyConfig.emb_dim = 96", "StudyConfig.head_dim = 24", "StudyConfig.mlp_dim = 192"]
  config = study.load_preset("medium", scale.width_bindings(medium, 320))
  assert (config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim) == (320, 320, 640)
  with pytest.raises(ValueError, match=r"multiple of StudyConfig.num_heads \(4\), found 30"):
    scale.width_bindings(medium, 30)
  assert scale.parse_widths("256,64, 128") == [64, 128, 256]
  for bad in ("64", "64,64", "64,x", "0,64"):
    with pytest.raises(ValueError, match="--widths"):
      scale.parse_widths(bad)


@pytest.mark.slow
def test_the_study_across_widths_reads_each_width_as_a_study(smoke_dir, tmp_path, capsys):
  """Widths 16 and 32 of the smoke preset; 32 is the preset's own width, so its folder
  is the module's smoke study, resumed: its row must be that study's numbers."""
  import shutil

  from arch_objective import cli
  from arch_objective.evaluation import loading
  from arch_objective.study import scale
  import jax
  import numpy as np
  smoke_out, smoke_results, _ = smoke_dir
  out = tmp_path / "scale"
  shutil.copytree(smoke_out, out / "width_32")
  lines = []
  summary = scale.run_scale("smoke", str(out), [32, 16],
                            bindings=["StudyConfig.ceiling_steps = 0"], log=lines.append)
  assert summary["widths"] == [16, 32]
  assert any(l.startswith("width 32: [") and "done before, skipped" in l for l in lines)
  assert not any(l.startswith("width 32: [") and "skipped" not in l for l in lines)
  config_16 = json.loads((out / "width_16" / "config.json").read_text())
  assert (config_16["emb_dim"], config_16["head_dim"], config_16["mlp_dim"],
          config_16["ceiling_steps"]) == (16, 8, 32, 0)
  narrow, wide = summary["rows"]
  # The preset's width reads back as the plain study's numbers.
  assert wide["contrasts"] == [
      {k: c[k] for k in ("label", "difference", "ci", "excludes_zero")}
      for c in json.loads(json.dumps(smoke_results["contrasts"]))]
  assert wide["models"]["ed_mlm"]["after_mtf"]["average"] == (
      smoke_results["cells"]["ed_mlm"]["after_mtf"]["average"])
  # Parameter counts against the checkpoints each width trained.
  for row in (narrow, wide):
    for key, run in (("decoder_only", "cd_flm"), ("encoder_decoder", "ed_mlm")):
      _, params, _, _ = loading.load_model(str(out / row["folder"] / "runs" / run))
      assert row["parameters"][key] == sum(int(np.prod(x.shape))
                                           for x in jax.tree_util.tree_leaves(params))
  assert narrow["parameters"]["decoder_only"] < wide["parameters"]["decoder_only"]
  # Each contrast's change from width 16 to 32 is the difference of its two values.
  assert [c["label"] for c in summary["changes"]] == [c["label"] for c in wide["contrasts"]]
  for change, a, b in zip(summary["changes"], narrow["contrasts"], wide["contrasts"]):
    assert change["change"] == pytest.approx(b["difference"] - a["difference"], abs=1e-9)
    assert change["ci"][0] <= change["ci"][1]
  md = (out / "scale.md").read_text()
  assert "| contrast | width 16 | width 32 | change, width 32 - width 16 |" in md
  first = wide["contrasts"][0]
  assert f"{first['difference']:+.1f} [{first['ci'][0]:+.1f}, {first['ci'][1]:+.1f}]" in md
  assert (out / "scale.png").stat().st_size > 10_000
  assert json.loads((out / "scale.json").read_text()) == json.loads(json.dumps(summary))
  # The two width folders compared as studies: each model's change is the difference of
  # its two averages (the same examples), each contrast's change is run_scale's.
  compared = scale.compare_studies(str(out / "width_16"), str(out / "width_32"),
                                   resamples=200)
  assert compared["config_changes"]["emb_dim"] == [16, 32]
  row = next(m for m in compared["models"]
             if (m["cell"], m["stage"]) == ("ed_mlm", "after_mtf"))
  assert row["change"] == pytest.approx(wide["models"]["ed_mlm"]["after_mtf"]["average"]
                                        - narrow["models"]["ed_mlm"]["after_mtf"]["average"],
                                        abs=1e-9)
  assert [c["change"] for c in compared["contrasts"]] == pytest.approx(
      [c["change"] for c in summary["changes"]], abs=1e-9)

  # The command: a second run resumes both widths and prints the same tables.
  assert cli.main(["study", "--preset", "smoke", "--out", str(out), "--widths", "16,32",
                   "--gin.StudyConfig.ceiling_steps=0"]) == 0
  assert "| contrast | width 16 | width 32 | change" in capsys.readouterr().out
  again = json.loads((out / "scale.json").read_text())
  assert again.pop("bindings") == ["StudyConfig.ceiling_steps=0"]   # as the command got it
  assert again == {k: v for k, v in json.loads(json.dumps(summary)).items() if k != "bindings"}
  for bad in ("16", ""):
    assert cli.main(["study", "--preset", "smoke", "--out", str(tmp_path / "bad"),
                     "--widths", bad]) == 2
    assert "--widths takes two or more distinct positive widths" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()


def _fake_study(folder, config: dict, evaluations: dict):
  """A study folder as `arch-objective study` leaves it, with only what a comparison
  reads: config.json and eval/<cell>[_mtf].json ({"per_example": {correct, gold}})."""
  (folder / "eval").mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(config))
  for name, (correct, gold) in evaluations.items():
    (folder / "eval" / f"{name}.json").write_text(
        json.dumps({"per_example": {"correct": correct, "gold": gold}}))


def test_two_studies_compare_on_the_examples_both_scored(tmp_path, capsys):
  """`medium` scored 6 examples of a family, `full` the first 4 of them: the comparison
  uses those 4 (checked by the gold answers), per model and per contrast."""
  from arch_objective import cli
  from arch_objective.study import scale
  gold6, gold4 = [0, 1, 1, 0, 1, 0], [0, 1, 1, 0]
  medium, full = tmp_path / "medium", tmp_path / "full"
  _fake_study(medium, {"emb_dim": 192, "eval_examples": 6}, {
      "cd_flm": ({"f": {"p": [1, 1, 0, 0, 1, 1], "q": [1, 0, 0, 0, 1, 1]}}, {"f": gold6}),
      "ed_mlm": ({"f": {"p": [0, 1, 0, 0, 1, 1], "q": [0, 0, 0, 0, 1, 1]}}, {"f": gold6}),
      # MT-F's own families: "para" in both studies, "topic" in medium only.
      "cd_flm_mtf_held_in": ({"para": {"a": [1, 0, 1, 0, 1, 1], "b": [1, 1, 1, 0, 0, 1]},
                              "topic": {"a": [1, 1, 1, 1, 1, 1]}},
                             {"para": gold6, "topic": gold6})})
  _fake_study(full, {"emb_dim": 256, "eval_examples": 4}, {
      "cd_flm": ({"f": {"p": [1, 1, 1, 1], "q": [1, 1, 1, 0]}}, {"f": gold4}),
      "ed_mlm": ({"f": {"p": [0, 1, 0, 0], "q": [1, 1, 0, 0]}}, {"f": gold4}),
      "cd_flm_mtf_held_in": ({"para": {"a": [1, 1, 1, 1], "b": [0, 1, 1, 1]}},
                             {"para": gold4})})
  summary = scale.compare_studies(str(medium), str(full), resamples=300)
  assert summary["config_changes"] == {"emb_dim": [192, 256], "eval_examples": [6, 4]}
  cd, ed = summary["models"]
  # On the first 4 examples: medium CD:FLM p 50, q 25 -> median 37.5; full 100, 75 -> 87.5.
  assert (cd["label"], cd["stage"], cd["before"], cd["after"], cd["examples"]) == (
      "CD:FLM", "zero_shot", 37.5, 87.5, {"f": 4})
  assert cd["change"] == pytest.approx(50.0)
  # ED:MLM: medium p 25, q 0 -> 12.5; full 25, 50 -> 37.5.
  assert (ed["before"], ed["after"]) == (12.5, 37.5)
  (contrast,) = summary["contrasts"]       # the only contrast both cells allow
  assert contrast["label"] == "CD:FLM - ED:MLM, after pretraining"
  assert contrast["change"] == pytest.approx((87.5 - 37.5) - (37.5 - 12.5))
  assert contrast["ci"][0] <= contrast["change"] <= contrast["ci"][1]
  # The held-in family both scored, on the first 4: medium a 50, b 75 -> 62.5; full 100, 75
  # -> 87.5. "topic" (medium only) is left out.
  (held_in,) = summary["held_in"]
  assert (held_in["label"], held_in["stage"], held_in["family"], held_in["before"],
          held_in["after"], held_in["examples"]) == ("CD:FLM", "after_mtf", "para", 62.5,
                                                     87.5, 4)
  assert held_in["change"] == pytest.approx(25.0)
  assert held_in["ci"][0] <= held_in["change"] <= held_in["ci"][1]

  assert cli.main(["compare-studies", str(medium), str(full), "--out", str(tmp_path / "cmp"),
                   "--resamples", "300"]) == 0
  printed = capsys.readouterr().out
  assert "| CD:FLM | after pretraining | 37.5 | 87.5 | " in printed
  assert "Shared examples per family: f 4." in printed
  assert "| model | stage | para |" in printed and "examples: para 4" in printed
  assert "| CD:FLM | after MT-F | 62.5 -> 87.5: " in printed
  assert (tmp_path / "cmp" / "compare.md").read_text() == printed[:-1]
  assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == json.loads(
      json.dumps(summary))

  # Other gold answers on the shared examples: not the same examples, named.
  other = tmp_path / "other"
  _fake_study(other, {"emb_dim": 256}, {
      "cd_flm": ({"f": {"p": [1, 1, 1, 1], "q": [1, 1, 1, 0]}}, {"f": [1, 1, 1, 0]})})
  with pytest.raises(ValueError, match="f: medium cd_flm and other cd_flm have different gold answers"):
    scale.compare_studies(str(medium), str(other))
  assert cli.main(["compare-studies", str(medium), str(tmp_path / "nothing")]) == 2
  assert "nothing is not a finished study folder" in capsys.readouterr().err


@pytest.mark.parametrize("before, after, folder, change", [
    ("medium", "full", "medium_vs_full", ("num_layers", [3, 4])),
    ("medium", "medium_mtf_1600", "medium_vs_mtf_1600", ("mtf_steps", [160, 1600])),
    ("medium", "medium_mtf_dropout0", "medium_vs_mtf_dropout0", ("mtf_dropout", [0.1, 0.0])),
    ("full", "full_mtf_dropout0", "full_vs_mtf_dropout0", ("mtf_dropout", [0.1, 0.0])),
    ("medium_mtf_1600", "medium_mtf_1600_dropout0", "medium_mtf_1600_vs_dropout0",
     ("mtf_dropout", [0.1, 0.0]))])
@pytest.mark.slow
def test_the_committed_comparisons_rerun_as_the_readme_prints_them(tmp_path, monkeypatch,
                                                                   before, after, folder,
                                                                   change):
  """The study report (docs/results/study-medium-full.md; the README's until it moved):
  `arch-objective compare-studies docs/study/<before> docs/study/<after> --out
  docs/study/<folder>`, run from the clone, into a temporary folder: the same files, byte
  for byte (the bootstrap is seeded)."""
  import os

  from arch_objective import cli
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  monkeypatch.chdir(root)
  out = tmp_path / folder
  assert cli.main(["compare-studies", f"docs/study/{before}", f"docs/study/{after}",
                   "--out", str(out)]) == 0
  committed = os.path.join(root, "docs", "study", folder)
  for name in ("compare.md", "compare.json"):
    with open(os.path.join(committed, name)) as f:
      assert (out / name).read_text() == f.read(), name
  summary = json.loads((out / "compare.json").read_text())
  assert summary["config_changes"][change[0]] == change[1]
  assert all(m["examples"] == {"world_nli": 1000, "world_coreference": 1000,
                               "world_cause_effect": 1000, "world_story_ending": 1000}
             for m in summary["models"])


@pytest.mark.parametrize("preset", ["medium", "full"])
def test_the_committed_studies_ran_the_shipped_presets(preset):
  """docs/study/<preset>/config.json (what the study report's tables come from) is what the
  shipped gin file gives today; full.gin is medium.gin with a larger model."""
  import dataclasses
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "docs", "study", preset, "config.json")) as f:
    committed = json.load(f)
  # A field added since a study ran had its default there (as `record_config` reads it).
  defaults = dataclasses.asdict(study.StudyConfig())
  committed = {**{k: v for k, v in defaults.items() if k not in committed}, **committed}
  assert json.loads(json.dumps(dataclasses.asdict(study.load_preset(preset)))) == committed
  medium, full = study.load_preset("medium"), study.load_preset("full")
  differ = {f.name for f in dataclasses.fields(medium)
            if getattr(medium, f.name) != getattr(full, f.name)}
  assert differ == {"emb_dim", "head_dim", "mlp_dim", "num_layers"}


@pytest.mark.parametrize("preset", ["medium", "full", "medium_mtf_1600", "medium_mtf_dropout0",
                                    "full_mtf_dropout0", "medium_mtf_1600_dropout0"])
def test_the_committed_reports_are_their_results(preset):
  """docs/study/<folder>/results.md is what the report writes from its results.json, and
  its held-in table reads the committed evaluation files (the *_mtf_* follow-ups keep only
  their MT-F evaluations: their pretrained models are medium's or full's)."""
  import os
  from arch_objective.study import report
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "study", preset)
  with open(os.path.join(root, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(root, "results.md")) as f:
    assert report.markdown(results) == f.read()
  for cell, label in study.CELLS:
    for stage, suffix in (("zero_shot", ""), ("after_mtf", "_mtf")):
      path = os.path.join(root, "eval", f"{cell}{suffix}_held_in.json")
      if not os.path.exists(path):
        assert stage == "zero_shot" and (cell == "nc_a" or "_mtf_" in preset)
        continue
      with open(path) as f:
        evaluation = json.load(f)
      for family, entry in results["held_in"].items():
        assert entry["models"][label][stage]["score"] == pytest.approx(
            evaluation["datasets"][family]["median"])


@pytest.mark.slow
def test_ul2_cells_join_a_finished_study_with_their_contrasts(smoke_dir, tmp_path):
  """`--ul2` on a copy of the finished smoke study trains and scores only ED:UL2 and
  ND:UL2 (the six are done), and each UL2 contrast is the paired difference of the two
  cells' per-example correctness."""
  import shutil
  out, before, _ = smoke_dir
  copy = tmp_path / "with_ul2"
  shutil.copytree(out, copy)
  lines = []
  results = study.run_study("smoke", str(copy), ul2=True, log=lines.append)
  ran = [l for l in lines if l.startswith("[") and "skipped" not in l]
  assert ran and all("UL2" in l or "ul2" in l for l in ran), ran
  cells = results["cells"]
  assert {c["label"] for c in cells.values()} >= {"ED:UL2", "ND:UL2"}
  for name in ("cd_flm", "ed_mlm", "nd_mlm"):
    assert cells[name]["after_mtf"] == json.loads(json.dumps(before["cells"][name]))[
        "after_mtf"]
  for name in ("ed_ul2", "nd_ul2"):
    assert cells[name]["after_mtf"]["step"] > cells[name]["zero_shot"]["step"]
  by_label = {c["label"]: c for c in results["contrasts"]}
  assert {"ED:UL2 - ED:MLM, after MT-F", "ND:UL2 - ND:MLM, after MT-F",
          "ND:UL2 - CD:FLM, after MT-F", "MT-F gain, ED:UL2"} <= set(by_label)
  contrast = by_label["ED:UL2 - ED:MLM, after MT-F"]
  assert contrast["difference"] == pytest.approx(
      cells["ed_ul2"]["after_mtf"]["average"] - cells["ed_mlm"]["after_mtf"]["average"],
      abs=1e-6)
  assert "ED:UL2" in (copy / "results.md").read_text()
  assert json.loads((copy / "config.json").read_text())["ul2"] is True
