"""Our tasks in seqio, in t5x's contract: examples made at the TASK_FEATURE_LENGTHS asked for,
task features `inputs`/`targets` that seqio's own feature converters turn into the same
model features as ours, cacheable tasks, the T0 mixture as a seqio Mixture, and the
trainer reading a task registered with seqio's API alone."""
import functools
import itertools
import json

import numpy as np
import pytest

import helpers
import tasks
from arch_objective import architectures, build_model
from arch_objective.objectives import feature_converters, pipeline

# seqio and TensorFlow take seconds to import: at first use, not at collection.
pytestmark = helpers.requires("seqio", "tensorflow")
seqio = helpers.lazy_import("seqio")
tf = helpers.lazy_import("tensorflow")

CD, ND, ED = (architectures.CAUSAL_DECODER, architectures.NON_CAUSAL_DECODER,
              architectures.ENCODER_DECODER)
EOS = 1


# ---------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------
def reference_spans_helper(inputs_length, density=0.15, mean_span=3.0):
  """t5's random_spans_helper: (raw tokens per chunk, targets length) of span corruption
  whose inputs (EOS included) fill `inputs_length`."""
  def lengths(tokens):
    noise = int(round(tokens * density))
    spans = int(round(noise / mean_span))
    return tokens - noise + spans + 1, noise + spans + 1

  tokens = inputs_length - 1
  while lengths(tokens + 1)[0] <= inputs_length:
    tokens += 1
  return tokens, lengths(tokens)[1]


def segments_of(row, key):
  """The token runs of each segment of a packed row feature."""
  seg = row[f"{key.split('_')[0]}_segment_ids"]
  return [row[key][seg == s] for s in range(1, seg.max() + 1)]


def assert_rows_equal(got, expected, keys=None):
  assert len(got) == len(expected), (len(got), len(expected))
  for i, (g, e) in enumerate(zip(got, expected)):
    names = keys or sorted(e)
    assert set(names) <= set(g), (i, sorted(g), names)
    for k in names:
      np.testing.assert_array_equal(np.asarray(g[k]), np.asarray(e[k]), err_msg=f"row {i} {k}")


def assert_unpacked_rows_equal(got, expected, keys=None):
  """Unpacked rows have no segment ids, and seqio's `decoder_input_tokens` (targets shifted
  right) carries a row's last token into its first padding position, where ours has 0
  (ours shift within segments, padding included). Neither is read by a position with
  loss, or by any earlier position; every other value is equal."""
  names = sorted(set(keys or expected[0]) - {"decoder_input_tokens"})
  assert_rows_equal(got, expected, names)
  for i, (g, e) in enumerate(zip(got, expected)):
    real = e["decoder_target_tokens"] != 0
    n = int(real.sum())
    assert real[:n].all(), i
    np.testing.assert_array_equal(g["decoder_input_tokens"][:n], e["decoder_input_tokens"][:n])
    if n < len(real):
      assert e["decoder_input_tokens"][n] == 0, i
      assert g["decoder_input_tokens"][n] == e["decoder_target_tokens"][n - 1], i
      assert not g["decoder_input_tokens"][n + 1:].any() and not e["decoder_input_tokens"][
          n + 1:].any(), i


def assert_converted_equal(got, expected, pack, keys=None):
  (assert_rows_equal if pack else assert_unpacked_rows_equal)(got, expected, keys)


def seqio_rows(examples, lengths, converter):
  """seqio's converter applied to a list of examples `{feature: [n]}`."""
  names = sorted(examples[0])
  ds = tf.data.Dataset.from_generator(
      lambda: ({k: np.asarray(e[k], np.int32) for k in names} for e in examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in names})
  return list(converter(ds, lengths).as_numpy_iterator())


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------
@pytest.fixture
def bridge(clean_registry, monkeypatch):
  """Our tasks registered with seqio (restored afterwards)."""
  from tasks import seqio_bridge
  monkeypatch.setattr(seqio_bridge, "_ENABLED", seqio_bridge._ENABLED)
  import tasks.seqio_tasks  # noqa: F401
  seqio_bridge.enable()
  return clean_registry


