"""Prompts: the T0-Eval suite, rendering the real SuperGLUE files, the dataset readers
and the MT-F mixture (spec §3.2, §3.3, §4.1)."""
import collections
import csv
import dataclasses
import importlib.util
import itertools
import json
import os
import shutil

import numpy as np
import pytest

from arch_objective.prompts import datasets as datasets_lib

needs_promptsource = pytest.mark.skipif(importlib.util.find_spec("promptsource") is None,
                                        reason="promptsource is not installed")

# The SuperGLUE validation files of ../shared/data/eval and their sizes.
SIZES = {"RTE": 277, "CB": 56, "COPA": 100}
# Label counts of the official validation files (checked against the files below).
RTE_LABELS = {"entailment": 146, "not_entailment": 131}
CB_LABELS = {"entailment": 23, "contradiction": 28, "neutral": 5}
COPA_QUESTIONS = {"cause": 52, "effect": 48}
# COPA templates whose jinja is wrapped in `{% if question == "..." %}`: they render only
# that kind of question (read from promptsource's super_glue/copa templates.yaml).
COPA_CONDITIONAL = {"_As_a_result_C1_or_C2_": "effect",
                    "_What_could_happen_next_C1_or_C2_": "effect",
                    "_which_may_be_caused_by": "cause", "_why_C1_or_C2": "cause"}
MTF_DATASETS = ["super_glue/rte", "super_glue/cb", "super_glue/copa"]


@pytest.fixture(scope="session")
def eval_dir(shared_data):
  root = shared_data / "eval"
  for name in SIZES:
    if not (root / "super_glue" / name / "val.jsonl").is_file():
      pytest.skip(f"SuperGLUE {name} validation file not found under {root}")
  return root


def _raw(eval_dir, name):
  with open(eval_dir / "super_glue" / name / "val.jsonl") as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


# -- the held-out suite --------------------------------------------------------------------

def test_t0_eval_has_11_datasets_and_116_prompts():
  from arch_objective.prompts import t0
  # Prompt counts per dataset from spec §4.1.
  expected = {"super_glue/copa": 12, "hellaswag": 4, "story_cloze/2016": 5, "anli/r1": 15,
              "anli/r2": 15, "anli/r3": 15, "super_glue/cb": 15, "super_glue/rte": 10,
              "super_glue/wsc.fixed": 10, "winogrande/winogrande_xl": 5, "super_glue/wic": 10}
  assert len(t0.T0_EVAL) == 11
  assert {d.name: len(d.prompts) for d in t0.T0_EVAL} == expected
  assert sum(len(d.prompts) for d in t0.T0_EVAL) == 116 == sum(expected.values())
  assert all(len(set(d.prompts)) == len(d.prompts) for d in t0.T0_EVAL)
  assert all(d.split == "validation" for d in t0.T0_EVAL)
  assert set(t0.T0_EVAL_BY_NAME) == set(expected)
  rte = t0.T0_EVAL_BY_NAME["super_glue/rte"]
  assert (rte.dataset, rte.subset) == ("super_glue", "rte")
  assert rte.prompts[0] == "GPT_3_style" and "should_assume" in rte.prompts
  anli = t0.T0_EVAL_BY_NAME["anli/r2"]
  assert (anli.dataset, anli.subset, anli.data_key) == ("anli", None, "anli/r2")
  assert t0.T0_EVAL_BY_NAME["super_glue/cb"].prompts == anli.prompts
  assert "_As_a_result_C1_or_C2_" in t0.T0_EVAL_BY_NAME["super_glue/copa"].prompts


def test_random_baseline_is_41_67():
  from arch_objective.prompts import t0
  rates = {"super_glue/copa": 1 / 2, "hellaswag": 1 / 4, "story_cloze/2016": 1 / 2,
           "anli/r1": 1 / 3, "anli/r2": 1 / 3, "anli/r3": 1 / 3, "super_glue/cb": 1 / 3,
           "super_glue/rte": 1 / 2, "super_glue/wsc.fixed": 1 / 2,
           "winogrande/winogrande_xl": 1 / 2, "super_glue/wic": 1 / 2}
  for d in t0.T0_EVAL:
    assert d.random == pytest.approx(rates[d.name])
  baseline = 100 * sum(rates.values()) / len(rates)
  assert baseline == pytest.approx(41.666, abs=1e-3)
  assert t0.RANDOM_BASELINE == pytest.approx(baseline)
  assert round(t0.RANDOM_BASELINE, 2) == 41.67


@needs_promptsource
def test_every_t0_eval_prompt_is_in_promptsource_with_answer_choices():
  from arch_objective.prompts import t0, templates
  found = 0
  for d in t0.T0_EVAL:
    prompts = templates.load_prompts(d.dataset, d.subset, d.prompts)
    assert [p.name for p in prompts] == list(d.prompts)
    for p in prompts:
      assert (p.dataset, p.subset) == (d.dataset, d.subset)
      assert p.has_choices, (d.name, p.name)
      assert templates.sanitize(p.original_name) == p.name
      found += 1
  assert found == 116


@needs_promptsource
def test_unknown_prompt_name_lists_the_available_ones():
  from arch_objective.prompts import templates
  with pytest.raises(ValueError, match="no_such_prompt") as e:
    templates.load_prompts("super_glue", "rte", ["GPT_3_style", "no_such_prompt"])
  assert "super_glue/rte" in str(e.value) and "can_we_infer" in str(e.value)


def test_sanitize_literal_names():
  from arch_objective.prompts import templates
  assert templates.sanitize("C1 or C2? premise, so/because…") == "C1_or_C2_premise_so_because_"
  assert templates.sanitize("…As a result, C1 or C2?") == "_As_a_result_C1_or_C2_"
  assert templates.sanitize("…why? C1 or C2") == "_why_C1_or_C2"
  assert templates.sanitize("GPT-3 style") == "GPT_3_style"
  assert templates.sanitize("always/sometimes/never") == "always_sometimes_never"
  assert templates.sanitize("question-context-meaning-with-label") == (
      "question-context-meaning-with-label".replace("-", "_"))
  assert templates.sanitize("Replace") == "Replace"
  assert templates.sanitize("v1.11 keep_dots") == "v1.11_keep_dots"


