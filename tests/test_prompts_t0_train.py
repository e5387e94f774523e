"""The T0 training mixture (`t0_train`, spec §3.2) on rows shaped like the Hugging Face
datasets T0 trained on: every one of its 313 prompts renders; hyphenated field names
(trec's `label-coarse`, `label-fine`) are renamed as promptsource does; examples a
template yields nothing for are skipped and empty targets become '<NO LABEL>', as in
T0's tasks, and both are counted."""
import importlib.util
import itertools
import json
import logging

import numpy as np
import pytest

from arch_objective.prompts import datasets as datasets_lib

needs_promptsource = pytest.mark.skipif(importlib.util.find_spec("promptsource") is None,
                                        reason="promptsource is not installed")

# One to six literal rows per d4_train dataset, field for field as the Hugging Face
# datasets T0 read (nested features as HF returns them: a `Sequence` of a dict is a dict
# of lists, e.g. SQuAD-style `answers`; kilt's `output` is a list of dicts). Several rows
# where templates only apply to some (`{% if label == 1 %}`, trec's one template per
# coarse class).
HF_ROWS = {
    ("glue", "mrpc"): [
        {"sentence1": "The cat sat on the mat.", "sentence2": "A cat was sitting on the mat.",
         "label": 1, "idx": 0},
        {"sentence1": "Stocks rose on Monday.", "sentence2": "It rained in Paris.",
         "label": 0, "idx": 1}],
    ("glue", "qqp"): [
        {"question1": "How do I learn Python?", "question2": "What is the best way to learn "
         "Python?", "label": 1, "idx": 0}],
    ("paws", "labeled_final"): [
        {"id": 1, "sentence1": "Bob met Ann in Rome in 1990.",
         "sentence2": "In 1990 Bob met Ann in Rome.", "label": 1},
        {"id": 2, "sentence1": "Bob met Ann in Rome.", "sentence2": "Ann met Bob in Oslo.",
         "label": 0}],
    ("kilt_tasks", "hotpotqa"): [
        {"id": "5a8b57f2", "input": "Which city hosted the 1992 Summer Olympics?",
         "meta": {"left_context": "", "mention": "", "right_context": "",
                  "partial_evidence": [], "obj_surface": [], "sub_surface": [],
                  "subj_aliases": [], "template_questions": []},
         "output": [{"answer": "Barcelona", "meta": {"score": 0}, "provenance": []}]}],
    ("wiki_qa", None): [
        {"question_id": "Q1", "question": "how tall is mount everest",
         "document_title": "Mount Everest",
         "answer": "Mount Everest is 8,849 metres tall.", "label": 1},
        {"question_id": "Q1", "question": "how tall is mount everest",
         "document_title": "Mount Everest", "answer": "It lies in the Himalayas.",
         "label": 0}],
    **{("adversarial_qa", subset): [
        {"id": "aq1", "title": "Oxygen",
         "context": "Oxygen was discovered by Carl Wilhelm Scheele.",
         "question": "Who discovered oxygen?",
         "answers": {"text": ["Carl Wilhelm Scheele"], "answer_start": [25]},
         "metadata": {"split": "train", "model_in_the_loop": model}}]
       for subset, model in (("dbidaf", "BiDAF"), ("dbert", "BERT-Large"),
                             ("droberta", "RoBERTa-Large"))},
    **{("duorc", subset): [
        {"plot_id": "/m/03vyhn", "plot": "A young farmer leaves home to fight an empire.",
         "title": "Star Wars", "question_id": "q1", "question": "Who leaves home?",
         "answers": ["A young farmer"], "no_answer": False},
        {"plot_id": "/m/03vyhn", "plot": "A young farmer leaves home to fight an empire.",
         "title": "Star Wars", "question_id": "q2", "question": "What is his dog called?",
         "answers": [], "no_answer": True}]
       for subset in ("SelfRC", "ParaphraseRC")},
    ("ropes", None): [
        {"id": "r1", "background": "Warm air rises.",
         "situation": "Tom heated room A and left room B cold.",
         "question": "Which room has rising air?", "answers": {"text": ["room A"]}}],
    ("quoref", None): [
        {"id": "qr1", "question": "What is the first name of the man who sold the farm?",
         "context": "John Smith sold the farm to his cousin in 1901.", "title": "The farm",
         "url": "https://en.wikipedia.org/wiki/The_farm",
         "answers": {"answer_start": [0], "text": ["John"]}}],
    ("cos_e", "v1.11"): [
        {"id": "c1", "question": "Where would you keep milk cold?",
         "choices": ["fridge", "oven", "shelf", "car", "garden"], "answer": "fridge",
         "abstractive_explanation": "a fridge keeps food cold",
         "extractive_explanation": "keep milk cold"}],
    ("cosmos_qa", None): [
        {"id": "cq1", "context": "I missed the bus, so I walked to work.",
         "question": "Why did I walk?", "answer0": "I missed the bus.",
         "answer1": "I like walking.", "answer2": "My car broke.", "answer3": "None of the above.",
         "label": 0}],
    ("dream", None): [
        {"id": 0, "dialogue_id": "5-510",
         "dialogue": ["M: Is the shop open today?", "W: Yes, until six."],
         "question": "When does the shop close?", "choice": ["At five.", "At six.", "At seven."],
         "answer": "At six."}],
    ("qasc", None): [
        {"id": "qa1", "question": "What do plants need to grow?",
         "choices": {"text": ["sunlight", "darkness", "salt", "plastic", "sand", "noise",
                              "metal", "glass"],
                     "label": ["A", "B", "C", "D", "E", "F", "G", "H"]},
         "answerKey": "A", "fact1": "Plants need light to grow.",
         "fact2": "Sunlight is a source of light.",
         "combinedfact": "Plants need sunlight to grow.",
         "formatted_question": "What do plants need to grow? (A) sunlight (B) darkness"}],
    ("quail", None): [
        {"id": "ql1", "context_id": "f001", "question_id": "f001_0", "domain": "fiction",
         "metadata": {"author": "A", "title": "T", "url": "u"},
         "context": "Mary baked bread every morning before sunrise.",
         "question": "When did Mary bake bread?", "question_type": "Temporal_order",
         "answers": ["Before sunrise", "At noon", "At night", "not enough information"],
         "correct_answer_id": 0}],
    ("quarel", None): [
        {"id": "QuaRel_1", "answer_index": 1, "logical_forms": ["(infer ...)"],
         "logical_form_pretty": "qrel(speed, higher, world1)",
         "world_literals": {"world1": ["grass"], "world2": ["ice"]},
         "question": "A puck slides farther on ice than on grass because ice is (A) rougher "
                     "(B) smoother"}],
    ("quartz", None): [
        {"id": "qz1", "question": "If the air is warmer, it holds _____ water vapor.",
         "choices": {"text": ["more", "less"], "label": ["A", "B"]}, "answerKey": "A",
         "para": "Warmer air can hold more water vapor.", "para_id": "p1",
         "para_anno": {"effect_prop": "", "cause_dir_str": "", "effect_dir_str": "",
                       "cause_dir_sign": "", "effect_dir_sign": "", "cause_prop": ""},
         "question_anno": {"more_effect_dir": "", "less_effect_dir": "",
                           "less_cause_prop": "", "more_effect_prop": "",
                           "less_effect_prop": "", "less_cause_dir": ""}}],
    ("sciq", None): [
        {"question": "What gas do plants absorb?", "distractor3": "helium",
         "distractor1": "oxygen", "distractor2": "nitrogen",
         "correct_answer": "carbon dioxide",
         "support": "Plants absorb carbon dioxide for photosynthesis."}],
    ("social_i_qa", None): [
        {"context": "Sam helped his friend move house.", "question": "How would the friend "
         "feel?", "answerA": "grateful", "answerB": "angry", "answerC": "bored",
         "label": "1"}],
    ("wiki_hop", "original"): [
        {"id": "WH_1", "question": "country_of_citizenship marie curie", "answer": "poland",
         "candidates": ["poland", "japan", "peru"],
         "supports": ["Marie Curie was born in Warsaw, Poland."], "annotations": []}],
    ("wiqa", None): [
        {"question_stem": "suppose it rains more happens, how will it affect more plants?",
         "question_para_step": ["Rain falls.", "Soil gets wet.", "Plants absorb water.",
                                "Plants grow.", ""],
         "answer_label": "more", "answer_label_as_choice": "A",
         "choices": {"text": ["more", "less", "no effect"], "label": ["A", "B", "C"]},
         "metadata_question_id": "wq1", "metadata_graph_id": "1", "metadata_para_id": "2",
         "metadata_question_type": "EXOGENOUS_EFFECT", "metadata_path_len": 2}],
    ("amazon_polarity", None): [
        {"label": 1, "title": "Great kettle", "content": "Boils fast and looks nice."}],
    ("app_reviews", None): [
        {"package_name": "com.example.notes", "review": "Simple and works offline.",
         "date": "October 1 2016", "star": 5}],
    ("imdb", None): [{"text": "A moving film with a superb cast.", "label": 1}],
    ("rotten_tomatoes", None): [{"text": "a dull , lifeless remake .", "label": 0}],
    ("yelp_review_full", None): [{"label": 3, "text": "Good food, slow service."}],
    ("common_gen", None): [
        {"concept_set_idx": 0, "concepts": ["dog", "frisbee", "catch"],
         "target": "The dog jumps to catch the frisbee."}],
    ("wiki_bio", None): [
        {"input_text": {"table": {"column_header": ["name", "birth_date", "occupation",
                                                    "article_title"],
                                  "row_number": [1, 1, 1, 1],
                                  "content": ["ada lovelace", "10 december 1815",
                                              "mathematician", "ada lovelace"]},
                        "context": "ada lovelace"},
         "target_text": "ada lovelace ( 10 december 1815 ) was an english mathematician ."}],
    ("cnn_dailymail", "3.0.0"): [
        {"article": "LONDON (CNN) -- The bridge reopened on Monday after repairs.",
         "highlights": "The bridge reopened on Monday .", "id": "c0ffee"}],
    ("gigaword", None): [
        {"document": "the central bank raised interest rates by half a point on tuesday .",
         "summary": "central bank raises rates"}],
    ("multi_news", None): [
        {"document": "The storm hit the coast on Friday. ||||| Thousands lost power after "
                     "the storm.", "summary": "– A storm hit the coast, cutting power."}],
    ("samsum", None): [
        {"id": "s1", "dialogue": "Ann: Lunch at 1?\r\nBen: Sure, see you there.",
         "summary": "Ann and Ben will have lunch at 1."}],
    ("xsum", None): [
        {"document": "The council approved the new park after a two-hour debate.",
         "summary": "A new park has been approved.", "id": "x1"}],
    ("ag_news", None): [{"text": "Team wins the cup after a late goal.", "label": 1}],
    ("dbpedia_14", None): [
        {"label": 2, "title": "Ada Lovelace",
         "content": " Ada Lovelace was an English mathematician."}],
    # trec as T0 read it: `label-coarse` over DESC ENTY ABBR HUM NUM LOC, `label-fine`
    # over `datasets_lib.TREC_FINE`; one row per coarse class.
    ("trec", None): [
        {"text": "What does photosynthesis mean ?", "label-coarse": 0, "label-fine": 7},
        {"text": "What animal has a trunk ?", "label-coarse": 1, "label-fine": 2},
        {"text": "What does NASA stand for ?", "label-coarse": 2, "label-fine": 3},
        {"text": "Who wrote Hamlet ?", "label-coarse": 3, "label-fine": 4},
        {"text": "How many legs does a spider have ?", "label-coarse": 4, "label-fine": 13},
        {"text": "What is the capital of France ?", "label-coarse": 5, "label-fine": 21}],
}


