"""`objectives/ul2.py`: UL2's mixture of denoisers, on literal token sequences and
statistically over thousands of examples against the configuration (the UL2 paper's
table 1 and t5's span-corruption arithmetic), its chunking and resume, the `ul2` tasks,
and the two shipped experiment files trained through the local overlay."""
import json
import pathlib

import numpy as np
import pytest

from arch_objective.errors import UserError
from arch_objective.objectives import chunking, pipeline, span_corruption, ul2

from helpers import run_cli

SENTINEL_START, EXTRA = 499, 100          # a 500-id vocabulary whose last 100 are extra ids
NLU, NLG, S2S = 400, 401, 402             # <extra_id_99>, <extra_id_98>, <extra_id_97>


class _Split:
  """An rng whose `integers` returns a chosen split (the S denoiser's only draw)."""

  def __init__(self, split):
    self.split = split

  def integers(self, low, high):
    assert low <= self.split < high
    return self.split


def _documents(n=400, seed=0):
  rng = np.random.default_rng(seed)
  return [(rng.integers(3, 390, size=int(rng.integers(20, 300))).astype(np.int32), i)
          for i in range(n)]


def _unmask(example, sentinel_start=SENTINEL_START):
  """The chunk back from a span denoiser's example: each sentinel of the inputs replaced
  by the tokens after the same sentinel in the targets."""
  inputs, targets = list(example["inputs"][1:-1]), list(example["targets"][:-1])
  spans, current = {}, None
  for t in targets:
    if t > sentinel_start - EXTRA + len(ul2.PARADIGMS) - 1:
      current = t
      spans[t] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs:
    out += spans[t] if t in spans else [t]
  return out, spans


def test_the_paradigm_tokens_are_the_last_extra_ids():
  assert ul2.paradigm_ids(SENTINEL_START, EXTRA) == {"[NLU]": NLU, "[NLG]": NLG, "[S2S]": S2S}
  assert ul2.paradigm_ids(32099, 100) == {"[NLU]": 32000, "[NLG]": 32001, "[S2S]": 32002}


def test_the_s_denoiser_layout_is_literal():
  example = ul2.denoise(np.arange(10, 16), ul2.Denoiser("S"), _Split(2), SENTINEL_START, EXTRA)
  assert example["inputs"].tolist() == [S2S, 10, 11, 1]
  assert example["targets"].tolist() == [12, 13, 14, 15, 1]


@pytest.mark.parametrize("denoiser", [d for d in ul2.PAPER_DENOISERS if d.kind != "S"],
                         ids=lambda d: d.name)
def test_a_span_denoiser_is_t5_span_corruption_behind_its_paradigm_token(denoiser):
  tokens = np.arange(10, 10 + 120, dtype=np.int32)
  example = ul2.denoise(tokens, denoiser, np.random.default_rng(3), SENTINEL_START, EXTRA)
  assert example["inputs"][0] == {"R": NLU, "X": NLG}[denoiser.kind]
  assert example["inputs"][-1] == 1 and example["targets"][-1] == 1
  restored, spans = _unmask(example)
  assert restored == tokens.tolist()
  assert list(spans) == list(range(SENTINEL_START, SENTINEL_START - len(spans), -1))
  noise, count = span_corruption._counts(len(tokens), denoiser.density, denoiser.mean_span)
  assert sum(len(v) for v in spans.values()) == noise and len(spans) == count


def test_chunk_lengths_at_the_papers_row_fill_313_by_313():
  """At 626 tokens per row (inputs 313, targets 313, 97 sentinels), each denoiser reads
  the longest chunk that fits, e.g. R(3, 0.15): 346 tokens, 52 noise in 17 spans ->
  inputs 1 + 346 - 52 + 17 + 1 = 313, targets 52 + 17 + 1 = 70; S: 312 tokens, split 1
  leaves 311 + EOS of targets."""
  mixture = ul2.Mixture(ul2.PAPER_DENOISERS, *ul2.ul2_lengths(626), EXTRA)
  assert ul2.ul2_lengths(626) == (313, 313)
  assert mixture.chunk_lengths == (346, 358, 467, 553, 365, 612, 312)
  for denoiser, tokens in zip(mixture.denoisers, mixture.chunk_lengths):
    inputs, targets, spans = denoiser.lengths(tokens)
    assert inputs <= 313 and targets <= 313 and spans <= 97
    longer = denoiser.lengths(tokens + 1)
    assert longer[0] > 313 or longer[1] > 313 or longer[2] > 97


