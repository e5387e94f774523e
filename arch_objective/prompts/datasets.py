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
import functools
import glob
import json
import os
from typing import Any, Callable, Optional, Sequence

from arch_objective.errors import MissingDependency, MissingFile, UserError
from arch_objective.prompts.templates import dataset_key

Example = dict[str, Any]

# Original label strings -> HF label ids.
_NLI2 = {"entailment": 0, "not_entailment": 1}
_NLI3_SUPERGLUE = {"entailment": 0, "contradiction": 1, "neutral": 2}
_ANLI = {"e": 0, "n": 1, "c": 2}
_BOOL = {"False": 0, "True": 1}          # WiC, WSC (JSON true/false in the original files)
_COPA = {"choice1": 0, "choice2": 1}     # COPA (0/1 in the original files)

# trec as T0 read it (HF's `trec` before huggingface/datasets#4801, 2022): `label-coarse`
# and `label-fine` over these classes, the ids promptsource's templates compare with
# (`label_coarse == 5` is LOC). Since then HF names the fields `coarse_label` and
# `fine_label` and numbers the classes differently (see `trec_original_layout`).
TREC_COARSE = ("DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC")
TREC_FINE = ("manner", "cremat", "animal", "exp", "ind", "gr", "title", "def", "date",
             "reason", "event", "state", "desc", "count", "other", "letter", "religion",
             "food", "country", "color", "termeq", "city", "body", "dismed", "mount", "money",
             "product", "period", "substance", "sport", "plant", "techmeth", "volsize",
             "instru", "abb", "speed", "word", "lang", "perc", "code", "dist", "temp",
             "symbol", "ord", "veh", "weight", "currency")


def _read_jsonl(path: str) -> list[dict]:
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise UserError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
  return rows


def _field(row: dict, name: str, path: str, index: int):
  if name not in row:
    raise UserError(f"{path}, example {index}: missing field {name!r}; found {sorted(row)}.")
  return row[name]


def _label(row, path, i, table):
  """The HF class id of an example's label: a name of `table` (original label string ->
  id), an id, or for the True/False datasets a JSON boolean."""
  label = _field(row, "label", path, i)
  ids = sorted(set(table.values()))
  if table is _BOOL and isinstance(label, bool):
    return int(label)
  if isinstance(label, int) and not isinstance(label, bool) and label in ids:
    return label
  if isinstance(label, str) and label in table:
    return table[label]
  accepted = ", ".join(repr(k) for k in table) + ", or an id " + " or ".join(map(str, ids))
  if table is _BOOL:
    accepted = "true or false (JSON booleans), " + accepted
  raise UserError(f"{path}, example {i}: unknown label {label!r}; expected one of "
                  f"{accepted}.")


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
  return [{**{k: _field(r, k, path, i) for k in keys}, "label": _label(r, path, i, _COPA),
           "idx": r.get("idx", i)} for i, r in enumerate(_read_jsonl(path))]


def _superglue_wic(path):
  keys = ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2")
  return [{**{k: _field(r, k, path, i) for k in keys}, "label": _label(r, path, i, _BOOL),
           "idx": r.get("idx", i)} for i, r in enumerate(_read_jsonl(path))]


def _superglue_wsc(path):
  """WSC as HF's `super_glue/wsc.fixed` gives it: the spans of the `target` field, their
  texts fixed where they are not substrings of the text (`fix_wsc_spans`)."""
  out = []
  for i, r in enumerate(_read_jsonl(path)):
    target = _field(r, "target", path, i)
    example = {"text": _field(r, "text", path, i)}
    for key in ("span1_index", "span2_index", "span1_text", "span2_text"):
      if key not in target:
        raise UserError(f"{path}, example {i}: the 'target' field lacks {key!r}; found "
                        f"{sorted(target)}.")
      example[key] = target[key]
    out.append({**fix_wsc_spans(example, f"{path}, example {i}"),
                "label": _label(r, path, i, _BOOL), "idx": r.get("idx", i)})
  return out


# Spans HF's fix leaves alone: "the subjects have intervening text".
_WSC_UNFIXABLE = ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin")