@pytest.fixture
def local(bridge, c4_sample_path, t5_vocab_path):
  """The four local tasks registered at 128 tokens; `local(kind, length)` is the spec of
  a kind at another length (registered under another name, same corpus)."""
  tasks.register_local_corpus("local", c4_sample_path, vocabulary=t5_vocab_path, length=128)

  def spec_at(kind, length):
    tasks.register_local_corpus(f"at{length}", c4_sample_path, vocabulary=t5_vocab_path,
                                length=length, with_seqio=False)
    return bridge.get(f"at{length}_{kind}")
  return spec_at


def task_dataset(name, lengths, **kwargs):
  kwargs.setdefault("shuffle", False)
  return seqio.get_mixture_or_task(name).get_dataset(lengths, **kwargs).as_numpy_iterator()


# ---------------------------------------------------------------------------
# 1. Lengths from sequence_length
# ---------------------------------------------------------------------------
def test_task_feature_lengths_at_the_paper_length_and_back():
  assert reference_spans_helper(512) == (568, 114)
  assert pipeline.task_feature_lengths(pipeline.SPAN_CORRUPTION) == {"inputs": 512,
                                                                     "targets": 114}
  assert pipeline.task_feature_lengths(pipeline.FULL_LM) == {"targets": 626}
  assert pipeline.task_feature_lengths(pipeline.PREFIX_LM) == {"inputs": 626, "targets": 626}
  for inputs in (16, 57, 200, 512):
    _, targets = reference_spans_helper(inputs)
    length = pipeline.objective_length(pipeline.SPAN_CORRUPTION,
                                       {"inputs": inputs, "targets": targets})
    assert pipeline.Objective(pipeline.SPAN_CORRUPTION, ED, length).feature_lengths == {
        "inputs": inputs, "targets": targets}


def test_lengths_too_short_for_the_examples_name_task_feature_and_lengths():
  with pytest.raises(ValueError, match=r"'c4x'.*'targets' must be >= 114, found 100"):
    pipeline.objective_length(pipeline.SPAN_CORRUPTION, {"inputs": 512, "targets": 100}, "c4x")
  with pytest.raises(ValueError, match=r"'targets' must be >= 625, found 300"):
    pipeline.objective_length(pipeline.PREFIX_LM, {"inputs": 626, "targets": 300})
  with pytest.raises(ValueError, match=r"missing \['inputs'\]"):
    pipeline.objective_length(pipeline.PREFIX_LM, {"targets": 626})


def test_span_corruption_examples_follow_the_lengths_asked_for(local):
  """Registered at 128, asked for t5x's 512 / 114: the pipeline's examples at 626."""
  got = list(itertools.islice(task_dataset("local_span_corruption",
                                           {"inputs": 512, "targets": 114}, seed=5), 3))
  expected = list(itertools.islice(local("span_corruption", 626).task_examples(seed=5), 3))
  assert [(len(g["inputs"]), len(g["targets"])) for g in got] == [(512, 114)] * 3
  assert_rows_equal(got, expected)
  # Each chunk holds 568 raw tokens: 483 kept + 85 noise, the sentinels and two EOS.
  for g in got:
    sentinels = int(np.sum(g["targets"] >= 32000))
    assert len(g["inputs"]) - sentinels - 1 + len(g["targets"]) - sentinels - 1 == 568
  # The registered length when seqio passes none.
  got = next(task_dataset("local_span_corruption", None, seed=5))
  inputs, _ = pipeline.mlm_lengths(128)
  assert len(got["inputs"]) == inputs
  with pytest.raises(ValueError, match=r"local_span_corruption.*'targets' must be >= 114"):
    next(task_dataset("local_span_corruption", {"inputs": 512, "targets": 64}))


@pytest.mark.parametrize("kind", ["full_lm", "prefix_lm_decoder", "prefix_lm_encoder_decoder"])
def test_lm_examples_follow_the_lengths_asked_for_on_every_shard(local, kind):
  length = 100
  spec = local(kind, length)
  lengths = pipeline.task_feature_lengths(spec.objective_name, length)
  got = list(itertools.islice(task_dataset(f"local_{kind}", lengths, seed=7,
                                           shard_info=seqio.ShardInfo(1, 3)), 4))
  expected = list(itertools.islice(spec.task_examples(seed=7, shard_index=1, num_shards=3), 4))
  assert_rows_equal(got, expected)
  for g in got:
    assert sum(len(v) for v in g.values()) == length
  if kind != "full_lm":
    splits = [len(g["inputs"]) for g in got]
    assert all(1 <= s <= length - 1 for s in splits)
    if kind == "prefix_lm_encoder_decoder":  # complementary pairs fill one row each
      assert splits[0] + splits[1] == length and splits[2] + splits[3] == length