def test_variable_chunk_lengths_cut_the_stream_in_order():
  documents = [(np.array(d, np.int32), i) for i, d in
               enumerate([[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]])]
  chunks = list(chunking.concat_and_split_positioned(
      documents, lambda k: 2 if k % 2 == 0 else 3, append_eos=True))
  assert [c.tolist() for c, _ in chunks] == [[5, 6], [7, 1, 8], [9, 1], [10, 11, 12],
                                             [13, 14], [1]]
  assert [w["chunk"] for _, w in chunks] == [0, 1, 2, 3, 4, 5]
  assert [(w["doc"], w["skip"]) for _, w in chunks] == [(0, 0), (0, 2), (1, 1), (2, 0),
                                                         (2, 3), (2, 5)]


@pytest.fixture(scope="module")
def examples():
  """Examples of the paper's mixture at 626 tokens per row, with their denoisers."""
  mixture = ul2.Mixture(ul2.PAPER_DENOISERS, 313, 313, EXTRA)
  out = []
  for example in ul2.ul2_positioned(_documents(8000), mixture, SENTINEL_START, seed=11):
    out.append((mixture.denoisers[mixture.draw(11, example.where["chunk"])], example))
  return mixture, out[:-1]       # the last chunk of a finite stream is short


def test_each_denoiser_has_its_rate_within_four_standard_errors(examples):
  mixture, pairs = examples
  n = len(pairs)
  assert n > 2500
  for index, denoiser in enumerate(mixture.denoisers):
    share = sum(d is denoiser for d, _ in pairs) / n
    p = mixture.probabilities[index]
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n), (denoiser.name, share, p)


def test_every_example_fits_and_starts_with_its_paradigm_token(examples):
  _, pairs = examples
  for denoiser, example in pairs:
    assert len(example["inputs"]) <= 313 and len(example["targets"]) <= 313
    assert example["inputs"][0] == {"R": NLU, "X": NLG, "S": S2S}[denoiser.kind]
    assert ul2.which_denoiser(example, SENTINEL_START, EXTRA) == denoiser.paradigm
    assert not np.isin(example["targets"], [NLU, NLG, S2S]).any()


def test_each_span_denoiser_has_its_noise_density_and_mean_span_length(examples):
  """Every chunk of n tokens has t5's counts, round(n r) noise tokens in
  round(round(n r) / mean) spans, so the density is r within 1 / n and the mean span
  length the configured one within 5% when a chunk holds several spans (R(8, 0.15) at 358
  tokens: 54 / 7 = 7.71)."""
  mixture, pairs = examples
  for denoiser, tokens in zip(mixture.denoisers, mixture.chunk_lengths):
    if denoiser.kind == "S":
      continue
    noise = spans = chunks = 0
    for d, example in pairs:
      if d is denoiser:
        restored, by_sentinel = _unmask(example)
        assert len(restored) == tokens
        noise += sum(len(v) for v in by_sentinel.values())
        spans += len(by_sentinel)
        chunks += 1
    assert chunks > 200
    expected_noise, expected_spans = span_corruption._counts(tokens, denoiser.density,
                                                             denoiser.mean_span)
    assert (noise, spans) == (chunks * expected_noise, chunks * expected_spans), denoiser.name
    assert noise / (chunks * tokens) == pytest.approx(denoiser.density, abs=1 / tokens)
    if expected_spans > 1:   # X(64, 0.15) fits 55 noise tokens: one span, shorter than 64
      assert noise / spans == pytest.approx(denoiser.mean_span, rel=0.05), denoiser.name


