"""The checkpointable input pipeline: each host reads only its share, and a resume from
the saved state yields the uninterrupted stream bit for bit without reading what came
before it."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from arch_objective.data import sources
from arch_objective.objectives import chunking
from arch_objective.training import data
from arch_objective.training.sources import LocalCorpus

from helpers import CORPUS, ROOT, VOCAB, needs_data, unpositioned

PAIRS = [("causal_decoder", "local_full_lm"), ("causal_decoder", "local_span_corruption"),
         ("non_causal_decoder", "local_prefix_lm"), ("non_causal_decoder", "local_full_lm"),
         ("encoder_decoder", "local_prefix_lm"), ("encoder_decoder", "local_span_corruption")]


def _small_corpus(tmp_path, documents=12):
  """A corpus small enough to cross several epochs in a few dozen batches."""
  texts = [json.loads(l)["text"] for l in CORPUS.read_text().splitlines()[:documents]]
  path = tmp_path / "small.jsonl"
  path.write_text("".join(json.dumps({"text": t[:300]}) + "\n" for t in texts))
  return str(path)


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@needs_data
@pytest.mark.parametrize("arch,task", PAIRS)
def test_set_state_continues_every_objective_exactly_across_epochs(tmp_path, arch, task):
  corpus = _small_corpus(tmp_path)
  config = data.DatasetConfig(task=task, batch_size=4, length=32, source=LocalCorpus(corpus),
                              vocabulary=str(VOCAB))
  straight = data.batches(config, arch)
  states, reference = [], []
  for _ in range(40):
    states.append(straight.get_state())
    reference.append(next(straight))
  epochs = {s["rows"]["epoch"] for s in states}
  assert len(epochs) >= 2, epochs          # the stream wrapped around at least once
  for k in (1, 7, 19, 33):
    resumed = data.batches(config, arch)
    resumed.set_state(json.loads(json.dumps(states[k])))     # as saved: JSON
    for j in range(k, min(k + 5, 40)):
      assert _same(next(resumed), reference[j]), (k, j)
    assert resumed.get_state()["batches"] == min(k + 5, 40)
  # Replaying by count (checkpoints written before states existed) agrees too.
  replayed = data.batches(config, arch)
  replayed.set_state({"batches": 19})
  assert _same(next(replayed), reference[19])


@needs_data
def test_a_late_resume_reads_only_from_the_document_it_restarts_in(tmp_path, monkeypatch):
  """Count the lines the readers decode: 300 batches into the C4 sample from scratch
  against a resume at batch 300 and one batch."""
  read = {"lines": 0}
  original = sources._decoded_lines

  def counting(*args, **kwargs):
    for item in original(*args, **kwargs):
      read["lines"] += 1
      yield item

  monkeypatch.setattr(sources, "_decoded_lines", counting)
  config = data.DatasetConfig(task="local_span_corruption", batch_size=4, length=64,
                              source=LocalCorpus(str(CORPUS)), vocabulary=str(VOCAB))
  it = data.batches(config, "encoder_decoder")
  for _ in range(300):
    next(it)
  late_state, after = it.get_state(), next(it)
  from_scratch = read["lines"]
  read["lines"] = 0
  resumed = data.batches(config, "encoder_decoder")
  construct = read["lines"]
  resumed.set_state(late_state)
  assert _same(next(resumed), after)
  on_resume = read["lines"] - construct
  assert from_scratch >= 100                 # 300 batches of 4 x 568 tokens: ~120 documents
  assert on_resume <= 6, on_resume           # the restart document and the next few
  assert late_state["rows"]["where"]["source"]["byte"] > 0


SHARD_SCRIPT = """
import json, sys
from arch_objective.data import sources
index, count, corpus = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
read = {"bytes": 0}
original = sources._decoded_lines
def counting(*args, **kwargs):
  for where, offset, line in original(*args, **kwargs):
    read["bytes"] += len(line.encode()) + 1
    yield where, offset, line
sources._decoded_lines = counting
docs = [t for t, _ in sources.local_positioned(corpus, shard_index=index, num_shards=count)]
print("RESULT" + json.dumps({"docs": docs, "bytes": read["bytes"]}))
"""


@needs_data
def test_four_processes_read_disjoint_quarters_that_cover_the_corpus(tmp_path):
  """Four processes on this machine, one per host of a 4-host job, each reading its
  share of the C4 sample: disjoint, together the whole corpus in order, about a quarter
  of the bytes each (a document belongs to the share its first byte is in)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(SHARD_SCRIPT), str(i), "4",
                             str(CORPUS)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
           for i in range(4)]
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    outs.append(json.loads(stdout.split("RESULT", 1)[1]))
  whole = list(sources.local_documents(str(CORPUS)))
  assert sum((o["docs"] for o in outs), []) == whole
  total = CORPUS.stat().st_size
  for o in outs:
    # Within one document (<= 16 kB here) of an exact quarter.
    assert abs(o["bytes"] - total / 4) < 16_000, (o["bytes"], total / 4)