def _t0_train_prompts():
  from arch_objective.prompts import t0, templates
  for dataset, subset in t0.D4_TRAIN:
    excluded = t0.D4_TRAIN_EXCLUDED_PROMPTS.get((dataset, subset), ())
    for prompt in templates.load_prompts(dataset, subset):
      if not any(prompt.name.startswith(x) for x in excluded):
        yield (dataset, subset), prompt


@needs_promptsource
def test_every_t0_train_prompt_renders_on_rows_shaped_like_the_hf_datasets():
  from arch_objective.prompts import t0
  assert set(HF_ROWS) == set(t0.D4_TRAIN)
  per_dataset, unrendered = {}, []
  for key, prompt in _t0_train_prompts():
    per_dataset[key] = per_dataset.get(key, 0) + 1
    pairs = [prompt.apply(row) for row in HF_ROWS[key]]  # raises on a missing field
    if not any(p is not None and p[0] and p[1] for p in pairs):
      unrendered.append(f"{key}/{prompt.name}")
  assert unrendered == []
  assert sum(per_dataset.values()) == 313
  assert per_dataset[("trec", None)] == 18 and per_dataset[("gigaword", None)] == 9
  assert per_dataset[("cosmos_qa", None)] == 13 and per_dataset[("glue", "qqp")] == 6