# -- rendering the real SuperGLUE files ----------------------------------------------------

def _render_all(dataset, subset, examples):
  from arch_objective.prompts import t0, templates
  spec = t0.T0_EVAL_BY_NAME[f"{dataset}/{subset}"]
  prompts = templates.load_prompts(dataset, subset, spec.prompts)
  return {p.name: [p.render(e) for e in examples] for p in prompts}


@needs_promptsource
def test_rte_renders_every_validation_example_with_the_gold_label(eval_dir):
  raw = _raw(eval_dir, "RTE")
  assert len(raw) == SIZES["RTE"]
  assert collections.Counter(r["label"] for r in raw) == RTE_LABELS
  examples = datasets_lib.load_examples("super_glue", "rte", "validation", str(eval_dir))
  rendered = _render_all("super_glue", "rte", examples)
  assert len(rendered) == 10
  for name, outs in rendered.items():
    assert len(outs) == 277 and all(o is not None for o in outs), name
    for row, o in zip(raw, outs):
      assert len(o.choices) == 2
      # Every RTE template lists the entailment answer first: gold index == HF label.
      assert o.gold == ({"entailment": 0, "not_entailment": 1}[row["label"]],), name
      assert o.targets == o.choices[o.gold[0]]
      assert row["hypothesis"].strip()[:20] in o.inputs
  gpt3 = rendered["GPT_3_style"]
  assert raw[0]["label"] == "not_entailment" and raw[1]["label"] == "entailment"
  assert gpt3[0].targets == "False" and gpt3[1].targets == "True"
  assert gpt3[0].choices == ("True", "False")
  assert gpt3[0].inputs == (f"{raw[0]['premise']}\nQuestion: {raw[0]['hypothesis']} "
                            f"True or False?")
  for row, o in zip(raw, gpt3):
    assert o.targets == ("True" if row["label"] == "entailment" else "False")
  assert rendered["can_we_infer"][1].targets == "Yes"
  assert rendered["can_we_infer"][0].targets == "No"


@needs_promptsource
def test_cb_renders_every_validation_example_with_three_choices(eval_dir):
  raw = _raw(eval_dir, "CB")
  assert len(raw) == SIZES["CB"]
  assert collections.Counter(r["label"] for r in raw) == CB_LABELS
  examples = datasets_lib.load_examples("super_glue", "cb", "validation", str(eval_dir))
  rendered = _render_all("super_glue", "cb", examples)
  assert len(rendered) == 15
  hf = {"entailment": 0, "contradiction": 1, "neutral": 2}
  for name, outs in rendered.items():
    assert len(outs) == 56 and all(o is not None for o in outs), name
    assert all(len(o.choices) == 3 for o in outs)
    assert [o.gold for o in outs] == [(hf[r["label"]],) for r in raw], name
  # GPT-3 style: True / False / Neither for entailment / contradiction / neutral.
  by_label = {"entailment": "True", "contradiction": "False", "neutral": "Neither"}
  assert [o.targets for o in rendered["GPT_3_style"]] == [by_label[r["label"]] for r in raw]
  assert rendered["GPT_3_style"][0].targets == "False"   # row 0 is a contradiction
  assert rendered["GPT_3_style"][1].targets == "Neither"  # row 1 is neutral


@needs_promptsource
def test_copa_renders_cause_or_effect_templates_only_on_their_questions(eval_dir):
  raw = _raw(eval_dir, "COPA")
  assert len(raw) == SIZES["COPA"]
  questions = collections.Counter(r["question"] for r in raw)
  assert questions == COPA_QUESTIONS
  examples = datasets_lib.load_examples("super_glue", "copa", "validation", str(eval_dir))
  rendered = _render_all("super_glue", "copa", examples)
  assert len(rendered) == 12
  for name, outs in rendered.items():
    wanted = COPA_CONDITIONAL.get(name)
    expected = [wanted is None or r["question"] == wanted for r in raw]
    assert [o is not None for o in outs] == expected, name
    assert sum(o is not None for o in outs) == (questions[wanted] if wanted else 100)
    for r, o in zip(raw, outs):
      if o is None:
        continue
      assert o.choices == (r["choice1"].strip(), r["choice2"].strip())
      assert o.gold == (r["label"],)
      assert o.targets == [r["choice1"], r["choice2"]][r["label"]].strip()
  assert sum(o is not None for o in rendered["_As_a_result_C1_or_C2_"]) == 48
  assert sum(o is not None for o in rendered["_why_C1_or_C2"]) == 52
  first_effect = next(i for i, r in enumerate(raw) if r["question"] == "effect")
  o = rendered["_As_a_result_C1_or_C2_"][first_effect]
  r = raw[first_effect]
  assert o.inputs == f'{r["premise"]} As a result, "{r["choice1"]}" or "{r["choice2"]}"?'


@needs_promptsource
def test_rendering_an_example_that_lacks_a_field_names_dataset_template_and_field():
  from arch_objective.prompts import templates
  prompt = templates.load_prompts("super_glue", "rte", ["GPT_3_style"])[0]
  full = {"premise": "A cat sat.", "hypothesis": "An animal sat.", "label": 0, "idx": 0}
  assert prompt.render(full).inputs == "A cat sat.\nQuestion: An animal sat. True or False?"
  lacking = {k: v for k, v in full.items() if k != "hypothesis"}
  with pytest.raises(ValueError) as e:
    prompt.render(lacking)
  message = str(e.value)
  assert "super_glue/rte" in message and "GPT_3_style" in message and "hypothesis" in message


# -- dataset readers -----------------------------------------------------------------------