# ---------------------------------------------------------------------------
# 2-3. seqio's converters and ours give the same model features
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("pack", [True, False])
def test_encoder_decoder_span_corruption_rows(local, pack):
  spec = local("span_corruption", 80)
  examples = list(itertools.islice(spec.task_examples(seed=1), 5))
  inputs, targets = pipeline.mlm_lengths(80)
  # Rows of twice the example lengths: two examples a packed row.
  lengths = {"inputs": 2 * inputs, "targets": 2 * targets}
  got = seqio_rows(examples, lengths, seqio.EncDecFeatureConverter(pack=pack))
  ours = list(feature_converters.encoder_decoder_rows(examples, lengths["inputs"],
                                                      lengths["targets"], pack))
  assert len(ours) == (3 if pack else 5)
  assert_converted_equal(got, ours, pack)
  if pack:
    assert [e.tolist() for e in segments_of(ours[0], "encoder_input_tokens")] == [
        examples[0]["inputs"].tolist(), examples[1]["inputs"].tolist()]
  # At the examples' own lengths, the rows the trainer reads for the task.
  got = seqio_rows(examples, {"inputs": inputs, "targets": targets},
                   seqio.EncDecFeatureConverter(pack=pack))
  assert_converted_equal(got, list(itertools.islice(spec.rows(arch=ED, seed=1, pack=pack), 5)),
                         pack)


@pytest.mark.parametrize("pack", [True, False])
def test_decoder_span_corruption_rows(local, pack):
  spec = local("span_corruption", 80)
  examples = list(itertools.islice(spec.task_examples(seed=2), 4))
  inputs, targets = pipeline.mlm_lengths(80)
  got = seqio_rows(examples, {"inputs": inputs, "targets": targets},
                   seqio.DecoderFeatureConverter(pack=pack))
  assert_converted_equal(got, list(itertools.islice(spec.rows(arch=ND, seed=2, pack=pack), 4)),
                         pack)


@pytest.mark.parametrize("pack", [True, False])
def test_encoder_decoder_prefix_lm_rows_are_the_papers(local, pack):
  """Complementary splits: seqio packs each two examples into the paper's ED:PLM row."""
  length = 64
  spec = local("prefix_lm_encoder_decoder", length)
  examples = list(itertools.islice(spec.task_examples(seed=3), 8))
  lengths = {"inputs": length, "targets": length}
  got = seqio_rows(examples, lengths, seqio.EncDecFeatureConverter(pack=pack))
  assert_converted_equal(got, list(feature_converters.encoder_decoder_rows(
      examples, length, length, pack)), pack)
  if pack:
    assert_rows_equal(got, list(itertools.islice(spec.rows(arch=ED, seed=3), 4)))
  else:  # one chunk a row: the paper's rows split in two
    paper = list(itertools.islice(spec.rows(arch=ED, seed=3), 4))
    assert len(got) == 8
    for i, row in enumerate(paper):
      for half, s in zip(got[2 * i:2 * i + 2], (1, 2)):
        seg = row["encoder_segment_ids"] == s
        assert half["encoder_input_tokens"][:seg.sum()].tolist() == (
            row["encoder_input_tokens"][seg].tolist())