def test_remove_hyphens_renames_fields_as_promptsource():
  from arch_objective.prompts import templates
  row = {"text": "Who wrote Hamlet ?", "label-coarse": 3, "label-fine": 4}
  assert templates.remove_hyphens(row) == {"text": "Who wrote Hamlet ?", "label_coarse": 3,
                                           "label_fine": 4}
  assert row == {"text": "Who wrote Hamlet ?", "label-coarse": 3, "label-fine": 4}
  assert templates.remove_hyphens({"a-b-c": 1, "d": 2}) == {"a_b_c": 1, "d": 2}
  # As promptsource's loop: a later key wins when two names meet.
  assert templates.remove_hyphens({"x_y": 1, "x-y": 2}) == {"x_y": 2}


@needs_promptsource
def test_trec_rows_with_hyphenated_fields_render_under_every_prompt():
  from arch_objective.prompts import templates
  prompts = {p.name: p for p in templates.load_prompts("trec", None)}
  assert len(prompts) == 18
  city = {"text": "What is the capital of France ?", "label-coarse": 5, "label-fine": 21}
  for name, prompt in prompts.items():
    pair = prompt.apply(city)
    if "fine_grained" in name and "LOC" not in name and "open" not in name:
      assert pair is None, name            # another coarse class's template
    else:
      assert pair is not None and pair[0] and pair[1], name
  rendered = prompts["what_category_best_describe"].render(city)
  assert rendered.inputs == ("Categories: Description, Entity, Abbreviation, Person, "
                             "Quantity, Location\n\nWhat category best describes: What is "
                             "the capital of France ? \nAnswer:")
  assert rendered.targets == "Location" and rendered.gold == (5,)
  assert rendered.choices == ("Description", "Entity", "Abbreviation", "Person", "Quantity",
                              "Location")
  loc = prompts["fine_grained_LOC"].render(city)
  assert loc.targets == "city" and loc.gold == (0,)
  assert loc.inputs == ("Is this question asking for city, country, mountain, state, other "
                        "location?\nWhat is the capital of France ?")
  hum = prompts["fine_grained_HUM"].apply(
      {"text": "Who wrote Hamlet ?", "label-coarse": 3, "label-fine": 4})
  assert hum == ("Is this question asking for group, individual, title, description?\n"
                 "Who wrote Hamlet ?", "individual")
  # Without the renaming, the template's fields are missing: the error names them.
  with pytest.raises(ValueError, match=r"lacks field\(s\) \['label_coarse'\]"):
    prompts["trec1"].apply({"text": "Who wrote Hamlet ?", "label-fine": 4})


