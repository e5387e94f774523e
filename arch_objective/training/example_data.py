"""Offline example data: the synthetic world's files, for the README's commands.

`arch-objective data example --out DIR` calls `write_example_data`, which writes, from
the same seeded world that `gin/local.gin` and the study use (`data/world/`):

  DIR/corpus.jsonl         the world's pretraining corpus, `{"text": ...}` per line
  DIR/spm.model, .vocab    a SentencePiece vocabulary trained on it (+100 extra ids)
  DIR/t0_eval/             the world's held-out families (NLI, coreference, cause and
                           effect, story endings), T0-Eval-style:
                           `<family>/validation.jsonl` and `suite.json`
  DIR/harness_tasks/       the same families as lm-eval tasks (`--include_path`)
  DIR/prompts.jsonl        a few prompts of those families, `{"inputs": ..., "targets":
                           ...}` per line, for `arch-objective infer --prompts`
  DIR/README.txt           the commands that read them

`eval t0 --data_dir DIR/t0_eval` reads the suite (`read_world_suite`): its examples
from the files, its prompts from the world's prompt set; `eval harness --include_path
DIR/harness_tasks --tasks world_nli` and `lm_eval` read the task folder. The corpus and vocabulary are
what `LOCAL_CORPUS` and `LOCAL_VOCABULARY` of `gin/local.gin`, `data stats --corpus
--vocabulary` and `train` read.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from typing import Optional

from arch_objective.errors import MissingFile, UserError, integer_at_least

SUITE_FILE = "suite.json"
SUITE_KIND = "arch_objective world held-out suite"
T0_EVAL_DIR = "t0_eval"
CORPUS_FILE = "corpus.jsonl"
VOCABULARY_FILE = "spm.model"
HARNESS_DIR = "harness_tasks"
PROMPTS_FILE = "prompts.jsonl"
PROMPTS_PER_FAMILY = 2


def write_example_data(out: str, *, corpus_bytes: Optional[int] = None,
                       vocab_pieces: Optional[int] = None,
                       eval_examples: Optional[int] = None, seed: Optional[int] = None
                       ) -> dict:
  """Write the example data into `out` (a new or empty directory); returns what was
  written: {'corpus', 'documents', 'bytes', 'vocabulary', 'vocab_size', 't0_eval',
  'families', 'harness_tasks', 'prompts', 'readme'}. The defaults are those of `gin/local.gin`'s world
  (`training.local`: WORLD_BYTES of text, WORLD_VOCAB pieces, WORLD_SEED); the held-out
  suite keeps `eval_examples` of each family's validation split (default all 300)."""
  from arch_objective.data import sources, vocabularies
  from arch_objective.data import world as world_lib
  from arch_objective.training import local
  corpus_bytes = local.WORLD_BYTES if corpus_bytes is None else corpus_bytes
  vocab_pieces = local.WORLD_VOCAB if vocab_pieces is None else vocab_pieces
  seed = local.WORLD_SEED if seed is None else seed
  for name, value in (("--corpus_bytes", corpus_bytes), ("--vocab_pieces", vocab_pieces),
                      ("--eval_examples", 1 if eval_examples is None else eval_examples)):
    if not integer_at_least(value, 1):
      raise UserError(f"data example: {name} must be a positive integer, found {value!r}.")
  out = os.path.abspath(os.path.expanduser(out))
  if os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):
    raise UserError(f"data example: --out {out} is not an empty directory; give a new or "
                    f"empty one (nothing there is overwritten).")
  os.makedirs(out, exist_ok=True)
  world = world_lib.make_world(seed=seed)
  corpus = os.path.join(out, CORPUS_FILE)
  stats = world_lib.write_corpus(corpus, world, target_bytes=corpus_bytes)
  prefix = os.path.join(out, VOCABULARY_FILE[:-len(".model")])
  try:
    vocabularies.train_sentencepiece(sources.jsonl_documents(corpus), prefix, vocab_pieces)
  except RuntimeError as e:   # SentencePiece: too many pieces for so little text
    raise UserError(f"data example: a vocabulary of {vocab_pieces} pieces cannot be trained "
                    f"on {stats['bytes']} bytes of text ({str(e).splitlines()[0]}); give a "
                    f"larger --corpus_bytes or a smaller --vocab_pieces.") from None
  vocabulary = prefix + ".model"
  vocab = vocabularies.SentencePieceVocabulary(vocabulary)
  suite_dir = os.path.join(out, T0_EVAL_DIR)
  families = write_world_suite(suite_dir, world, eval_examples)
  harness_dir = os.path.join(out, HARNESS_DIR)
  write_world_harness_tasks(harness_dir, world.heldout_suite(), eval_examples)
  prompts = os.path.join(out, PROMPTS_FILE)
  write_world_prompts(prompts, world.heldout_suite())
  readme = os.path.join(out, "README.txt")
  with open(readme, "w", encoding="utf-8") as f:
    f.write(_README.format(out=out, vocab_size=vocab.vocab_size,
                           padded=vocabularies.padded_vocab_size(vocab.vocab_size)))
  return {"corpus": corpus, "documents": stats["documents"], "bytes": stats["bytes"],
          "vocabulary": vocabulary, "vocab_size": vocab.vocab_size, "t0_eval": suite_dir,
          "families": families, "harness_tasks": harness_dir, "prompts": prompts,
          "readme": readme}


