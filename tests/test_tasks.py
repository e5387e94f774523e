"""Pretraining tasks on real data: the local C4 sample with the T5 vocabulary, TFDS C4
(mocked), the seqio bridge, `data stats` / `data show`, bad input and determinism."""
import itertools
import json

import jax
import numpy as np
import pytest

import arch_objective
import tasks
from arch_objective import cli, models
from arch_objective.data import registry
from arch_objective.objectives import feature_converters
from arch_objective.training import data as training_data
from arch_objective.training import sources

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
LENGTH = 64
EOS = 1
SENTINEL_0 = 32099  # <extra_id_0> of the T5 vocabulary with 100 extra ids
KINDS = ("full_lm", "prefix_lm_decoder", "prefix_lm_encoder_decoder", "span_corruption",
         "ul2")
COMBINATIONS = [("full_lm", CD), ("full_lm", ND), ("prefix_lm_decoder", CD),
                ("prefix_lm_decoder", ND), ("prefix_lm_encoder_decoder", ED),
                ("span_corruption", CD), ("span_corruption", ND), ("span_corruption", ED),
                ("ul2", CD), ("ul2", ND), ("ul2", ED)]


# ---------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------
def reference_spans_helper(inputs_length, density=0.15, mean_span=3.0):
  """T5's random_spans_helper (t5 preprocessors.py), written out again: (raw tokens per
  chunk, targets length) of span corruption whose inputs fill `inputs_length` (EOS
  included)."""
  def lengths(tokens):
    noise = int(round(tokens * density))
    spans = int(round(noise / mean_span))
    return tokens - noise + spans + 1, noise + spans + 1

  tokens = inputs_length - 1
  while lengths(tokens + 1)[0] <= inputs_length:
    tokens += 1
  return tokens, lengths(tokens)[1]


def reference_mlm_lengths(length):
  """The largest inputs length I with I + T(I) <= length, and T(I)."""
  for inputs in range(length - 1, 1, -1):
    _, targets = reference_spans_helper(inputs)
    if inputs + targets <= length:
      return inputs, targets
  raise AssertionError("no fit")


def test_reference_lengths_give_the_paper_geometry():
  assert reference_spans_helper(512) == (568, 114)
  assert reference_mlm_lengths(626) == (512, 114)