def test_trec_of_current_hf_datasets_is_converted_by_class_name():
  # Since huggingface/datasets#4801 (2022) trec has `coarse_label`/`fine_label` with other
  # class ids; the templates compare T0's ids (`label_coarse == 5` is LOC).
  coarse_names = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
  fine_names = ["ABBR:abb", "DESC:desc", "HUM:desc", "LOC:city", "LOC:other", "NUM:other"]
  rows = [{"text": "What is the capital of France ?", "coarse_label": 4, "fine_label": 3},
          {"text": "Who was Galileo ?", "coarse_label": 3, "fine_label": 2},
          {"text": "What is an atom ?", "coarse_label": 2, "fine_label": 1},
          {"text": "What is the population of Peru ?", "coarse_label": 5, "fine_label": 5}]
  assert datasets_lib.trec_original_layout(rows, coarse_names, fine_names) == [
      {"text": "What is the capital of France ?", "label-coarse": 5, "label-fine": 21},
      {"text": "Who was Galileo ?", "label-coarse": 3, "label-fine": 12},
      {"text": "What is an atom ?", "label-coarse": 0, "label-fine": 12},
      {"text": "What is the population of Peru ?", "label-coarse": 4, "label-fine": 14}]
  assert datasets_lib.TREC_COARSE[5] == "LOC" and datasets_lib.TREC_FINE[21] == "city"
  assert len(datasets_lib.TREC_FINE) == 47
  with pytest.raises(ValueError, match=r"\['QUANT'\] are not classes"):
    datasets_lib.trec_original_layout(rows, coarse_names[:5] + ["QUANT"], fine_names)