def test_superglue_label_strings_become_hf_ids(eval_dir):
  for name, subset, table in (
      ("RTE", "rte", {"entailment": 0, "not_entailment": 1}),
      ("CB", "cb", {"entailment": 0, "contradiction": 1, "neutral": 2})):
    raw = _raw(eval_dir, name)
    examples = datasets_lib.load_examples("super_glue", subset, "validation", str(eval_dir))
    assert len(examples) == SIZES[name]
    assert [e["label"] for e in examples] == [table[r["label"]] for r in raw]
    assert [e["premise"] for e in examples] == [r["premise"] for r in raw]
    assert [e["hypothesis"] for e in examples] == [r["hypothesis"] for r in raw]
    assert [e["idx"] for e in examples] == [r["idx"] for r in raw]
    assert all(isinstance(e["label"], int) for e in examples)
  rte = datasets_lib.load_examples("super_glue", "rte", "validation", str(eval_dir))
  assert collections.Counter(e["label"] for e in rte) == {0: 146, 1: 131}
  cb = datasets_lib.load_examples("super_glue", "cb", "validation", str(eval_dir))
  assert collections.Counter(e["label"] for e in cb) == {0: 23, 1: 28, 2: 5}
  copa_raw = _raw(eval_dir, "COPA")
  copa = datasets_lib.load_examples("super_glue", "copa", "validation", str(eval_dir))
  assert [e["label"] for e in copa] == [r["label"] for r in copa_raw]
  assert [e["question"] for e in copa] == [r["question"] for r in copa_raw]
  assert collections.Counter(e["label"] for e in copa) == {0: 55, 1: 45}


@pytest.fixture
def original_layouts(tmp_path):
  """One or two examples of each original distribution, in its own layout."""
  root = tmp_path / "data"
  _write_jsonl(root / "anli" / "R1" / "dev.jsonl", [
      {"uid": "a1", "context": "The sky is blue.", "hypothesis": "The sky has a colour.",
       "label": "e", "reason": "r1", "model_label": "n", "emturk": False},
      {"uid": "a2", "context": "Bob is tall.", "hypothesis": "Bob is 2m.", "label": "n",
       "reason": ""},
      {"uid": "a3", "context": "Ann is awake.", "hypothesis": "Ann sleeps.", "label": "c"}])
  _write_jsonl(root / "hellaswag" / "hellaswag_val.jsonl", [
      {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is on a roof.",
       "ctx_b": "he", "ctx": "A man is on a roof. he", "split": "val",
       "split_type": "indomain", "label": 3, "source_id": "activitynet~v_-JhWjGDPHMY",
       "endings": ["is using wrap.", "is ripping level tiles.", "is holding a rubik's cube.",
                   "starts pulling up roofing."]}])
  _write_jsonl(root / "winogrande" / "dev.jsonl", [
      {"qID": "q1", "sentence": "Ian asked Dennis because _ knew.", "option1": "Ian",
       "option2": "Dennis"},
      {"qID": "q2", "sentence": "The cup fit in the box as _ was small.", "option1": "cup",
       "option2": "box"}])
  (root / "winogrande" / "dev-labels.lst").write_text("2\n1\n")
  story = root / "story_cloze" / "cloze_test_val__spring2016 - cloze_test_ALL_val.csv"
  story.parent.mkdir(parents=True)
  with open(story, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3",
                     "InputSentence4", "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2",
                     "AnswerRightEnding"])
    writer.writerow(["s-1", "Rick grew up poor.", "He joined a gang.", "He was shot.",
                     "He changed, he said.", "He is happy now.", "He joined a gang again.",
                     "1"])
  _write_jsonl(root / "super_glue" / "WiC" / "val.jsonl", [
      {"word": "place", "sentence1": "Do you want to come over to my place later?",
       "sentence2": "A political system with no place for the less prominent groups.",
       "idx": 0, "label": False, "start1": 31, "start2": 27, "end1": 36, "end2": 32,
       "version": 1.1}])
  _write_jsonl(root / "super_glue" / "WSC" / "val.jsonl", [
      {"text": "Mark told Pete many lies about himself. He is dishonest.",
       "target": {"span2_index": 7, "span1_index": 0, "span1_text": "Mark",
                  "span2_text": "He"}, "idx": 0, "label": True}])
  return root


def test_original_layout_readers_give_hf_fields(original_layouts):
  root = str(original_layouts)
  anli = datasets_lib.load_examples("anli", "r1", "validation", root)
  assert [e["premise"] for e in anli] == ["The sky is blue.", "Bob is tall.", "Ann is awake."]
  assert [e["hypothesis"] for e in anli][0] == "The sky has a colour."
  assert [e["label"] for e in anli] == [0, 1, 2]
  assert [e["uid"] for e in anli] == ["a1", "a2", "a3"]
  assert anli[0]["reason"] == "r1" and anli[2]["reason"] == ""
  assert "context" not in anli[0]

  hella = datasets_lib.load_examples("hellaswag", None, "validation", root)
  assert len(hella) == 1 and hella[0]["label"] == "3"
  assert hella[0]["ctx"] == "A man is on a roof. he" and len(hella[0]["endings"]) == 4
  assert hella[0]["activity_label"] == "Roof shingle removal"

  wino = datasets_lib.load_examples("winogrande", "winogrande_xl", "validation", root)
  assert [e["answer"] for e in wino] == ["2", "1"]
  assert [e["option1"] for e in wino] == ["Ian", "cup"]

  story = datasets_lib.load_examples("story_cloze", "2016", "validation", root)
  assert story == [{"story_id": "s-1", "input_sentence_1": "Rick grew up poor.",
                    "input_sentence_2": "He joined a gang.", "input_sentence_3": "He was shot.",
                    "input_sentence_4": "He changed, he said.",
                    "sentence_quiz1": "He is happy now.",
                    "sentence_quiz2": "He joined a gang again.", "answer_right_ending": 1}]

  wic = datasets_lib.load_examples("super_glue", "wic", "validation", root)
  assert wic[0]["label"] == 0 and wic[0]["word"] == "place"
  assert (wic[0]["start1"], wic[0]["end1"], wic[0]["start2"], wic[0]["end2"]) == (31, 36, 27, 32)

  wsc = datasets_lib.load_examples("super_glue", "wsc.fixed", "validation", root)
  assert wsc == [{"text": "Mark told Pete many lies about himself. He is dishonest.",
                  "span1_index": 0, "span2_index": 7, "span1_text": "Mark", "span2_text": "He",
                  "label": 1, "idx": 0}]