def test_the_s_denoiser_splits_uniformly(examples):
  """Split s uniform in [1, 311] of 312 tokens: mean 156, variance (311^2 - 1) / 12;
  the inputs are the chunk's first s tokens and the targets the rest."""
  _, pairs = examples
  splits = np.array([len(e["inputs"]) - 2 for d, e in pairs if d.kind == "S"])
  lengths = [len(e["inputs"]) - 2 + len(e["targets"]) - 1 for d, e in pairs if d.kind == "S"]
  assert len(splits) > 300 and set(lengths) == {312}
  assert splits.min() >= 1 and splits.max() <= 311
  assert abs(splits.mean() - 156) < 4 * np.sqrt((311 ** 2 - 1) / 12 / len(splits))


def test_a_resume_at_any_example_continues_exactly():
  mixture = ul2.Mixture(ul2.PAPER_DENOISERS, 32, 32, EXTRA)
  documents = _documents(60)
  whole = list(ul2.ul2_positioned(documents, mixture, SENTINEL_START, seed=5))
  for k in (1, 17, len(whole) - 3):
    start = whole[k].where
    again = list(ul2.ul2_positioned(documents[start["doc"]:], mixture, SENTINEL_START,
                                    seed=5, start=start))
    assert len(again) == len(whole) - k
    for a, b in zip(again, whole[k:]):
      assert a["inputs"].tolist() == b["inputs"].tolist()
      assert a["targets"].tolist() == b["targets"].tolist()


@pytest.mark.parametrize("arch", ["causal_decoder", "non_causal_decoder", "encoder_decoder"])
def test_every_architecture_reads_ul2_rows(arch):
  objective = pipeline.Objective(pipeline.UL2, arch, 64)
  rows = list(objective.rows((d for d, _ in _documents(40)), sentinel_start=SENTINEL_START,
                             num_extra_ids=EXTRA))
  assert rows
  if arch == "encoder_decoder":
    assert rows[0]["encoder_input_tokens"].shape == (32,)
    assert rows[0]["decoder_target_tokens"].shape == (32,)
    assert rows[0]["encoder_input_tokens"][0] in (NLU, NLG, S2S)
  else:
    row = rows[0]
    assert row["decoder_target_tokens"].shape == (64,)
    first = int(np.argmax(row["decoder_loss_weights"]))
    assert row["decoder_target_tokens"][0] in (NLU, NLG, S2S)
    assert row["decoder_causal_attention"][:first + 1].all()   # the inputs, plus one
  assert pipeline.task_feature_lengths(pipeline.UL2, 626) == {"inputs": 313, "targets": 313}
  assert pipeline.objective_length(pipeline.UL2, {"inputs": 313, "targets": 313}) == 626


def test_bad_configurations_are_named():
  with pytest.raises(UserError, match="kind must be one of R, X, S, found 'Q'"):
    ul2.Denoiser("Q")
  with pytest.raises(UserError, match="rate must be > 0"):
    ul2.Denoiser("R", rate=0)
  with pytest.raises(UserError, match="needs 3 extra ids for its paradigm tokens"):
    ul2.Mixture(num_extra_ids=4)
  with pytest.raises(UserError, match="no chunk of 2 or more tokens fits"):
    ul2.Denoiser("X", 64, 0.5).chunk_length(3, 1, 97)
  assert ul2.denoisers_from([("R", 3, 0.15, 2), ("S",)]) == (
      ul2.Denoiser("R", 3, 0.15, 2.0), ul2.Denoiser("S"))
  with pytest.raises(UserError, match="expected"):
    ul2.denoisers_from([("R", 3)])