def test_trec_file_in_the_current_hf_layout_is_refused(tmp_path):
  path = tmp_path / "trec" / "train.jsonl"
  path.parent.mkdir()
  path.write_text(json.dumps({"text": "Who was Galileo ?", "coarse_label": 3,
                              "fine_label": 31}) + "\n")
  with pytest.raises(ValueError) as e:
    datasets_lib.load_examples("trec", None, "train", str(tmp_path))
  message = str(e.value)
  assert str(path) in message and "example 0" in message
  assert "'label-coarse' over DESC, ENTY, ABBR, HUM, NUM, LOC" in message
  old = tmp_path / "old" / "trec" / "train.jsonl"
  old.parent.mkdir(parents=True)
  old.write_text(json.dumps({"text": "Who was Galileo ?", "label-coarse": 3,
                             "label-fine": 12}) + "\n")
  assert datasets_lib.load_examples("trec", None, "train", str(tmp_path / "old")) == [
      {"text": "Who was Galileo ?", "label-coarse": 3, "label-fine": 12}]


# -- examples a template yields nothing for, and empty targets --------------------------

# trec rows for `fine_grained_LOC` (`{% if label_coarse == 5 %}`, targets
# `answer_choices[label_mapping[label_fine]]` with label_mapping {21, 18, 24, 11, 14}):
# two cities, one HUM question (no example: skipped), one LOC question whose fine class
# (0, 'manner') is not in the mapping (empty target: '<NO LABEL>' in T0's tasks).
TREC_LOC_ROWS = [
    {"text": "What is the capital of France ?", "label-coarse": 5, "label-fine": 21},
    {"text": "Who wrote Hamlet ?", "label-coarse": 3, "label-fine": 4},
    {"text": "Where is the Louvre ?", "label-coarse": 5, "label-fine": 0},
    {"text": "What is the capital of Peru ?", "label-coarse": 5, "label-fine": 21}]


@needs_promptsource
def test_apply_tells_skipped_examples_from_empty_targets():
  from arch_objective.prompts import templates
  prompt = templates.load_prompts("trec", None, ["fine_grained_LOC"])[0]
  inputs = "Is this question asking for city, country, mountain, state, other location?\n"
  assert [prompt.apply(r) for r in TREC_LOC_ROWS] == [
      (inputs + "What is the capital of France ?", "city"), None,
      (inputs + "Where is the Louvre ?", ""),
      (inputs + "What is the capital of Peru ?", "city")]
  # Rank classification has nothing to score in either case.
  assert [prompt.render(r) is None for r in TREC_LOC_ROWS] == [False, True, True, False]


@pytest.fixture
def trec_loc_mixture(tmp_path, t5_vocab_path):
  from arch_objective.prompts import mixture, t0
  path = tmp_path / "trec_train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in TREC_LOC_ROWS))
  spec = mixture.from_promptsource(
      "trec_loc", [("trec", None)], vocabulary=t5_vocab_path,
      mapping={"trec": {"train": str(path)}},
      excluded_prompts={("trec", None): tuple(
          n for n in ("fine_grained_ABBR", "fine_grained_DESC", "fine_grained_ENTY",
                      "fine_grained_HUM", "fine_grained_NUM", "fine_grained_open",
                      "fine_grained_LOC_context_first", "pick", "trec", "wh"))},
      inputs_length=64, targets_length=8)
  assert [t.name for t in spec.tasks] == ["trec/fine_grained_LOC"]
  assert t0.D4_TRAIN_EXCLUDED_PROMPTS == {("gigaword", None): ("summarize_",)}
  return spec


PASS_WARNING = ("mixture 'trec_loc', task trec/fine_grained_LOC: of its 4 train examples, 1 "
                "yield no example under the template (skipped, as T0 does) and 1 have an "
                "empty target ({}).")