@needs_promptsource
def test_original_layouts_render_under_every_suite_prompt(original_layouts):
  """The readers' output is what the promptsource templates read: gold = the label."""
  from arch_objective.prompts import t0, templates
  gold = {"anli/r1": [(0,), (1,), (2,)], "hellaswag": [(3,)],
          "winogrande/winogrande_xl": [(1,), (0,)], "story_cloze/2016": [(0,)],
          "super_glue/wic": [(0,)], "super_glue/wsc.fixed": [(1,)]}
  for name, expected in gold.items():
    spec = t0.T0_EVAL_BY_NAME[name]
    dataset, _, subset = name.partition("/")
    examples = datasets_lib.load_examples(dataset, subset or None, "validation",
                                          str(original_layouts))
    for prompt in templates.load_prompts(spec.dataset, spec.subset, spec.prompts):
      outs = [prompt.render(e) for e in examples]
      assert all(o is not None for o in outs), (name, prompt.name)
      assert [o.gold for o in outs] == expected, (name, prompt.name)


def test_winogrande_with_answers_needs_no_labels_file(tmp_path):
  _write_jsonl(tmp_path / "winogrande" / "dev.jsonl", [
      {"sentence": "_ won.", "option1": "A", "option2": "B", "answer": "1"}])
  out = datasets_lib.load_examples("winogrande", "winogrande_xl", "validation", str(tmp_path))
  assert out == [{"sentence": "_ won.", "option1": "A", "option2": "B", "answer": "1"}]


def test_winogrande_without_answers_or_labels_file(tmp_path):
  _write_jsonl(tmp_path / "winogrande" / "dev.jsonl", [
      {"sentence": "_ won.", "option1": "A", "option2": "B"}])
  with pytest.raises(ValueError, match="dev-labels.lst"):
    datasets_lib.load_examples("winogrande", "winogrande_xl", "validation", str(tmp_path))
  (tmp_path / "winogrande" / "dev-labels.lst").write_text("1\n2\n")
  with pytest.raises(ValueError, match="2 labels for 1 examples"):
    datasets_lib.load_examples("winogrande", "winogrande_xl", "validation", str(tmp_path))


def test_mapping_file_paths_are_relative_to_the_mapping_file(tmp_path, eval_dir):
  sub = tmp_path / "maps" / "files"
  sub.mkdir(parents=True)
  shutil.copy(eval_dir / "super_glue" / "CB" / "val.jsonl", sub / "cb_dev.jsonl")
  _write_jsonl(sub / "imdb_val.jsonl", [{"text": "Great film.", "label": 1},
                                        {"text": "Dull.", "label": 0}])
  mapping_path = tmp_path / "maps" / "mapping.json"
  mapping_path.write_text(json.dumps({
      "super_glue/cb": {"validation": "files/cb_dev.jsonl"},
      "imdb": {"validation": "files/imdb_val.jsonl"}}))
  mapping = datasets_lib.load_mapping(str(mapping_path))
  assert mapping["super_glue/cb"]["validation"] == str(sub / "cb_dev.jsonl")
  assert os.path.isabs(mapping["imdb"]["validation"])
  assert datasets_lib.load_mapping(None) == {}
  cb = datasets_lib.load_examples("super_glue", "cb", "validation", mapping=mapping)
  # A dataset with an original layout is read in that layout: string labels -> ids.
  hf = {"entailment": 0, "contradiction": 1, "neutral": 2}
  assert [e["label"] for e in cb] == [hf[r["label"]] for r in _raw(eval_dir, "CB")]
  # Any other dataset: JSON Lines already in HF field format, as is.
  imdb = datasets_lib.load_examples("imdb", None, "validation", mapping=mapping)
  assert imdb == [{"text": "Great film.", "label": 1}, {"text": "Dull.", "label": 0}]
  # The mapping wins over the data directory.
  other = tmp_path / "empty_data_dir"
  other.mkdir()
  cb_again = datasets_lib.load_examples("super_glue", "cb", "validation", str(other), mapping)
  assert len(cb_again) == 56


def test_generic_layout_of_a_data_directory(tmp_path):
  _write_jsonl(tmp_path / "glue" / "mrpc" / "train.jsonl",
               [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}])
  assert datasets_lib.load_examples("glue", "mrpc", "train", str(tmp_path)) == [
      {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}]