def fix_wsc_spans(example: Example, where: str = "WSC example") -> Example:
  """The fix HF's `super_glue` script applies to `wsc.fixed` (its `_fix_wst`): a span
  text that is not a substring of `text` gets the case of the first letter of the word
  at its index, loses trailing periods, and has newlines turned into spaces; a span
  text containing 'theyscold' sets `span2_index` to 10 (HF's replacement of 'theyscold'
  in the text discards its result, so the text stays as it is). Spans already in the
  text and the two Kamenev/Zinoviev spans stay as they are. Returns a new example;
  raises ValueError, naming `where`, where the fixed span is still not in the text
  (HF's script fails there too)."""
  ex = dict(example)
  for span in ("span1", "span2"):
    text, index = ex[f"{span}_text"], ex[f"{span}_index"]
    if text in ex["text"] or text in _WSC_UNFIXABLE:
      continue
    if "theyscold" in text:
      ex["span2_index"] = 10
    words = ex["text"].split()
    if not 0 <= index < len(words):
      raise UserError(f"{where}: {span}_index {index} is not a word index of the "
                      f"{len(words)}-word text {ex['text']!r}.")
    first = words[index]
    text = (text[0].lower() if first[0].islower() else text[0].upper()) + text[1:]
    text = text.rstrip(".").replace("\n", " ")
    if text not in ex["text"]:
      raise UserError(f"{where}: {span}_text {ex[f'{span}_text']!r} is not in the text "
                      f"{ex['text']!r}, nor is it once fixed as HF's wsc.fixed does "
                      f"({text!r}).")
    ex[f"{span}_text"] = text
  return ex


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
      raise UserError(f"{path}: examples have no 'answer' field and {labels_path} (the labels "
                      f"file of the Winogrande distribution) is missing.")
    with open(labels_path) as f:
      labels = [l.strip() for l in f if l.strip()]
    if len(labels) != len(rows):
      raise UserError(f"{labels_path} has {len(labels)} labels for {len(rows)} examples in "
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
        raise UserError(f"{path}, row {i + 2}: missing column {e.args[0]!r}; found "
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
      raise UserError(f"mapping file {path}: not valid JSON ({e.msg}).") from None
  base = os.path.dirname(os.path.abspath(path))
  out = {}
  for key, splits in raw.items():
    if not isinstance(splits, dict):
      raise UserError(f"mapping file {path}: entry {key!r} must map split names to paths, "
                      f"found {splits!r}.")
    out[key] = {s: os.path.join(base, os.path.expanduser(p)) for s, p in splits.items()}
  return out


def load_examples(dataset: str, subset: Optional[str], split: str,
                  data_dir: Optional[str] = None,
                  mapping: Optional[dict[str, dict[str, str]]] = None) -> list[Example]:
  """The examples of a split in HF field format (see the module docstring)."""
  path, reader = _locate(dataset, subset, split, data_dir, mapping)
  if path is None:
    return _load_hf(dataset, subset, split)
  return reader(path)


def source(dataset: str, subset: Optional[str], split: str, data_dir: Optional[str] = None,
           mapping: Optional[dict[str, dict[str, str]]] = None) -> str:
  """Where `load_examples` reads the split from: a file, or Hugging Face datasets (for
  messages; a file that is missing is described as expected)."""
  try:
    path, _ = _locate(dataset, subset, split, data_dir, mapping)
  except (ValueError, FileNotFoundError) as e:
    return str(e)
  return path or f"Hugging Face datasets {dataset!r} {subset!r}, split {split!r}"


def _locate(dataset, subset, split, data_dir, mapping
            ) -> tuple[Optional[str], Callable[[str], list[Example]]]:
  """(file, its reader) of a split, or (None, None) for HF datasets."""
  key = dataset_key(dataset, subset)
  layout = ORIGINAL_LAYOUTS.get(key)
  generic = functools.partial(_generic, key)
  if mapping and key in mapping:
    if split not in mapping[key]:
      raise UserError(f"mapping for {key} has splits {sorted(mapping[key])}, not {split!r}.")
    path = mapping[key][split]
    if not os.path.exists(path):
      raise MissingFile(f"{key} {split}: mapped file {path} does not exist.")
    return path, layout[1] if layout else generic
  if data_dir:
    if layout and split in layout[0]:
      matches = sorted(glob.glob(os.path.join(data_dir, layout[0][split])))
      if matches:
        return matches[0], layout[1]
    path = os.path.join(data_dir, *key.split("/"), f"{split}.jsonl")
    if os.path.exists(path):
      return path, generic
    expected = [os.path.join(data_dir, layout[0][split])] if layout and split in layout[0] else []
    raise MissingFile(f"{key} {split}: no file in {data_dir}; expected "
                      f"{' or '.join(expected + [path])}, or a mapping file entry.")
  return None, None


def _generic(key: str, path: str) -> list[Example]:
  """A JSON Lines file already in HF field format."""
  rows = _read_jsonl(path)
  if key == "trec":
    _check_trec_layout(rows, path)
  return rows


def _load_hf(dataset: str, subset: Optional[str], split: str) -> list[Example]:
  try:
    import datasets
  except ImportError as e:
    raise MissingDependency("reading prompted datasets without --data_dir needs the `datasets` "
                            "package (pip install datasets) and the network or its cache.") from e
  _refuse_shadowing_folder(dataset, subset)
  hf_subset, hf_split = subset, split
  if dataset == "anli" and subset and subset.startswith("r"):
    hf_subset, hf_split = None, _HF_SPLITS["anli"][split].format(r=subset[1:])
  data = datasets.load_dataset(dataset, hf_subset, split=hf_split)
  rows = [dict(r) for r in data]
  if dataset == "trec" and "coarse_label" in data.features:
    return trec_original_layout(rows, data.features["coarse_label"].names,
                                data.features["fine_label"].names)
  return rows


def _refuse_shadowing_folder(dataset: str, subset: Optional[str]):
  """`datasets.load_dataset(NAME)` reads a local folder or file NAME (relative to the
  current folder) before the Hub's dataset NAME: a `super_glue/` folder in the current
  folder would be read as the dataset (and fail with `BuilderConfig 'rte' not found`).
  Refuse, naming the folder."""
  for local in (dataset, dataset + ".py"):
    if os.path.exists(local):
      key = dataset_key(dataset, subset)
      raise UserError(
          f"Hugging Face dataset {dataset!r} ({key}): the current folder holds "
          f"{os.path.abspath(local)}, which `datasets.load_dataset` would read instead of "
          f"the Hub's dataset; run from another folder or rename it, or, if it holds the "
          f"dataset's files, give its parent folder as --data_dir (gin: DATA_DIR).")


def trec_original_layout(rows: list[Example], coarse_names: Sequence[str],
                         fine_names: Sequence[str]) -> list[Example]:
  """trec rows of HF's trec since huggingface/datasets#4801 (`coarse_label`,
  `fine_label`: ids of `coarse_names` and `fine_names`, e.g. 'LOC' and 'LOC:city') in
  the layout T0 trained on and promptsource's templates read: `label-coarse` and
  `label-fine`, ids of `TREC_COARSE` and `TREC_FINE` (which name a fine class by its
  part after ':', so 'DESC:desc' and 'HUM:desc' are both 'desc'). Converting by name
  keeps every template's target right; the ids alone would not."""
  coarse = {n: TREC_COARSE.index(n) for n in coarse_names if n in TREC_COARSE}
  fine = {n: TREC_FINE.index(n.split(":")[-1]) for n in fine_names
          if n.split(":")[-1] in TREC_FINE}
  unknown = sorted(set(coarse_names) - set(coarse)) + sorted(set(fine_names) - set(fine))
  if unknown:
    raise UserError(f"trec: class name(s) {unknown} are not classes of the trec T0 trained "
                    f"on ({', '.join(TREC_COARSE)}; fine: {', '.join(TREC_FINE)}).")
  return [{"text": r["text"], "label-coarse": coarse[coarse_names[r["coarse_label"]]],
           "label-fine": fine[fine_names[r["fine_label"]]]} for r in rows]


def _check_trec_layout(rows: list[Example], path: str):
  """trec rows read from a file must be in T0's layout: ids alone cannot be converted."""
  for i, r in enumerate(rows):
    if "coarse_label" in r and not {"label-coarse", "label_coarse"} & set(r):
      raise UserError(
          f"{path}, example {i}: trec rows with 'coarse_label'/'fine_label' are the layout "
          f"of HF's trec since 2022, whose class ids differ from those the promptsource "
          f"templates read; give rows with 'label-coarse' over {', '.join(TREC_COARSE)} "
          f"and 'label-fine' over the 47 classes of `datasets.TREC_FINE` (T0's trec), or "
          f"read trec through HF datasets (converted by class name).")