@pytest.mark.parametrize("pack", [True, False])
def test_decoder_prefix_lm_rows(local, pack):
  """ND:PLM through seqio at {'inputs': L, 'targets': L}: rows of 2L; packed, each holds
  two of the paper's L rows as segments; unpacked, one and L positions of padding."""
  length = 64
  spec = local("prefix_lm_decoder", length)
  examples = list(itertools.islice(spec.task_examples(seed=4), 6))
  lengths = {"inputs": length, "targets": length}
  got = seqio_rows(examples, lengths, seqio.DecoderFeatureConverter(pack=pack))
  assert_converted_equal(got, list(feature_converters.prefix_lm_rows(examples, length, length,
                                                                     pack)), pack)
  paper = list(itertools.islice(spec.rows(arch=ND, seed=4), 6))
  keys = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
          "decoder_causal_attention")
  halves = ([{k: r[k][h * length:(h + 1) * length] for k in keys} for r in got for h in (0, 1)]
            if pack else [{k: r[k][:length] for k in keys} for r in got])
  assert_rows_equal(halves, paper, keys)
  if pack:
    assert got[0]["decoder_segment_ids"].tolist() == [1] * length + [2] * length
  else:  # the shifted last token aside (see assert_unpacked_rows_equal), padding
    assert all(not r[k][length:].any() for r in got for k in keys
               if k != "decoder_input_tokens")
    assert all(r["decoder_input_tokens"][length] == r["decoder_target_tokens"][length - 1]
               and not r["decoder_input_tokens"][length + 1:].any() for r in got)


@pytest.mark.parametrize("arch", [CD, ND])
@pytest.mark.parametrize("pack", [True, False])
def test_full_lm_rows(local, arch, pack):
  spec = local("full_lm", 48)
  examples = list(itertools.islice(spec.task_examples(seed=0), 3))
  got = seqio_rows(examples, {"targets": 48}, seqio.DecoderFeatureConverter(pack=pack))
  ours = list(itertools.islice(spec.rows(arch=arch, pack=pack), 3))
  # seqio's LM rows have no decoder_causal_attention; the ND reads ours as all 0 (causal).
  assert_converted_equal(got, ours, pack, sorted(set(ours[0]) - {"decoder_causal_attention"}))
  if arch == ND:
    assert all(not r["decoder_causal_attention"].any() for r in ours)
  # Shorter examples pack several to a row, as seqio packs them.
  short = [{"targets": e["targets"][:n]} for e, n in zip(examples * 3, (7, 20, 13) * 3)]
  got = seqio_rows(short, {"targets": 48}, seqio.LMFeatureConverter(pack=pack))
  assert_converted_equal(got, list(feature_converters.lm_rows(short, 48, pack)), pack)


def test_seqio_packs_within_windows_of_the_longest_length_ours_does_not():
  """seqio packs each run of max(lengths) examples apart (a row never spans two runs);
  ours fills rows across them. Ten 2-token examples in 5-token rows: seqio 6 rows (runs
  of 5 examples: 2 + 2, 2 + 2, 2), ours 5."""
  examples = [{"targets": np.asarray([10 + i, EOS])} for i in range(10)]
  got = seqio_rows(examples, {"targets": 5}, seqio.LMFeatureConverter(pack=True))
  ours = list(feature_converters.lm_rows(examples, 5, pack=True))
  assert [int(r["decoder_segment_ids"].max()) for r in got] == [2, 2, 1, 2, 2, 1]
  assert [int(r["decoder_segment_ids"].max()) for r in ours] == [2] * 5
  assert_rows_equal(got[:2], ours[:2])


# ---------------------------------------------------------------------------
# 4. Caching, and the T0 mixture as a seqio Mixture
# ---------------------------------------------------------------------------
def write_cache(task, cache_root, split="train"):
  """The task's pre-cache dataset, in order, in seqio's cache layout (one file)."""
  ds = task.preprocess_precache(task.source.get_dataset(split, shuffle=False))
  examples = list(ds.as_numpy_iterator())
  out = cache_root / task.name
  out.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(out / f"{split}.tfrecord-00000-of-00001")) as writer:
    for ex in examples:
      writer.write(seqio.dict_to_tfexample(ex).SerializeToString())
  (out / f"info.{split}.json").write_text(json.dumps({
      "features": {"targets": {"shape": [None], "dtype": "int32"}},
      "num_shards": 1, "seqio_version": seqio.__version__}))
  (out / f"stats.{split}.json").write_text(json.dumps({"examples": len(examples)}))
  (out / "COMPLETED").write_text("")
  return examples