def test_missing_field_names_file_example_and_field(tmp_path):
  path = _write_jsonl(tmp_path / "super_glue" / "RTE" / "val.jsonl", [
      {"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0},
      {"premise": "p", "label": "entailment", "idx": 1}])
  with pytest.raises(ValueError) as e:
    datasets_lib.load_examples("super_glue", "rte", "validation", str(tmp_path))
  message = str(e.value)
  assert str(path) in message and "example 1" in message and "'hypothesis'" in message


def test_unknown_label_string_is_reported(tmp_path):
  _write_jsonl(tmp_path / "super_glue" / "CB" / "val.jsonl",
               [{"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 0}])
  with pytest.raises(ValueError, match="unknown label 'maybe'") as e:
    datasets_lib.load_examples("super_glue", "cb", "validation", str(tmp_path))
  assert "example 0" in str(e.value) and "neutral" in str(e.value)


@pytest.mark.parametrize("subset,folder,label,accepted", [
    ("wic", "WiC", "true", "true or false (JSON booleans), 'False', 'True', or an id 0 or 1"),
    ("wsc.fixed", "WSC", "no", "true or false (JSON booleans), 'False', 'True', or an id 0 "
                               "or 1"),
    ("rte", "RTE", True, "'entailment', 'not_entailment', or an id 0 or 1"),
    ("cb", "CB", 3, "'entailment', 'contradiction', 'neutral', or an id 0 or 1 or 2"),
    ("copa", "COPA", 2, "'choice1', 'choice2', or an id 0 or 1")])
def test_a_label_of_the_wrong_kind_lists_the_accepted_values(tmp_path, subset, folder, label,
                                                             accepted):
  row = {"premise": "p", "hypothesis": "h", "choice1": "a", "choice2": "b",
         "question": "cause", "word": "w", "sentence1": "s w", "sentence2": "t w",
         "start1": 2, "end1": 3, "start2": 2, "end2": 3, "text": "Ann said she left.",
         "target": {"span1_index": 0, "span2_index": 2, "span1_text": "Ann",
                    "span2_text": "she"}, "idx": 0, "label": label}
  path = _write_jsonl(tmp_path / "super_glue" / folder / "val.jsonl", [row])
  with pytest.raises(ValueError) as e:
    datasets_lib.load_examples("super_glue", subset, "validation", str(tmp_path))
  assert str(e.value) == (f"{path}, example 0: unknown label {label!r}; expected one of "
                          f"{accepted}.")


def test_true_false_labels_as_json_booleans_class_names_or_ids(tmp_path):
  base = {"word": "place", "sentence1": "my place", "sentence2": "no place", "start1": 3,
          "end1": 8, "start2": 3, "end2": 8}
  _write_jsonl(tmp_path / "super_glue" / "WiC" / "val.jsonl",
               [{**base, "idx": i, "label": label}
                for i, label in enumerate([True, False, "True", "False", 1, 0])])
  wic = datasets_lib.load_examples("super_glue", "wic", "validation", str(tmp_path))
  assert [e["label"] for e in wic] == [1, 0, 1, 0, 1, 0]


# Rows of the SuperGLUE WSC file (its `target` field) whose span texts are not substrings
# of the text, each with the span HF's `super_glue/wsc.fixed` gives (its `_fix_wst`).
WSC_UNFIXED = [
    # The case of the span's first letter follows the word at its index.
    ({"text": "The trophy doesn't fit into the suitcase because it is too large.",
      "target": {"span1_index": 0, "span1_text": "the trophy", "span2_index": 9,
                 "span2_text": "it"}, "idx": 0, "label": True},
     {"span1_index": 0, "span1_text": "The trophy", "span2_index": 9, "span2_text": "it"}),
    ({"text": "Sam pulled up a chair to the piano, but it was broken.",
      "target": {"span1_index": 6, "span1_text": "The piano", "span2_index": 9,
                 "span2_text": "it"}, "idx": 1, "label": False},
     {"span1_index": 6, "span1_text": "the piano", "span2_index": 9, "span2_text": "it"}),
    # Trailing periods go; a newline inside the span becomes a space.
    ({"text": "I poured water from the bottle into the cup until it was full.",
      "target": {"span1_index": 7, "span1_text": "the\ncup.", "span2_index": 9,
                 "span2_text": "it"}, "idx": 2, "label": True},
     {"span1_index": 7, "span1_text": "the cup", "span2_index": 9, "span2_text": "it"}),
    # A span with 'theyscold' that needs a fix moves span2_index to 10 (HF means to
    # write 'they scold' into the text but drops the result: the text stays as it is).
    ({"text": "The teachers saw the pupils and then theyscold them for being late.",
      "target": {"span1_index": 3, "span1_text": "the pupils", "span2_index": 7,
                 "span2_text": "theyscold."}, "idx": 3, "label": False},
     {"span1_index": 3, "span1_text": "the pupils", "span2_index": 10,
      "span2_text": "theyscold"}),
    # HF leaves these two alone though they are not in the text.
    ({"text": "Stalin feuded with Kamenev and with Zinoviev, and he won.",
      "target": {"span1_index": 3, "span1_text": "Kamenev and Zinoviev", "span2_index": 8,
                 "span2_text": "he"}, "idx": 4, "label": False},
     {"span1_index": 3, "span1_text": "Kamenev and Zinoviev", "span2_index": 8,
      "span2_text": "he"}),
]


def test_wsc_fixed_fixes_span_texts_as_hf(tmp_path):
  rows = [raw for raw, _ in WSC_UNFIXED] + [
      {"text": "Mark told Pete many lies about himself. He is dishonest.",
       "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 7,
                  "span2_text": "He"}, "idx": 5, "label": True}]
  _write_jsonl(tmp_path / "super_glue" / "WSC" / "val.jsonl", rows)
  wsc = datasets_lib.load_examples("super_glue", "wsc.fixed", "validation", str(tmp_path))
  expected = [{"text": raw["text"], **spans, "label": int(raw["label"]), "idx": raw["idx"]}
              for raw, spans in WSC_UNFIXED]
  expected.append({"text": rows[-1]["text"], "span1_index": 0, "span2_index": 7,
                   "span1_text": "Mark", "span2_text": "He", "label": 1, "idx": 5})
  assert wsc == expected
  assert [e["span1_text"] for e in wsc] == ["The trophy", "the piano", "the cup",
                                            "the pupils", "Kamenev and Zinoviev", "Mark"]
  assert wsc[3]["text"] == "The teachers saw the pupils and then theyscold them for being late."


def test_wsc_span_that_no_fix_places_in_the_text_names_file_and_example(tmp_path):
  path = _write_jsonl(tmp_path / "super_glue" / "WSC" / "val.jsonl", [
      {"text": "Ann met Bea and she smiled.",
       "target": {"span1_index": 0, "span1_text": "Ann", "span2_index": 4,
                  "span2_text": "her"}, "idx": 0, "label": False}])
  with pytest.raises(ValueError) as e:
    datasets_lib.load_examples("super_glue", "wsc.fixed", "validation", str(tmp_path))
  assert str(e.value) == (f"{path}, example 0: span2_text 'her' is not in the text 'Ann met "
                          f"Bea and she smiled.', nor is it once fixed as HF's wsc.fixed does "
                          f"('her').")


def test_bad_json_line_names_file_and_line(tmp_path):
  path = tmp_path / "anli" / "R1" / "dev.jsonl"
  path.parent.mkdir(parents=True)
  path.write_text('{"context": "c", "hypothesis": "h", "label": "e"}\n\n{"context": oops}\n')
  with pytest.raises(ValueError) as e:
    datasets_lib.load_examples("anli", "r1", "validation", str(tmp_path))
  assert str(path) in str(e.value) and "line 3" in str(e.value)
  assert "not valid JSON" in str(e.value)


def test_missing_file_lists_the_expected_paths(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    datasets_lib.load_examples("super_glue", "rte", "validation", str(tmp_path))
  message = str(e.value)
  assert os.path.join(str(tmp_path), "super_glue/RTE/val.jsonl") in message
  assert os.path.join(str(tmp_path), "super_glue", "rte", "validation.jsonl") in message
  with pytest.raises(FileNotFoundError) as e:
    datasets_lib.load_examples("imdb", None, "train", str(tmp_path))
  assert os.path.join(str(tmp_path), "imdb", "train.jsonl") in str(e.value)
  mapping = {"super_glue/rte": {"validation": str(tmp_path / "nope.jsonl")}}
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    datasets_lib.load_examples("super_glue", "rte", "validation", mapping=mapping)


def test_mapping_entry_without_the_split(tmp_path, eval_dir):
  mapping_path = tmp_path / "mapping.json"
  mapping_path.write_text(json.dumps(
      {"super_glue/rte": {"train": str(eval_dir / "super_glue" / "RTE" / "val.jsonl")}}))
  mapping = datasets_lib.load_mapping(str(mapping_path))
  with pytest.raises(ValueError) as e:
    datasets_lib.load_examples("super_glue", "rte", "validation", mapping=mapping)
  assert "super_glue/rte" in str(e.value) and "'validation'" in str(e.value)
  assert "train" in str(e.value)


def test_bad_mapping_files(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    datasets_lib.load_mapping(str(bad))
  flat = tmp_path / "flat.json"
  flat.write_text(json.dumps({"super_glue/rte": "val.jsonl"}))
  with pytest.raises(ValueError, match="super_glue/rte"):
    datasets_lib.load_mapping(str(flat))


# -- the MT-F mixture ----------------------------------------------------------------------

@pytest.fixture
def mtf_mapping(tmp_path, eval_dir):
  """The validation files standing in for the train splits of RTE, CB and COPA."""
  path = tmp_path / "mapping.json"
  path.write_text(json.dumps({
      "super_glue/rte": {"train": str(eval_dir / "super_glue" / "RTE" / "val.jsonl")},
      "super_glue/cb": {"train": str(eval_dir / "super_glue" / "CB" / "val.jsonl")},
      "super_glue/copa": {"train": str(eval_dir / "super_glue" / "COPA" / "val.jsonl")}}))
  return str(path)


@pytest.fixture
def mtf(clean_registry, mtf_mapping, t5_vocab_path):
  from tasks import t0 as t0_tasks
  spec = t0_tasks.register_prompted_mixture(
      "mtf", datasets=MTF_DATASETS, mapping=mtf_mapping, vocabulary=t5_vocab_path,
      inputs_length=128, targets_length=32)
  assert clean_registry.get("mtf") is spec
  return spec


def _dataset_of(task_name):
  return "/".join(task_name.split("/")[:2])


@needs_promptsource
def test_mixture_has_a_task_per_prompt_at_examples_proportional_rates(mtf):
  names = [t.name for t in mtf.tasks]
  counts = collections.Counter(_dataset_of(n) for n in names)
  assert counts == {"super_glue/rte": 10, "super_glue/cb": 15, "super_glue/copa": 12}
  assert "super_glue/copa/_As_a_result_C1_or_C2_" in names
  assert "super_glue/rte/GPT_3_style" in names
  sizes = {"super_glue/rte": 277, "super_glue/cb": 56, "super_glue/copa": 100}
  rates = mtf.rates("train")
  assert rates.tolist() == [sizes[_dataset_of(n)] for n in names]
  assert rates.sum() == 10 * 277 + 15 * 56 + 12 * 100
  assert (mtf.inputs_length, mtf.targets_length, mtf.cap) == (128, 32, 500_000)


@needs_promptsource
@pytest.mark.parametrize("cap,expected", [
    (50, {"super_glue/rte": 50 // 10, "super_glue/cb": 50 // 15, "super_glue/copa": 50 // 12}),
    (60, {"super_glue/rte": 60 // 10, "super_glue/cb": 56, "super_glue/copa": 60 // 12})])
def test_mixture_cap_splits_large_datasets_across_prompts(mtf_mapping, t5_vocab_path, cap,
                                                          expected):
  from arch_objective.prompts import mixture
  from tasks import t0 as t0_tasks
  spec = mixture.from_promptsource(
      "capped", t0_tasks.parse_datasets(MTF_DATASETS), vocabulary=t5_vocab_path,
      mapping=datasets_lib.load_mapping(mtf_mapping), cap=cap)
  assert spec.rates("train").tolist() == [expected[_dataset_of(t.name)] for t in spec.tasks]
  assert expected == ({"super_glue/rte": 5, "super_glue/cb": 3, "super_glue/copa": 4}
                      if cap == 50 else
                      {"super_glue/rte": 6, "super_glue/cb": 56, "super_glue/copa": 5})


class _Recording:
  """A template that notes which task rendered each example the mixture yields."""

  def __init__(self, prompt, name, log):
    self.prompt, self.name, self.log = prompt, name, log

  def render(self, example):
    rendered = self.prompt.render(example)
    if rendered is not None:
      self.log.append(self.name)
    return rendered


def _draw_task_counts(spec, num, seed=0):
  log = []
  tasks = tuple(dataclasses.replace(t, prompt=_Recording(t.prompt, t.name, log))
                for t in spec.tasks)
  stream = dataclasses.replace(spec, tasks=tasks).task_examples("train", seed=seed)
  drawn = []
  for example in itertools.islice(stream, num):
    drawn.append(log[-1])  # the render of the example just yielded
    assert example["targets"][-1] == 1
  return collections.Counter(drawn)


@needs_promptsource
@pytest.mark.parametrize("datasets", [MTF_DATASETS[:2], MTF_DATASETS],
                         ids=["rte_cb", "rte_cb_copa"])
def test_mixture_task_frequencies_match_the_rates(mtf, mtf_mapping, t5_vocab_path, datasets):
  """Over 3,000 drawn examples each task's share is rate / sum of rates (chi-square at
  p = 1e-4, and every task within 4 binomial sigmas).

  seqio samples a task by its rate, then takes that task's next example that survives
  its filters (spec §3.2: the rate is the unfiltered train size; examples with empty
  targets are filtered out), so a COPA template that renders only 'effect' questions
  still gets its full share of the drawn examples.
  """
  from scipy import stats
  from arch_objective.prompts import mixture
  from tasks import t0 as t0_tasks
  if datasets == MTF_DATASETS:
    spec = mtf
  else:
    spec = mixture.from_promptsource(
        "rte_cb", t0_tasks.parse_datasets(datasets), vocabulary=t5_vocab_path,
        mapping=datasets_lib.load_mapping(mtf_mapping))
  num = 3000
  counts = _draw_task_counts(spec, num)
  assert sum(counts.values()) == num
  rates = spec.rates("train")
  expected = num * rates / rates.sum()
  observed = np.asarray([counts[t.name] for t in spec.tasks], np.float64)
  chi2 = float(np.sum((observed - expected) ** 2 / expected))
  threshold = stats.chi2.ppf(1 - 1e-4, df=len(rates) - 1)
  p = rates / rates.sum()
  sigma = np.sqrt(num * p * (1 - p))
  outliers = {t.name: (int(o), round(float(e), 1)) for t, o, e, s in
              zip(spec.tasks, observed, expected, sigma) if abs(o - e) > 4 * s}
  assert not outliers, f"tasks drawn off their rate (observed, expected): {outliers}"
  assert chi2 < threshold, (chi2, threshold)


@needs_promptsource
def test_mixture_examples_are_tokenised_without_input_eos_and_one_target_eos(
    mtf, eval_dir, t5_vocab_path):
  from arch_objective.data import vocabularies
  vocab = vocabularies.SentencePieceVocabulary(t5_vocab_path)
  copa = _raw(eval_dir, "COPA")
  # Every target is one of the answer choices of the templates (or a COPA alternative).
  answers = {"True", "False", "Neither", "Yes", "No", "Maybe", "Correct", "Incorrect",
             "Inconclusive", "Always", "Never", "Sometimes", "Guaranteed", "Possible",
             "Impossible"} | {r["choice1"].strip() for r in copa} | {
                 r["choice2"].strip() for r in copa}
  examples = list(itertools.islice(mtf.task_examples("train", seed=0), 40))
  for e in examples:
    assert set(e) == {"inputs", "targets"}
    assert e["inputs"].dtype == np.int32 and e["targets"].dtype == np.int32
    assert len(e["inputs"]) > 0 and 1 not in e["inputs"].tolist() and 0 not in e["inputs"]
    assert e["targets"][-1] == 1 and e["targets"].tolist().count(1) == 1
    assert len(e["targets"]) >= 2
    assert vocab.decode(e["targets"][:-1].tolist()) in answers
  again = list(itertools.islice(mtf.task_examples("train", seed=0), 40))
  other = list(itertools.islice(mtf.task_examples("train", seed=1), 40))

  def key(stream):
    return [(tuple(e["inputs"]), tuple(e["targets"])) for e in stream]

  assert key(again) == key(examples)
  assert key(other) != key(examples)
  assert len(set(key(examples))) > 30


def _segments(seg_ids):
  return [np.flatnonzero(seg_ids == s) for s in range(1, int(seg_ids.max()) + 1)]


@needs_promptsource
def test_decoder_only_rows_pack_inputs_and_targets_with_loss_on_targets(mtf):
  from arch_objective import models
  seed = 5
  examples = list(itertools.islice(mtf.task_examples("train", seed=seed), 30))
  trimmed = [(e["inputs"][:128], e["targets"][:32]) for e in examples]
  rows_cd = list(itertools.islice(mtf.rows("train", arch=models.CAUSAL_DECODER, seed=seed), 4))
  rows_nd = list(itertools.islice(mtf.rows("train", arch=models.NON_CAUSAL_DECODER,
                                           seed=seed), 4))
  for a, b in zip(rows_cd, rows_nd):
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
  position = 0
  packed_somewhere = False
  for row in rows_cd:
    assert all(v.shape == (160,) for v in row.values())
    seg = row["decoder_segment_ids"]
    segments = _segments(seg)
    packed_somewhere |= len(segments) > 1
    used_in = used_tg = 0
    for span in segments:
      inputs, targets = trimmed[position]
      position += 1
      n_in, n_tg = len(inputs), len(targets)
      # Segments are contiguous and follow each other from the start of the row.
      assert span.tolist() == list(range(used_in + used_tg, used_in + used_tg + n_in + n_tg))
      tokens = row["decoder_target_tokens"][span]
      assert tokens.tolist() == inputs.tolist() + targets.tolist()
      assert row["decoder_loss_weights"][span].tolist() == [0] * n_in + [1] * n_tg
      assert row["decoder_causal_attention"][span].tolist() == (
          [1] * (n_in + 1) + [0] * (n_tg - 1))
      assert row["decoder_input_tokens"][span].tolist() == [0] + tokens[:-1].tolist()
      assert row["decoder_positions"][span].tolist() == list(range(n_in + n_tg))
      used_in, used_tg = used_in + n_in, used_tg + n_tg
    assert used_in + used_tg <= 160
    pad = seg == 0
    assert pad.sum() == 160 - used_in - used_tg
    for k in ("decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention",
              "decoder_input_tokens"):
      assert not row[k][pad].any()
    # Loss only on targets: the weights sum to the target tokens of the row.
    assert row["decoder_loss_weights"].sum() == used_tg
  assert packed_somewhere


def test_decoder_only_rows_pack_by_the_concatenated_length_as_seqio():
  """seqio's PrefixLMFeatureConverter (spec §3.3) concatenates `inputs ++ targets` first
  and packs the concatenations into rows of inputs_length + targets_length: an example
  joins a row when its whole length fits, however the row's tokens split between inputs
  and targets. This is the literal 'Example 1: a packed dataset' of seqio's docstring."""
  from arch_objective.objectives import feature_converters
  examples = [{"inputs": np.asarray([7, 8, 5, 1]), "targets": np.asarray([3, 9, 1])},
              {"inputs": np.asarray([8, 4, 9, 3, 1]), "targets": np.asarray([4, 1])}]
  rows = list(feature_converters.prefix_lm_rows(examples, 7, 8, pack=True))
  assert len(rows) == 1, [r["decoder_target_tokens"].tolist() for r in rows]
  row = rows[0]
  assert row["decoder_target_tokens"].tolist() == [7, 8, 5, 1, 3, 9, 1, 8, 4, 9, 3, 1, 4, 1, 0]
  assert row["decoder_input_tokens"].tolist() == [0, 7, 8, 5, 1, 3, 9, 0, 8, 4, 9, 3, 1, 4, 0]
  assert row["decoder_loss_weights"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0]
  assert row["decoder_positions"].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0]
  assert row["decoder_segment_ids"].tolist() == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 0]
  assert row["decoder_causal_attention"].tolist() == [
      1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
  # At the MT-F lengths used here (128 + 32 = 160 tokens a row), a 100-token prompt with
  # a 3-token answer and a 50-token prompt with a 5-token answer (158 tokens) share a row.
  examples = [{"inputs": np.arange(2, 102), "targets": np.asarray([7, 8, 1])},
              {"inputs": np.arange(200, 250), "targets": np.asarray([9, 10, 11, 12, 1])}]
  rows = list(feature_converters.prefix_lm_rows(examples, 128, 32, pack=True))
  assert len(rows) == 1
  seg = rows[0]["decoder_segment_ids"]
  assert (seg == 1).sum() == 103 and (seg == 2).sum() == 55 and (seg == 0).sum() == 2
  assert rows[0]["decoder_loss_weights"].sum() == 8


@needs_promptsource
def test_encoder_decoder_rows_have_128_and_32_tokens(mtf):
  from arch_objective import models
  seed = 2
  examples = list(itertools.islice(mtf.task_examples("train", seed=seed), 30))
  rows = list(itertools.islice(mtf.rows("train", arch=models.ENCODER_DECODER, seed=seed), 3))
  position = 0
  for row in rows:
    assert row["encoder_input_tokens"].shape == (128,)
    for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
              "decoder_segment_ids"):
      assert row[k].shape == (32,)
    enc_spans = _segments(row["encoder_segment_ids"])
    dec_spans = _segments(row["decoder_segment_ids"])
    assert len(enc_spans) == len(dec_spans) >= 1
    for enc_span, dec_span in zip(enc_spans, dec_spans):
      e = examples[position]
      position += 1
      assert row["encoder_input_tokens"][enc_span].tolist() == e["inputs"][:128].tolist()
      targets = row["decoder_target_tokens"][dec_span]
      assert targets.tolist() == e["targets"][:32].tolist() and targets[-1] == 1
      assert row["decoder_input_tokens"][dec_span].tolist() == [0] + targets[:-1].tolist()
      assert row["decoder_loss_weights"][dec_span].tolist() == [1] * len(dec_span)
    assert row["decoder_loss_weights"].sum() == sum(len(s) for s in dec_spans)


def test_d4_train_has_the_38_datasets_of_spec_3_2():
  from arch_objective.prompts import t0
  # spec §3.2, the table of `d4_train` datasets with templates (tydiqa has none).
  spec_table = {
      ("glue", "mrpc"), ("glue", "qqp"), ("paws", "labeled_final"),
      ("kilt_tasks", "hotpotqa"), ("wiki_qa", None),
      ("adversarial_qa", "dbidaf"), ("adversarial_qa", "dbert"),
      ("adversarial_qa", "droberta"), ("duorc", "SelfRC"), ("duorc", "ParaphraseRC"),
      ("ropes", None), ("quoref", None),
      ("cos_e", "v1.11"), ("cosmos_qa", None), ("dream", None), ("qasc", None), ("quail", None),
      ("quarel", None), ("quartz", None), ("sciq", None), ("social_i_qa", None),
      ("wiki_hop", "original"), ("wiqa", None),
      ("amazon_polarity", None), ("app_reviews", None), ("imdb", None),
      ("rotten_tomatoes", None), ("yelp_review_full", None),
      ("common_gen", None), ("wiki_bio", None),
      ("cnn_dailymail", "3.0.0"), ("gigaword", None), ("multi_news", None), ("samsum", None),
      ("xsum", None),
      ("ag_news", None), ("dbpedia_14", None), ("trec", None)}
  assert len(spec_table) == 38
  assert len(t0.D4_TRAIN) == 38 and len(set(t0.D4_TRAIN)) == 38
  assert set(t0.D4_TRAIN) == spec_table
  assert ("glue", "mrpc") in t0.D4_TRAIN and ("cos_e", "v1.11") in t0.D4_TRAIN
  assert ("cnn_dailymail", "3.0.0") in t0.D4_TRAIN and ("trec", None) in t0.D4_TRAIN
  assert not any(d == "tydiqa" for d, _ in t0.D4_TRAIN)
  # No held-out dataset leaks into training.
  held_out = {d.dataset for d in t0.T0_EVAL}
  assert not held_out & {d for d, _ in t0.D4_TRAIN}
  assert t0.MIXTURE_CAP == 500_000
  assert t0.D4_TRAIN_EXCLUDED_PROMPTS == {("gigaword", None): ("summarize_",)}
  from tasks import t0 as t0_tasks
  assert t0_tasks.parse_datasets(["super_glue/rte", "imdb", "cos_e/v1.11"]) == [
      ("super_glue", "rte"), ("imdb", None), ("cos_e", "v1.11")]