@pytest.mark.slow
def test_data_stats_reports_each_paradigms_share(tmp_path, capsys):
  from arch_objective.training import example_data
  written = example_data.write_example_data(str(tmp_path / "ex"), corpus_bytes=300_000,
                                            eval_examples=2)
  rc, out, err = run_cli(capsys, ["data", "stats", "--task", "local_ul2", "--corpus",
                                  written["corpus"], "--vocabulary", written["vocabulary"],
                                  "--length", "64", "--num", "300"])
  assert rc == 0, err
  report = json.loads(out)
  assert report["task"] == "ED:UL2" and report["feature_lengths"] == {"inputs": 32,
                                                                      "targets": 32}
  share = report["paradigm_share"]
  assert set(share) == {"[NLU]", "[NLG]", "[S2S]"}
  assert abs(share["[NLU]"] - 2 / 7) < 0.1 and abs(share["[NLG]"] - 4 / 7) < 0.1
  assert 0.15 < report["noise_density"] < 0.5
  rc, out, err = run_cli(capsys, ["data", "show", "--task", "local_ul2", "--corpus",
                                  written["corpus"], "--vocabulary", written["vocabulary"],
                                  "--length", "64", "--num", "6"])
  assert rc == 0, err
  assert any(name in out for name in ("[NLU]", "[NLG]", "[S2S]"))


UL2_EXPERIMENTS = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[1] / "gin" /
                                          "experiments" / "ul2").glob("*.gin"))