def test_corpus_tasks_cache_documents_and_make_examples_after(local, tmp_path, monkeypatch):
  for kind in ("full_lm", "prefix_lm_decoder", "prefix_lm_encoder_decoder", "span_corruption"):
    assert seqio.get_mixture_or_task(f"local_{kind}").supports_caching, kind
  task = seqio.get_mixture_or_task("local_span_corruption")
  spec = local("span_corruption", 128)
  cached = write_cache(task, tmp_path)
  documents = list(spec.documents())
  assert len(cached) == len(documents)
  assert all(np.array_equal(c["targets"], d) for c, d in zip(cached, documents))
  monkeypatch.setattr(seqio.utils, "_GLOBAL_CACHE_DIRECTORIES", [str(tmp_path)])
  task._cache_dir = None
  lengths = {"inputs": 64, "targets": reference_spans_helper(64)[1]}
  length = pipeline.objective_length(pipeline.SPAN_CORRUPTION, lengths)
  for seed in (0, 9):
    got = list(itertools.islice(task_dataset(task.name, lengths, seed=seed, use_cached=True),
                                3))
    expected = list(itertools.islice(local("span_corruption", length).task_examples(seed=seed),
                                     3))
    assert_rows_equal(got, expected)


MTF_DATASETS = ("super_glue/rte", "super_glue/cb")


@pytest.fixture
def mtf(bridge, shared_data, tmp_path, t5_vocab_path):
  """A small prompted mixture: the RTE and CB validation files as train splits."""
  pytest.importorskip("promptsource")
  root = shared_data / "eval" / "super_glue"
  files = {"super_glue/rte": root / "RTE" / "val.jsonl", "super_glue/cb": root / "CB" / "val.jsonl"}
  if not all(p.is_file() for p in files.values()):
    pytest.skip(f"SuperGLUE validation files not found under {root}")
  mapping = tmp_path / "mapping.json"
  mapping.write_text(json.dumps({k: {"train": str(v)} for k, v in files.items()}))
  from tasks import t0 as t0_tasks
  spec = t0_tasks.register_prompted_mixture("mtf", datasets=MTF_DATASETS, mapping=str(mapping),
                                            vocabulary=t5_vocab_path, inputs_length=128,
                                            targets_length=32)
  yield spec
  seqio.MixtureRegistry.remove("mtf")


def test_t0_train_is_a_seqio_mixture_after_import(bridge):
  pytest.importorskip("promptsource")
  mixture = seqio.get_mixture_or_task("t0_train")
  names = [t.name for t in mixture.tasks]
  assert len(names) > 250 and all(n.startswith("t0_train_") for n in names)
  assert "t0_train_super_glue_rte_GPT_3_style" not in names  # RTE is held out
  assert any(n.startswith("t0_train_glue_mrpc_") for n in names)


@pytest.mark.slow
def test_prompted_mixture_tasks_and_rates(mtf):
  from tasks import seqio_providers
  mixture = seqio.get_mixture_or_task("mtf")
  assert [t.name for t in mixture.tasks] == sorted(
      seqio_providers.prompted_task_name("mtf", t.name) for t in mtf.tasks)
  by_name = {seqio_providers.prompted_task_name("mtf", t.name): t for t in mtf.tasks}
  sizes = {"super_glue/rte": 277, "super_glue/cb": 56}
  for task in mixture.tasks:
    ours = by_name[task.name]
    assert mixture.get_rate(task) == sizes["/".join(ours.name.split("/")[:2])]
    assert task.supports_caching
  # One task's examples: the mixture's rendering of every example (a single-task
  # mixture's first epoch draws each once, in another order), targets with EOS.
  import dataclasses
  ours = mtf.tasks[0]
  name = seqio_providers.prompted_task_name("mtf", ours.name)
  got = list(task_dataset(name, {"inputs": 1024, "targets": 256}))
  single = dataclasses.replace(mtf, tasks=(ours,))
  expected = list(itertools.islice(single.task_examples(seed=0), len(got)))
  key = lambda e: (e["inputs"].tolist(), e["targets"].tolist())
  assert sorted(map(key, got)) == sorted(map(key, expected))
  assert all(g["targets"][-1] == EOS and EOS not in g["inputs"] for g in got)
  text = got[0]["inputs_pretokenized"].decode()
  assert mtf.vocab().encode(text) == got[0]["inputs"].tolist()
  # The mixture through t5x's path: packed ED rows of 128 / 32 tokens.
  rows = list(itertools.islice(seqio.get_dataset(
      "mtf", {"inputs": 128, "targets": 32}, seqio.EncDecFeatureConverter(pack=True),
      seed=0).as_numpy_iterator(), 2))
  assert rows[0]["encoder_input_tokens"].shape == (128,)
  assert rows[0]["decoder_target_tokens"].shape == (32,)