@needs_promptsource
def test_mixture_trains_empty_targets_on_no_label_and_counts_both(trec_loc_mixture, caplog,
                                                                  t5_vocab_path):
  from arch_objective.data import vocabularies
  from arch_objective.prompts import mixture
  vocab = vocabularies.SentencePieceVocabulary(t5_vocab_path)
  assert mixture.NO_LABEL == "<NO LABEL>" and trec_loc_mixture.no_label == "<NO LABEL>"
  with caplog.at_level(logging.WARNING, logger="arch_objective.prompts.mixture"):
    # Each pass over the 4 rows yields 3 examples: the 7th is the first of the third pass.
    drawn = list(itertools.islice(trec_loc_mixture.task_examples("train", seed=0), 7))
  city = vocab.encode("city") + [1]
  no_label = vocab.encode("<NO LABEL>") + [1]
  targets = [e["targets"].tolist() for e in drawn]
  assert all(t in (city, no_label) for t in targets)
  assert targets[:6].count(city) == 4 and targets[:6].count(no_label) == 2
  for e in drawn:
    text = vocab.decode(e["inputs"].tolist())
    assert text.startswith("Is this question asking for city, country, mountain, state,")
    assert text.endswith("Where is the Louvre ?") == (e["targets"].tolist() == no_label)
    assert "Hamlet" not in text
  # Every row read is yielded or skipped (the stream stopped right after a yield); two
  # whole passes skipped the HUM row twice.
  counts = trec_loc_mixture.render_counts()
  assert list(counts) == ["trec/fine_grained_LOC"]
  counts = counts["trec/fine_grained_LOC"]
  assert counts["examples"] == 7 + counts["skipped"] and counts["skipped"] in (2, 3)
  assert counts["no_label"] == targets.count(no_label)
  # One warning per whole pass.
  assert [r.getMessage() for r in caplog.records] == [
      PASS_WARNING.format("trained on '<NO LABEL>', as T0 does")] * 2


@needs_promptsource
def test_mixture_without_no_label_skips_empty_targets_and_counts_them(trec_loc_mixture,
                                                                      caplog, t5_vocab_path):
  import dataclasses
  from arch_objective.data import vocabularies
  vocab = vocabularies.SentencePieceVocabulary(t5_vocab_path)
  spec = dataclasses.replace(trec_loc_mixture, no_label=None)
  with caplog.at_level(logging.WARNING, logger="arch_objective.prompts.mixture"):
    # Each pass yields its 2 cities: the 5th example is the first of the third pass.
    drawn = list(itertools.islice(spec.task_examples("train", seed=0), 5))
  assert [e["targets"].tolist() for e in drawn] == [vocab.encode("city") + [1]] * 5
  counts = spec.render_counts()["trec/fine_grained_LOC"]
  assert counts["examples"] == 5 + counts["skipped"] + counts["no_label"]
  assert counts["skipped"] in (2, 3) and counts["no_label"] in (2, 3)
  assert trec_loc_mixture.render_counts() == {}   # the counts are the mixture's own
  assert [r.getMessage() for r in caplog.records] == [PASS_WARNING.format("skipped")] * 2


@needs_promptsource
def test_a_task_that_renders_nothing_names_itself(tmp_path, t5_vocab_path):
  from arch_objective.prompts import mixture
  path = tmp_path / "trec_train.jsonl"
  path.write_text(json.dumps(TREC_LOC_ROWS[1]) + "\n")   # HUM only: LOC renders nothing
  spec = mixture.from_promptsource(
      "hum_only", [("trec", None)], vocabulary=t5_vocab_path,
      mapping={"trec": {"train": str(path)}},
      excluded_prompts={("trec", None): ("fine_grained_ABBR", "fine_grained_DESC",
                                         "fine_grained_ENTY", "fine_grained_HUM",
                                         "fine_grained_NUM", "fine_grained_open", "pick",
                                         "trec", "wh", "fine_grained_LOC_")})
  with pytest.raises(ValueError) as e:
    next(spec.task_examples("train"))
  assert "task 'trec/fine_grained_LOC' renders none of its 1 train examples" in str(e.value)
  assert spec.render_counts() == {
      "trec/fine_grained_LOC": {"examples": 1, "skipped": 1, "no_label": 0}}
  assert np.isfinite(spec.rates("train")).all()
