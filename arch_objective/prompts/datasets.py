"""Raw examples of the prompted datasets, in Hugging Face `datasets` field format.

Three ways to find a dataset's split, in order:
1. a mapping file entry: `{"super_glue/rte": {"validation": "path/val.jsonl"}}` (JSON);
   relative paths are relative to the mapping file; the file is read in the format its
   dataset's original distribution uses if the dataset is in `ORIGINAL_LAYOUTS`, else as
   JSON Lines already in HF field format;
2. a data directory holding the original distributions' layouts (`ORIGINAL_LAYOUTS`,
   e.g. `super_glue/RTE/val.jsonl` as in the SuperGLUE zip, ANLI's `anli/R1/dev.jsonl`,
   `hellaswag/hellaswag_val.jsonl`, Winogrande's `winogrande/dev.jsonl` with
   `dev-labels.lst`, the StoryCloze csv files), or `<dataset>[/<subset>]/<split>.jsonl` in
   HF field format for any other dataset;
3. without a data directory, `datasets.load_dataset` (needs the network or HF's cache).
"""
from __future__ import annotations

import csv
import glob
import json
import os
from typing import Any, Callable, Optional

from arch_objective.prompts.templates import dataset_key

Example = dict[str, Any]

# Original label strings -> HF label ids.
_NLI2 = {"entailment": 0, "not_entailment": 1}
_NLI3_SUPERGLUE = {"entailment": 0, "contradiction": 1, "neutral": 2}
_ANLI = {"e": 0, "n": 1, "c": 2}


def _read_jsonl(path: str) -> list[dict]:
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
  return rows


def _field(row: dict, name: str, path: str, index: int):
  if name not in row:
    raise ValueError(f"{path}, example {index}: missing field {name!r}; found {sorted(row)}.")
  return row[name]


def _label(row, path, i, table):
  label = _field(row, "label", path, i)
  if isinstance(label, bool):
    return int(label)
  if isinstance(label, int):
    return label
  if label not in table:
    raise ValueError(f"{path}, example {i}: unknown label {label!r}; expected one of "
                     f"{sorted(table)}.")
  return table[label]


def _superglue_rte(path):
  return [{"premise": _field(r, "premise", path, i), "hypothesis": _field(r, "hypothesis", path, i),
           "label": _label(r, path, i, _NLI2), "idx": r.get("idx", i)}
          for i, r in enumerate(_read_jsonl(path))]


def _superglue_cb(path):
  return [{"premise": _field(r, "premise", path, i), "hypothesis": _field(r, "hypothesis", path, i),
           "label": _label(r, path, i, _NLI3_SUPERGLUE), "idx": r.get("idx", i)}
          for i, r in enumerate(_read_jsonl(path))]


def _superglue_copa(path):
  keys = ("premise", "choice1", "choice2", "question")
  return [{**{k: _field(r, k, path, i) for k in keys}, "label": int(_field(r, "label", path, i)),
           "idx": r.get("idx", i)} for i, r in enumerate(_read_jsonl(path))]


def _superglue_wic(path):
  keys = ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2")
  return [{**{k: _field(r, k, path, i) for k in keys}, "label": _label(r, path, i, {}),
           "idx": r.get("idx", i)} for i, r in enumerate(_read_jsonl(path))]


def _superglue_wsc(path):
  out = []
  for i, r in enumerate(_read_jsonl(path)):
    target = _field(r, "target", path, i)
    out.append({"text": _field(r, "text", path, i), "span1_index": target["span1_index"],
                "span2_index": target["span2_index"], "span1_text": target["span1_text"],
                "span2_text": target["span2_text"], "label": _label(r, path, i, {}),
                "idx": r.get("idx", i)})
  return out


def _anli(path):
  return [{"uid": r.get("uid", str(i)), "premise": _field(r, "context", path, i),
           "hypothesis": _field(r, "hypothesis", path, i), "label": _label(r, path, i, _ANLI),
           "reason": r.get("reason", "")} for i, r in enumerate(_read_jsonl(path))]


def _hellaswag(path):
  keys = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split",
          "split_type")
  return [{**{k: r.get(k, "") for k in keys}, "ctx": _field(r, "ctx", path, i),
           "endings": _field(r, "endings", path, i), "label": str(_field(r, "label", path, i))}
          for i, r in enumerate(_read_jsonl(path))]


def _winogrande(path):
  rows = _read_jsonl(path)
  labels_path = os.path.join(os.path.dirname(path),
                             os.path.basename(path).replace(".jsonl", "-labels.lst"))
  labels = None
  if any("answer" not in r for r in rows):
    if not os.path.exists(labels_path):
      raise ValueError(f"{path}: examples have no 'answer' field and {labels_path} (the labels "
                       f"file of the Winogrande distribution) is missing.")
    with open(labels_path) as f:
      labels = [l.strip() for l in f if l.strip()]
    if len(labels) != len(rows):
      raise ValueError(f"{labels_path} has {len(labels)} labels for {len(rows)} examples in "
                       f"{path}.")
  return [{"sentence": _field(r, "sentence", path, i), "option1": _field(r, "option1", path, i),
           "option2": _field(r, "option2", path, i),
           "answer": str(labels[i] if labels else r["answer"])} for i, r in enumerate(rows)]