# ---------------------------------------------------------------------------
# 5. The trainer reads a task registered with seqio's API
# ---------------------------------------------------------------------------
SENTENCES = ["The cat sat on the mat.", "Dogs bark at night.", "It rained in Paris today.",
             "A short line.", "Stocks rose on Monday morning.", "She reads a book every week.",
             "The river flows to the sea.", "Bread is baked in an oven."] * 3


@pytest.fixture
def text_task(bridge, t5_vocab_path):
  """`toy_lines`: a seqio Task over a few lines of text, tokenised by seqio."""
  def dataset_fn(split, shuffle_files, seed=None):
    lines = SENTENCES if split == "train" else SENTENCES[:4]
    return tf.data.Dataset.from_tensor_slices({"text": lines})

  vocabulary = seqio.SentencePieceVocabulary(t5_vocab_path, extra_ids=100)
  seqio.TaskRegistry.add(
      "toy_lines", source=seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"]),
      preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=True)})
  return "toy_lines"


@pytest.mark.slow
def test_a_seqio_task_resolves_to_rows_of_seqio_converters(text_task, t5_vocab_path):
  from arch_objective.training import data
  from tasks import seqio_source
  config = data.DatasetConfig(task=text_task, batch_size=2, length=16, vocabulary=t5_vocab_path)
  task = config.spec(CD)
  assert isinstance(task, seqio_source.SeqioTask) and task.architectures == (CD, ND)
  assert task.vocab().vocab_size == 32100
  examples = list(seqio.get_mixture_or_task(text_task).get_dataset(
      {"targets": 16}, shuffle=False).as_numpy_iterator())
  assert len(examples) == len(SENTENCES)
  expected = list(feature_converters.lm_rows([{"targets": e["targets"]} for e in examples], 16))
  rows = list(task.positioned_rows(arch=CD))
  assert_rows_equal(rows, expected)
  assert [r.where for r in rows] == [{"rows": i} for i in range(len(rows))]
  resumed = list(task.positioned_rows(arch=CD, start={"rows": 3}))
  assert_rows_equal(resumed, expected[3:])
  assert resumed[0].where == {"rows": 3}
  nd = next(task.rows(arch=ND))
  assert not nd["decoder_causal_attention"].any()
  with pytest.raises(ValueError, match=r"'toy_lines'.*not 'encoder_decoder'"):
    data.DatasetConfig(task=text_task, batch_size=2, length=16).spec(ED)


@pytest.mark.slow
def test_training_on_a_seqio_task_resumes_at_the_same_rows(text_task, tmp_path, monkeypatch,
                                                          t5_vocab_path):
  from arch_objective.training import data, optimizers, train
  from tasks import seqio_source
  starts = []
  read = seqio_source.SeqioTask.positioned_rows

  def spy(self, *args, **kwargs):
    starts.append(kwargs.get("start"))
    return read(self, *args, **kwargs)

  monkeypatch.setattr(seqio_source.SeqioTask, "positioned_rows", spy)
  config = lambda: data.DatasetConfig(task=text_task, batch_size=2, length=16,
                                      vocabulary=t5_vocab_path)
  kwargs = dict(model=build_model(CD, "tiny", dtype="float32"), save_every=1, progress=False,
                learning_rate_schedule=optimizers.constant(0.01))
  straight = train.train(model_dir=str(tmp_path / "a"), dataset=config(), train_steps=2,
                         **kwargs)
  train.train(model_dir=str(tmp_path / "b"), dataset=config(), train_steps=1, **kwargs)
  starts.clear()
  resumed = train.train(model_dir=str(tmp_path / "b"), dataset=config(), train_steps=2,
                        **kwargs)
  assert {"rows": 2} in starts  # the third row: two rows (one batch) were read
  assert [h["step"] for h in resumed.history] == [2]
  assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-6)
  np.testing.assert_array_equal(
      np.asarray(resumed.state.params["decoder"]["token_embedder"]["embedding"]),
      np.asarray(straight.state.params["decoder"]["token_embedder"]["embedding"]))