def test_byte_shares_split_lines_and_paragraphs_at_document_starts(tmp_path):
  """Literal files: every split point, 1-5 shards, both layouts."""
  a = tmp_path / "a.txt"
  a.write_text("one\ntwo two\n\nthree\nfour\n\n\nfive five five\n")
  b = tmp_path / "b.txt"
  b.write_text("six\n   \nseven\n")
  files = [str(a), str(b)]
  assert list(sources.local_documents(files, layout="paragraph")) == [
      "one\ntwo two", "three\nfour", "five five five", "six", "seven"]
  for layout in ("line", "paragraph"):
    whole = list(sources.local_documents(files, layout=layout))
    for count in range(1, 6):
      parts = [[t for t, _ in sources.local_positioned(files, layout=layout, shard_index=i,
                                                       num_shards=count)]
               for i in range(count)]
      assert sum(parts, []) == whole, (layout, count, parts)
  # Two shards: the split falls after 27 of the 55 bytes, one byte after "five five
  # five" starts (byte 26), so that line is the first shard's.
  assert sources.byte_share(files, 0, 2) == [(0, 0, 27)]
  assert sources.byte_share(files, 1, 2) == [(0, 27, None), (1, 0, None)]
  second = [t for t, _ in sources.local_positioned(files, shard_index=1, num_shards=2)]
  assert second == ["six", "seven"]
  assert [p for _, p in sources.local_positioned(files, shard_index=1, num_shards=2)] == [
      {"file": 1, "byte": 0, "n": 0}, {"file": 1, "byte": 8, "n": 1}]


def test_positioned_chunks_restart_anywhere():
  rng = np.random.default_rng(0)
  docs = [rng.integers(2, 100, rng.integers(0, 30)).astype(np.int32) for _ in range(120)]
  plain = list(unpositioned(chunking.concat_and_split_positioned)(
      docs, 7, append_eos=True, seed=3, max_document_length=20))
  tagged = list(chunking.concat_and_split_positioned(
      ((d, i) for i, d in enumerate(docs)), 7, append_eos=True, seed=3, max_document_length=20))
  assert len(tagged) == len(plain) and all(np.array_equal(c, p) for (c, _), p in zip(tagged,
                                                                                     plain))
  for k, (_, where) in enumerate(tagged):
    rest = list(chunking.concat_and_split_positioned(
        ((d, i) for i, d in enumerate(docs) if i >= where["source"]), 7, append_eos=True,
        seed=3, max_document_length=20, start=where))
    assert [w for _, w in rest] == [w for _, w in tagged[k:]]
    assert all(np.array_equal(c, t) for (c, _), (t, _) in zip(rest, tagged[k:]))