def test_the_ul2_experiments_are_a_pretraining_and_an_mt_f_file_per_architecture():
  assert UL2_EXPERIMENTS == ["ed_ul2", "ed_ul2_mtf", "nd_ul2", "nd_ul2_mtf"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ed", "nd"])
def test_the_ul2_experiment_files_run_through_the_local_overlay(arch, tmp_path, capsys):
  """Pretraining, a refused resume with another mixture, MT-F from the result and the
  paper's T0-Eval file on it, each as shipped plus `gin/local.gin`; `plan` of each file
  at the paper's size."""
  pre, mtf = tmp_path / f"{arch}_ul2", tmp_path / f"{arch}_ul2_mtf"
  local = ["--gin_file=local.gin", "--gin.LOCAL_STEPS=2"]
  rc, out, err = run_cli(capsys, ["train", f"--gin_file=experiments/ul2/{arch}_ul2.gin",
                                  *local, f"--gin.MODEL_DIR='{pre}'"])
  assert rc == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  assert result["step"] == 2 and np.isfinite(result["loss"])
  # A resume with another mixture would read other rows: refused, naming the field.
  rc, _, err = run_cli(capsys, ["train", f"--gin_file=experiments/ul2/{arch}_ul2.gin",
                                *local, "--gin.UL2_DENOISERS=[('S', 1)]",
                                f"--gin.MODEL_DIR='{pre}'"])
  assert rc == 2 and "denoisers" in err and "Traceback" not in err, err
  rc, out, err = run_cli(capsys, ["train", f"--gin_file=experiments/ul2/{arch}_ul2_mtf.gin",
                                  *local, f"--gin.MODEL_DIR='{mtf}'",
                                  f"--gin.INITIAL_CHECKPOINT_PATH='{pre}'"])
  assert rc == 0, err
  assert json.loads(out.strip().splitlines()[-1])["step"] == 4   # continues the counter
  rc, out, err = run_cli(capsys, ["eval", "t0", "--gin_file=experiments/paper/eval_t0.gin",
                                  "--gin_file=local.gin", f"--gin.CHECKPOINT_PATH='{mtf}'",
                                  f"--out={tmp_path / 't0'}"])
  assert rc == 0, err
  results = json.loads((tmp_path / "t0" / "results.json").read_text())
  assert 0 <= results["average"] <= 100 and results["step"] == 4
  for name, steps in ((f"{arch}_ul2", 131072), (f"{arch}_ul2_mtf", 141072)):
    rc, out, err = run_cli(capsys, ["plan", f"--gin_file=experiments/ul2/{name}.gin"])
    plan = json.loads(out)
    assert plan["steps"] == steps, (name, plan["steps"])
  assert json.loads(run_cli(capsys, ["plan", f"--gin_file=experiments/ul2/{arch}_ul2.gin"])[1])[
      "task"] == "c4_ul2"


class _RecordingScorer:
  """A RankScorer stand-in that records the requests and prefers the first choice."""

  def __init__(self):
    self.requests = []

  def score(self, requests, normalize=False):
    self.requests += requests
    return [[0.0] + [-1.0] * (len(r.choices) - 1) for r in requests]


def test_t0_eval_starts_every_prompt_with_the_paradigm_token():
  from arch_objective.data.world import make_world
  from arch_objective.evaluation import t0_eval
  suite = make_world(seed=0).heldout_suite()[:1]
  plain, with_token = _RecordingScorer(), _RecordingScorer()
  encode = lambda text: [5 + len(word) for word in text.split()]
  t0_eval.evaluate_suite(plain, encode, suite=suite, max_examples=3)
  t0_eval.evaluate_suite(with_token, encode, suite=suite, max_examples=3,
                         prompt_prefix=ul2.paradigm_prefix("[S2S]", 500, 100))
  assert len(plain.requests) == len(with_token.requests) > 0
  for a, b in zip(plain.requests, with_token.requests):
    assert list(b.prompt) == [S2S] + list(a.prompt)
    assert [list(c) for c in b.choices] == [list(c) for c in a.choices]   # answers unchanged
  assert ul2.paradigm_prefix(None, 500, 100) == ()
  with pytest.raises(UserError, match=r"paradigm must be one of \[NLU\], \[NLG\], \[S2S\]"):
    ul2.paradigm_prefix("NLU", 500, 100)


def test_the_harness_model_starts_contexts_and_prompts_with_the_paradigm_token(tiny_params):
  from arch_objective.evaluation import harness
  from helpers import tiny_model

  class Vocab:
    vocab_size, extra_ids = 64, 10

    def encode_batch(self, texts):
      return [[3 + len(t) % 7] for t in texts]

  model = tiny_model("causal_decoder")
  lm = harness.ArchObjectiveLM(model=model, params=tiny_params["dec"],
                               vocab=Vocab(), paradigm="[NLG]")
  nlg = ul2.paradigm_ids(63, 10)["[NLG]"]
  assert nlg == 55
  assert [t.tolist() for t in lm._encode_all(["ab"], prompts=True)] == [[nlg, 5]]
  assert [t.tolist() for t in lm._encode_all(["ab"])] == [[5]]
  assert lm.get_model_info()["arch_objective"]["paradigm"] == "[NLG]"
  with pytest.raises(ValueError, match="paradigm must be one of"):
    harness.check_model_args({"checkpoint": "x", "paradigm": "S2S"})


@pytest.mark.slow
def test_an_exported_tokenizer_names_the_paradigm_tokens_as_extra_ids(tmp_path):
  """`<extra_id_99>`, `<extra_id_98>` and `<extra_id_97>` of the Hugging Face tokenizer
  that `convert hf-out` ships are [NLU], [NLG] and [S2S]."""
  import transformers
  from arch_objective.convert import hf
  from arch_objective.data import vocabularies
  from arch_objective.training import example_data
  written = example_data.write_example_data(str(tmp_path / "ex"), corpus_bytes=300_000,
                                            eval_examples=1)
  (tmp_path / "tok").mkdir()
  hf.write_tokenizer(str(tmp_path / "tok"), written["vocabulary"], 100)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
  vocab = vocabularies.SentencePieceVocabulary(written["vocabulary"])
  ids = ul2.paradigm_ids(vocab.vocab_size - 1, vocab.extra_ids)
  for name, extra in (("[NLU]", 99), ("[NLG]", 98), ("[S2S]", 97)):
    assert tokenizer.convert_tokens_to_ids(f"<extra_id_{extra}>") == ids[name]
  encoded = tokenizer("<extra_id_97> The story begins").input_ids
  assert encoded[0] == ids["[S2S]"] and encoded[1:-1] == vocab.encode("The story begins")