def expected_lengths(kind, arch):
  """(encoder length or None, decoder length) of the rows of `kind` read by `arch`."""
  if kind == "span_corruption":
    inputs, targets = reference_mlm_lengths(LENGTH)
    return (inputs, targets) if arch == ED else (None, inputs + targets)
  if kind == "ul2":     # inputs and targets of half a row each
    return (LENGTH // 2, LENGTH - LENGTH // 2) if arch == ED else (None, LENGTH)
  return (LENGTH, LENGTH) if arch == ED else (None, LENGTH)


def corpus_texts(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f if line.strip()]


def normalized(text):
  return " ".join(text.split())


def local_spec(kind, corpus, vocab, length=LENGTH):
  return tasks.resolve(f"local_{kind}", source=sources.LocalCorpus(corpus), vocabulary=vocab,
                       length=length)


_PARAMS = {}


def tiny_loss(arch, batch):
  """`loss_fn` of the float32 tiny model (parameters initialised once per model family
  with the shapes of the first batch it sees; they do not depend on lengths)."""
  model = arch_objective.build_model(arch, "tiny", dtype="float32")
  family = "encoder_decoder" if arch == ED else "decoder_only"
  if family not in _PARAMS:
    shapes = {k: v.shape for k, v in batch.items() if k in ("encoder_input_tokens",
                                                            "decoder_input_tokens")}
    _PARAMS[family] = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  loss, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, None))(_PARAMS[family], batch)
  return float(loss), {k: float(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------
# 1. Local corpus, every (architecture, task kind), T5 vocabulary
# ---------------------------------------------------------------------------
def test_combinations_cover_every_valid_reading():
  valid = {(kind, arch) for kind, (_, archs, _) in registry.TASK_KINDS.items()
           for arch in archs}
  assert valid == set(COMBINATIONS)


@pytest.mark.parametrize("kind,arch", COMBINATIONS)
@pytest.mark.slow
def test_local_rows_have_the_geometry_and_train_a_tiny_model(
    clean_registry, c4_sample_path, t5_vocab_path, kind, arch):
  spec = local_spec(kind, c4_sample_path, t5_vocab_path)
  assert spec.name == f"local_{kind}" and spec.length == LENGTH
  rows = list(itertools.islice(spec.rows(arch=arch), 2))
  assert len(rows) == 2
  enc_len, dec_len = expected_lengths(kind, arch)
  for row in rows:
    for key, value in row.items():
      assert value.dtype == np.int32, key
      if key.startswith("encoder_"):
        assert value.shape == (enc_len,), (key, value.shape)
      else:
        assert key.startswith("decoder_") and value.shape == (dec_len,), (key, value.shape)
    assert ("encoder_input_tokens" in row) == (arch == ED)
    targets, weights = row["decoder_target_tokens"], row["decoder_loss_weights"]
    if kind in ("full_lm", "prefix_lm_encoder_decoder"):
      # Early rows of a 300-document corpus are full: loss on every token.
      assert np.all(targets > 0) and np.array_equal(weights, np.ones(dec_len))
    elif kind == "prefix_lm_decoder":
      split = int(row["decoder_causal_attention"].sum()) - 1  # dca = positions <= split
      assert 1 <= split <= LENGTH - 1
      positions = np.arange(LENGTH)
      assert np.array_equal(row["decoder_causal_attention"], positions <= split)
      assert np.array_equal(weights, positions >= split)
    elif kind == "ul2":
      # Each segment opens with a paradigm token (the last 3 extra ids of T5's 100) and
      # its loss-weighted targets end with EOS; the ND's prefix covers the inputs.
      first = row["encoder_input_tokens"][0] if arch == ED else targets[0]
      assert first in (SENTINEL_0 - 99, SENTINEL_0 - 98, SENTINEL_0 - 97)
      loss_tokens = targets[weights > 0]
      assert loss_tokens[-1] == EOS and 0 < len(loss_tokens) <= LENGTH - LENGTH // 2
    else:
      inputs_len, targets_len = reference_mlm_lengths(LENGTH)
      # One full 568-style chunk per row: loss on exactly the targets, which open with
      # <extra_id_0> and end with EOS.
      assert int(weights.sum()) == targets_len
      start = 0 if arch == ED else inputs_len
      assert np.array_equal(np.flatnonzero(weights), start + np.arange(targets_len))
      assert targets[start] == SENTINEL_0 and targets[start + targets_len - 1] == EOS
      if arch != ED:
        assert targets[inputs_len - 1] == EOS
        dca = row["decoder_causal_attention"]
        assert np.array_equal(np.flatnonzero(dca), np.arange(inputs_len + 1))
    if kind == "full_lm" and arch == ND:
      assert not row["decoder_causal_attention"].any()  # no prefix: causal everywhere

  batch = next(feature_converters.batch_rows(rows, 2))
  assert batch["decoder_target_tokens"].shape == (2, dec_len)
  loss, metrics = tiny_loss(arch, batch)
  assert np.isfinite(loss) and loss > 0
  assert metrics["num_tokens"] == float(batch["decoder_loss_weights"].sum())
  # The loss is a sum over the weighted tokens (spec §8.2), near log(vocab) per token
  # for an untrained model.
  per_token = loss / metrics["num_tokens"]
  assert 0.5 * np.log(32128) < per_token < 2 * np.log(32128), per_token


def test_full_lm_row_decodes_to_corpus_text(clean_registry, c4_sample_path, t5_vocab_path):
  spec = local_spec("full_lm", c4_sample_path, t5_vocab_path)
  row = next(iter(spec.rows(arch=CD)))
  text = spec.vocab().decode(row["decoder_target_tokens"].tolist())  # up to the first EOS
  words = text.split()
  assert len(words) >= 5, text
  corpus = normalized(" ".join(corpus_texts(c4_sample_path)))
  runs = [" ".join(words[i:i + 5]) for i in range(len(words) - 4)]
  assert any(run in corpus for run in runs), text


def test_span_corruption_rows_decode_with_sentinels(clean_registry, c4_sample_path,
                                                    t5_vocab_path):
  spec = local_spec("span_corruption", c4_sample_path, t5_vocab_path)
  vocab = spec.vocab()
  assert vocab.vocab_size == 32100
  row = next(iter(spec.rows(arch=ED)))
  inputs_text = vocab.decode(row["encoder_input_tokens"].tolist())
  targets_text = vocab.decode(row["decoder_target_tokens"].tolist())
  assert "<extra_id_0>" in inputs_text and targets_text.startswith("<extra_id_0>")
  # Noise spans alternate with as many non-noise spans (non-noise first), so the inputs
  # and the targets name the same sentinels, counting down from <extra_id_0>.
  sentinels = [t for t in row["encoder_input_tokens"].tolist() if t >= 32000]
  inputs_len, _ = reference_mlm_lengths(LENGTH)
  chunk_length, _ = reference_spans_helper(inputs_len)
  num_spans = int(round(int(round(chunk_length * 0.15)) / 3.0))
  assert sentinels == list(range(SENTINEL_0, SENTINEL_0 - num_spans, -1))
  assert [t for t in row["decoder_target_tokens"].tolist() if t >= 32000] == sentinels


# ---------------------------------------------------------------------------
# 2-3. `data stats` and `data show` on the real corpus
# ---------------------------------------------------------------------------
def data_stats(capsys, task, corpus, vocab, *extra):
  code = cli.main(["data", "stats", "--task", task, "--corpus", corpus, "--vocabulary", vocab,
                   *extra])
  out = capsys.readouterr().out
  assert code == 0, out
  return json.loads(out)


@pytest.mark.parametrize("arch", [ND, ED])
def test_span_corruption_statistics_at_paper_length(clean_registry, capsys, c4_sample_path,
                                                    t5_vocab_path, arch):
  report = data_stats(capsys, "local_span_corruption", c4_sample_path, t5_vocab_path,
                      "--num", "40", "--arch", arch)
  assert report["corpus_task"] == "local_span_corruption"
  assert report["rows"] == 40 and report["examples"] == 40
  assert report["mean_input_length"] == 512 and report["mean_target_length"] == 114
  # 568 raw tokens per chunk: round(0.15 * 568) = 85 noise tokens in round(85 / 3) = 28
  # spans.
  assert report["noise_density"] == pytest.approx(0.15, abs=0.005)
  assert report["noise_density"] == pytest.approx(85 / 568, rel=1e-12)
  assert report["mean_noise_span_length"] == pytest.approx(3.0, abs=0.1)
  assert report["mean_noise_span_length"] == pytest.approx(85 / 28, rel=1e-12)
  assert report["loss_token_fraction"] == 114 / 626
  assert report["packing_efficiency"] == 1.0
  if arch == ED:
    assert report["feature_lengths"] == {"inputs": 512, "targets": 114}
  else:
    assert report["feature_lengths"] == {"inputs": 512, "targets": 114, "decoder": 626}


def test_prefix_lm_decoder_statistics(clean_registry, capsys, c4_sample_path, t5_vocab_path):
  report = data_stats(capsys, "local_prefix_lm_decoder", c4_sample_path, t5_vocab_path,
                      "--num", "60")
  assert report["rows"] == 60 and report["task"] == "ND:PLM"
  # Each full row: split prefix tokens + (626 - split) loss tokens.
  assert report["mean_input_length"] + report["mean_target_length"] == pytest.approx(626)
  assert report["loss_token_fraction"] == pytest.approx(0.5, abs=0.1)
  assert report["packing_efficiency"] == 1.0
  assert report["noise_density"] is None and report["mean_noise_span_length"] is None


def test_data_show_marks_prefix_loss_and_sentinels(clean_registry, capsys, c4_sample_path,
                                                   t5_vocab_path):
  code = cli.main(["data", "show", "--task", "local_span_corruption", "--corpus",
                   c4_sample_path, "--vocabulary", t5_vocab_path, "--arch", ND,
                   "--num", "1"])
  out = capsys.readouterr().out
  assert code == 0
  lines = out.splitlines()
  assert lines[0] == "== local_span_corruption as ND:MLM, row 0"
  prefix = [line for line in lines if "prefix seg 1" in line]
  loss = [line for line in lines if "loss seg 1" in line]
  assert prefix and loss and "<extra_id_0>" in out
  assert "<extra_id_0>" in prefix[0]
  assert loss[0].split("loss seg 1", 1)[1].strip().startswith("<extra_id_0>")


# ---------------------------------------------------------------------------
# 4. C4 through TFDS, offline with mock data
# ---------------------------------------------------------------------------
def test_c4_tasks_read_tfds_mock_data(clean_registry, t5_vocab_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  inputs_len, targets_len = reference_mlm_lengths(LENGTH)
  with tfds.testing.mock_data(num_examples=30):
    spec = tasks.resolve("c4_full_lm", vocabulary=t5_vocab_path, length=LENGTH)
    assert spec.vocabulary == t5_vocab_path and spec.length == LENGTH
    rows = list(itertools.islice(spec.rows(arch=CD), 3))
    spec_sc = tasks.resolve("c4_span_corruption", vocabulary=t5_vocab_path, length=LENGTH)
    rows_sc = list(itertools.islice(spec_sc.rows(arch=ED), 3))
  assert len(rows) == 3
  for row in rows:
    targets = row["decoder_target_tokens"]
    assert targets.shape == (LENGTH,)
    assert np.array_equal(row["decoder_loss_weights"], targets > 0)
    assert row["decoder_input_tokens"][0] == 0
  assert len(rows_sc) == 3
  for row in rows_sc:
    assert row["encoder_input_tokens"].shape == (inputs_len,)
    assert row["decoder_target_tokens"].shape == (targets_len,)
    assert row["decoder_target_tokens"][0] == SENTINEL_0
    assert np.array_equal(row["decoder_loss_weights"], row["decoder_target_tokens"] > 0)


# ---------------------------------------------------------------------------
# 5. The seqio bridge serves the same examples
# ---------------------------------------------------------------------------
def test_seqio_task_matches_the_numpy_pipeline(clean_registry, monkeypatch, c4_sample_path,
                                               t5_vocab_path):
  seqio = pytest.importorskip("seqio")
  from tasks import seqio_bridge
  monkeypatch.setattr(seqio_bridge, "_ENABLED", seqio_bridge._ENABLED)
  import tasks.seqio_tasks  # noqa: F401  (enables the bridge on first import)
  seqio_bridge.enable()  # in case another test imported it already
  assert "c4_span_corruption" in seqio.TaskRegistry.names()

  spec = local_spec("span_corruption", c4_sample_path, t5_vocab_path)
  spec = local_spec("span_corruption", c4_sample_path, t5_vocab_path)  # re-registering is fine
  assert {f"local_{k}" for k in KINDS} <= set(seqio.TaskRegistry.names())
  task = seqio.get_mixture_or_task("local_span_corruption")
  assert set(task.output_features) == {"inputs", "targets"}
  try:
    dataset = task.get_dataset(sequence_length=None, split="train", shuffle=False, seed=0)
  except (TypeError, ValueError):
    dataset = task.get_dataset(sequence_length={"inputs": LENGTH, "targets": LENGTH},
                               split="train", shuffle=False, seed=0)
  got = list(itertools.islice(dataset.as_numpy_iterator(), 3))
  expected = list(itertools.islice(spec.task_examples("train", seed=0), 3))
  assert len(got) == 3 and len(expected) == 3
  inputs_len, targets_len = reference_mlm_lengths(LENGTH)
  for g, e in zip(got, expected):
    assert len(e["inputs"]) == inputs_len and len(e["targets"]) == targets_len
    np.testing.assert_array_equal(g["inputs"], e["inputs"])
    np.testing.assert_array_equal(g["targets"], e["targets"])

  # The other kinds too, on the validation split and another seed.
  for kind in ("full_lm", "prefix_lm_decoder", "prefix_lm_encoder_decoder"):
    spec = registry.get(f"local_{kind}")
    dataset = seqio.get_mixture_or_task(spec.name).get_dataset(
        sequence_length=None, split="validation", shuffle=False, seed=3)
    got = list(itertools.islice(dataset.as_numpy_iterator(), 2))
    expected = list(itertools.islice(spec.task_examples("validation", seed=3), 2))
    assert len(got) == len(expected) == 2, kind
    for g, e in zip(got, expected):
      assert g.keys() == e.keys(), kind
      for key in e:
        np.testing.assert_array_equal(g[key], e[key], err_msg=f"{kind} {key}")


# ---------------------------------------------------------------------------
# 6. Registration
# ---------------------------------------------------------------------------
def test_registering_a_local_corpus_twice_is_idempotent(clean_registry, c4_sample_path,
                                                        t5_vocab_path):
  first = tasks.register_local_corpus("local", c4_sample_path, vocabulary=t5_vocab_path,
                                      length=LENGTH)
  second = tasks.register_local_corpus("local", c4_sample_path, vocabulary=t5_vocab_path,
                                       length=LENGTH)
  assert first == second == [f"local_{k}" for k in KINDS]
  names = registry.names()
  assert all(names.count(n) == 1 for n in first)
  a = local_spec("full_lm", c4_sample_path, t5_vocab_path)
  b = local_spec("full_lm", c4_sample_path, t5_vocab_path)
  assert (a.name, a.kind, a.length, a.vocabulary) == (b.name, b.kind, b.length, b.vocabulary)
  assert registry.get("local_full_lm") is b
  first_row = lambda s: next(iter(s.rows()))["decoder_target_tokens"]
  np.testing.assert_array_equal(first_row(a), first_row(b))


def test_unknown_task_lists_the_registered_ones(clean_registry, c4_sample_path, t5_vocab_path):
  local_spec("full_lm", c4_sample_path, t5_vocab_path)
  with pytest.raises(ValueError) as info:
    registry.get("nope")
  message = str(info.value)
  assert "'nope'" in message
  for name in ("c4_full_lm", "c4_span_corruption", "local_full_lm",
               "local_prefix_lm_encoder_decoder"):
    assert name in message


# ---------------------------------------------------------------------------
# 6b. Sources: what each registers, the command line's flat options, bad values
# ---------------------------------------------------------------------------
@pytest.fixture
def registrations(monkeypatch):
  """What `tasks.resolve` registers: [(kind, arguments)] of each registration call. The
  corpora register for real; a prompted mixture is only recorded (its stand-in spec is
  `c4_full_lm`'s)."""
  from tasks import corpora
  calls = []
  c4, local = corpora.configure_c4, corpora.register_local_corpus

  def fake_c4(version, data_dir, *args, **kwargs):
    calls.append(("c4", (version, data_dir)))
    return c4(version, data_dir, *args, **kwargs)

  def fake_local(name, files, **kwargs):
    calls.append(("local", (name, files, kwargs["field"], kwargs["layout"])))
    return local(name, files, **kwargs)

  def fake_prompted(name, **kwargs):
    calls.append(("prompted", (name, kwargs["datasets"], kwargs["data_dir"],
                               kwargs["mapping"])))
    return registry.get("c4_full_lm")

  monkeypatch.setattr(corpora, "configure_c4", fake_c4)
  monkeypatch.setattr(corpora, "register_local_corpus", fake_local)
  monkeypatch.setattr(corpora.t0, "register_prompted_mixture", fake_prompted)
  return calls


def test_each_source_registers_what_it_describes(clean_registry, registrations,
                                                  c4_sample_path, t5_vocab_path):
  assert tasks.resolve("c4_full_lm").name == "c4_full_lm"
  tasks.resolve("c4_span_corruption", source=sources.C4("2.2.0", "/tmp/tfds"))
  tasks.resolve("local_full_lm", vocabulary=t5_vocab_path,
                source=sources.LocalCorpus([c4_sample_path], field="body", layout="paragraph"))
  tasks.resolve("t0_train")
  tasks.resolve("mix", source=sources.PromptedDatasets(["super_glue/rte"], "/d", "/m.json"))
  tasks.resolve("t0_train", source=sources.PromptedDatasets(data_dir="/d"))
  # A source applies to the tasks it describes: the C4 tasks ignore a PromptedDatasets
  # without datasets, T0's mixture ignores the corpus options of the command line.
  tasks.resolve("c4_full_lm", source=sources.PromptedDatasets())
  tasks.resolve("t0_train", source=sources.C4())
  assert registrations == [
      ("c4", (sources.C4_VERSION, None)), ("c4", ("2.2.0", "/tmp/tfds")),
      ("local", ("local", [c4_sample_path], "body", "paragraph")),
      ("prompted", ("t0_train", None, None, None)),
      ("prompted", ("mix", ["super_glue/rte"], "/d", "/m.json")),
      ("prompted", ("t0_train", None, "/d", None)),
      ("c4", (sources.C4_VERSION, None)), ("prompted", ("t0_train", None, None, None))]


def test_the_command_line_options_name_a_source(clean_registry, registrations,
                                                c4_sample_path, t5_vocab_path):
  assert sources.corpus_source() == sources.C4()
  assert sources.corpus_source(tfds_data_dir="/t", c4_version="2.2.0") == sources.C4("2.2.0",
                                                                                     "/t")
  assert sources.corpus_source(corpus=[c4_sample_path], field="body", layout="paragraph",
                               tfds_data_dir="/t") == sources.LocalCorpus(
                                   [c4_sample_path], "body", "paragraph")
  # What `arch-objective data` registers from them.
  local = sources.corpus_source(corpus=[c4_sample_path], field="text", layout="line",
                                tfds_data_dir=None, c4_version=sources.C4_VERSION)
  spec = tasks.resolve("local_full_lm", source=local, vocabulary=t5_vocab_path)
  assert spec.name == "local_full_lm" and registrations[-1] == (
      "local", ("local", [c4_sample_path], "text", "line"))
  tasks.resolve("c4_full_lm", source=sources.corpus_source(tfds_data_dir="/t",
                                                           c4_version="2.2.0"))
  assert registrations[-1] == ("c4", ("2.2.0", "/t"))


@pytest.mark.parametrize("make,message", [
    (lambda: sources.LocalCorpus([]),
     r"LocalCorpus\.files must be a path or glob.*found \[\]"),
    (lambda: sources.LocalCorpus(["a.txt", 3]), r"LocalCorpus\.files .*found \['a.txt', 3\]"),
    (lambda: sources.LocalCorpus("a.txt", field=""), r"LocalCorpus\.field .*found ''"),
    (lambda: sources.LocalCorpus("a.txt", layout="page"),
     r"LocalCorpus\.layout must be one of line, paragraph, found 'page'"),
    (lambda: sources.C4(version=2.2), r"C4\.version must be .*found 2.2 \(float\)"),
    (lambda: sources.C4(data_dir=""), r"C4\.data_dir must be a path .*found ''"),
    (lambda: sources.PromptedDatasets("super_glue/rte"),
     r"PromptedDatasets\.datasets must be .*\(one dataset: \['super_glue/rte'\]\)"),
    (lambda: sources.PromptedDatasets([]), r"PromptedDatasets\.datasets must be .*found \[\]"),
    (lambda: sources.PromptedDatasets(mapping=3), r"PromptedDatasets\.mapping must be a path"),
    (lambda: training_data.DatasetConfig(task="local_full_lm", batch_size=2,
                                         source="docs.jsonl"),
     r"DatasetConfig\.source must be None or one of C4, LocalCorpus, PromptedDatasets .*"
     r"found 'docs.jsonl' \(str\)"),
    (lambda: tasks.resolve("local_full_lm", source={"files": "a.txt"}),
     r"tasks\.resolve's source must be None or one of C4"),
])
def test_a_bad_source_names_its_field(make, message):
  from arch_objective.errors import UserError
  with pytest.raises(UserError, match=message):
    make()


def test_a_dataset_is_prompted_by_its_task_or_its_datasets():
  config = lambda task, source=None: training_data.DatasetConfig(task=task, batch_size=2,
                                                                 source=source)
  assert config("t0_train").prompted and config("t0_train", sources.C4()).prompted
  mix = config("mix", sources.PromptedDatasets(["imdb"]))
  assert mix.prompted
  assert not config("mix", sources.PromptedDatasets()).prompted
  assert not config("c4_full_lm").prompted


# ---------------------------------------------------------------------------
# 7. Bad input
# ---------------------------------------------------------------------------
def test_local_task_without_corpus_is_rejected(clean_registry):
  for source in (None, sources.C4()):
    with pytest.raises(ValueError, match=r"'local_full_lm' reads a local corpus.*"
                                         r"LocalCorpus\.files.*--corpus"):
      tasks.resolve("local_full_lm", source=source)


def test_corpus_with_a_c4_task_names_the_local_tasks(clean_registry, c4_sample_path):
  with pytest.raises(ValueError) as info:
    tasks.resolve("c4_full_lm", source=sources.LocalCorpus(c4_sample_path))
  message = str(info.value)
  assert "'c4_full_lm'" in message and "LocalCorpus.files" in message
  for kind in KINDS:
    assert f"local_{kind}" in message


def test_corpus_pattern_matching_nothing(clean_registry, tmp_path, t5_vocab_path):
  pattern = str(tmp_path / "missing" / "*.jsonl")
  before = dict(registry._SPECS)   # another test may have registered local_* already
  with pytest.raises(FileNotFoundError) as info:
    tasks.resolve("local_full_lm", source=sources.LocalCorpus(pattern),
                  vocabulary=t5_vocab_path)
  assert pattern in str(info.value)
  assert dict(registry._SPECS) == before   # nothing registered or replaced


def test_empty_corpus_gives_no_rows(clean_registry, tmp_path, capsys, t5_vocab_path):
  from arch_objective.training import data as training_data

  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n\n   \n\n")
  for kind, arch in COMBINATIONS:
    spec = local_spec(kind, str(empty), t5_vocab_path)
    assert list(spec.rows(arch=arch)) == [], (kind, arch)
  spec = registry.get("local_full_lm")
  with pytest.raises(ValueError, match="no rows"):
    next(training_data.positioned_rows_forever(spec, CD, "train", 0, 0, 1, True, None))
  code = cli.main(["data", "stats", "--task", "local_full_lm", "--corpus", str(empty),
                   "--vocabulary", t5_vocab_path, "--length", str(LENGTH)])
  captured = capsys.readouterr()
  assert code == 2 and captured.out == ""
  assert "no rows" in captured.err


@pytest.mark.parametrize("kind,arch", [("prefix_lm_encoder_decoder", CD),
                                       ("prefix_lm_decoder", ED), ("full_lm", ED)])
def test_architecture_the_task_does_not_serve(clean_registry, c4_sample_path, t5_vocab_path,
                                              kind, arch):
  spec = local_spec(kind, c4_sample_path, t5_vocab_path)
  with pytest.raises(ValueError) as info:
    next(iter(spec.rows(arch=arch)))
  message = str(info.value)
  assert f"local_{kind}" in message and arch in message


def test_data_stats_on_a_missing_corpus_exits_2(clean_registry, tmp_path, capsys,
                                                t5_vocab_path):
  missing = str(tmp_path / "nowhere.jsonl")
  code = cli.main(["data", "stats", "--task", "local_span_corruption", "--corpus", missing,
                   "--vocabulary", t5_vocab_path])
  captured = capsys.readouterr()
  assert code == 2 and captured.out == ""
  assert missing in captured.err and "arch-objective data stats" in captured.err


# ---------------------------------------------------------------------------
# 8. Determinism and sharding through the task layer
# ---------------------------------------------------------------------------
def first_rows(spec, n=5, **kwargs):
  return list(itertools.islice(spec.rows(**kwargs), n))


def assert_rows_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("kind", ["span_corruption", "prefix_lm_decoder",
                                  "prefix_lm_encoder_decoder"])
def test_rows_are_deterministic_per_seed(clean_registry, c4_sample_path, t5_vocab_path, kind):
  spec = local_spec(kind, c4_sample_path, t5_vocab_path)
  rows = first_rows(spec, seed=0)
  assert len(rows) == 5
  assert_rows_equal(rows, first_rows(spec, seed=0))
  other = first_rows(spec, n=1, seed=1)[0]
  differs = [k for k in rows[0] if not np.array_equal(rows[0][k], other[k])]
  assert differs, "seed 1 gave the same first row as seed 0"


def test_span_corruption_seed_changes_the_noise_not_the_text(clean_registry, c4_sample_path,
                                                             t5_vocab_path):
  spec = local_spec("span_corruption", c4_sample_path, t5_vocab_path)
  sentinel_floor = 32000

  def restored(example):
    """The raw chunk, rebuilt from inputs and targets (independent of the code)."""
    spans, key = {}, None
    for t in example["targets"][:-1].tolist():
      if t >= sentinel_floor:
        key = t
        spans[key] = []
      else:
        spans[key].append(t)
    out = []
    for t in example["inputs"][:-1].tolist():
      out.extend(spans[t] if t >= sentinel_floor else [t])
    return out

  a = next(iter(spec.task_examples(seed=0)))
  b = next(iter(spec.task_examples(seed=1)))
  assert not np.array_equal(a["inputs"], b["inputs"])
  assert restored(a) == restored(b)
  # The first chunk is the first raw tokens of the concatenated training documents.
  chunk_length, _ = reference_spans_helper(reference_mlm_lengths(LENGTH)[0])
  stream = np.concatenate(list(itertools.islice(spec.documents(), 10)))
  assert restored(a) == stream[:chunk_length].tolist()


def test_shards_split_the_documents_without_overlap(clean_registry, c4_sample_path,
                                                    t5_vocab_path):
  spec = local_spec("span_corruption", c4_sample_path, t5_vocab_path)
  texts = corpus_texts(c4_sample_path)
  expected_train = sum(1 for i, t in enumerate(texts) if t.strip() and i % 100 != 0)
  assert expected_train == 297
  whole = [tuple(d.tolist()) for d in spec.documents("train")]
  assert len(whole) == expected_train
  validation = list(spec.documents("validation"))
  assert len(validation) == 3
  assert not {tuple(d.tolist()) for d in validation} & set(whole)
  # Two hosts: each reads a contiguous half of the bytes and holds out every 100th of
  # its own documents; together the hosts' train and validation documents are the
  # corpus's, each once, in order.
  docs = lambda split, i: [tuple(d.tolist()) for d in spec.documents(split, shard_index=i,
                                                                      num_shards=2)]
  shard0, shard1 = docs("train", 0), docs("train", 1)
  held0, held1 = docs("validation", 0), docs("validation", 1)
  assert shard0[0] != shard1[0]
  assert len(held0) == 2 and len(held1) == 2       # 150 and 150 documents: 0, 100 each
  everything = [tuple(d.tolist()) for d in itertools.chain(spec.documents("train"),
                                                            spec.documents("validation"))]
  assert sorted(shard0 + held0 + shard1 + held1) == sorted(everything)
  assert abs(len(shard0 + held0) - len(shard1 + held1)) <= 30
  row0 = next(iter(spec.rows(shard_index=0, num_shards=2)))
  row1 = next(iter(spec.rows(shard_index=1, num_shards=2)))
  assert not np.array_equal(row0["encoder_input_tokens"], row1["encoder_input_tokens"])