def test_the_data_code_runs_without_jax():
  """`data`, `objectives` and `prompts` know the architectures by name
  (`arch_objective.architectures`) and never import the models or JAX."""
  code = ("import sys\n"
          "import arch_objective.data.registry, arch_objective.data.sources\n"
          "import arch_objective.objectives.pipeline, arch_objective.prompts.mixture\n"
          "print(sorted(m for m in ('jax', 'flax', 'arch_objective.models') if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]"


def test_a_prompted_mixture_resumes_at_its_draw_without_rendering_again(tmp_path,
                                                                          monkeypatch):
  """The world's MT-F mixture (one task per family and prompt): states saved after each
  batch restore the same batches, and a resume 40 batches in renders only the examples
  of the batch it produces."""
  from arch_objective.prompts import mixture
  from arch_objective.training import local
  config = local.local_dataset(
      data.DatasetConfig(task="t0_train", batch_size=4, inputs_length=48, targets_length=16),
      data_dir=str(tmp_path / "world"))
  assert config.task == local.WORLD_MTF
  straight = data.batches(config, "non_causal_decoder")
  states, reference = [], []
  for _ in range(41):
    states.append(straight.get_state())
    reference.append(next(straight))
  assert set(states[40]["rows"]["where"]) == {"draw", "positions"}
  renders = {"n": 0}
  original = mixture.PromptedMixture._apply

  def counting(self, *args, **kwargs):
    renders["n"] += 1
    return original(self, *args, **kwargs)

  monkeypatch.setattr(mixture.PromptedMixture, "_apply", counting)
  for k in (3, 40):
    resumed = data.batches(config, "non_causal_decoder")
    renders["n"] = 0
    resumed.set_state(json.loads(json.dumps(states[k])))
    assert _same(next(resumed), reference[k])
    # One batch of 4 rows of 64 tokens holds a few packed examples; nothing before it.
    assert renders["n"] <= 40, renders
  # The encoder-decoder's packing of the same mixture resumes too.
  ed = data.batches(config, "encoder_decoder")
  for _ in range(6):
    next(ed)
  again = data.batches(config, "encoder_decoder")
  again.set_state(json.loads(json.dumps(ed.get_state())))
  assert _same(next(again), next(ed))


def test_the_local_overlay_points_each_source_at_local_files(monkeypatch):
  """`local_dataset`: C4 becomes the world's corpus (or LOCAL_CORPUS, in the field and
  layout a corpus of the dataset's own named), a local task keeps its corpus, a prompted
  mixture becomes the world's and reads no source; the rest of the dataset stays."""
  from arch_objective.training import local
  from arch_objective.training.sources import C4, PromptedDatasets
  monkeypatch.setattr(local, "prepare", lambda data_dir: local.LocalData("/world"))
  monkeypatch.setattr("arch_objective.data.registry.register", lambda spec: spec)
  shared = dict(batch_size=8, length=32, seed=3, pack=False)
  c4 = local.local_dataset(data.DatasetConfig(task="c4_span_corruption",
                                              source=C4("2.2.0", "/tfds"), **shared))
  assert (c4.task, c4.source, c4.vocabulary) == (
      "local_span_corruption", LocalCorpus("/world/corpus.jsonl"), "/world/spm.model")
  assert (c4.batch_size, c4.length, c4.seed, c4.pack) == (8, 32, 3, False)
  own = LocalCorpus(["a.txt"], field="body", layout="paragraph")
  kept = local.local_dataset(data.DatasetConfig(task="local_full_lm", source=own, **shared))
  assert kept.source == own
  mine = local.local_dataset(data.DatasetConfig(task="local_full_lm", source=own, **shared),
                             corpus="mine.jsonl", vocabulary="mine.model")
  assert mine.source == LocalCorpus("mine.jsonl", "body", "paragraph")
  assert mine.vocabulary == "mine.model"
  mtf = local.local_dataset(data.DatasetConfig(
      task="mix", source=PromptedDatasets(["imdb"], data_dir="/d"), **shared))
  assert (mtf.task, mtf.source, mtf.prompted) == (local.WORLD_MTF, None, False)
  with pytest.raises(ValueError, match="'glue_mix' is neither a C4 task"):
    local.local_dataset(data.DatasetConfig(task="glue_mix", source=PromptedDatasets(),
                                           **shared))


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
  """A real prepared TFDS dataset (4 TFRecord files, 200 examples 'document i')."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class StateTestCorpus(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(200):
        yield i, {"text": f"document {i}"}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = StateTestCorpus(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
  assert builder.info.splits["train"].num_shards == 4
  return "state_test_corpus", data_dir


def test_tfds_ranges_are_contiguous_in_index_order_and_resume_anywhere(prepared_tfds):
  """Hosts read contiguous example ranges (TFDS opens only their files); files are read
  in order, so positions are indices and a read from any position continues exactly."""
  name, data_dir = prepared_tfds
  read = lambda **kw: list(sources.tfds_positioned(name, "1.0.0", data_dir=data_dir, **kw))
  whole = read()
  assert [p["index"] for _, p in whole] == list(range(200))
  for count in (2, 3):
    parts = [read(shard_index=i, num_shards=count) for i in range(count)]
    assert sum(parts, []) == whole
    for i, part in enumerate(parts):
      assert part[0][1]["index"] == 200 * i // count
      for k in (0, 5, len(part) - 1):
        assert read(shard_index=i, num_shards=count, start=part[k][1]) == part[k:]
  with pytest.raises(ValueError, match="needs a whole split name"):
    read(split="train[:50%]", shard_index=0, num_shards=2)


@needs_data
def test_corpus_tasks_and_prompted_mixtures_meet_one_task_contract(tmp_path):
  from arch_objective.data import task as task_lib
  from arch_objective.training import local
  corpus = data.DatasetConfig(task="local_span_corruption", batch_size=4, length=32,
                              source=LocalCorpus(str(CORPUS)), vocabulary=str(VOCAB))
  mixture = local.local_dataset(
      data.DatasetConfig(task="t0_train", batch_size=4, inputs_length=48, targets_length=16),
      data_dir=str(tmp_path / "world"))
  for config in (corpus, mixture):
    spec = config.spec("encoder_decoder")
    assert isinstance(spec, task_lib.Task)
    assert config.spec("encoder_decoder") is spec          # resolved once per config
    assert "encoder_decoder" in spec.architectures and "train" in spec.splits
  full_lm = data.DatasetConfig(task="local_full_lm", batch_size=4, length=32,
                               source=LocalCorpus(str(CORPUS)), vocabulary=str(VOCAB))
  with pytest.raises(ValueError, match="is read by causal_decoder, non_causal_decoder, not "
                                       "'encoder_decoder'"):
    full_lm.spec("encoder_decoder")
  with pytest.raises(TypeError, match="lacks .*positioned_rows"):
    task_lib.check(type("Partial", (), {"name": "p", "splits": (), "architectures": (),
                                         "vocab": None, "rows": None})())