def write_world_suite(directory: str, world, examples: Optional[int] = None,
                      split: str = "validation") -> dict:
  """The world's held-out families as files: `directory/<family>/<split>.jsonl` (the
  first `examples` of each, default all) and `directory/suite.json` naming them; returns
  {family: examples written}."""
  os.makedirs(directory, exist_ok=True)
  counts, entries = {}, {}
  for family in world.heldout_suite(split):
    rows = family.examples[:examples] if examples else family.examples
    relative = f"{family.name}/{split}.jsonl"
    os.makedirs(os.path.join(directory, family.name), exist_ok=True)
    with open(os.path.join(directory, relative), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    counts[family.name] = len(rows)
    entries[family.name] = {split: relative}
  with open(os.path.join(directory, SUITE_FILE), "w", encoding="utf-8") as f:
    json.dump({"kind": SUITE_KIND, "world_seed": world.config.seed, "families": entries},
              f, indent=2)
  return counts


def write_world_harness_tasks(directory: str, suite, examples: Optional[int] = None
                               ) -> list[str]:
  """lm-eval tasks over the world's held-out families (`suite`, `HeldOutFamily`s): for
  each family, its first prompt over its first `examples` examples (default all) as a
  multiple-choice task, `directory/<family>.jsonl` (`query`, `choices`, `gold` per row)
  and `directory/<family>.yaml` naming the rows by absolute path. `directory` is an
  lm-eval `include_path`; returns the task names. The files are written into a temporary
  folder beside `directory` and moved in rows first, so a reader never finds a task whose
  rows are missing."""
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".harness-", dir=parent)
  names = []
  try:
    for family in suite:
      prompt, docs = family.prompts[0], []
      rows = family.examples[:examples] if examples else family.examples
      for example in rows:
        rendered = prompt.render(example)
        if rendered is not None and rendered.choices:
          docs.append({"query": rendered.inputs, "choices": list(rendered.choices),
                       "gold": rendered.gold[0]})
      with open(os.path.join(tmp, f"{family.name}.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
      with open(os.path.join(tmp, f"{family.name}.yaml"), "w", encoding="utf-8") as f:
        f.write(_HARNESS_YAML.format(
            name=family.name, rows=os.path.join(directory, f"{family.name}.jsonl")))
      names.append(family.name)
    os.makedirs(directory, exist_ok=True)
    for name in sorted(os.listdir(tmp)):     # rows first (.jsonl sorts before .yaml)
      os.replace(os.path.join(tmp, name), os.path.join(directory, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return names


def write_world_prompts(path: str, suite, per_family: int = PROMPTS_PER_FAMILY) -> int:
  """`{"inputs": ..., "targets": ...}` lines: the first `per_family` examples of each
  held-out family of `suite` (`HeldOutFamily`s) under its first prompt, the gold answer
  as the target; returns the lines written."""
  rows = []
  for family in suite:
    rendered = (family.prompts[0].render(example) for example in family.examples)
    for r in itertools.islice((r for r in rendered if r is not None), per_family):
      rows.append({"inputs": r.inputs, "targets": r.targets})
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
  return len(rows)


def is_world_suite(data_dir: Optional[str]) -> bool:
  """Whether `data_dir` (a `--data_dir`) holds a suite `write_world_suite` wrote."""
  return bool(data_dir) and os.path.isfile(os.path.join(os.path.expanduser(data_dir),
                                                        SUITE_FILE))


def read_world_suite(data_dir: str, split: str = "validation") -> list:
  """The held-out suite `write_world_suite` wrote into `data_dir`: one
  `data.world.HeldOutFamily` per family, its examples read from the files and its
  prompts the world's. Every missing file is named in one UserError."""
  from arch_objective.data import world as world_lib
  from arch_objective.data.world import prompts as world_prompts
  data_dir = os.path.expanduser(data_dir)
  manifest = os.path.join(data_dir, SUITE_FILE)
  try:
    with open(manifest, encoding="utf-8") as f:
      body = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{manifest}: not valid JSON ({e.msg}).") from None
  families = body.get("families") if isinstance(body, dict) else None
  if not isinstance(families, dict) or not families:
    raise UserError(f"{manifest}: expected {{\"families\": {{name: {{split: file}}}}}} "
                    f"(written by `arch-objective data example`), found {body!r:.200}.")
  unknown = sorted(set(families) - set(world_prompts.HELDOUT_PROMPTS))
  if unknown:
    raise UserError(f"{manifest}: unknown world family(ies) {unknown}; valid: "
                    f"{', '.join(world_prompts.HELDOUT_PROMPTS)}.")
  files, missing = {}, []
  for name, splits in families.items():
    relative = splits.get(split) if isinstance(splits, dict) else None
    path = os.path.join(data_dir, relative) if relative else None
    if path is None or not os.path.isfile(path):
      missing.append(name)
    files[name] = path
  if missing:
    raise MissingFile(f"world suite {data_dir}: the {split} file of {len(missing)} "
                      f"family(ies) is missing: {', '.join(missing)} (expected where "
                      f"{SUITE_FILE} names it, e.g. <family>/{split}.jsonl); write the "
                      f"suite again with `arch-objective data example`.")
  suite = []
  for name, path in files.items():
    rows = []
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
    prompts = world_prompts.HELDOUT_PROMPTS[name]
    suite.append(world_lib.HeldOutFamily(name, world_prompts.HELDOUT_RANDOM[name],
                                         len(prompts[0].choices), prompts, tuple(rows), split))
  return suite


_HARNESS_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {rows}
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
"""

_README = """\
Example data written by `arch-objective data example` (the synthetic world of
gin/local.gin and the study; nothing here was downloaded).

  corpus.jsonl   pretraining text, {{"text": ...}} per line
  spm.model      SentencePiece vocabulary: {vocab_size} ids with the 100 extra ids
                 (a model's VOCAB_SIZE: {padded}, padded to a multiple of 128)
  t0_eval/       the world's held-out families, for eval t0 --data_dir
  harness_tasks/ the same families as lm-eval tasks (world_nli, world_coreference,
                 world_cause_effect, world_story_ending), for --include_path
  prompts.jsonl  a few prompts of those families with their answers, for infer --prompts

  arch-objective data stats --task local_span_corruption --corpus {out}/corpus.jsonl \\
      --vocabulary {out}/spm.model
  arch-objective train --gin_file=experiments/paper/cd_flm.gin --gin_file=local.gin \\
      --gin.LOCAL_CORPUS="'{out}/corpus.jsonl'" --gin.LOCAL_VOCABULARY="'{out}/spm.model'" \\
      --gin.VOCAB_SIZE={padded} --gin.MODEL_DIR="'/tmp/cd_example'"
  arch-objective eval t0 --checkpoint /tmp/cd_example --data_dir {out}/t0_eval \\
      --max_examples 8
  arch-objective eval harness --checkpoint /tmp/cd_example \\
      --include_path {out}/harness_tasks --tasks world_nli world_coreference --limit 8
  arch-objective infer --checkpoint /tmp/cd_example --prompts {out}/prompts.jsonl
"""