def _story_cloze(path):
  out = []
  with open(path, encoding="utf-8", newline="") as f:
    for i, r in enumerate(csv.DictReader(f)):
      try:
        out.append({"story_id": r.get("InputStoryid", str(i)),
                    **{f"input_sentence_{k}": r[f"InputSentence{k}"] for k in range(1, 5)},
                    "sentence_quiz1": r["RandomFifthSentenceQuiz1"],
                    "sentence_quiz2": r["RandomFifthSentenceQuiz2"],
                    "answer_right_ending": int(r["AnswerRightEnding"])})
      except KeyError as e:
        raise ValueError(f"{path}, row {i + 2}: missing column {e.args[0]!r}; found "
                         f"{sorted(r)}.") from None
  return out


# dataset key -> (split -> relative path glob in a data directory, reader)
ORIGINAL_LAYOUTS: dict[str, tuple[dict[str, str], Callable[[str], list[Example]]]] = {
    "super_glue/rte": ({"validation": "super_glue/RTE/val.jsonl",
                        "train": "super_glue/RTE/train.jsonl"}, _superglue_rte),
    "super_glue/cb": ({"validation": "super_glue/CB/val.jsonl",
                       "train": "super_glue/CB/train.jsonl"}, _superglue_cb),
    "super_glue/copa": ({"validation": "super_glue/COPA/val.jsonl",
                         "train": "super_glue/COPA/train.jsonl"}, _superglue_copa),
    "super_glue/wic": ({"validation": "super_glue/WiC/val.jsonl",
                        "train": "super_glue/WiC/train.jsonl"}, _superglue_wic),
    "super_glue/wsc.fixed": ({"validation": "super_glue/WSC/val.jsonl",
                              "train": "super_glue/WSC/train.jsonl"}, _superglue_wsc),
    "anli/r1": ({"validation": "anli/R1/dev.jsonl", "train": "anli/R1/train.jsonl"}, _anli),
    "anli/r2": ({"validation": "anli/R2/dev.jsonl", "train": "anli/R2/train.jsonl"}, _anli),
    "anli/r3": ({"validation": "anli/R3/dev.jsonl", "train": "anli/R3/train.jsonl"}, _anli),
    "hellaswag": ({"validation": "hellaswag/hellaswag_val.jsonl",
                   "train": "hellaswag/hellaswag_train.jsonl"}, _hellaswag),
    "winogrande/winogrande_xl": ({"validation": "winogrande/dev.jsonl",
                                  "train": "winogrande/train_xl.jsonl"}, _winogrande),
    "story_cloze/2016": ({"validation": "story_cloze/*val*.csv"}, _story_cloze),
}

# HF names of splits that differ from ours.
_HF_SPLITS = {"anli": {"validation": "dev_r{r}", "train": "train_r{r}", "test": "test_r{r}"}}


def load_mapping(path: Optional[str]) -> dict[str, dict[str, str]]:
  """A mapping file: `{"<dataset>[/<subset>]": {"<split>": "<path>"}}`, paths made absolute."""
  if not path:
    return {}
  with open(path) as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"mapping file {path}: not valid JSON ({e.msg}).") from None
  base = os.path.dirname(os.path.abspath(path))
  out = {}
  for key, splits in raw.items():
    if not isinstance(splits, dict):
      raise ValueError(f"mapping file {path}: entry {key!r} must map split names to paths, "
                       f"found {splits!r}.")
    out[key] = {s: os.path.join(base, os.path.expanduser(p)) for s, p in splits.items()}
  return out


def load_examples(dataset: str, subset: Optional[str], split: str,
                  data_dir: Optional[str] = None,
                  mapping: Optional[dict[str, dict[str, str]]] = None) -> list[Example]:
  """The examples of a split in HF field format (see the module docstring)."""
  key = dataset_key(dataset, subset)
  layout = ORIGINAL_LAYOUTS.get(key)
  if mapping and key in mapping:
    if split not in mapping[key]:
      raise ValueError(f"mapping for {key} has splits {sorted(mapping[key])}, not {split!r}.")
    path = mapping[key][split]
    if not os.path.exists(path):
      raise FileNotFoundError(f"{key} {split}: mapped file {path} does not exist.")
    return layout[1](path) if layout else _read_jsonl(path)
  if data_dir:
    if layout and split in layout[0]:
      matches = sorted(glob.glob(os.path.join(data_dir, layout[0][split])))
      if matches:
        return layout[1](matches[0])
    generic = os.path.join(data_dir, *key.split("/"), f"{split}.jsonl")
    if os.path.exists(generic):
      return _read_jsonl(generic)
    expected = [os.path.join(data_dir, layout[0][split])] if layout and split in layout[0] else []
    raise FileNotFoundError(f"{key} {split}: no file in {data_dir}; expected "
                            f"{' or '.join(expected + [generic])}, or a mapping file entry.")
  return _load_hf(dataset, subset, split)


def _load_hf(dataset: str, subset: Optional[str], split: str) -> list[Example]:
  try:
    import datasets
  except ImportError as e:
    raise ImportError("reading prompted datasets without --data_dir needs the `datasets` "
                      "package (pip install datasets) and the network or its cache.") from e
  hf_subset, hf_split = subset, split
  if dataset == "anli" and subset and subset.startswith("r"):
    hf_subset, hf_split = None, _HF_SPLITS["anli"][split].format(r=subset[1:])
  return [dict(r) for r in datasets.load_dataset(dataset, hf_subset, split=hf_split)]
